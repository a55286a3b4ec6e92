// confab.js — the JavaScript client for confab's native protocol (confab.v1).
//
// An ES module with no build step and no runtime dependency; browsers and Node >= 20
// (a global WebSocket, or pass the `ws` package's class as `WebSocket`). The server
// serves this file at GET /confab.js.
//
//   import { connect } from '/confab.js';
//   const client = connect({ url: 'wss://chat.example/v1/ws', getToken: async () => jwt });
//   const reply = client.chat({ message: 'Hello!' });
//   for await (const ev of reply) if (ev.type === 'token') out.textContent += ev.token;
//
// What it does for you: the token travels in the subprotocol (never the URL) and is
// refreshed on the open socket before it expires and on TOKEN_EXPIRED; reconnects with
// capped exponential backoff and full jitter (sooner when the browser comes back online
// or to the foreground); re-subscribes every conversation and room with after_seq = the
// last seq it saw, so a reply in flight resumes mid-stream with no gap and no duplicate;
// answers are matched to requests by id; sends made while disconnected wait in an outbox
// (memory, or a Storage such as localStorage) and go out with their original id, so the
// server's idempotency makes them exactly-once; rooms (presence, typing, receipts,
// unread counts); chunked uploads with SHA-256 (WebCrypto), BUSY retried, cancellable.

const PROTOCOL = 'confab.v1';

/** @typedef {{code: string, error: string, id?: string, retry_after?: number}} ServerError */

/** An `error` event from the server as a throwable. */
export class ConfabError extends Error {
  /** @param {ServerError} e */
  constructor(e) {
    super(`${e.code}: ${e.error}`);
    this.name = 'ConfabError';
    /** @type {string} */ this.code = e.code;
    /** @type {number | undefined} */ this.retryAfter = e.retry_after;
    /** @type {string | undefined} */ this.id = e.id;
  }
}

/** A tiny event emitter (EventTarget is not in every runtime this targets). */
class Emitter {
  constructor() { /** @type {Map<string, Set<Function>>} */ this._handlers = new Map(); }
  /** @param {string} type @param {Function} fn @returns {() => void} unsubscribe */
  on(type, fn) {
    if (!this._handlers.has(type)) this._handlers.set(type, new Set());
    this._handlers.get(type).add(fn);
    return () => this.off(type, fn);
  }
  /** @param {string} type @param {Function} fn */
  off(type, fn) { this._handlers.get(type)?.delete(fn); }
  /** @param {string} type @param {any} value */
  emit(type, value) {
    for (const fn of [...(this._handlers.get(type) || [])]) {
      try { fn(value); } catch (e) { queueMicrotask(() => { throw e; }); }
    }
  }
}

let idCounter = 0;
/** A client id for a request: unique per page load, stable across resends. */
export function newId(prefix = 'c') {
  idCounter += 1;
  const rnd = Math.random().toString(36).slice(2, 10);
  return `${prefix}${Date.now().toString(36)}${rnd}${idCounter.toString(36)}`;
}

/** Seconds since the epoch when a JWT expires, if it says. */
export function tokenExpiry(token) {
  try {
    const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    const json = JSON.parse(typeof atob === 'function'
      ? atob(part + '==='.slice((part.length + 3) % 4))
      : Buffer.from(part, 'base64').toString('utf8'));
    return typeof json.exp === 'number' ? json.exp : undefined;
  } catch { return undefined; }
}

const B64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';
/** Standard base64 of bytes (no dependency on btoa or Buffer). */
export function base64(bytes) {
  let out = '';
  let i = 0;
  for (; i + 2 < bytes.length; i += 3) {
    const n = (bytes[i] << 16) | (bytes[i + 1] << 8) | bytes[i + 2];
    out += B64[n >> 18] + B64[(n >> 12) & 63] + B64[(n >> 6) & 63] + B64[n & 63];
  }
  if (i < bytes.length) {
    const n = (bytes[i] << 16) | ((bytes[i + 1] || 0) << 8);
    out += B64[n >> 18] + B64[(n >> 12) & 63] + (i + 1 < bytes.length ? B64[(n >> 6) & 63] : '=') + '=';
  }
  return out;
}

async function sha256Hex(bytes) {
  const digest = await globalThis.crypto.subtle.digest('SHA-256', bytes);
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, '0')).join('');
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * One reply of the model to a chat: an async iterator of `progress`, `token` and
 * `complete` events (an `error` ends it by throwing), and callbacks.
 */
