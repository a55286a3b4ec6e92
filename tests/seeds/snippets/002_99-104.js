const ws = new WebSocket('ws://localhost:8000/api/v1/ws/user-123');
ws.onmessage = (event) => {
    const data = JSON.parse(event.data);
    console.log('Received:', data);
};
ws.send(JSON.stringify({message: "Hello EdAgent!"}));
