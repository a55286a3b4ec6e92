//! What happens after the store answers: the application's side of
//! [`store::Completions`](crate::store::Completions).
//!
//! Each store job carries a [`Reply`] — plain data naming who asked and what comes next.
//! The writer calls [`written`](Completions::written) after COMMIT, once per job and in
//! commit order; readers call [`read`](Completions::read). Both run on the store's
//! threads, which may block on a full shard inbox (back-pressure), so this module only
//! routes: answers for one connection go to its shard as typed [`AppMsg`]s (the shard
//! confirms subscriptions and sends acks there), fan-out goes through the transport's
//! topics, replies are handed to the generation pool, HTTP answers go back as
//! `ShardMsg::Http`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use crate::app::{AppMsg, ConnMsg};
use crate::auth::User;
use crate::llm::{FinishReply, Plan, Reservation};
use crate::net::{ConnId, MayBlock, ShardMsg};
use crate::protocol::{Event, UploadEvent};
use crate::server::ServerCtx;
use crate::session::AutoJoin;
use crate::store::{Completions, ReadDone, StoreError, Written};

/// Who is waiting for a store job, and what comes next.
pub enum Reply {
    /// A `chat`: ack, fan-out, maybe start a reply.
    Chat(Box<ChatReply>),
    /// A `read` receipt.
    MarkRead {
        conn: ConnId,
        id: Option<String>,
        conversation_id: String,
        user_id: String,
    },
    /// A `join_room`.
    Join {
        conn: ConnId,
        id: Option<String>,
        user: Arc<User>,
        after_seq: Option<i64>,
    },
    /// A finished upload's row.
    Upload(Box<UploadReply>),
    /// A streaming reply's checkpoint: nobody waits; a reply ended elsewhere is cancelled.
    Checkpoint(Arc<crate::generation::Generation>),
    /// A reply's final row.
    Finish(Box<FinishReply>),
    /// The room list for `connected`.
    Connected {
        conn: ConnId,
        user: Arc<User>,
        auto_join: Option<AutoJoin>,
    },
    /// A `subscribe` replay.
    Replay {
        conn: ConnId,
        id: Option<String>,
        conversation_id: Arc<str>,
        /// Rows after this seq came after the history the client was sent (`backfill`):
        /// they are shown as new, not replayed.
        history_end: Option<i64>,
    },
    /// An HTTP request waiting in `HttpWait`.
    Http { conn: ConnId, then: HttpThen },
    /// A page of history for a backfilling connection (`subscribe::backfill`).
    Backfill {
        conn: ConnId,
        conversation_id: Arc<str>,
        after_seq: i64,
    },
    /// A dialect's conversation alias; `then` runs once it names a conversation.
    Alias {
        conn: ConnId,
        alias: String,
        then: Box<crate::protocol::Incoming>,
    },
}

pub struct ChatReply {
    pub conn: ConnId,
    pub id: Option<String>,
    pub conversation_id: Arc<str>,
    pub plan: Option<Plan>,
    pub reservation: Option<Reservation>,
    pub user: Arc<User>,
}

pub struct UploadReply {
    pub conn: ConnId,
    pub id: Option<String>,
    pub file_id: Arc<str>,
    /// Where the file was moved; removed again when the row cannot be written.
    pub dest: PathBuf,
    pub done: UploadEvent,
}

/// How an HTTP answer is rendered from the store's result.
pub enum HttpThen {
    /// A conversation renamed or deleted.
    ConversationChanged,
    /// 003's conversation list (`dialect::http`).
    SeedConversations {
        user_id: String,
    },
    /// 003's message history; `asked` is the id (or alias) in the path.
    SeedHistory {
        user_id: String,
        asked: String,
    },
    /// 004's room view (with `participants`).
    SeedRoom,
    Conversations,
    History,
    File,
    Room,
    RoomCreated {
        owner: String,
        members: Vec<String>,
    },
    RoomDeleted,
    MemberChanged {
        member: String,
        add: bool,
    },
    /// Admin broadcast to one room (found by id).
    Broadcast {
        room_id: String,
        event: Box<Event>,
    },
}

