const ws = new WebSocket("ws://localhost:8000/ws/test_user/test_session");

ws.onopen = () => {
  console.log("Connected!");
  ws.send(JSON.stringify({
    type: "query",
    query: "Show me my top Instagram posts",
    conversation_id: "test_session"
  }));
};

ws.onmessage = (event) => {
  const data = JSON.parse(event.data);
  console.log(`[${data.type}]`, data.data);
};
