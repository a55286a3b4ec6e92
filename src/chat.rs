//! Conversations on a native connection: `chat`, `stop`, `subscribe`, `unsubscribe`,
//! `read`, `typing` (rooms are in `rooms.rs`).
//!
//! Runs on the shard. Writes go to the store writer with `try_write` and come back, after
//! COMMIT, as a `ShardMsg::Run` for the asking connection (ack, confirmation) and as hub
//! publications for every subscriber. Reads (replay) go to the read pool the same way.
//!
//! **Tentative subscriptions.** A connection that writes to (or subscribes to) a
//! conversation is registered for its live events *before* the store is asked, in state
//! `Sub::Pending`: events buffer and are delivered only once the store confirmed access
//! (or dropped with the subscription when it refused). Registering first is what makes
//! the fan-out race-free: the hub knows this shard wants the conversation before any
//! event about the new message can be published.

use std::collections::HashMap;
use std::sync::Arc;

use rusqlite::OptionalExtension;

use crate::app::{AppMsg, Shard, ShardExt};
use crate::auth::User;
use crate::generation::Generation;
use crate::net::{ConnId, MayBlock, ShardMsg};
use crate::protocol::{now_rfc3339, ChatRequest, ClientMsg, ErrorCode, Event, MessageView};
use crate::server::ServerCtx;
use crate::session::{connected_event, send_error, send_error_retry};
use crate::session::{AutoJoin, Sub};
use crate::store::read::MessageRow;
use crate::store::writer::{self, ChatInput};
use crate::store::{StoreError, WriteJob};
use crate::topic::{topic_event, topic_item, TopicKind};

pub fn dispatch(
    shard: &mut Shard,
    slot: usize,
    user: &Arc<User>,
    id: Option<String>,
    msg: ClientMsg,
) {
    match msg {
        ClientMsg::Chat(req) => chat(shard, slot, user, id, req),
        ClientMsg::Stop { conversation_id } => stop(shard, slot, user, id, &conversation_id),
        ClientMsg::Subscribe {
            conversation_id,
            after_seq,
        } => subscribe(shard, slot, user, id, Arc::from(conversation_id), after_seq),
        ClientMsg::Unsubscribe { conversation_id } => {
            unsubscribe(shard, slot, id, &conversation_id)
        }
        ClientMsg::Read {
            conversation_id,
            seq,
        } => read(shard, slot, user, id, conversation_id, seq),
        ClientMsg::Typing {
            room_id,
            conversation_id,
            is_typing,
        } => typing(shard, slot, id, room_id, conversation_id, is_typing),
        ClientMsg::JoinRoom {
            room_id,
            room_name,
            room_type,
            after_seq,
        } => crate::rooms::join(
            shard,
            slot,
            user,
            id,
            AutoJoin {
                room_id,
                room_type,
                room_name,
            },
            after_seq,
        ),
        ClientMsg::LeaveRoom { room_id } => crate::rooms::leave(shard, slot, user, id, &room_id),
        ClientMsg::FileUpload(up) => crate::uploads::on_message(shard, slot, user, id, up),
        ClientMsg::Auth { .. } | ClientMsg::Ping => {}
    }
}

/// A new, unguessable conversation id.
pub fn new_conversation_id() -> String {
    random_id("c_")
}

/// `prefix` followed by 96 random bits in hex: unguessable ids for conversations and files.
pub fn random_id(prefix: &str) -> String {
    let mut b = [0u8; 12];
    if getrandom::fill(&mut b).is_err() {
        // No OS randomness: fall back to time and a counter (still unique per process).
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        b[..8].copy_from_slice(&(crate::protocol::now_ms() as u64).to_le_bytes());
        b[8..].copy_from_slice(&(n as u32).to_le_bytes());
    }
    format!("{prefix}{}", crate::protocol::hex(&b))
}

// ---------------------------------------------------------------- subscriptions

