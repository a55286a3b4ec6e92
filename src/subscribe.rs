//! A connection's subscriptions to conversations (the rules of one are in
//! `subscription.rs`): registered pending before the store is asked, confirmed by a
//! committed chat or by a replay, dropped on a refusal; `subscribe` with its replay;
//! `unsubscribe`; and the backfill a 000 stream starts with — every stored message in
//! pages, then a subscription from where the pages ended, its replay covering what was
//! committed meanwhile (shown as new: it came after the history).

use std::collections::HashMap;
use std::sync::Arc;

use crate::app::{Shard, ShardExt};
use crate::auth::User;
use crate::completion::Reply;
use crate::protocol::{ErrorCode, Event, MessageView};
use crate::session::{send_error, send_error_retry};
use crate::store::read::Replay;
use crate::store::ReadCmd;
use crate::subscription::{Held, ReplayCover, Subscription};

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
            ws.subs.insert(conv.clone(), Subscription::pending());
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
    let (deliver, registered) = {
        let Some(ws) = shard.session_mut(slot) else {
            return;
        };
        let registered = ws.subs.contains_key(conv);
        let sub = ws
            .subs
            .get_or_insert_with(conv.clone(), Subscription::pending);
        (sub.confirm(), registered)
    };
    if !registered {
        // Not registered before (e.g. a conversation created elsewhere).
        shard.subscribe(conv, slot);
    }
    for ev in deliver {
        crate::topic::deliver(shard, slot, &ev);
    }
}

/// The store refused: forget a pending subscription (and what it buffered).
pub fn drop_pending(shard: &mut Shard, slot: usize, conv: &str) {
    let was_pending = {
        let Some(ws) = shard.session_mut(slot) else {
            return;
        };
        if ws.subs.get(conv).is_some_and(Subscription::is_pending) {
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

// ---------------------------------------------------------------- subscribe / replay

/// Subscribe with replay from `after_seq`. `history_end`: the client was sent the
/// history up to this seq (`backfill`); replayed rows after it are shown as new.
pub fn subscribe(
    shard: &mut Shard,
    slot: usize,
    user: &Arc<User>,
    id: Option<String>,
    conv: Arc<str>,
    after_seq: i64,
    history_end: Option<i64>,
) {
    let Some(conn_id) = shard.conn_id(slot) else {
        return;
    };
    {
        let Some(ws) = shard.session_mut(slot) else {
            return;
        };
        if ws.subs.get(&conv).is_some_and(Subscription::is_pending) {
            return send_error(
                shard,
                slot,
                ErrorCode::BadRequest,
                "a subscribe to this conversation is already in progress",
                id,
            );
        }
        // Re-subscribing replays again from the given seq.
        ws.subs.insert(conv.clone(), Subscription::pending());
    }
    shard.subscribe(&conv, slot);
    let cmd = ReadCmd::Replay {
        conversation_id: conv.to_string(),
        user_id: user.id.clone(),
        admin: user.admin,
        after_seq,
        limit: shard.app().cfg.store.replay_max,
    };
    let reply = Reply::Replay {
        conn: conn_id,
        id: id.clone(),
        conversation_id: conv.clone(),
        history_end,
    };
    if shard.app().store.try_read(cmd, reply).is_err() {
        drop_pending(shard, slot, &conv);
        send_error_retry(shard, slot, ErrorCode::Busy, "the store is busy", id, 0.5);
    }
}

pub fn finish_replay(
    shard: &mut Shard,
    slot: usize,
    conv: &Arc<str>,
    r: Replay,
    id: Option<String>,
    history_end: Option<i64>,
) {
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
        // Committed after the history pages were read: news to this client.
        let new = history_end.is_some_and(|h| row.seq > h);
        let ev = Event::MessageAdded {
            conversation_id: conv.to_string(),
            room_id: r.room_id.clone(),
            message: view,
            replayed: (!new).then_some(true),
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
    let recent_finals: Vec<i64> = r
        .rows
        .iter()
        .filter(|m| m.role == "assistant" && m.status != "streaming" && m.updated_at >= recent)
        .map(|m| m.id)
        .collect();
    #[cfg(feature = "cluster")]
    if let Some(c) = &shard.app().cluster {
        c.order
            .lock()
            .track(conv, r.last_seq, std::time::Instant::now());
    }
    let cover = ReplayCover {
        last_seq: r.last_seq,
        delivered_seq: last,
        held,
        recent_finals,
    };
    // Unsubscribed (or the room closed) while the replay was read: stay gone.
    let deliver = match shard.session_mut(slot).and_then(|ws| ws.subs.get_mut(conv)) {
        Some(sub) => sub.replayed(cover),
        None => return,
    };
    for ev in deliver {
        crate::topic::deliver(shard, slot, &ev);
    }
}

// ---------------------------------------------------------------- backfill (000)

/// The whole history of `conv` after `after_seq`, oldest first, as replayed
/// `message_added`s in pages of `store.max_page`, then a subscription from where the pages
/// ended (its replay covers what was committed meanwhile, and a reply still streaming).
/// For a dialect that promises every stored message (000): a native `subscribe` replays
/// at most `store.replay_max`. A client slower than the pages is closed 1013 by its
/// out-queue like any slow reader; memory stays bounded.
pub fn backfill(shard: &mut Shard, slot: usize, user: &Arc<User>, conv: Arc<str>, after_seq: i64) {
    let Some(conn) = shard.conn_id(slot) else {
        return;
    };
    let cmd = ReadCmd::History {
        conversation_id: conv.to_string(),
        alias: None,
        user_id: user.id.clone(),
        admin: user.admin,
        before_seq: None,
        after_seq: Some(after_seq),
        limit: shard.app().cfg.store.max_page,
    };
    let reply = Reply::Backfill {
        conn,
        conversation_id: conv,
        after_seq,
    };
    if shard.app().store.try_read(cmd, reply).is_err() {
        send_error_retry(shard, slot, ErrorCode::Busy, "the store is busy", None, 0.5);
    }
}

/// A page of backfill arrived: show it, then the next page or the live subscription.
pub fn backfilled(
    shard: &mut Shard,
    slot: usize,
    conv: Arc<str>,
    after_seq: i64,
    rows: Vec<crate::store::read::MessageRow>,
    has_more: bool,
) {
    let Some(user) = shard.session(slot).and_then(|s| s.user.clone()) else {
        return;
    };
    let mut last = after_seq;
    // The history the client gets ends with this page: what the subscription's replay
    // brings beyond it was committed since, and is shown as new.
    let page_end = rows.iter().map(|r| r.seq).max().unwrap_or(after_seq);
    for row in rows {
        // A reply still being written: the subscription's replay carries its exact text
        // (and the rest of this page).
        if row.status == "streaming" {
            return subscribe(shard, slot, &user, None, conv, row.seq - 1, Some(page_end));
        }
        last = row.seq;
        let ev = Event::MessageAdded {
            conversation_id: conv.to_string(),
            room_id: None,
            message: row.view(),
            replayed: Some(true),
        };
        shard.send(slot, &ev);
    }
    if has_more && last > after_seq {
        backfill(shard, slot, &user, conv, last)
    } else {
        subscribe(shard, slot, &user, None, conv, last, Some(last))
    }
}

pub fn unsubscribe(shard: &mut Shard, slot: usize, id: Option<String>, conv: &str) {
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
