//! Node leases: this node renews its row in `nodes` every heartbeat; a node whose lease
//! ran out is dead, and the first live node to notice ends its streaming replies with
//! `error` (keeping the text it last saved) and announces them to every subscriber.
//!
//! Fencing: a dead node that was only paused finds, when it wakes, that its replies are
//! no longer `streaming`; its checkpoints and final writes then change nothing
//! (`store::writer::finalize`), so it cannot overwrite what the cluster decided.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use crate::net::MayBlock;
use crate::protocol::{now_ms, CompletionMeta, Event};
use crate::server::ServerCtx;
use crate::store::pg::{self, PgDb};
use crate::topic::{topic_event, TopicKind};

pub fn run(ctx: Arc<ServerCtx>) {
    let Some(cluster) = ctx.cluster.clone() else {
        return;
    };
    let cfg = &cluster.cfg;
    let mut db: Option<PgDb> = None;
    let mut warned = false;
    while !ctx.store.stopping.load(Relaxed) {
        std::thread::sleep(cfg.heartbeat);
        if db.is_none() {
            db = PgDb::open(&cfg.postgres_url, None).ok();
        }
        let Some(conn) = &db else { continue };
        match pg::renew_lease(conn, &cfg.node_id, cluster.inc, cfg.lease) {
            Ok(true) => warned = false,
            Ok(false) if !warned => {
                warned = true;
                log::error!(
                    "cluster: node {} incarnation {} lost its lease row: another process runs as this node id",
                    cfg.node_id,
                    cluster.inc
                );
            }
            Ok(false) => {}
            Err(e) => {
                log::warn!("cluster: cannot renew this node's lease: {e}");
                db = None;
                continue;
            }
        }
        if let Err(e) = close_dead_replies(&ctx, conn) {
            log::warn!("cluster: cannot check the other nodes' leases: {e}");
            db = None;
        }
    }
}

fn close_dead_replies(ctx: &ServerCtx, db: &PgDb) -> Result<(), crate::store::StoreError> {
    let Some(cluster) = &ctx.cluster else {
        return Ok(());
    };
    for (node, inc) in pg::expired_nodes(db, &cluster.cfg.node_id)? {
        let rows = pg::fail_replies_of(db, &node, inc, now_ms())?;
        if !rows.is_empty() {
            log::warn!(
                "cluster: node {node} (incarnation {inc}) is gone; {} of its replies end with error",
                rows.len()
            );
        }
        for (row, room_id) in rows {
            announce_failed(ctx, row, room_id);
        }
    }
    Ok(())
}

/// What a reply's own node would have said had it failed: `message_updated` (its final
/// row) and `complete` with `error`, to every subscriber on every node.
fn announce_failed(ctx: &ServerCtx, row: crate::store::read::MessageRow, room_id: Option<String>) {
    let conv: Arc<str> = Arc::from(row.conversation_id.as_str());
    let updated = Event::MessageUpdated {
        conversation_id: row.conversation_id.clone(),
        room_id,
        message: row.view(),
    };
    let kind = TopicKind::Updated { message_id: row.id };
    ctx.publish(MayBlock::worker(), topic_event(&conv, kind, updated));
    let complete = Event::Complete {
        conversation_id: row.conversation_id.clone(),
        message_id: row.id,
        seq: row.seq,
        response: row.content.clone(),
        finish_reason: "error",
        metadata: CompletionMeta {
            agent: row.author.clone(),
            ..CompletionMeta::default()
        },
    };
    let kind = TopicKind::Complete { message_id: row.id };
    ctx.publish(MayBlock::worker(), topic_event(&conv, kind, complete));
}