/// Register `slot` for `conv`'s live events, buffering until confirmed.
/// Returns false when it was already subscribed (live or pending).
pub fn subscribe_pending(shard: &mut Shard, slot: usize, conv: &Arc<str>) -> bool {
    let fresh = {
        let Some(ws) = shard.session_mut(slot) else {
            return false;
        };
        if ws.subs.contains_key(conv) {
            false
        } else {
            ws.subs.insert(
                conv.clone(),
                Sub::Pending {
                    buffered: Vec::new(),
                },
            );
            true
        }
    };
    if fresh {
        shard.subscribe(conv, slot);
    }
    fresh
}

/// The store confirmed access: deliver what buffered, go live.
pub fn confirm_subscription(shard: &mut Shard, slot: usize, conv: &Arc<str>) {
    let buffered = {
        let Some(ws) = shard.session_mut(slot) else {
            return;
        };
        match ws.subs.get_mut(conv) {
            Some(Sub::Pending { buffered }) => {
                let b = std::mem::take(buffered);
                ws.subs.insert(conv.clone(), Sub::live());
                b
            }
            Some(Sub::Live { .. }) => return,
            None => {
                ws.subs.insert(conv.clone(), Sub::live());
                Vec::new()
            }
        }
    };
    if buffered.is_empty() {
        // Might not have been registered (e.g. a conversation created elsewhere).
        shard.subscribe(conv, slot);
    }
    let codec = crate::app::codec_of(shard, slot);
    for ev in buffered {
        shard.queue(slot, topic_item(&ev, codec));
    }
}

/// The store refused: forget a pending subscription (and what it buffered).
pub fn drop_pending(shard: &mut Shard, slot: usize, conv: &str) {
    let was_pending = {
        let Some(ws) = shard.session_mut(slot) else {
            return;
        };
        if matches!(ws.subs.get(conv), Some(Sub::Pending { .. })) {
            ws.subs.remove(conv);
            true
        } else {
            false
        }
    };
    if was_pending {
        shard.unsubscribe(conv, slot);
    }
}

/// Run `f` on the connection's shard (from any thread that may block).
pub fn run_on(ctx: &ServerCtx, conn: ConnId, f: impl FnOnce(&mut Shard, usize) + Send + 'static) {
    ctx.net.shards.send(
        MayBlock::worker(),
        conn.shard as usize,
        ShardMsg::App(AppMsg::Run(conn, Box::new(f))),
    );
}

/// The conversation of `room` as joined on this connection; else `FORBIDDEN` is sent
/// (answering `id`) and `None` returned.
pub fn joined_room(
    shard: &mut Shard,
    slot: usize,
    room: &str,
    id: &Option<String>,
) -> Option<Arc<str>> {
    let joined = shard
        .session_mut(slot)
        .and_then(|ws| ws.rooms.get(room).cloned());
    if joined.is_none() {
        send_error(
            shard,
            slot,
            ErrorCode::Forbidden,
            &format!("join room {room} on this connection first (join_room)"),
            id.clone(),
        );
    }
    joined
}

// ---------------------------------------------------------------- chat

