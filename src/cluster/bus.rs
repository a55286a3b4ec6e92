//! The bus thread: owns the NATS client on a current-thread tokio runtime confined to
//! it. In: the bounded queue [`BusCmd`]s arrive on. Out: events for this node's
//! subscribers (through [`Cluster::deliver`], as a worker would publish them).
//!
//! Every node listens to every conversation's subject (`cf.c.>`): a node drops what it
//! has no subscriber for in its topic index. That costs bus traffic × nodes but leaves no
//! window in which a new subscriber's interest has not reached the server yet.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use super::{presence, wire, BusCmd, Cluster};
use crate::net::MayBlock;
use crate::protocol::{now_ms, Event};
use crate::server::ServerCtx;
use crate::topic::{topic_event, TopicKind};

/// Rows a gap repair reads at most (a longer gap is a resync's job: subscribers whose
/// seq jumps ask for a replay).
const REPAIR_MAX: u32 = 1000;

/// Conversations with no event for this long are no longer tracked for order.
const ORDER_IDLE: Duration = Duration::from_secs(300);

pub fn run(ctx: Arc<ServerCtx>, rx: tokio::sync::mpsc::Receiver<BusCmd>) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            log::error!("cluster bus: cannot start its runtime: {e}");
            return;
        }
    };
    rt.block_on(serve(ctx, rx));
    log::info!("cluster bus stopped");
}

