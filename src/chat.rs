//! Conversations on a native connection: `chat`, `stop`, `read`, `typing`, and the
//! dispatch of every conversation command (rooms are in `rooms.rs`, subscriptions in
//! `subscribe.rs`).
//!
//! Runs on the shard. Writes go to the store writer with `try_write` as typed commands;
//! after COMMIT, `completion.rs` routes the results: an ack (`ConnMsg::Acked`) to the
//! asking connection's shard, the message to every subscriber through the topics, the
//! reply to the generation pool (`after_chat`). Subscriptions, their replays and the 000
//! backfill are `subscribe.rs`.
//!
//! **Tentative subscriptions.** A connection that writes to (or subscribes to) a
//! conversation is registered for its live events *before* the store is asked, in state
//! pending (`subscription.rs`): events buffer and are delivered only once the store confirmed access
//! (or dropped with the subscription when it refused). Registering first is what makes
//! the fan-out race-free: the hub knows this shard wants the conversation before any
//! event about the new message can be published.

use std::sync::Arc;

use crate::app::{ConnMsg, Shard, ShardExt};
use crate::auth::User;
use crate::completion::{ChatReply, Reply};
use crate::generation::Generation;
use crate::net::{ConnId, MayBlock};
use crate::protocol::{now_rfc3339, ChatRequest, ClientMsg, ErrorCode, Event};
use crate::server::ServerCtx;
use crate::session::AutoJoin;
use crate::session::{connected_event, send_error, send_error_retry};
use crate::store::writer::{self, ChatInput};
use crate::store::{ReadCmd, WriteCmd};
use crate::subscribe::{backfill, drop_pending, subscribe, subscribe_pending, unsubscribe};
use crate::topic::{topic_event, TopicKind};

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
        } => subscribe(
            shard,
            slot,
            user,
            id,
            Arc::from(conversation_id),
            after_seq,
            None,
        ),
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
        ClientMsg::Backfill {
            conversation_id,
            after_seq,
        } => backfill(shard, slot, user, Arc::from(conversation_id), after_seq),
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
            .and_then(|ws| ws.extras())
            .is_some_and(|e| e.ai_rooms.iter().any(|a| **a == **r)),
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
    let id_busy = id.clone();
    let reply = Reply::Chat(Box::new(ChatReply {
        conn: conn_id,
        id,
        conversation_id: conv.clone(),
        plan,
        reservation,
        user: user.clone(),
    }));
    if ctx.store.try_write(WriteCmd::Chat(input), reply).is_err() {
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

/// After the user's message is committed (on the store writer's thread): the ack goes to
/// the asking shard, the message to every subscriber, the reply to the generation pool.
pub fn after_chat(ctx: &ServerCtx, r: ChatReply, out: writer::ChatOutcome) {
    let ChatReply {
        conn,
        id,
        plan,
        reservation,
        user,
        ..
    } = r;
    let conv: Arc<str> = Arc::from(out.conversation_id.as_str());
    let ack = Event::Ack {
        id: id.clone(),
        conversation_id: out.conversation_id.clone(),
        message_id: out.user_msg.id,
        seq: out.user_msg.seq,
        timestamp: crate::protocol::rfc3339_ms(out.user_msg.created_at),
        duplicate: out.duplicate.then_some(true),
    };
    ctx.to_shard(
        conn,
        ConnMsg::Acked {
            conversation_id: conv.clone(),
            // Encoded on the shard by the connection's codec: the writer thread, which
            // runs this, is on every chat's path to its first token.
            ack: Box::new(crate::codec::Encoded::lazy(ack)),
        },
    );
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
        added,
    );
    ev.exclude = Some(conn);
    ctx.publish(MayBlock::worker(), ev);
    if out.room_id.is_some() {
        let n = ctx.net.topics.subscribers(&conv).saturating_sub(1) + ctx.remote_recipients(&conv);
        let dc = Event::DeliveryConfirmation {
            id,
            message_id: out.user_msg.id,
            status: "delivered",
            recipients: n as u64,
            timestamp: now_rfc3339(),
        };
        ctx.send_event(conn, dc);
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
        ctx.publish(
            MayBlock::worker(),
            topic_event(&conv, TopicKind::Added { seq: asst.seq }, added),
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
    #[cfg(feature = "cluster")]
    if let (Some(c), Some(conn)) = (&shard.app().cluster, shard.conn_id(slot)) {
        let req = crate::cluster::StopRequest {
            conv: conv.to_string(),
            user: user.id.clone(),
            admin: user.admin,
        };
        if c.stop_everywhere(req, conn, id.clone(), n > 0) || n > 0 {
            return;
        }
        return send_error_retry(
            shard,
            slot,
            ErrorCode::Busy,
            "the cluster bus is busy",
            id,
            0.5,
        );
    }
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
    let cmd = WriteCmd::MarkRead {
        conversation_id: conv.clone(),
        user_id: user.id.clone(),
        seq,
    };
    let reply = Reply::MarkRead {
        conn: conn_id,
        id: id.clone(),
        conversation_id: conv,
        user_id: user.id.clone(),
    };
    if shard.app().store.try_write(cmd, reply).is_err() {
        send_error_retry(shard, slot, ErrorCode::Busy, "the store is busy", id, 0.5);
    }
}

/// A read marker was committed (store writer's thread): every subscriber hears the
/// receipt; the reader's own connection too, even if it is not subscribed.
pub fn after_read(ctx: &ServerCtx, conn: ConnId, conv: String, user_id: String, marker: i64) {
    let c: Arc<str> = Arc::from(conv.as_str());
    let ev = Event::Receipt {
        conversation_id: conv,
        user_id,
        seq: marker,
        read_at: now_rfc3339(),
    };
    ctx.publish(
        MayBlock::worker(),
        topic_event(&c, TopicKind::Ephemeral, ev.clone()),
    );
    ctx.to_shard(
        conn,
        ConnMsg::Receipt {
            conversation_id: c,
            event: Box::new(ev),
        },
    );
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
            ws.extras_mut()
                .typing
                .insert(t.clone(), crate::net::timer::Tick::now() + timeout);
        } else if let Some(e) = ws.extras.as_mut() {
            e.typing.remove(&t);
            ws.tidy();
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
    let mut te = topic_event(conv, TopicKind::Ephemeral, ev);
    te.exclude_user = Some(Arc::from(user_id));
    if from_shard {
        ctx.try_publish(te);
    } else {
        ctx.publish(MayBlock::worker(), te);
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
    let cmd = ReadCmd::RoomsOf {
        user_id: user.id.clone(),
    };
    let reply = Reply::Connected {
        conn: conn_id,
        user: user.clone(),
        auto_join: auto_join.clone(),
    };
    if let Err(_busy) = shard.app().store.try_read(cmd, reply) {
        // The read queue is full: say hello anyway, without the room list, and still
        // join the room the upgrade asked for (a write; it answers BUSY itself if the
        // writer is full too).
        let ev = connected_event(shard, conn_id, user, Vec::new());
        shard.send(slot, &ev);
        if let Some(aj) = auto_join {
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