fn chat(shard: &mut Shard, slot: usize, user: &Arc<User>, id: Option<String>, req: ChatRequest) {
    let ctx = shard.app().clone();
    if req.message.trim().is_empty() {
        return send_error(shard, slot, ErrorCode::EmptyMessage, "message is empty", id);
    }
    if req.message.len() > ctx.cfg.ws.max_message_bytes {
        return send_error(
            shard,
            slot,
            ErrorCode::MessageTooLarge,
            "message too large",
            id,
        );
    }
    let Some(conn_id) = shard.conn_id(slot) else {
        return;
    };

    // Which conversation: given, the joined room's, or a new one.
    let (conv, create): (Arc<str>, bool) = match (&req.conversation_id, &req.room_id) {
        (Some(c), _) => (Arc::from(c.as_str()), false),
        (None, Some(room)) => match joined_room(shard, slot, room, &id) {
            Some(conv) => (conv, false),
            None => return,
        },
        (None, None) => (Arc::from(new_conversation_id()), true),
    };
    // Outside rooms a reply is the point; in a room only when asked, or when the room was
    // created with `ai: true`.
    let ai_room = match &req.room_id {
        Some(r) => shard
            .session_mut(slot)
            .is_some_and(|ws| ws.ai_rooms.iter().any(|a| **a == **r)),
        None => false,
    };
    let wants_ai = req.ai.unwrap_or(req.room_id.is_none() || ai_room);
    let plan = if wants_ai {
        match crate::llm::plan(&ctx, &req) {
            Ok(p) => Some(p),
            Err(msg) => return send_error(shard, slot, ErrorCode::BadRequest, &msg, id),
        }
    } else {
        None
    };
    let reservation = if plan.is_some() {
        match ctx.llm.try_reserve() {
            Some(r) => Some(r),
            None => {
                return send_error_retry(
                    shard,
                    slot,
                    ErrorCode::Busy,
                    "the model is busy: too many replies in progress",
                    id,
                    1.0,
                )
            }
        }
    } else {
        None
    };

    // Register for live events first (see the module docs). A new conversation is
    // pending too, so that a refusal (BUSY, a failed commit) forgets it like any other.
    subscribe_pending(shard, slot, &conv);

    let input = ChatInput {
        user_id: user.id.clone(),
        user_name: user.name.clone(),
        client_id: id.clone(),
        conversation_id: conv.to_string(),
        create,
        room_id: req.room_id.clone(),
        text: req.message,
        assistant: plan.as_ref().map(|p| p.agent.name.clone()),
        is_admin: user.admin,
    };
    let id_fail = id.clone();
    let id_busy = id.clone();
    let conv_fail = conv.clone();
    let reservation = parking_lot::Mutex::new(reservation);
    let user = user.clone();
    let job = WriteJob {
        enqueued: std::time::Instant::now(),
        op: Box::new(move |conn, state| {
            let out = writer::append_chat(conn, state, &input)?;
            Ok(Box::new(move |ctx: &ServerCtx| {
                after_chat(ctx, conn_id, id, out, plan, reservation.into_inner(), &user)
            }))
        }),
        on_fail: Box::new(move |ctx: &ServerCtx, e: &StoreError| {
            let (code, msg) = e.client_error();
            ctx.metrics.error(code);
            run_on(ctx, conn_id, move |shard, slot| {
                drop_pending(shard, slot, &conv_fail);
                shard.send(slot, &Event::error(code, msg, id_fail));
            });
        }),
    };
    if ctx.store.try_write(job).is_err() {
        // The job (and with it the reservation) was dropped.
        drop_pending(shard, slot, &conv);
        send_error_retry(
            shard,
            slot,
            ErrorCode::Busy,
            "the store is busy",
            id_busy,
            0.5,
        );
    }
}

