import asyncio
import json
import websockets
import logging

class WebSocketChatClient:
    def __init__(self, token, room_id=None):
        self.token = token
        self.room_id = room_id
        self.websocket = None
        self.running = False

    async def connect(self):
        uri = f"ws://localhost:8000/api/v1/ws/ws?token={self.token}"
        if self.room_id:
            uri += f"&room_id={self.room_id}"
        
        try:
            self.websocket = await websockets.connect(uri)
            self.running = True
            logging.info("Connected to WebSocket")
            
            # Start message handler
            await self.handle_messages()
            
        except Exception as e:
            logging.error(f"Connection error: {e}")

    async def handle_messages(self):
        try:
            async for message in self.websocket:
                data = json.loads(message)
                await self.process_message(data)
        except websockets.exceptions.ConnectionClosed:
            logging.info("WebSocket connection closed")
        except Exception as e:
            logging.error(f"Message handling error: {e}")

    async def process_message(self, message):
        msg_type = message.get('type')
        
        if msg_type == 'chat':
            await self.handle_chat_message(message)
        elif msg_type == 'typing':
            await self.handle_typing_indicator(message)
        elif msg_type == 'error':
            logging.error(f"WebSocket error: {message['data']}")

    async def send_chat_message(self, text, conversation_id=None):
        message = {
            'type': 'chat',
            'data': {
                'message': text,
                'conversation_id': conversation_id,
                'model_preference': 'gpt-4'
            },
            'room_id': self.room_id,
            'message_id': f'msg-{asyncio.get_event_loop().time()}'
        }
        await self.send(message)

    async def send(self, message):
        if self.websocket and not self.websocket.closed:
            await self.websocket.send(json.dumps(message))

    async def close(self):
        self.running = False
        if self.websocket:
            await self.websocket.close()
