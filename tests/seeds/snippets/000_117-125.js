const ws = new WebSocket(`ws://localhost:7437/v1/conversation/${conversationId}/stream?authorization=${token}`);

ws.onmessage = function(event) {
    const message = JSON.parse(event.data);
    if (message.type === 'message_added') {
        // Handle new message
        console.log('New message:', message.data);
    }
};