export class Reply extends Emitter {
  constructor() {
    super();
    /** @type {number | undefined} */ this.messageId = undefined;
    /** @type {string | undefined} */ this.conversationId = undefined;
    /** The text so far. */ this.text = '';
    /** @type {any} */ this.complete = undefined;
    this._queue = [];
    this._waiters = [];
    this._ended = false;
    /** Resolves with the `complete` event (rejects on an error before it). */
    this.done = new Promise((resolve, reject) => { this._resolve = resolve; this._reject = reject; });
    this.done.catch(() => {});
  }
  _push(ev) {
    if (this._ended) return;
    this.emit(ev.type, ev);
    const w = this._waiters.shift();
    if (w) w.resolve({ value: ev, done: false }); else this._queue.push(ev);
    if (ev.type === 'complete') this._end(null, ev);
  }
  _end(err, complete) {
    if (this._ended) return;
    this._ended = true;
    if (err) { this._reject(err); this.emit('error', err); } else { this.complete = complete; this._resolve(complete); }
    for (const w of this._waiters.splice(0)) {
      if (err) w.reject(err); else w.resolve({ value: undefined, done: true });
    }
    this._error = err;
  }
  [Symbol.asyncIterator]() {
    return {
      next: () => {
        if (this._queue.length) return Promise.resolve({ value: this._queue.shift(), done: false });
        if (this._ended) return this._error ? Promise.reject(this._error) : Promise.resolve({ value: undefined, done: true });
        return new Promise((resolve, reject) => this._waiters.push({ resolve, reject }));
      },
    };
  }
}

/**
 * Connect to confab. Options:
 * - `url`: `ws(s)://host/v1/ws`
 * - `getToken()`: a JWT (sync or async); called at connect, before expiry and on TOKEN_EXPIRED
 * - `WebSocket`: a WebSocket class (default: the global one; in Node 20 pass `ws`)
 * - `storage`: a Storage (e.g. localStorage) to keep the outbox across reloads
 * - `backoff`: `{ minMs = 500, maxMs = 30000 }`
 * - `connectTimeoutMs`: give up on a connection not open by then and retry (10000)
 * @returns {ConfabClient}
 */
export function connect(opts) { return new ConfabClient(opts); }

export class ConfabClient extends Emitter {
  constructor({ url, getToken, WebSocket: WS, storage, backoff = {}, connectTimeoutMs = 10000 } = {}) {
    super();
    if (!url) throw new Error('confab: url is required');
    this.url = url;
    this.getToken = getToken || (() => undefined);
    this.WS = WS || globalThis.WebSocket;
    if (!this.WS) throw new Error('confab: no WebSocket (Node 20: pass the `ws` package as WebSocket)');
    this.storage = storage;
    this.minMs = backoff.minMs ?? 500;
    this.maxMs = backoff.maxMs ?? 30000;
    this.connectTimeoutMs = connectTimeoutMs;
    /** 'connecting' | 'open' | 'closed' */ this.state = 'closed';
    /** @type {any} */ this.user = undefined;
    /** @type {Map<string, {resolve: Function, reject: Function, type: string}>} */ this.pending = new Map();
    /** Conversations followed: id → last seq seen. */ this.subs = new Map();
    /** Rooms joined: id → {conversationId, online: Map, typing: Map, unread, lastSeq, options}. */ this.rooms = new Map();
    /** Replies by assistant message id. */ this.replies = new Map();
    /** Chats waiting for their reply's message id: client id → Reply. */ this.awaiting = new Map();
    /** Replies seen before the ack that claims them (the server flushes a new
     *  conversation's first events just before the ack): message id → events. */ this.orphans = new Map();
    /** Outbox: chats not yet acknowledged, in order. */ this.outbox = [];
    this._loadOutbox();
    this._attempt = 0;
    this._closedByUser = false;
    this._timers = new Set();
    this._typingSent = new Map();
    this._open();
    if (typeof window !== 'undefined' && window.addEventListener) {
      this._online = () => this._reconnectSoon();
      this._visible = () => { if (document.visibilityState === 'visible') this._reconnectSoon(); };
      window.addEventListener('online', this._online);
      document.addEventListener?.('visibilitychange', this._visible);
    }
  }

  // ------------------------------------------------------------ connection

