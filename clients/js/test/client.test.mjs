// confab.js against a real confab server, in Node (driven by tests/js_client.rs).
//
//   node [--experimental-websocket] client.test.mjs SCENARIO http://127.0.0.1:PORT
//
// Prints "PASS SCENARIO" on success. The `restart` scenario talks to the Rust test on
// stdout/stdin: it prints "STOP" (the test stops the server), then "START" after queueing
// a chat while the server is down (the test restarts it on the same port), and waits for
// a line on stdin after each.

import net from 'node:net';
import readline from 'node:readline';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { connect } from '../confab.js';

const [scenario, base] = process.argv.slice(2);
const wsUrl = base.replace(/^http/, 'ws') + '/v1/ws';
const fail = (m) => { console.error('FAIL ' + m); process.exit(1); };
const assert = (c, m) => { if (!c) fail(m); };
setTimeout(() => fail(`${scenario}: timed out`), 60000).unref?.();

async function devToken(sub, url = base) {
  const r = await fetch(url + '/v1/token', {
    method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ sub }),
  });
  assert(r.ok, 'dev token ' + r.status);
  return (await r.json()).token;
}

async function history(conv, token) {
  const r = await fetch(`${base}/v1/conversations/${conv}/messages`, { headers: { Authorization: `Bearer ${token}` } });
  return (await r.json()).messages;
}

const once = (client, type, pred = () => true) => new Promise((resolve) => {
  const off = client.on(type, (ev) => { if (pred(ev)) { off(); resolve(ev); } });
});

/** Collect a reply from its iterator: (concatenated tokens, complete event). */
async function collect(reply) {
  let text = '';
  let complete;
  for await (const ev of reply) {
    if (ev.type === 'token') text += ev.token;
    if (ev.type === 'complete') complete = ev;
  }
  return { text, complete };
}

const lines = readline.createInterface({ input: process.stdin });
const nextLine = () => new Promise((r) => lines.once('line', r));

