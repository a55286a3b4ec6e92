const wsUrl = `ws://localhost:8000/api/v1/ws/ws?token=${wsToken}`;
const socket = new WebSocket(wsUrl);

socket.onopen = function(event) {
    console.log('Connected to WebSocket');
};

socket.onmessage = function(event) {
    const message = JSON.parse(event.data);
    console.log('Received:', message);
};
