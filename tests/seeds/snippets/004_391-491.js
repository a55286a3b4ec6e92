class WebSocketChatClient {
    constructor(token, roomId = null) {
        this.token = token;
        this.roomId = roomId;
        this.socket = null;
        this.reconnectAttempts = 0;
        this.maxReconnectAttempts = 5;
    }

    connect() {
        const params = new URLSearchParams({ token: this.token });
        if (this.roomId) params.append('room_id', this.roomId);
        
        const wsUrl = `ws://localhost:8000/api/v1/ws/ws?${params}`;
        this.socket = new WebSocket(wsUrl);

        this.socket.onopen = this.onOpen.bind(this);
        this.socket.onmessage = this.onMessage.bind(this);
        this.socket.onclose = this.onClose.bind(this);
        this.socket.onerror = this.onError.bind(this);
    }

    onOpen(event) {
        console.log('Connected to WebSocket');
        this.reconnectAttempts = 0;
    }

    onMessage(event) {
        const message = JSON.parse(event.data);
        this.handleMessage(message);
    }

    onClose(event) {
        console.log('WebSocket connection closed');
        this.attemptReconnect();
    }

    onError(event) {
        console.error('WebSocket error:', event);
    }

    handleMessage(message) {
        switch (message.type) {
            case 'chat':
                this.handleChatMessage(message);
                break;
            case 'typing':
                this.handleTypingIndicator(message);
                break;
            case 'file_upload':
                this.handleFileUpload(message);
                break;
            case 'error':
                this.handleError(message);
                break;
        }
    }

    sendChatMessage(text, conversationId = null) {
        const message = {
            type: 'chat',
            data: {
                message: text,
                conversation_id: conversationId,
                model_preference: 'gpt-4'
            },
            room_id: this.roomId,
            message_id: 'msg-' + Date.now()
        };
        this.send(message);
    }

    sendTypingIndicator(isTyping) {
        const message = {
            type: 'typing',
            data: {
                is_typing: isTyping,
                room_id: this.roomId
            }
        };
        this.send(message);
    }

    send(message) {
        if (this.socket && this.socket.readyState === WebSocket.OPEN) {
            this.socket.send(JSON.stringify(message));
        }
    }

    attemptReconnect() {
        if (this.reconnectAttempts < this.maxReconnectAttempts) {
            this.reconnectAttempts++;
            const delay = Math.pow(2, this.reconnectAttempts) * 1000; // Exponential backoff
            setTimeout(() => this.connect(), delay);
        }
    }
}

// Usage
const client = new WebSocketChatClient('your-ws-token', 'room-123');
client.connect();
