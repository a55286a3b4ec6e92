import asyncio
import json
import websockets

async def chat_stream():
    uri = "ws://localhost:8000/ws/chat"
    token = "your_jwt_token"
    
    async with websockets.connect(uri) as websocket:
        # Authenticate
        await websocket.send(json.dumps({
            "type": "auth",
            "token": token
        }))
        
        # Wait for auth response
        auth_response = await websocket.recv()
        auth_data = json.loads(auth_response)
        
        if auth_data["type"] != "auth_success":
            print("Authentication failed")
            return
        
        print("Authenticated!")
        
        # Send message
        await websocket.send(json.dumps({
            "type": "message",
            "message": "What is the engine power?",
            "session_id": "python-session-1"
        }))
        
        # Receive responses
        accumulated = ""
        
        async for message in websocket:
            data = json.loads(message)
            
            if data["type"] == "progress":
                print(f"[{data['step']}] {data['message']}")
            
            elif data["type"] == "token":
                print(data["token"], end="", flush=True)
                accumulated += data["token"]
            
            elif data["type"] == "complete":
                print("\n\nComplete!")
                print(f"Response: {data['response']}")
                print(f"Agent: {data['metadata']['agent']}")
                break
            
            elif data["type"] == "error":
                print(f"Error: {data['error']}")
                break

# Run
asyncio.run(chat_stream())
