const ws = new WebSocket('ws://localhost:8000/ws/chat?token=your_jwt_token');