impl ServerCtx {
    /// Hand a follow-up to the shard that owns `conn`.
    pub fn to_shard(&self, conn: ConnId, msg: ConnMsg) {
        self.net.shards.send_to(
            MayBlock::worker(),
            conn,
            ShardMsg::App(AppMsg::Conn(conn, msg)),
        );
    }

    fn error_to(&self, conn: ConnId, id: Option<String>, e: &StoreError) {
        let (code, msg) = e.client_error();
        self.metrics.error(code);
        self.send_event(conn, Event::error(code, msg, id));
    }

    fn http_answer(&self, conn: ConnId, resp: crate::net::Response) {
        self.net
            .shards
            .send_to(MayBlock::worker(), conn, ShardMsg::Http(conn, resp));
    }
}

impl ServerCtx {
    /// The replies this node is generating in `conversation_id`: message id → (content
    /// so far, tokens so far), each taken under its generation lock.
    pub fn local_in_flight(&self, conversation_id: &str) -> HashMap<i64, (String, u64)> {
        let mut snapshots = HashMap::new();
        for g in self.hub.generations.in_conversation(conversation_id) {
            let st = g.state.lock();
            snapshots.insert(g.message_id, (st.content.clone(), st.tokens));
        }
        snapshots
    }
}

impl Completions<Reply> for ServerCtx {
    fn written(&self, reply: Reply, result: Result<Written, &StoreError>) {
        match (reply, result) {
            (Reply::Chat(r), Ok(Written::Chat(out))) => crate::chat::after_chat(self, *r, *out),
            (Reply::Chat(r), Err(e)) => {
                let (code, msg) = e.client_error();
                self.metrics.error(code);
                let error = Event::error(code, msg, r.id);
                self.to_shard(
                    r.conn,
                    ConnMsg::Refused {
                        conversation_id: Some(r.conversation_id),
                        error: Box::new(error),
                    },
                );
            }
            (
                Reply::MarkRead {
                    conn,
                    conversation_id,
                    user_id,
                    ..
                },
                Ok(Written::Read { marker }),
            ) => crate::chat::after_read(self, conn, conversation_id, user_id, marker),
            (Reply::MarkRead { conn, id, .. }, Err(e)) => self.error_to(conn, id, e),
            (
                Reply::Join {
                    conn,
                    id,
                    user,
                    after_seq,
                },
                Ok(Written::Joined(room)),
            ) => self.to_shard(
                conn,
                ConnMsg::Joined {
                    id,
                    user,
                    room: Box::new(room),
                    after_seq,
                },
            ),
            (Reply::Join { conn, id, .. }, Err(e)) => self.error_to(conn, id, e),
            (Reply::Upload(u), Ok(_)) => crate::uploads::recorded(self, *u),
            (Reply::Upload(u), Err(e)) => crate::uploads::not_recorded(self, *u, e),
            (Reply::Finish(f), Ok(Written::Finalized(row))) => {
                crate::llm::finished(self, *f, Some(row.view()))
            }
            // Ended elsewhere (a cluster peer failed it while this node was paused, or its
            // conversation is gone): whoever ended it told the subscribers.
            (Reply::Finish(f), Err(StoreError::Refused(_, m)))
                if m == crate::store::writer::ENDED_ELSEWHERE =>
            {
                log::warn!(
                    "reply {} in {}: {m}",
                    f.gen.message_id,
                    f.gen.conversation_id
                );
                self.hub
                    .generations
                    .remove(&f.gen.conversation_id, f.gen.message_id);
            }
            (Reply::Finish(mut f), Err(e)) => {
                f.error = Some(format!(
                    "{}; the reply could not be stored: {e}",
                    f.error.take().unwrap_or_default()
                ));
                f.reason = "error";
                f.client_id = None;
                crate::llm::finished(self, *f, None)
            }
            (Reply::Http { conn, then }, result) => {
                let resp = match result {
                    Ok(w) => crate::api::render_written(self, then, w),
                    Err(e) => crate::api::store_error(e),
                };
                self.http_answer(conn, resp);
            }
            (Reply::Alias { conn, alias, then }, Ok(Written::Alias { conversation_id })) => self
                .to_shard(
                    conn,
                    ConnMsg::Resolved {
                        alias,
                        conversation_id,
                        then,
                    },
                ),
            (Reply::Alias { conn, then, .. }, Err(e)) => self.error_to(conn, then.id, e),
            // The row is no longer streaming: another node ended it (this one was paused
            // past its lease) or its conversation was deleted. Stop generating; the final
            // write will find it ended and say nothing.
            (Reply::Checkpoint(gen), Err(StoreError::Refused(_, m)))
                if m == crate::store::writer::ENDED_ELSEWHERE =>
            {
                gen.cancel.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            (Reply::Checkpoint(_), _) => {}
            (_, Ok(w)) => log::error!("store: unexpected result {w:?} for this reply"),
            (_, Err(e)) => log::error!("store: write failed with no one to tell: {e}"),
        }
    }

    fn read(&self, reply: Reply, result: Result<ReadDone, StoreError>) {
        match (reply, result) {
            (
                Reply::Connected {
                    conn,
                    user,
                    auto_join,
                },
                result,
            ) => {
                let rooms = match result {
                    Ok(ReadDone::Rooms(r)) => r,
                    _ => Vec::new(),
                };
                self.to_shard(
                    conn,
                    ConnMsg::Connected {
                        user,
                        rooms,
                        auto_join,
                    },
                );
            }
            (
                Reply::Replay {
                    conn,
                    id,
                    conversation_id,
                    history_end,
                },
                Ok(ReadDone::Replay(replay)),
            ) => self.to_shard(
                conn,
                ConnMsg::Replayed {
                    id,
                    conversation_id,
                    replay: Box::new(replay),
                    history_end,
                },
            ),
            (
                Reply::Replay {
                    conn,
                    id,
                    conversation_id,
                    ..
                },
                Err(e),
            ) => {
                let (code, msg) = e.client_error();
                self.metrics.error(code);
                self.to_shard(
                    conn,
                    ConnMsg::Refused {
                        conversation_id: Some(conversation_id),
                        error: Box::new(Event::error(code, msg, id)),
                    },
                );
            }
            (
                Reply::Backfill {
                    conn,
                    conversation_id,
                    after_seq,
                },
                Ok(ReadDone::History {
                    messages, has_more, ..
                }),
            ) => self.to_shard(
                conn,
                ConnMsg::Backfilled {
                    conversation_id,
                    after_seq,
                    rows: messages,
                    has_more,
                },
            ),
            (Reply::Backfill { conn, .. }, Err(e)) => {
                let (code, msg) = e.client_error();
                self.metrics.error(code);
                self.to_shard(
                    conn,
                    ConnMsg::Refused {
                        conversation_id: None,
                        error: Box::new(Event::error(code, msg, None)),
                    },
                );
            }
            (Reply::Http { conn, then }, result) => {
                let resp = match result {
                    Ok(done) => crate::api::render_read(self, then, done),
                    Err(e) => crate::api::store_error(&e),
                };
                self.http_answer(conn, resp);
            }
            (_, Ok(done)) => log::error!("store: unexpected read result {done:?}"),
            (_, Err(e)) => log::error!("store: read failed with no one to tell: {e}"),
        }
    }

    fn in_flight(&self, conversation_id: &str) -> HashMap<i64, (String, u64)> {
        #[allow(unused_mut)]
        let mut snapshots = self.local_in_flight(conversation_id);
        #[cfg(feature = "cluster")]
        if let Some(c) = &self.cluster {
            for (k, v) in c.remote_in_flight(self, conversation_id) {
                snapshots.entry(k).or_insert(v);
            }
        }
        snapshots
    }
}
