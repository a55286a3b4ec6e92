const chatMessage = {
    type: "chat",
    data: {
        message: "Hello, AI!",
        conversation_id: null, // Will create new conversation
        model_preference: "gpt-4",
        temperature: 0.7
    },
    room_id: "room-123", // Optional: broadcast to room
    message_id: "msg-" + Date.now()
};

socket.send(JSON.stringify(chatMessage));