const scenarios = {
  // A chat: the ack after commit, the reply streamed, the same text as stored.
  async chat() {
    const token = await devToken('ann');
    const c = connect({ url: wsUrl, getToken: () => token });
    const reply = c.chat({ message: 'Hello from confab.js' });
    const ack = await reply.ack;
    assert(ack.conversation_id && ack.seq === 1, 'ack ' + JSON.stringify(ack));
    const { text, complete } = await collect(reply);
    assert(complete.response === text && text.length > 20, 'text equals the complete response');
    const msgs = await history(ack.conversation_id, token);
    assert(msgs[1].content === text && msgs[1].meta.finish_reason === 'stop', 'stored reply');
    c.close();
  },

  // Node with the `ws` package instead of a global WebSocket (tests/browser's node_modules).
  async ws_package() {
    const here = fileURLToPath(new URL('.', import.meta.url));
    const require = createRequire(here + '../../../tests/browser/package.json');
    const WebSocket = require('ws');
    const token = await devToken('wes');
    const c = connect({ url: wsUrl, getToken: () => token, WebSocket });
    const reply = c.chat({ message: 'over the ws package' });
    const { text, complete } = await collect(reply);
    assert(text === complete.response && text.length > 20, 'streamed over ws');
    const done = await c.upload(new Uint8Array(60000).fill(3), { name: 'w.pdf' });
    assert(done.upload_type === 'complete', 'upload over ws');
    c.close();
  },

  // The network drops mid-reply (a proxy cuts every connection): the client reconnects,
  // resumes, and the reply completes with no gap and no duplicate.
  async resume() {
    const target = new URL(base);
    const socks = new Set();
    let cut = false;
    const proxy = net.createServer((client) => {
      if (cut) { client.destroy(); return; }
      const up = net.connect(Number(target.port), target.hostname);
      socks.add(client); socks.add(up);
      client.pipe(up); up.pipe(client);
      const drop = () => { client.destroy(); up.destroy(); socks.delete(client); socks.delete(up); };
      client.on('error', drop); up.on('error', drop); client.on('close', drop); up.on('close', drop);
    });
    await new Promise((r) => proxy.listen(0, '127.0.0.1', r));
    const via = `ws://127.0.0.1:${proxy.address().port}/v1/ws`;
    const token = await devToken('ben');
    const c = connect({ url: via, getToken: () => token, backoff: { minMs: 50, maxMs: 200 }, connectTimeoutMs: 1000 });
    if (process.env.CONFAB_DEBUG) { c.on('event', (e) => console.error('EV', JSON.stringify(e).slice(0, 150))); c.on('state', (s) => console.error('STATE', s)); }
    const reply = c.chat({ message: 'a long answer please' });
    let tokens = 0;
    let reconnected = false;
    reply.on('token', () => {
      tokens += 1;
      if (tokens === 5) {
        cut = true;
        for (const s of socks) s.destroy();
        setTimeout(() => { cut = false; }, 300);
      }
    });
    c.on('connected', () => { if (tokens >= 5) reconnected = true; });
    const { text, complete } = await collect(reply);
    assert(reconnected, 'it reconnected');
    assert(text === complete.response, `no gap, no duplicate:\n${text}\n---\n${complete.response}`);
    const msgs = await history((await reply.ack).conversation_id, token);
    assert(msgs[1].content === text, 'the stored reply is the text seen');
    c.close();
    proxy.close();
  },

  // The server stops mid-reply and comes back: the client reconnects and ends the reply
  // from the stored row; a chat sent while the server was down goes out exactly once.
  async restart() {
    const token = await devToken('cy');
    const c = connect({ url: wsUrl, getToken: () => token, backoff: { minMs: 50, maxMs: 300 }, connectTimeoutMs: 1000 });
    if (process.env.CONFAB_DEBUG) { c.on('event', (e) => console.error('EV', JSON.stringify(e).slice(0, 160))); c.on('state', (s) => console.error('STATE', s)); }
    const reply = c.chat({ message: 'tell me a story' });
    const ack = await reply.ack;
    await once(reply, 'token');
    const closed = once(c, 'close');
    console.log('STOP');
    await nextLine();
    await closed;
    const states = [];
    c.on('outbox', (e) => states.push(e.state));
    const later = c.chat({ message: 'sent while the server was down', conversationId: ack.conversation_id, ai: false });
    assert(c.outbox.length === 1 && c.outbox[0].state === 'pending', 'queued while down');
    console.log('START');
    await nextLine();
    const { complete } = await collect(reply);
    const text = complete.response;
    const ack2 = await later.ack;
    assert(ack2.conversation_id === ack.conversation_id, 'delivered into its conversation');
    const msgs = await history(ack.conversation_id, token);
    const stored = msgs.find((m) => m.role === 'assistant');
    assert(stored.status !== 'streaming' && stored.content === text, `ended from the stored row: ${stored.status} ${JSON.stringify(stored.content)} vs ${JSON.stringify(text)}`);
    assert(msgs.filter((m) => m.content === 'sent while the server was down').length === 1, 'exactly once');
    assert(states.includes('sent'), 'outbox state reached sent: ' + states);
    c.close();
  },

  // Tokens are refreshed on the open socket before they expire, and after TOKEN_EXPIRED.
  async refresh() {
    let calls = 0;
    const fresh = await devToken('dee');
    const c = connect({ url: wsUrl, getToken: async () => { calls += 1; return calls === 1 ? fresh : devToken('dee'); } });
    await once(c, 'connected');
    await new Promise((r) => setTimeout(r, 4500)); // the token lives 3 s
    assert(calls >= 2, 'getToken called again before expiry: ' + calls);
    assert(c.state === 'open', 'still open');
    const reply = c.chat({ message: 'still here?' });
    await reply.done;
    c.close();
    // A token that is handed out again when it runs out: the server warns, the client asks again.
    const stale = await devToken('eve');
    // The app has nothing newer until the server says the token expired.
    let sawExpired = false;
    const c2 = connect({ url: wsUrl, getToken: async () => (sawExpired ? devToken('eve') : stale) });
    c2.on('error', (e) => { if (e.code === 'TOKEN_EXPIRED') sawExpired = true; });
    if (process.env.CONFAB_DEBUG) { c2.on('event', (e) => console.error('EV', Date.now() % 100000, JSON.stringify(e).slice(0, 150))); c2.on('state', (s) => console.error('STATE', s)); }
    const expired = once(c2, 'error', (e) => e.code === 'TOKEN_EXPIRED');
    await once(c2, 'connected');
    await expired;
    await once(c2, 'auth');
    await new Promise((r) => setTimeout(r, 2500)); // past the grace: not closed
    assert(c2.state === 'open', 'open after TOKEN_EXPIRED and a fresh token');
    c2.close();
  },

  // BUSY (the model is busy) is retried from the outbox after retry_after.
  async busy() {
    const token = await devToken('fay');
    const c = connect({ url: wsUrl, getToken: () => token });
    await once(c, 'connected');
    const busy = once(c, 'error', (e) => e.code === 'BUSY');
    const first = c.chat({ message: 'first, long' });
    const second = c.chat({ message: 'second, refused at first' });
    await busy;
    const [a, b] = await Promise.all([first.done, second.done]);
    assert(a.response.length > 0 && b.response.length > 0, 'both replied');
    c.close();
  },

  // An upload in chunks, checked by SHA-256, downloads byte for byte.
  async upload() {
    const token = await devToken('gus');
    const c = connect({ url: wsUrl, getToken: () => token });
    await once(c, 'connected');
    const bytes = new Uint8Array(150000).map((_, i) => (i * 31 + 7) % 256);
    const seen = [];
    const done = await c.upload(bytes, { name: 'data.bin.pdf', mimeType: 'application/pdf', onProgress: (f) => seen.push(f) });
    assert(done.upload_type === 'complete' && seen[seen.length - 1] === 1, 'complete with progress');
    const r = await fetch(base + done.url, { headers: { Authorization: `Bearer ${token}` } });
    const got = new Uint8Array(await r.arrayBuffer());
    assert(got.length === bytes.length && got.every((b, i) => b === bytes[i]), 'same bytes');
    const ctl = new AbortController();
    ctl.abort();
    let cancelled = false;
    try { await c.upload(bytes, { name: 'x.pdf', signal: ctl.signal }); } catch (e) { cancelled = e.code === 'CANCELLED'; }
    assert(cancelled, 'cancel');
    c.close();
  },

  // Two clients in a room: presence, typing and read receipts.
  async rooms() {
    const a = connect({ url: wsUrl, getToken: () => devToken('hal') });
    const b = connect({ url: wsUrl, getToken: () => devToken('ivy') });
    await Promise.all([once(a, 'connected'), once(b, 'connected')]);
    const joined = await a.join('lobby', { roomType: 'shared' });
    assert(joined.room_id === 'lobby', 'joined');
    const seesIvy = once(a, 'presence', (e) => e.user_id === 'ivy' && e.status === 'joined');
    await b.join('lobby');
    await seesIvy;
    assert(a.rooms.get('lobby').online.has('ivy'), 'ivy online in a\'s view');
    assert(a.rooms.get('lobby').onlineCount === 2, 'two online in a\'s count');
    const typing = once(a, 'typing', (e) => e.user_id === 'ivy' && e.is_typing);
    b.typing('lobby', true);
    await typing;
    assert(a.rooms.get('lobby').typing.has('ivy'), 'typing line');
    const msg = once(b, 'message', (e) => e.message.content === 'hi ivy');
    const sent = a.chat({ message: 'hi ivy', roomId: 'lobby' });
    const ack = await sent.ack;
    await msg;
    const receipt = once(a, 'receipt', (e) => e.user_id === 'ivy');
    b.read(ack.conversation_id, ack.seq);
    const r = await receipt;
    assert(r.seq === ack.seq, 'receipt');
    const left = once(a, 'presence', (e) => e.user_id === 'ivy' && e.status === 'left');
    b.close();
    await left;
    a.close();
  },
};

const run = scenarios[scenario];
if (!run) fail('unknown scenario ' + scenario);
run().then(() => { console.log('PASS ' + scenario); process.exit(0); }, (e) => fail(`${scenario}: ${e.stack || e}`));