  async _open() {
    if (this._closedByUser) return;
    this._setState('connecting');
    let token;
    try { token = await this.getToken(); } catch (e) { this.emit('error', e); }
    if (this._closedByUser) return;
    const protocols = [PROTOCOL];
    if (token) protocols.push(`bearer.${token}`);
    let ws;
    try { ws = new this.WS(this.url, protocols); } catch (e) { this.emit('error', e); this._scheduleReconnect(); return; }
    this.ws = ws;
    // Some runtimes never report a connection that died before its handshake (Node 20's
    // WebSocket): give up on it after a while and try again.
    const timer = setTimeout(() => {
      if (this.ws === ws && ws.readyState !== 1) {
        try { ws.close(); } catch { /* not open */ }
        this._onClose({ code: 4000, reason: 'connect timeout' }, ws);
      }
    }, this.connectTimeoutMs);
    ws.onopen = () => clearTimeout(timer);
    ws.onmessage = (m) => { if (this.ws === ws) this._onFrame(m.data); };
    ws.onclose = (e) => { clearTimeout(timer); this._onClose(e, ws); };
    ws.onerror = () => {};
    this._token = token;
  }

  _setState(s) { if (this.state !== s) { this.state = s; this.emit('state', s); } }

  _onClose(e, ws) {
    if (ws !== this.ws) return; // an old socket's late close
    this.ws = undefined;
    this._clearTimers();
    for (const [, p] of this.pending) {
      if (p.type !== 'chat') p.reject(new ConfabError({ code: 'DISCONNECTED', error: 'the connection closed' }));
    }
    for (const [id, p] of [...this.pending]) if (p.type !== 'chat') this.pending.delete(id);
    this._setState('closed');
    this.emit('close', { code: e?.code, reason: e?.reason });
    if (!this._closedByUser) this._scheduleReconnect();
  }

  _scheduleReconnect() {
    const cap = Math.min(this.maxMs, this.minMs * 2 ** this._attempt);
    const delay = Math.random() * cap; // full jitter
    this._attempt = Math.min(this._attempt + 1, 30);
    clearTimeout(this._reconnectTimer);
    this._reconnectTimer = setTimeout(() => this._open(), delay);
  }

  _reconnectSoon() {
    if (this.state === 'closed' && !this._closedByUser) {
      clearTimeout(this._reconnectTimer);
      this._attempt = 0;
      this._open();
    }
  }

  _clearTimers() { for (const t of this._timers) clearTimeout(t); this._timers.clear(); }

  _after(ms, fn) { const t = setTimeout(() => { this._timers.delete(t); fn(); }, ms); this._timers.add(t); return t; }

  /** Close for good (no reconnect). */
  close() {
    this._closedByUser = true;
    clearTimeout(this._reconnectTimer);
    this._clearTimers();
    if (typeof window !== 'undefined' && window.removeEventListener) {
      window.removeEventListener('online', this._online);
      document.removeEventListener?.('visibilitychange', this._visible);
    }
    try { this.ws?.close(1000); } catch { /* already closed */ }
  }

  _send(obj) {
    if (this.state !== 'open' || !this.ws) return false;
    this.ws.send(JSON.stringify(obj));
    return true;
  }

  // ------------------------------------------------------------ token refresh

  _scheduleRefresh() {
    clearTimeout(this._refreshTimer);
    const exp = this._token && tokenExpiry(this._token);
    if (!exp) return;
    const left = exp * 1000 - Date.now();
    // Expired: the server says TOKEN_EXPIRED, which asks again (`_onError`).
    if (left <= 0) return;
    // A minute before expiry (or at 80% of a short token's life).
    const at = Math.max(1000, Math.min(left - 60000, left * 0.8));
    this._refreshTimer = this._after(at, () => this._refresh());
  }

  async _refresh() {
    let token;
    try { token = await this.getToken(); } catch (e) { this.emit('error', e); return; }
    const exp = token && tokenExpiry(token);
    // Nothing newer yet (or an expired token, which the server would refuse and close
    // for): keep the current one and ask again later.
    if (!token || token === this._token || (exp && exp * 1000 <= Date.now())) {
      const current = this._token && tokenExpiry(this._token);
      clearTimeout(this._refreshTimer);
      if (current && current * 1000 > Date.now()) this._scheduleRefresh();
      else this._refreshTimer = this._after(2000, () => this._refresh());
      return;
    }
    this._token = token;
    this._send({ type: 'auth', token });
    this._scheduleRefresh();
  }

