// Types for confab.js (the library itself is plain JavaScript with JSDoc).

export interface ServerError {
  code: string;
  error: string;
  id?: string;
  retry_after?: number;
}

export class ConfabError extends Error {
  code: string;
  retryAfter?: number;
  id?: string;
}

export interface ConnectOptions {
  /** ws(s)://host/v1/ws */
  url: string;
  /** A JWT; called at connect, before it expires and after TOKEN_EXPIRED. */
  getToken?: () => string | undefined | Promise<string | undefined>;
  /** A WebSocket class (default: the global one; Node 20: the `ws` package). */
  WebSocket?: any;
  /** Keeps the outbox across reloads (e.g. localStorage). */
  storage?: { getItem(k: string): string | null; setItem(k: string, v: string): void };
  backoff?: { minMs?: number; maxMs?: number };
  /** A connection not open by then is given up and retried (default 10000). */
  connectTimeoutMs?: number;
}

export interface ChatOptions {
  message: string;
  conversationId?: string;
  roomId?: string;
  agent?: string;
  model?: string;
  /** An AI reply (default: yes outside rooms, no in rooms). */
  ai?: boolean;
  systemPrompt?: string;
  temperature?: number;
  maxTokens?: number;
  /** The idempotency key (default: a fresh id). */
  id?: string;
}

export interface ReplyEvent {
  type: 'progress' | 'token' | 'complete';
  conversation_id: string;
  message_id: number;
  /** token */
  token?: string;
  index?: number;
  /** progress */
  step?: string;
  message?: string;
  percent?: number;
  /** complete */
  response?: string;
  finish_reason?: string;
  metadata?: Record<string, unknown>;
  /** Text recovered from the server after a reconnect (not a live token). */
  resumed?: boolean;
}

export class Reply implements AsyncIterable<ReplyEvent> {
  /** The chat's client id. */
  id: string;
  /** Resolves with the server's ack (after the message is committed). */
  ack: Promise<any>;
  /** Resolves with the `complete` event. */
  done: Promise<ReplyEvent>;
  conversationId?: string;
  messageId?: number;
  /** The reply's text so far. */
  text: string;
  complete?: ReplyEvent;
  on(type: 'progress' | 'token' | 'complete' | 'error', fn: (ev: any) => void): () => void;
  [Symbol.asyncIterator](): AsyncIterator<ReplyEvent>;
}

export interface Room {
  conversationId: string;
  name: string;
  type: string;
  /** user id → name: everyone online, or a sample of a room past the server's
   * `rooms.presence_max_users` (whose joins and leaves are not announced one by one) */
  online: Map<string, string>;
  /** users online in the room (as of the last `room_joined`, `presence` or `presence_list`) */
  onlineCount: number;
  /** user id → {username} */
  typing: Map<string, { username: string }>;
  unread: number;
  lastSeq?: number;
}

export interface UploadOptions {
  name?: string;
  mimeType?: string;
  conversationId?: string;
  roomId?: string;
  onProgress?: (fraction: number) => void;
  signal?: AbortSignal;
}

export type ClientEvent =
  | 'state' | 'connected' | 'close' | 'error' | 'auth' | 'event' | 'message' | 'message_updated'
  | 'progress' | 'token' | 'complete' | 'room' | 'room_left' | 'presence' | 'typing' | 'receipt'
  | 'delivery' | 'system' | 'deleted' | 'outbox';

export class ConfabClient {
  state: 'connecting' | 'open' | 'closed';
  user?: { id: string; name: string; email?: string };
  rooms: Map<string, Room>;
  /** Chats not yet acknowledged: state 'pending' until the ack ('sent'), or 'failed'. */
  outbox: { id: string; state: 'pending' | 'sent' | 'failed'; msg: any }[];
  on(type: ClientEvent, fn: (ev: any) => void): () => void;
  off(type: ClientEvent, fn: (ev: any) => void): void;
  request(msg: Record<string, unknown>): Promise<any>;
  chat(opts: ChatOptions): Reply;
  stop(conversationId: string): boolean;
  subscribe(conversationId: string, opts?: { afterSeq?: number }): Promise<any>;
  unsubscribe(conversationId: string): Promise<any>;
  read(conversationId: string, seq: number): boolean;
  join(roomId: string, opts?: { roomName?: string; roomType?: 'private' | 'shared' | 'group' }): Promise<any>;
  leave(roomId: string): Promise<any>;
  typing(roomId: string, isTyping?: boolean): boolean;
  unread(): Record<string, number>;
  upload(data: Blob | ArrayBuffer | Uint8Array, opts?: UploadOptions): Promise<any>;
  close(): void;
}

export function connect(opts: ConnectOptions): ConfabClient;
export function newId(prefix?: string): string;
export function tokenExpiry(token: string): number | undefined;
export function base64(bytes: Uint8Array): string;
