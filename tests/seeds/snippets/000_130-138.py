import asyncio
import websockets
import json

async with websockets.connect(uri) as websocket:
    async for message in websocket:
        data = json.loads(message)
        if data["type"] == "message_added":
            print(f"New message: {data['data']['message']}")