  // ------------------------------------------------------------ inbound

  _onFrame(data) {
    let ev;
    try { ev = JSON.parse(typeof data === 'string' ? data : data.toString()); } catch { return; }
    this.emit('event', ev);
    switch (ev.type) {
      case 'connected': return this._onConnected(ev);
      case 'auth_success': return this.emit('auth', ev);
      case 'ack': return this._onAck(ev);
      case 'error': return this._onError(ev);
      case 'message_added': return this._onMessage(ev, false);
      case 'message_updated': return this._onMessage(ev, true);
      case 'progress': case 'token': case 'complete': return this._onReplyEvent(ev);
      case 'subscribed': this._seq(ev.conversation_id, ev.last_seq); return this._answer(ev);
      case 'room_joined': return this._onRoomJoined(ev);
      case 'room_left': this._onRoomLeft(ev); return this._answer(ev);
      case 'presence': return this._onPresence(ev);
      case 'presence_list': return this._onPresenceList(ev);
      case 'typing': return this._onTyping(ev);
      case 'receipt': return this.emit('receipt', ev);
      case 'delivery_confirmation': return this.emit('delivery', ev);
      case 'system': return this.emit('system', ev);
      case 'file_upload': return this._answer(ev, true);
      case 'conversation_deleted': this.subs.delete(ev.conversation_id); return this.emit('deleted', ev);
      case 'pong': case 'unsubscribed': return this._answer(ev);
      default: return undefined;
    }
  }

  _answer(ev, keep = false) {
    if (!ev.id) return;
    const p = this.pending.get(ev.id);
    if (!p) return;
    if (!keep) this.pending.delete(ev.id);
    p.resolve(ev);
  }

  _onConnected(ev) {
    this.user = ev.user;
    this._attempt = 0;
    this._setState('open');
    this._scheduleRefresh();
    for (const r of ev.rooms || []) {
      const room = this.rooms.get(r.room_id);
      if (room) room.unread = r.unread;
    }
    this.emit('connected', ev);
    // Resume: every room and conversation from the last seq seen, then the outbox.
    for (const [roomId, room] of this.rooms) {
      const from = room.conversationId ? this._resumeFrom(room.conversationId, room.lastSeq ?? 0) : room.lastSeq ?? 0;
      this._send({ type: 'join_room', room_id: roomId, id: newId('j'), after_seq: from, ...room.options });
    }
    for (const [conv, seq] of this.subs) {
      if ([...this.rooms.values()].some((r) => r.conversationId === conv)) continue;
      this._send({ type: 'subscribe', conversation_id: conv, after_seq: this._resumeFrom(conv, seq), id: newId('s') });
    }
    for (const item of this.outbox) this._sendChat(item);
  }

  /** Where to replay `conv` from: after the last seq seen, or before the oldest reply of
   *  ours still unfinished there (the replay then carries its text so far, or its end). */
  _resumeFrom(conv, seq) {
    let from = seq;
    for (const r of this.replies.values()) {
      if (r.conversationId === conv && r.seq !== undefined && !r.complete) from = Math.min(from, r.seq - 1);
    }
    return Math.max(0, from);
  }

  _seq(conv, seq) {
    if (!conv || typeof seq !== 'number') return;
    const cur = this.subs.get(conv);
    if (cur === undefined || seq > cur) this.subs.set(conv, seq);
    for (const room of this.rooms.values()) {
      if (room.conversationId === conv && (room.lastSeq ?? 0) < seq) room.lastSeq = seq;
    }
  }

  _onAck(ev) {
    this._seq(ev.conversation_id, ev.seq);
    const i = this.outbox.findIndex((o) => o.id === ev.id);
    if (i >= 0) {
      const [item] = this.outbox.splice(i, 1);
      item.state = 'sent';
      this._saveOutbox();
      this.emit('outbox', { id: item.id, state: 'sent', ack: ev });
    }
    const p = this.pending.get(ev.id);
    if (p) { this.pending.delete(ev.id); p.resolve(ev); }
    const reply = this.awaiting.get(ev.id);
    if (reply) {
      reply.conversationId = ev.conversation_id;
      // Its reply may have started before this ack arrived.
      for (const [mid, o] of this.orphans) {
        if (o.conv === ev.conversation_id && mid > ev.message_id) {
          this.orphans.delete(mid);
          this.awaiting.delete(ev.id);
          reply.messageId = mid;
          reply.seq = o.seq;
          this.replies.set(mid, reply);
          for (const e of o.events) this._feed(reply, e);
          break;
        }
      }
    }
  }