async fn serve(ctx: Arc<ServerCtx>, mut rx: tokio::sync::mpsc::Receiver<BusCmd>) {
    let Some(cluster) = ctx.cluster.clone() else {
        return;
    };
    let (resync_tx, mut resync_rx) = tokio::sync::mpsc::channel::<()>(1);
    let events = {
        let cluster = cluster.clone();
        move |ev: async_nats::Event| {
            let (cluster, resync_tx) = (cluster.clone(), resync_tx.clone());
            async move { on_event(&cluster, &resync_tx, ev) }
        }
    };
    let client = match async_nats::ConnectOptions::new()
        .no_echo()
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(2))
        .reconnect_delay_callback(|attempt| {
            Duration::from_millis((100u64 << attempt.min(5) as u32).min(2000))
        })
        .event_callback(events)
        .connect(cluster.cfg.nats_url.as_str())
        .await
    {
        Ok(c) => c,
        Err(e) => {
            log::error!("cluster bus: {}: {e}", cluster.cfg.nats_url);
            return;
        }
    };
    let mut sub = match client.subscribe("cf.>").await {
        Ok(s) => s,
        Err(e) => {
            log::error!("cluster bus: cannot subscribe: {e}");
            return;
        }
    };
    // The server holds the interest once a flush returns (bounded: without a server the
    // loop must still run, to answer shutdown; the client subscribes again on connect).
    if let Ok(Ok(())) = tokio::time::timeout(Duration::from_secs(2), client.flush()).await {
        cluster.health.subscribed.store(true, Relaxed);
    }
    let hold = cluster.cfg.reorder_hold.max(Duration::from_millis(5));
    let mut tick = tokio::time::interval((hold / 2).max(Duration::from_millis(5)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_sweep = Instant::now();
    let mut beat = tokio::time::interval(cluster.cfg.heartbeat);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let down_after = cluster.cfg.heartbeat * cluster.cfg.down_after_beats;
    // Learn the other nodes' presence now rather than at their next change.
    let dump = cluster.dir.lock().dump_request();
    publish_dir(&client, &dump).await;
    loop {
        tokio::select! {
            m = sub.next() => match m {
                Some(m) if m.subject.as_str() == presence::SUBJECT => {
                    on_dir(&ctx, &cluster, &client, &m.payload).await
                }
                Some(m) if m.subject.starts_with("cf.c.") => on_message(&ctx, &cluster, &m.payload),
                Some(m) if m.subject.as_str() == super::KICK_SUBJECT => {
                    on_kick(&ctx, &cluster, &m.payload)
                }
                Some(m) if m.subject.as_str() == super::BROADCAST_SUBJECT => {
                    on_broadcast(&ctx, &cluster, &m.payload)
                }
                Some(m) if m.subject.as_str() == STOP_SUBJECT => {
                    on_stop(&ctx, &client, &m).await
                }
                Some(m) if m.subject.as_str() == snap_subject(&cluster.cfg.node_id) => {
                    on_snapshot(&ctx, &client, &m).await
                }
                Some(_) => {}
                None => {
                    log::error!("cluster bus: subscription ended");
                    break;
                }
            },
            cmd = rx.recv() => match cmd {
                Some(BusCmd::Publish { subject, payload }) => {
                    if let Err(e) = client.publish(subject, payload.into()).await {
                        log::debug!("cluster bus: publish: {e}");
                        cluster.health.dropped.fetch_add(1, Relaxed);
                    }
                }
                Some(BusCmd::StopReplies { req, conn }) => {
                    let (ctx, client) = (ctx.clone(), client.clone());
                    tokio::spawn(async move { ask_stop(ctx, &client, req, conn).await });
                }
                Some(BusCmd::Snapshot { node, conv, reply }) => {
                    let client = client.clone();
                    tokio::spawn(async move {
                        let asked = client.request(snap_subject(&node), conv.into_bytes().into());
                        let snap = match tokio::time::timeout(super::ASK_TIMEOUT, asked).await {
                            Ok(Ok(m)) => serde_json::from_slice::<Vec<(i64, String, u64)>>(&m.payload)
                                .map(|v| v.into_iter().map(|(id, c, t)| (id, (c, t))).collect())
                                .unwrap_or_default(),
                            _ => super::Snapshots::new(),
                        };
                        let _ = reply.send(snap);
                    });
                }
                Some(BusCmd::Stop) | None => break,
            },
            Some(()) = resync_rx.recv() => {
                resync(&ctx, &cluster);
                let dump = cluster.dir.lock().dump_request();
                publish_dir(&client, &dump).await;
            }
            _ = beat.tick() => {
                let msg = cluster.dir.lock().beat();
                publish_dir(&client, &msg).await;
                let gone = cluster.dir.lock().expire(Instant::now(), down_after);
                for change in gone {
                    cluster.deliver_presence(&ctx, change);
                }
            }
            _ = tick.tick() => {
                let now = Instant::now();
                let due = cluster.order.lock().overdue(now, hold);
                for (conv, hwm) in due {
                    repair(&ctx, &cluster, conv, hwm);
                }
                if now.duration_since(last_sweep) > Duration::from_secs(10) {
                    let followed = |c: &str| ctx.net.topics.subscribers(c) > 0;
                    cluster.order.lock().sweep(now, ORDER_IDLE, followed);
                    last_sweep = now;
                }
            }
        }
    }
    let _ = client.flush().await;
}

fn on_event(cluster: &Cluster, resync: &tokio::sync::mpsc::Sender<()>, ev: async_nats::Event) {
    let h = &cluster.health;
    match ev {
        async_nats::Event::Connected => {
            let was_down = !h.connected.swap(true, Relaxed);
            h.down_since_ms.store(0, Relaxed);
            log::info!("cluster bus: connected to {}", cluster.cfg.nats_url);
            if was_down {
                let _ = resync.try_send(());
            }
        }
        async_nats::Event::Disconnected => {
            h.connected.store(false, Relaxed);
            h.down_since_ms.store(now_ms(), Relaxed);
            log::warn!("cluster bus: disconnected from {}", cluster.cfg.nats_url);
        }
        async_nats::Event::SlowConsumer(_) => {
            log::warn!("cluster bus: slow consumer: events were dropped; resyncing");
            let _ = resync.try_send(());
        }
        other => log::info!("cluster bus: {other}"),
    }
}

/// Where `stop` requests go: every node answers for the replies it runs.
const STOP_SUBJECT: &str = "cf.stop";

/// Where a node answers for the replies it runs in a conversation.
fn snap_subject(node: &str) -> String {
    format!("cf.n.{node}.snap")
}

/// Cancel the caller's replies on every node; NOT_FOUND when no node had one (and this
/// node had none either).
async fn ask_stop(
    ctx: Arc<ServerCtx>,
    client: &async_nats::Client,
    req: super::StopRequest,
    conn: Option<(crate::net::ConnId, Option<String>)>,
) {
    let payload = serde_json::to_vec(&req).unwrap_or_default();
    let asked = client.request(STOP_SUBJECT, payload.into());
    let found = matches!(
        tokio::time::timeout(super::ASK_TIMEOUT, asked).await,
        Ok(Ok(_))
    );
    if let (false, Some((conn, id))) = (found, conn) {
        let ev = Event::error(
            crate::protocol::ErrorCode::NotFound,
            "no reply of yours is being generated in this conversation",
            id,
        );
        // A shard's inbox may be full: wait for room off the bus's own thread.
        tokio::task::spawn_blocking(move || ctx.send_event(conn, ev));
    }
}

/// A user removed from a room on another node: their connections here leave it.
fn on_kick(ctx: &ServerCtx, cluster: &Cluster, payload: &[u8]) {
    #[derive(serde::Deserialize)]
    struct Kick {
        user: String,
        room_id: String,
        conv: String,
    }
    cluster.health.received.fetch_add(1, Relaxed);
    match serde_json::from_slice::<Kick>(payload) {
        Ok(k) => crate::rooms_api::kick_user(ctx, &k.user, &k.room_id, &k.conv),
        Err(_) => {
            cluster.health.malformed.fetch_add(1, Relaxed);
        }
    }
}

/// Another node's admin broadcast, for this node's connections.
fn on_broadcast(ctx: &ServerCtx, cluster: &Cluster, payload: &[u8]) {
    #[derive(serde::Deserialize)]
    struct Broadcast {
        users: Option<Vec<String>>,
        event: serde_json::Value,
    }
    cluster.health.received.fetch_add(1, Relaxed);
    let parsed = serde_json::from_slice::<Broadcast>(payload)
        .and_then(|b| <Event as serde::Deserialize>::deserialize(b.event).map(|ev| (b.users, ev)));
    match parsed {
        Ok((Some(users), ev)) => {
            crate::rooms_api::to_users(ctx, &users, &ev);
        }
        Ok((None, ev)) => crate::rooms_api::to_all(ctx, &ev),
        Err(e) => {
            cluster.health.malformed.fetch_add(1, Relaxed);
            log::debug!("cluster bus: unreadable broadcast: {e}");
        }
    }
}

/// Another node's `stop`: cancel what runs here, and answer only if something did (the
/// asker hears NOT_FOUND when nobody answers).
async fn on_stop(ctx: &ServerCtx, client: &async_nats::Client, m: &async_nats::Message) {
    let Ok(req) = serde_json::from_slice::<super::StopRequest>(&m.payload) else {
        return;
    };
    let n = ctx.hub.generations.cancel(&req.conv, &req.user, req.admin);
    if let (true, Some(reply)) = (n > 0, &m.reply) {
        let _ = client.publish(reply.clone(), n.to_string().into()).await;
    }
}

/// Another node replays a conversation: the replies running here, taken now.
async fn on_snapshot(ctx: &ServerCtx, client: &async_nats::Client, m: &async_nats::Message) {
    let Some(reply) = &m.reply else {
        return;
    };
    let conv = String::from_utf8_lossy(&m.payload);
    let snaps: Vec<(i64, String, u64)> = ctx
        .local_in_flight(&conv)
        .into_iter()
        .map(|(id, (c, t))| (id, c, t))
        .collect();
    let payload = serde_json::to_vec(&snaps).unwrap_or_default();
    let _ = client.publish(reply.clone(), payload.into()).await;
}

async fn publish_dir(client: &async_nats::Client, msg: &presence::DirMsg) {
    let payload = serde_json::to_vec(msg).unwrap_or_default();
    if let Err(e) = client.publish(presence::SUBJECT, payload.into()).await {
        log::debug!("cluster bus: presence publish: {e}");
    }
}

/// Presence news from another node.
async fn on_dir(ctx: &ServerCtx, cluster: &Cluster, client: &async_nats::Client, payload: &[u8]) {
    cluster.health.received.fetch_add(1, Relaxed);
    let msg: presence::DirMsg = match serde_json::from_slice(payload) {
        Ok(m) => m,
        Err(e) => {
            cluster.health.malformed.fetch_add(1, Relaxed);
            log::debug!("cluster bus: unreadable presence message: {e}");
            return;
        }
    };
    let (out, reply) = {
        let mut dir = cluster.dir.lock();
        let out = dir.apply(msg, Instant::now());
        let reply = [
            out.dump.then(|| dir.dump_request()),
            out.send_full.then(|| dir.full()),
        ];
        (out, reply)
    };
    for change in out.changes {
        cluster.deliver_presence(ctx, change);
    }
    for m in reply.into_iter().flatten() {
        publish_dir(client, &m).await;
    }
}

fn on_message(ctx: &ServerCtx, cluster: &Cluster, payload: &[u8]) {
    cluster.health.received.fetch_add(1, Relaxed);
    match wire::decode(payload) {
        Ok(r) => {
            if r.node == cluster.cfg.node_id && r.inc == cluster.inc {
                return;
            }
            if ctx.net.topics.subscribers(&r.event.conversation_id) == 0 {
                return;
            }
            cluster.deliver(ctx, Some(MayBlock::worker()), r.event);
        }
        Err(e) => {
            cluster.health.malformed.fetch_add(1, Relaxed);
            log::debug!("cluster bus: unreadable message: {e}");
        }
    }
}

/// Read the rows after `hwm` for `conv` from the store (off this thread) and deliver
/// them, then what was held.
fn repair(ctx: &Arc<ServerCtx>, cluster: &Arc<Cluster>, conv: Arc<str>, hwm: i64) {
    let (ctx, cluster) = (ctx.clone(), cluster.clone());
    tokio::task::spawn_blocking(move || {
        let rows = ctx
            .store
            .read_conn()
            .and_then(|db| db.messages_after(&conv, hwm, REPAIR_MAX));
        match rows {
            Ok((rows, room_id)) => {
                let events = rows
                    .into_iter()
                    .map(|r| {
                        let seq = r.seq;
                        let ev = Event::MessageAdded {
                            conversation_id: conv.to_string(),
                            room_id: room_id.clone(),
                            message: r.view(),
                            replayed: None,
                        };
                        (seq, topic_event(&conv, TopicKind::Added { seq }, ev))
                    })
                    .collect();
                cluster.health.repairs.fetch_add(1, Relaxed);
                let mut order = cluster.order.lock();
                for e in order.repaired(&conv, events) {
                    ctx.net.publish(MayBlock::worker(), e);
                }
            }
            Err(e) => {
                log::warn!("cluster bus: cannot read a gap in {conv}: {e}");
                cluster.order.lock().repair_failed(&conv, Instant::now());
            }
        }
    });
}

/// After a reconnect or dropped events: every conversation this node follows is read
/// from its last delivered seq (one read each).
fn resync(ctx: &Arc<ServerCtx>, cluster: &Arc<Cluster>) {
    cluster.health.resyncs.fetch_add(1, Relaxed);
    let tracked = cluster.order.lock().tracked();
    log::info!("cluster bus: resync of {} conversations", tracked.len());
    for (conv, hwm) in tracked {
        if ctx.net.topics.subscribers(&conv) > 0 {
            repair(ctx, cluster, conv, hwm);
        }
    }
}
