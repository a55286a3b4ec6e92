// The peer: a minimal echo + broadcast server on Node's `ws`, the most used WebSocket
// server on npm. /echo echoes every message; /broadcast relays every message to all other
// clients. No permessage-deflate (confab does not offer it either).
// usage: node server.js PORT
const http = require('http');
const { WebSocketServer } = require('ws');
const port = Number(process.argv[2] || 18200);
const server = http.createServer((req, res) => { res.writeHead(404); res.end(); });
const echo = new WebSocketServer({ noServer: true, perMessageDeflate: false });
const bcast = new WebSocketServer({ noServer: true, perMessageDeflate: false });
server.on('upgrade', (req, sock, head) => {
  const wss = req.url.startsWith('/echo') ? echo : req.url.startsWith('/broadcast') ? bcast : null;
  if (!wss) { sock.destroy(); return; }
  wss.handleUpgrade(req, sock, head, (ws) => wss.emit('connection', ws, req));
});
echo.on('connection', (ws) => ws.on('message', (d, bin) => ws.send(d, { binary: bin })));
bcast.on('connection', (ws) => ws.on('message', (d, bin) => {
  for (const c of bcast.clients) if (c !== ws && c.readyState === 1) c.send(d, { binary: bin });
}));
server.listen(port, '127.0.0.1', () => console.log(`peer ws listening on ${port}`));