/// After the user's message is committed: ack, fan-out, and start the reply.
fn after_chat(
    ctx: &ServerCtx,
    conn: ConnId,
    id: Option<String>,
    out: writer::ChatOutcome,
    plan: Option<crate::llm::Plan>,
    reservation: Option<crate::llm::Reservation>,
    user: &Arc<User>,
) {
    let conv: Arc<str> = Arc::from(out.conversation_id.as_str());
    let ack = Event::Ack {
        id: id.clone(),
        conversation_id: out.conversation_id.clone(),
        message_id: out.user_msg.id,
        seq: out.user_msg.seq,
        timestamp: crate::protocol::rfc3339_ms(out.user_msg.created_at),
        duplicate: out.duplicate.then_some(true),
    };
    let c2 = conv.clone();
    run_on(ctx, conn, move |shard, slot| {
        confirm_subscription(shard, slot, &c2);
        shard.send(slot, &ack);
    });
    if out.duplicate {
        return; // the original already fanned out and started its reply
    }
    let added = Event::MessageAdded {
        conversation_id: out.conversation_id.clone(),
        room_id: out.room_id.clone(),
        message: out.user_msg.view(),
        replayed: None,
    };
    let mut ev = topic_event(
        &conv,
        TopicKind::Added {
            seq: out.user_msg.seq,
        },
        &added,
    );
    ev.exclude = Some(conn);
    let recipients = ctx.net.publish(MayBlock::worker(), ev);
    if out.room_id.is_some() {
        let _ = recipients;
        let n = ctx.net.topics.subscribers(&conv).saturating_sub(1);
        let dc = Event::DeliveryConfirmation {
            id,
            message_id: out.user_msg.id,
            status: "delivered",
            recipients: n as u64,
            timestamp: now_rfc3339(),
        };
        ctx.send_event(MayBlock::worker(), conn, &dc);
    }
    if let (Some(asst), Some(plan), Some(res)) = (out.assistant, plan, reservation) {
        let gen = Generation::new(conv.clone(), asst.id, asst.seq, user.id.clone());
        ctx.hub.generations.insert(gen.clone());
        let added = Event::MessageAdded {
            conversation_id: out.conversation_id.clone(),
            room_id: out.room_id.clone(),
            message: asst.view(),
            replayed: None,
        };
        ctx.net.publish(
            MayBlock::worker(),
            topic_event(&conv, TopicKind::Added { seq: asst.seq }, &added),
        );
        crate::llm::start(
            ctx,
            crate::llm::GenRequest {
                gen,
                plan,
                room_id: out.room_id.clone(),
                user_text: out.user_msg.content,
                client_id: None,
            },
            res,
        );
    }
}

fn stop(shard: &mut Shard, slot: usize, user: &Arc<User>, id: Option<String>, conv: &str) {
    let n = shard
        .app()
        .hub
        .generations
        .cancel(conv, &user.id, user.admin);
    if n == 0 {
        send_error(
            shard,
            slot,
            ErrorCode::NotFound,
            "no reply of yours is being generated in this conversation",
            id,
        );
    }
    // The answer is the reply's `complete` with finish_reason "cancelled".
}

// ---------------------------------------------------------------- subscribe / replay

/// What a replay held for a message, to filter live events that buffered meanwhile.
#[derive(Debug, Clone, Copy)]
enum Held {
    Final,
    Streaming { tokens: u64 },
}

pub struct Replay {
    pub rows: Vec<MessageRow>,
    pub more: bool,
    pub last_seq: i64,
    /// In-flight replies: message id → (content so far, tokens so far).
    pub snapshots: HashMap<i64, (String, u64)>,
    pub room_id: Option<String>,
}

/// Subscribe with replay. `then` runs on the shard after `subscribed` (rooms use it).
pub fn subscribe(
    shard: &mut Shard,
    slot: usize,
    user: &Arc<User>,
    id: Option<String>,
    conv: Arc<str>,
    after_seq: i64,
) {
    let Some(conn_id) = shard.conn_id(slot) else {
        return;
    };
    {
        let Some(ws) = shard.session_mut(slot) else {
            return;
        };
        if let Some(Sub::Pending { .. }) = ws.subs.get(&conv) {
            return send_error(
                shard,
                slot,
                ErrorCode::BadRequest,
                "a subscribe to this conversation is already in progress",
                id,
            );
        }
        // Re-subscribing replays again from the given seq.
        ws.subs.insert(
            conv.clone(),
            Sub::Pending {
                buffered: Vec::new(),
            },
        );
    }
    shard.subscribe(&conv, slot);
    let user = user.clone();
    let replay_max = shard.app().cfg.store.replay_max;
    let conv2 = conv.clone();
    let id2 = id.clone();
    let job: crate::store::ReadJob = Box::new(move |db, ctx| {
        let result = (|| -> Result<Replay, StoreError> {
            let a = writer::conv_access(db, &conv2, &user.id)?;
            if !a.is_member && !user.admin {
                return Err(StoreError::refused(
                    ErrorCode::Forbidden,
                    "you are not a participant of this conversation",
                ));
            }
            load_replay(db, ctx, &conv2, after_seq, replay_max, a.room_id)
        })();
        run_on(ctx, conn_id, move |shard, slot| match result {
            Ok(r) => finish_replay(shard, slot, &conv2, r, id2),
            Err(e) => {
                let (code, msg) = e.client_error();
                drop_pending(shard, slot, &conv2);
                send_error(shard, slot, code, &msg, id2);
            }
        });
    });
    if shard.app().store.try_read(job).is_err() {
        drop_pending(shard, slot, &conv);
        send_error_retry(shard, slot, ErrorCode::Busy, "the store is busy", id, 0.5);
    }
}