  _onError(ev) {
    const err = new ConfabError(ev);
    this.emit('error', err);
    if (ev.code === 'TOKEN_EXPIRED') { this._refresh(); }
    if (!ev.id) return;
    const item = this.outbox.find((o) => o.id === ev.id);
    // BUSY and RATE_LIMIT: the chat stays in the outbox and is resent after retry_after.
    if (item && (ev.code === 'BUSY' || ev.code === 'RATE_LIMIT')) {
      this._after(Math.max(250, (ev.retry_after || 1) * 1000), () => this._sendChat(item));
      return;
    }
    if (item) {
      this.outbox.splice(this.outbox.indexOf(item), 1);
      item.state = 'failed';
      this._saveOutbox();
      this.emit('outbox', { id: item.id, state: 'failed', error: err });
    }
    const p = this.pending.get(ev.id);
    if (p) { this.pending.delete(ev.id); p.reject(err); }
    const reply = this.awaiting.get(ev.id);
    if (reply) { this.awaiting.delete(ev.id); reply._end(err); }
  }

  _onMessage(ev, updated) {
    const m = ev.message;
    this._seq(ev.conversation_id, m.seq);
    if (m.role === 'assistant') {
      let reply = this.replies.get(m.id);
      if (!reply) {
        // A reply to one of our chats: the streaming assistant message follows its ack.
        for (const [cid, r] of this.awaiting) {
          if (r.conversationId === ev.conversation_id && r.messageId === undefined) {
            reply = r; this.awaiting.delete(cid); break;
          }
        }
        if (reply) { reply.messageId = m.id; reply.seq = m.seq; this.replies.set(m.id, reply); }
        else if (m.status === 'streaming' && !ev.replayed) {
          // Perhaps ours, its ack still on the way; or another device's.
          if (this.orphans.size >= 32) this.orphans.delete(this.orphans.keys().next().value);
          this.orphans.set(m.id, { conv: ev.conversation_id, seq: m.seq, events: [] });
        }
      }
      if (reply && ev.replayed && m.status === 'streaming' && m.content.length > reply.text.length
          && m.content.startsWith(reply.text)) {
        // Resumed mid-stream: the replay carries the text we missed while away.
        const missed = m.content.slice(reply.text.length);
        reply.text = m.content;
        reply._push({ type: 'token', conversation_id: ev.conversation_id, message_id: m.id, token: missed, resumed: true });
      }
      if (reply && m.status !== 'streaming' && ev.replayed && !reply.complete) {
        // Ended while we were away (no `complete` will come): finish from the stored row,
        // which is the truth (a server that stopped mid-reply keeps what it had saved).
        if (m.content.startsWith(reply.text) && m.content.length > reply.text.length) {
          reply._push({ type: 'token', conversation_id: ev.conversation_id, message_id: m.id, token: m.content.slice(reply.text.length), resumed: true });
        }
        reply.text = m.content;
        this.replies.delete(m.id);
        reply._push({ type: 'complete', conversation_id: ev.conversation_id, message_id: m.id, response: m.content, finish_reason: m.meta?.finish_reason || m.status, metadata: m.meta || {}, resumed: true });
      }
    }
    this.emit(updated ? 'message_updated' : 'message', ev);
  }

  _onReplyEvent(ev) {
    const orphan = this.orphans.get(ev.message_id);
    if (orphan) {
      if (ev.type === 'complete') this.orphans.delete(ev.message_id);
      else if (orphan.events.length < 10000) orphan.events.push(ev);
    }
    const reply = this.replies.get(ev.message_id);
    if (reply) this._feed(reply, ev);
    this.emit(ev.type, ev);
  }

  _feed(reply, ev) {
    if (ev.type === 'token') reply.text += ev.token;
    if (ev.type === 'complete') {
      reply.text = ev.response;
      this.replies.delete(ev.message_id);
    }
    reply._push(ev);
  }

  // ------------------------------------------------------------ requests

