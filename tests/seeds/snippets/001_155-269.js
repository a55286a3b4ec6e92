class ChatWebSocket {
  constructor(url, token) {
    this.url = url;
    this.token = token;
    this.ws = null;
    this.onMessage = null;
    this.onProgress = null;
    this.onComplete = null;
    this.onError = null;
  }
  
  connect() {
    this.ws = new WebSocket(this.url);
    
    this.ws.onopen = () => {
      console.log('Connected');
      
      // Authenticate
      if (this.token) {
        this.ws.send(JSON.stringify({
          type: 'auth',
          token: this.token
        }));
      }
    };
    
    this.ws.onmessage = (event) => {
      const data = JSON.parse(event.data);
      
      switch (data.type) {
        case 'auth_success':
          console.log('Authenticated:', data.user);
          break;
        
        case 'auth_error':
          if (this.onError) this.onError(data.message);
          break;
        
        case 'progress':
          if (this.onProgress) this.onProgress(data.step, data.message);
          break;
        
        case 'token':
          if (this.onMessage) this.onMessage(data.token, data.partial_response);
          break;
        
        case 'complete':
          if (this.onComplete) this.onComplete(data.response, data.metadata);
          break;
        
        case 'error':
          if (this.onError) this.onError(data.error, data.code);
          break;
      }
    };
    
    this.ws.onerror = (error) => {
      if (this.onError) this.onError('WebSocket error', 'CONNECTION_ERROR');
    };
    
    this.ws.onclose = () => {
      console.log('Disconnected');
    };
  }
  
  sendMessage(message, sessionId = null) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) {
      throw new Error('WebSocket not connected');
    }
    
    this.ws.send(JSON.stringify({
      type: 'message',
      message: message,
      session_id: sessionId
    }));
  }
  
  disconnect() {
    if (this.ws) {
      this.ws.close();
    }
  }
}

// Usage
const chat = new ChatWebSocket(
  'ws://localhost:8000/ws/chat',
  'your_jwt_token'
);

chat.onProgress = (step, message) => {
  console.log(`[${step}] ${message}`);
};

chat.onMessage = (token, partial) => {
  // Append token to UI
  document.getElementById('response').textContent += token;
};

chat.onComplete = (response, metadata) => {
  console.log('Complete:', response);
  console.log('Agent:', metadata.agent);
  console.log('Confidence:', metadata.confidence);
};

chat.onError = (error, code) => {
  console.error(`Error [${code}]: ${error}`);
};

chat.connect();

// Send message
setTimeout(() => {
  chat.sendMessage('What is the engine power?');
}, 1000);