/// Read what a subscriber missed. Generation snapshots are taken BEFORE the rows are
/// read (see `generation.rs` for why that order gives no gap and no duplicate).
pub fn load_replay(
    db: &rusqlite::Connection,
    ctx: &ServerCtx,
    conv: &str,
    after_seq: i64,
    limit: u32,
    room_id: Option<String>,
) -> Result<Replay, StoreError> {
    let mut snapshots = HashMap::new();
    for g in ctx.hub.generations.in_conversation(conv) {
        let st = g.state.lock();
        snapshots.insert(g.message_id, (st.content.clone(), st.tokens));
    }
    let (mut rows, more) = crate::store::read::replay(db, conv, after_seq, limit)?;
    let last_seq = crate::store::read::last_seq(db, conv)?;
    // A reply in flight that the client already "has" (seq <= after_seq) is replayed too:
    // the client holds only part of it.
    for mid in snapshots.keys() {
        if !rows.iter().any(|r| r.id == *mid) {
            if let Some(r) = db
                .prepare_cached(&format!(
                    "SELECT {} FROM messages WHERE id = ?1 AND status = 'streaming'",
                    crate::store::read::MESSAGE_COLUMNS
                ))?
                .query_row([mid], crate::store::read::message_row)
                .optional()?
            {
                rows.push(r);
            }
        }
    }
    rows.sort_by_key(|r| r.seq);
    Ok(Replay {
        rows,
        more,
        last_seq,
        snapshots,
        room_id,
    })
}

pub fn finish_replay(
    shard: &mut Shard,
    slot: usize,
    conv: &Arc<str>,
    r: Replay,
    id: Option<String>,
) {
    let codec = crate::app::codec_of(shard, slot);
    let buffered = {
        let Some(ws) = shard.session_mut(slot) else {
            return;
        };
        match ws.subs.remove(conv) {
            Some(Sub::Pending { buffered }) => buffered,
            _ => Vec::new(),
        }
    };
    let mut held: HashMap<i64, Held> = HashMap::new();
    let first_seq = r.rows.first().map(|m| m.seq);
    for row in &r.rows {
        let mut view: MessageView = row.view();
        if row.status == "streaming" {
            // The checkpointed content may lag; the snapshot is exact. No snapshot: the
            // reply had not produced a token when we looked.
            let (content, tokens) = r.snapshots.get(&row.id).cloned().unwrap_or_default();
            view.content = content;
            held.insert(row.id, Held::Streaming { tokens });
        } else {
            held.insert(row.id, Held::Final);
        }
        let ev = Event::MessageAdded {
            conversation_id: conv.to_string(),
            room_id: r.room_id.clone(),
            message: view,
            replayed: Some(true),
        };
        shard.send(slot, &ev);
    }
    let last = r
        .last_seq
        .max(r.rows.iter().map(|m| m.seq).max().unwrap_or(0));
    let more = r.more;
    shard.send(
        slot,
        &Event::Subscribed {
            id,
            conversation_id: conv.to_string(),
            last_seq: last,
            room_id: r.room_id.clone(),
            more: more.then_some(true),
            first_seq: if more { first_seq } else { None },
        },
    );
    // Replies that ended recently may still have events in flight to us.
    let recent = crate::protocol::now_ms() - 60_000;
    let finals: Vec<i64> = r
        .rows
        .iter()
        .filter(|m| m.role == "assistant" && m.status != "streaming" && m.updated_at >= recent)
        .map(|m| m.id)
        .collect();
    if let Some(ws) = shard.session_mut(slot) {
        ws.subs.insert(
            conv.clone(),
            Sub::Live {
                last_seq: last,
                finals,
            },
        );
    }
    for ev in buffered {
        let deliver = match &ev.kind {
            TopicKind::Added { seq } => *seq > r.last_seq,
            TopicKind::Token {
                message_id, index, ..
            } => match held.get(message_id) {
                Some(Held::Final) => false,
                Some(Held::Streaming { tokens }) => *index >= *tokens,
                None => true,
            },
            TopicKind::Updated { message_id } | TopicKind::Complete { message_id } => {
                !matches!(held.get(message_id), Some(Held::Final))
            }
            TopicKind::Ephemeral | TopicKind::RoomClosed { .. } => true,
        };
        if deliver {
            if let TopicKind::Added { seq } = ev.kind {
                if let Some(Sub::Live { last_seq, .. }) =
                    shard.session_mut(slot).and_then(|ws| ws.subs.get_mut(conv))
                {
                    *last_seq = (*last_seq).max(seq);
                }
            }
            shard.queue(slot, topic_item(&ev, codec));
        }
    }
}