  /** Send a message and wait for the answer with the same id (rejects on `error`). */
  request(msg, type = msg.type) {
    const id = msg.id || newId('r');
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject, type });
      if (!this._send({ ...msg, id })) {
        this.pending.delete(id);
        reject(new ConfabError({ code: 'DISCONNECTED', error: 'not connected' }));
      }
    });
  }

  // ------------------------------------------------------------ chat

  /**
   * Send a chat. Returns its `Reply` (iterate it, or `.on('token', …)`), with `.ack` a
   * promise of the server's ack. Made while disconnected, it waits in the outbox and goes
   * out on reconnect with the same id (exactly once).
   */
  chat({ message, conversationId, roomId, agent, model, ai, systemPrompt, temperature, maxTokens, id } = {}) {
    const item = {
      id: id || newId('m'),
      state: 'pending',
      msg: {
        type: 'chat', message, conversation_id: conversationId, room_id: roomId, agent, model, ai,
        system_prompt: systemPrompt, temperature, max_tokens: maxTokens,
      },
    };
    const reply = new Reply();
    reply.conversationId = conversationId;
    const wantsReply = ai ?? !roomId;
    if (wantsReply) this.awaiting.set(item.id, reply);
    reply.ack = new Promise((resolve, reject) => this.pending.set(item.id, { resolve, reject, type: 'chat' }));
    reply.ack.catch(() => {});
    reply.id = item.id;
    this.outbox.push(item);
    this._saveOutbox();
    this.emit('outbox', { id: item.id, state: 'pending' });
    this._sendChat(item);
    if (!wantsReply) reply.ack.then(() => reply._end(null, undefined), (e) => reply._end(e));
    return reply;
  }

  _sendChat(item) {
    if (!this.outbox.includes(item)) return;
    this._send({ ...item.msg, id: item.id });
  }

  _saveOutbox() {
    if (!this.storage) return;
    try { this.storage.setItem('confab.outbox', JSON.stringify(this.outbox.map(({ id, msg }) => ({ id, msg })))); } catch { /* full */ }
  }

  _loadOutbox() {
    if (!this.storage) return;
    try {
      const saved = JSON.parse(this.storage.getItem('confab.outbox') || '[]');
      for (const { id, msg } of saved) this.outbox.push({ id, msg, state: 'pending' });
    } catch { /* corrupt: start empty */ }
  }

  /** Stop the reply being made in a conversation (from any device). */
  stop(conversationId) { return this._send({ type: 'stop', conversation_id: conversationId }); }

  /** Follow a conversation's live events (and get what was missed since `afterSeq`). */
  subscribe(conversationId, { afterSeq } = {}) {
    const seq = afterSeq ?? this.subs.get(conversationId) ?? 0;
    this.subs.set(conversationId, seq);
    return this.request({ type: 'subscribe', conversation_id: conversationId, after_seq: seq });
  }

  unsubscribe(conversationId) {
    this.subs.delete(conversationId);
    return this.request({ type: 'unsubscribe', conversation_id: conversationId });
  }

  /** Move your read marker (others get a `receipt`). */
  read(conversationId, seq) { return this._send({ type: 'read', conversation_id: conversationId, seq }); }

  // ------------------------------------------------------------ rooms

  /** Join (or create) a room; resolves with `room_joined`. */
  async join(roomId, { roomName, roomType } = {}) {
    const options = {};
    if (roomName) options.room_name = roomName;
    if (roomType) options.room_type = roomType;
    const room = this.rooms.get(roomId) || { online: new Map(), typing: new Map(), unread: 0, options };
    this.rooms.set(roomId, room);
    const ev = await this.request({ type: 'join_room', room_id: roomId, after_seq: room.lastSeq, ...options }, 'join_room');
    return ev;
  }

  _onRoomJoined(ev) {
    const room = this.rooms.get(ev.room_id) || { online: new Map(), typing: new Map(), unread: 0, options: {} };
    room.conversationId = ev.conversation_id;
    room.name = ev.room_name;
    room.type = ev.room_type;
    room.online = new Map(ev.participants.map((p) => [p.user_id, p.username]));
    // A large room lists a sample of its users online; the count is all of them.
    room.onlineCount = ev.participant_count ?? ev.participants.length;
    if (room.lastSeq === undefined) room.lastSeq = 0;
    this.rooms.set(ev.room_id, room);
    if (!this.subs.has(ev.conversation_id)) this.subs.set(ev.conversation_id, room.lastSeq);
    this.emit('room', { room_id: ev.room_id, room });
    this._answer(ev);
  }

  async leave(roomId) {
    const ev = await this.request({ type: 'leave_room', room_id: roomId });
    return ev;
  }

  _onRoomLeft(ev) {
    const room = this.rooms.get(ev.room_id);
    if (room) { this.subs.delete(room.conversationId); this.rooms.delete(ev.room_id); }
    this.emit('room_left', ev);
  }

  _onPresence(ev) {
    const room = this.rooms.get(ev.room_id);
    if (room) {
      const had = room.online.has(ev.user_id);
      if (ev.status === 'joined') {
        room.online.set(ev.user_id, ev.username);
        if (!had) room.onlineCount = (room.onlineCount ?? 0) + 1;
      } else {
        room.online.delete(ev.user_id);
        room.onlineCount = Math.max(room.online.size, (room.onlineCount ?? 1) - 1);
      }
    }
    this.emit('presence', ev);
  }

  _onPresenceList(ev) {
    const room = this.rooms.get(ev.room_id);
    if (room) {
      room.online = new Map(ev.online.map((p) => [p.user_id, p.username]));
      room.onlineCount = ev.online_count ?? ev.online.length;
    }
    this.emit('presence', ev);
  }

  _onTyping(ev) {
    const room = ev.room_id && this.rooms.get(ev.room_id);
    if (room) {
      clearTimeout(room.typing.get(ev.user_id)?.timer);
      if (ev.is_typing) {
        // Expires by itself if the server's false is lost.
        const timer = setTimeout(() => { room.typing.delete(ev.user_id); this.emit('typing', { ...ev, is_typing: false, expired: true }); }, 8000);
        room.typing.set(ev.user_id, { username: ev.username, timer });
      } else room.typing.delete(ev.user_id);
    }
    this.emit('typing', ev);
  }

  /** Say you are typing in a room (throttled: at most every 2 s; `false` ends it). */
  typing(roomId, isTyping = true) {
    const now = Date.now();
    const last = this._typingSent.get(roomId) || 0;
    if (isTyping && now - last < 2000) return false;
    this._typingSent.set(roomId, isTyping ? now : 0);
    return this._send({ type: 'typing', room_id: roomId, is_typing: isTyping });
  }

  /** Unread counts by room, from `connected` and what arrived since. */
  unread() { return Object.fromEntries([...this.rooms].map(([id, r]) => [id, r.unread || 0])); }

  // ------------------------------------------------------------ uploads

  /**
   * Upload a file (Blob/File, ArrayBuffer or Uint8Array) in checksummed chunks; resolves
   * with the `complete` event (`url`, `sha256`). Options: `name`, `mimeType`,
   * `conversationId` | `roomId`, `onProgress(fraction)`, `signal` (AbortSignal).
   */
  async upload(data, { name, mimeType, conversationId, roomId, onProgress, signal } = {}) {
    let bytes;
    if (data instanceof Uint8Array) bytes = data;
    else if (data instanceof ArrayBuffer) bytes = new Uint8Array(data);
    else { bytes = new Uint8Array(await data.arrayBuffer()); name = name || data.name; mimeType = mimeType || data.type; }
    const checksum = await sha256Hex(bytes);
    const check = () => { if (signal?.aborted) throw new ConfabError({ code: 'CANCELLED', error: 'upload cancelled' }); };
    const ask = async (msg) => {
      for (let attempt = 0; ; attempt += 1) {
        check();
        try {
          return await this.request({ ...msg, id: newId('u') }, 'file_upload');
        } catch (e) {
          if (e.code === 'BUSY' && attempt < 8) { await sleep(Math.min(8000, (e.retryAfter || 0.5) * 1000 * 2 ** attempt)); continue; }
          throw e;
        }
      }
    };
    const init = await ask({
      type: 'file_upload', upload_type: 'init', file_name: name || 'file', file_size: bytes.length,
      mime_type: mimeType || 'application/octet-stream', conversation_id: conversationId, room_id: roomId,
    });
    const max = init.max_chunk_bytes || 46080;
    const total = Math.max(1, Math.ceil(bytes.length / max));
    for (let i = 0; i < total; i += 1) {
      const chunk = bytes.subarray(i * max, Math.min(bytes.length, (i + 1) * max));
      await ask({ type: 'file_upload', upload_type: 'chunk', file_id: init.file_id, chunk_index: i, total_chunks: total, chunk_data: base64(chunk) });
      onProgress?.((i + 1) / total);
    }
    return ask({ type: 'file_upload', upload_type: 'finalize', file_id: init.file_id, checksum });
  }
}