fn unsubscribe(shard: &mut Shard, slot: usize, id: Option<String>, conv: &str) {
    let had = shard
        .session_mut(slot)
        .map(|ws| ws.subs.remove(conv).is_some())
        .unwrap_or(false);
    if had {
        shard.unsubscribe(conv, slot);
    }
    shard.send(
        slot,
        &Event::Unsubscribed {
            id,
            conversation_id: conv.to_string(),
        },
    );
}

// ---------------------------------------------------------------- receipts, typing

fn read(
    shard: &mut Shard,
    slot: usize,
    user: &Arc<User>,
    id: Option<String>,
    conv: String,
    seq: i64,
) {
    let Some(conn_id) = shard.conn_id(slot) else {
        return;
    };
    let uid = user.id.clone();
    let id_fail = id.clone();
    let job = WriteJob {
        enqueued: std::time::Instant::now(),
        op: Box::new(move |db, _state| {
            let marker = writer::mark_read(db, &conv, &uid, seq)?;
            Ok(Box::new(move |ctx: &ServerCtx| {
                let c: Arc<str> = Arc::from(conv.as_str());
                let ev = Event::Receipt {
                    conversation_id: conv.clone(),
                    user_id: uid.clone(),
                    seq: marker,
                    read_at: now_rfc3339(),
                };
                let delivered = ctx.net.publish(
                    MayBlock::worker(),
                    topic_event(&c, TopicKind::Ephemeral, &ev),
                );
                let _ = delivered;
                // The reader's own connection hears back even if it is not subscribed.
                run_on(ctx, conn_id, move |shard, slot| {
                    let subscribed = shard
                        .session_mut(slot)
                        .is_some_and(|ws| ws.subs.get(&c).is_some_and(Sub::is_live));
                    if !subscribed {
                        shard.send(slot, &ev);
                    }
                });
            }))
        }),
        on_fail: Box::new(move |ctx: &ServerCtx, e: &StoreError| {
            let (code, msg) = e.client_error();
            ctx.metrics.error(code);
            ctx.send_event(
                MayBlock::worker(),
                conn_id,
                &Event::error(code, msg, id_fail),
            );
        }),
    };
    if shard.app().store.try_write(job).is_err() {
        send_error_retry(shard, slot, ErrorCode::Busy, "the store is busy", id, 0.5);
    }
}

fn typing(
    shard: &mut Shard,
    slot: usize,
    id: Option<String>,
    room_id: Option<String>,
    conv: Option<String>,
    on: bool,
) {
    let timeout = shard.app().cfg.rooms.typing_timeout;
    let target = {
        let Some(ws) = shard.session_mut(slot) else {
            return;
        };
        let t = match (&room_id, &conv) {
            (Some(r), _) => ws.rooms.get(r.as_str()).cloned(),
            (None, Some(c)) => ws
                .subs
                .get_key_value(c.as_str())
                .filter(|(_, s)| s.is_live())
                .map(|(k, _)| k.clone()),
            _ => None,
        };
        let Some(t) = t else {
            drop(t);
            return send_error(
                shard,
                slot,
                ErrorCode::Forbidden,
                "typing needs a room joined or a conversation subscribed on this connection",
                id,
            );
        };
        if on {
            ws.typing
                .insert(t.clone(), std::time::Instant::now() + timeout);
        } else {
            ws.typing.remove(&t);
        }
        t
    };
    shard.rearm(slot);
    publish_typing(shard, slot, &target, on);
}

/// Tell the other members of `conv` that this connection's user is (not) typing.
pub fn publish_typing(shard: &mut Shard, slot: usize, conv: &Arc<str>, on: bool) {
    let Some(user) = shard.session(slot).and_then(|s| s.user.clone()) else {
        return;
    };
    let room_id = shard.session_mut(slot).and_then(|ws| {
        ws.rooms
            .iter()
            .find(|(_, c)| *c == conv)
            .map(|(r, _)| r.to_string())
    });
    publish_typing_as(shard.app(), conv, room_id, &user.id, &user.name, on, true);
}

pub fn publish_typing_as(
    ctx: &ServerCtx,
    conv: &Arc<str>,
    room_id: Option<String>,
    user_id: &str,
    name: &str,
    on: bool,
    from_shard: bool,
) {
    let ev = Event::Typing {
        conversation_id: if room_id.is_none() {
            Some(conv.to_string())
        } else {
            None
        },
        room_id,
        user_id: user_id.to_string(),
        username: name.to_string(),
        is_typing: on,
    };
    let mut te = topic_event(conv, TopicKind::Ephemeral, &ev);
    te.exclude_user = Some(Arc::from(user_id));
    if from_shard {
        ctx.net.try_publish(te);
    } else {
        ctx.net.publish(MayBlock::worker(), te);
    }
}

// ---------------------------------------------------------------- connect / disconnect

pub fn on_connected(
    shard: &mut Shard,
    slot: usize,
    conn_id: ConnId,
    user: &Arc<User>,
    auto_join: Option<AutoJoin>,
) {
    let uid = user.id.clone();
    let u2 = user.clone();
    let auto_join_retry = auto_join.clone();
    let job: crate::store::ReadJob = Box::new(move |db, ctx| {
        let rooms = crate::store::read::rooms_for_user(db, &uid).unwrap_or_default();
        run_on(ctx, conn_id, move |shard, slot| {
            let ev = connected_event(shard, conn_id, &u2, rooms);
            shard.send(slot, &ev);
            if let Some(aj) = auto_join {
                crate::rooms::join(shard, slot, &u2, None, aj, None);
            }
        });
    });
    if let Err(_busy) = shard.app().store.try_read(job) {
        // The read queue is full: say hello anyway, without the room list, and still
        // join the room the upgrade asked for (a write; it answers BUSY itself if the
        // writer is full too).
        let ev = connected_event(shard, conn_id, user, Vec::new());
        shard.send(slot, &ev);
        if let Some(aj) = auto_join_retry {
            crate::rooms::join(shard, slot, user, None, aj, None);
        }
    }
}

pub fn on_disconnect(
    shard: &mut Shard,
    id: ConnId,
    user: &Arc<User>,
    left: usize,
    rooms: Vec<(Arc<str>, Arc<str>)>,
    typing: Vec<Arc<str>>,
) {
    for conv in typing {
        publish_typing_as(shard.app(), &conv, None, &user.id, &user.name, false, true);
    }
    crate::rooms::on_disconnect(shard, id, user, left, rooms);
}
