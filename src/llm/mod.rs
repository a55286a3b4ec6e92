//! AI replies: a pool of generation workers fed by a bounded queue.
//!
//! Capacity is `llm.workers + llm.queue` replies in flight. A shard reserves a slot
//! *before* the user's message is stored ([`Llm::try_reserve`]); no slot = `BUSY` with
//! `retry_after`, answered at once. The reservation travels with the message through the
//! store writer and is released when the reply ends, so submitting the job never blocks.
//!
//! A worker runs one reply at a time, blocking: it loads the conversation's context from
//! its own read connection, streams from the [`Provider`] (the embedded demo model or any
//! OpenAI-compatible backend over ureq), publishes each delta as a `token` event to the
//! conversation's subscribers (under the generation's lock — see `generation.rs`),
//! checkpoints the partial text, and hands the final state to the store writer, whose
//! post-commit step sends `message_updated` and `complete`. The reply does not depend on
//! the client's socket: a disconnect does not stop it; `stop` does (checked per chunk).

pub mod demo;
pub mod openai;
pub mod sse;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;

use crate::chat::publish_typing_as;
use crate::completion::Reply;
use crate::config::{AgentConfig, Config, ProviderKind};
use crate::generation::Generation;
use crate::metrics::Metrics;
use crate::net::MayBlock;
use crate::protocol::{ChatRequest, CompletionMeta, ErrorCode, Event};
use crate::server::ServerCtx;
use crate::store::WriteCmd;
use crate::topic::topic_event;
use crate::topic::TopicKind;

pub use sse::Usage;

#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    #[error("cannot reach the model backend: {0}")]
    Connect(String),
    #[error("the model backend answered HTTP {status}: {message}")]
    Http { status: u16, message: String },
    #[error("{0}")]
    Stream(#[from] sse::SseError),
    #[error("the model backend timed out: {0}")]
    Timeout(String),
    #[error("the model backend connection failed mid-stream: {0}")]
    Io(String),
    #[error("the model backend connection ended mid-stream, before the reply finished")]
    Truncated,
}

/// What a provider is asked.
pub struct ModelRequest<'a> {
    pub model: &'a str,
    /// (role, content), oldest first; the system prompt first when there is one.
    pub messages: &'a [(String, String)],
    pub temperature: f64,
    pub max_tokens: u32,
    pub cancel: &'a AtomicBool,
}

/// How a stream ended (when it did not fail).
#[derive(Debug, Clone, PartialEq)]
pub struct StreamEnd {
    /// `stop`, `length` or `cancelled`.
    pub finish_reason: String,
    /// As reported by the backend, when it reported it.
    pub usage: Option<Usage>,
}

/// A source of streamed replies. `sink` gets each delta and returns false to stop.
pub trait Provider: Send + Sync {
    fn stream(
        &self,
        req: &ModelRequest,
        sink: &mut dyn FnMut(&str) -> bool,
    ) -> Result<StreamEnd, LlmError>;
}

/// A held slot of generation capacity; released on drop.
pub struct Reservation {
    slots: Arc<AtomicUsize>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.slots.fetch_sub(1, Relaxed);
    }
}

/// What a chat asked for, resolved against config (agent, overrides within limits).
#[derive(Debug, Clone)]
pub struct Plan {
    pub agent: AgentConfig,
}

pub struct GenRequest {
    pub gen: Arc<Generation>,
    pub plan: Plan,
    pub room_id: Option<String>,
    pub user_text: String,
    pub client_id: Option<String>,
}

struct Work {
    req: GenRequest,
    _reservation: Reservation,
    enqueued: Instant,
}

pub struct Llm {
    /// `None` tells a worker to exit.
    tx: Sender<Option<Work>>,
    rx: Receiver<Option<Work>>,
    reserved: Arc<AtomicUsize>,
    capacity: usize,
    workers: usize,
    demo: Arc<dyn Provider>,
    openai: Arc<dyn Provider>,
    stopping: AtomicBool,
    handles: Mutex<Vec<JoinHandle<()>>>,
}

impl Llm {
    pub fn new(cfg: &Config, _metrics: Arc<Metrics>) -> Llm {
        let capacity = cfg.llm.workers + cfg.llm.queue;
        let (tx, rx) = crossbeam_channel::bounded(capacity);
        Llm {
            tx,
            rx,
            reserved: Arc::new(AtomicUsize::new(0)),
            capacity,
            workers: cfg.llm.workers,
            demo: Arc::new(demo::Demo::new(cfg.llm.demo_tokens_per_s)),
            openai: Arc::new(openai::OpenAi::new(&cfg.llm)),
            stopping: AtomicBool::new(false),
            handles: Mutex::new(Vec::new()),
        }
    }

    pub fn try_reserve(&self) -> Option<Reservation> {
        let mut cur = self.reserved.load(Relaxed);
        loop {
            if cur >= self.capacity || self.stopping.load(Relaxed) {
                return None;
            }
            match self
                .reserved
                .compare_exchange_weak(cur, cur + 1, Relaxed, Relaxed)
            {
                Ok(_) => {
                    return Some(Reservation {
                        slots: self.reserved.clone(),
                    })
                }
                Err(now) => cur = now,
            }
        }
    }

    pub fn in_flight(&self) -> usize {
        self.reserved.load(Relaxed)
    }

    fn provider(&self, kind: ProviderKind) -> Arc<dyn Provider> {
        match kind {
            ProviderKind::Demo => self.demo.clone(),
            ProviderKind::OpenAi => self.openai.clone(),
        }
    }

    /// Stop taking work; running replies are cancelled (and stored as cancelled).
    pub fn shutdown(&self, ctx: &ServerCtx) {
        self.stopping.store(true, Relaxed);
        for g in ctx.hub.generations.all() {
            g.cancel.store(true, Relaxed);
        }
        for _ in 0..self.workers {
            let _ = self.tx.try_send(None);
        }
        for h in self.handles.lock().drain(..) {
            let _ = h.join();
        }
    }
}

/// Resolve a chat's agent and per-message overrides against config limits.
pub fn plan(ctx: &ServerCtx, req: &ChatRequest) -> Result<Plan, String> {
    let cfg = &ctx.cfg.llm;
    let name = req.agent.as_deref().unwrap_or(&cfg.default_agent);
    let Some(base) = ctx.cfg.agents.get(name) else {
        let known: Vec<&str> = ctx.cfg.agents.keys().map(String::as_str).collect();
        return Err(format!(
            "unknown agent {name:?} (known: {})",
            known.join(", ")
        ));
    };
    let mut agent = base.clone();
    if let Some(m) = &req.model {
        if m.is_empty() || m.len() > 128 {
            return Err("`model` must be 1 to 128 characters".into());
        }
        agent.model = m.clone();
    }
    if let Some(p) = &req.system_prompt {
        if p.len() > 16_384 {
            return Err("`system_prompt` is longer than 16384 bytes".into());
        }
        agent.system_prompt = p.clone();
    }
    if let Some(t) = req.temperature {
        if !(0.0..=cfg.temperature_max).contains(&t) {
            return Err(format!(
                "`temperature` must be between 0 and {}",
                cfg.temperature_max
            ));
        }
        agent.temperature = t;
    }
    if let Some(n) = req.max_tokens {
        if n == 0 || n > cfg.max_tokens_limit {
            return Err(format!(
                "`max_tokens` must be between 1 and {}",
                cfg.max_tokens_limit
            ));
        }
        agent.max_tokens = n;
    }
    Ok(Plan { agent })
}

fn progress(ctx: &ServerCtx, gen: &Generation, step: &'static str, message: &str, percent: u8) {
    let ev = Event::Progress {
        conversation_id: gen.conversation_id.to_string(),
        message_id: gen.message_id,
        step,
        message: message.into(),
        percent,
    };
    ctx.publish(
        MayBlock::worker(),
        topic_event(&gen.conversation_id, TopicKind::Ephemeral, ev),
    );
}

/// Queue a reply (the reservation guarantees room in the queue).
pub fn start(ctx: &ServerCtx, req: GenRequest, reservation: Reservation) {
    ctx.metrics.llm_queued.fetch_add(1, Relaxed);
    progress(ctx, &req.gen, "queued", "Waiting for a model worker", 0);
    if let Err(e) = ctx.llm.tx.try_send(Some(Work {
        req,
        _reservation: reservation,
        enqueued: Instant::now(),
    })) {
        // Only when shutting down (capacity is reserved up front).
        ctx.metrics.llm_queued.fetch_sub(1, Relaxed);
        let Some(w) = e.into_inner() else { return };
        finish(
            ctx,
            &w.req,
            String::new(),
            "error",
            "cancelled",
            CompletionMeta::default(),
            Some("the server is shutting down".into()),
        );
    }
}

pub fn start_workers(ctx: &Arc<ServerCtx>) -> std::io::Result<Vec<JoinHandle<()>>> {
    let mut hs = Vec::new();
    for i in 0..ctx.llm.workers {
        let ctx = ctx.clone();
        let rx = ctx.llm.rx.clone();
        // Workers mostly wait on the network or a timer: small stacks.
        let h = std::thread::Builder::new()
            .name(format!("llm-{i}"))
            .stack_size(256 * 1024)
            .spawn(move || worker(ctx, rx))?;
        hs.push(h);
    }
    *ctx.llm.handles.lock() = hs;
    Ok(Vec::new())
}

fn worker(ctx: Arc<ServerCtx>, rx: Receiver<Option<Work>>) {
    // The store's small shared pool (opened at start): 1,000 chats arriving together once
    // made 1,000 workers open SQLite at once, and that burst was in every first token; a
    // connection each also cost ~80 KiB per worker (BENCHMARKS.md).
    let mut db: Option<crate::store::ReadConn> = ctx.store.read_conn().ok();
    while let Ok(Some(work)) = rx.recv() {
        ctx.metrics.llm_queued.fetch_sub(1, Relaxed);
        ctx.metrics.llm_running.fetch_add(1, Relaxed);
        generate(&ctx, &work.req, &mut db, work.enqueued);
        ctx.metrics.llm_running.fetch_sub(1, Relaxed);
    }
}

fn generate(
    ctx: &ServerCtx,
    req: &GenRequest,
    db: &mut Option<crate::store::ReadConn>,
    enqueued: Instant,
) {
    let gen = &req.gen;
    let agent = &req.plan.agent;
    let started = enqueued;
    if gen.cancelled() {
        return finish(
            ctx,
            req,
            String::new(),
            "cancelled",
            "cancelled",
            meta(agent, 0, 0, None, started),
            None,
        );
    }
    progress(ctx, gen, "loading_context", "Loading the conversation", 10);
    if db.is_none() {
        *db = ctx.store.read_conn().ok();
    }
    let cfg = &ctx.cfg.llm;
    let mut messages = Vec::new();
    if !agent.system_prompt.is_empty() {
        messages.push(("system".to_string(), agent.system_prompt.clone()));
    }
    match db.as_ref().map(|c| {
        c.context(
            &gen.conversation_id,
            gen.seq,
            cfg.context_messages,
            cfg.context_max_chars,
        )
    }) {
        Some(Ok(ctx_msgs)) if !ctx_msgs.is_empty() => messages.extend(ctx_msgs),
        _ => messages.push(("user".to_string(), req.user_text.clone())),
    }
    let prompt_chars: usize = messages.iter().map(|(_, c)| c.len()).sum();
    progress(ctx, gen, "generating", "Generating the reply", 30);
    if req.room_id.is_some() {
        publish_typing_as(
            ctx,
            &gen.conversation_id,
            req.room_id.clone(),
            &format!("agent:{}", agent.name),
            &agent.name,
            true,
            false,
        );
    }

    let provider = ctx.llm.provider(agent.provider);
    let mut first_token: Option<Duration> = None;
    let mut last_checkpoint = Instant::now();
    let checkpoint_every = cfg.checkpoint_interval;
    let mut sink = |delta: &str| -> bool {
        if gen.cancelled() {
            return false;
        }
        if delta.is_empty() {
            return true;
        }
        if first_token.is_none() {
            first_token = Some(started.elapsed());
        }
        // Append under the lock (a resuming subscriber's snapshot sees all of this token
        // or none of it), publish after it: the publish may wait on a full shard inbox,
        // and replays must not wait with it (generation.rs).
        let index = {
            let mut st = gen.state.lock();
            let index = st.tokens;
            st.content.push_str(delta);
            st.tokens += 1;
            index
        };
        {
            let ev = Event::Token {
                conversation_id: gen.conversation_id.to_string(),
                message_id: gen.message_id,
                index,
                token: delta.to_string(),
                count: None,
            };
            let kind = TopicKind::Token {
                message_id: gen.message_id,
                index,
                text: Arc::from(delta),
            };
            ctx.publish(
                MayBlock::worker(),
                crate::topic::token_event(&gen.conversation_id, kind, ev),
            );
        }
        if last_checkpoint.elapsed() >= checkpoint_every {
            last_checkpoint = Instant::now();
            let content = gen.state.lock().content.clone();
            let mid = gen.message_id;
            // Best effort: a full queue skips this checkpoint; the final write is kept.
            let cmd = WriteCmd::Checkpoint {
                message_id: mid,
                content,
            };
            let _ = ctx.store.try_write(cmd, Reply::Checkpoint(gen.clone()));
        }
        true
    };
    let model_req = ModelRequest {
        model: &agent.model,
        messages: &messages,
        temperature: agent.temperature,
        max_tokens: agent.max_tokens,
        cancel: &gen.cancel,
    };
    let result = provider.stream(&model_req, &mut sink);
    let (content, tokens) = {
        let st = gen.state.lock();
        (st.content.clone(), st.tokens)
    };
    // No usage from the backend: estimate the prompt — unless the reply failed before
    // its first token (the backend never ran it; nothing to charge).
    let counted = |u: Option<Usage>| {
        u.unwrap_or(Usage {
            prompt_tokens: if tokens == 0 && first_token.is_none() {
                0
            } else {
                (prompt_chars as u64).div_ceil(4)
            },
            completion_tokens: tokens,
        })
    };
    // One ending, three ways to get there.
    let (status, reason, usage, error) = match result {
        Ok(end) if gen.cancelled() || end.finish_reason == "cancelled" => {
            ("cancelled", "cancelled", end.usage, None)
        }
        Ok(end) => (
            "complete",
            if end.finish_reason == "length" {
                "length"
            } else {
                "stop"
            },
            end.usage,
            None,
        ),
        Err(e) => {
            log::warn!(
                "generation {} in {} failed: {e}",
                gen.message_id,
                gen.conversation_id
            );
            ctx.metrics.llm_failed.fetch_add(1, Relaxed);
            ("error", "error", None, Some(e.to_string()))
        }
    };
    let u = counted(usage);
    let m = meta(
        agent,
        u.prompt_tokens,
        u.completion_tokens,
        first_token,
        started,
    );
    finish(ctx, req, content, status, reason, m, error)
}

fn meta(
    agent: &AgentConfig,
    prompt: u64,
    completion: u64,
    first: Option<Duration>,
    started: Instant,
) -> CompletionMeta {
    let cost = prompt as f64 / 1000.0 * agent.price_prompt_per_1k
        + completion as f64 / 1000.0 * agent.price_completion_per_1k;
    CompletionMeta {
        agent: agent.name.clone(),
        model: agent.model.clone(),
        prompt_tokens: prompt,
        completion_tokens: completion,
        total_tokens: prompt + completion,
        cost_usd: cost,
        first_token_ms: first.map(|d| d.as_millis() as u64),
        response_time_ms: started.elapsed().as_millis() as u64,
    }
}

/// What `finished` needs once the final row is committed.
pub struct FinishReply {
    pub gen: Arc<Generation>,
    pub room_id: Option<String>,
    pub content: String,
    pub reason: &'static str,
    pub meta: CompletionMeta,
    pub error: Option<String>,
    pub client_id: Option<String>,
    pub agent: String,
}

/// Store the final state; after COMMIT (`finished`) tell every subscriber
/// (`message_updated`, `complete`, and `error` LLM_ERROR when the backend failed).
fn finish(
    ctx: &ServerCtx,
    req: &GenRequest,
    content: String,
    status: &'static str,
    reason: &'static str,
    meta: CompletionMeta,
    error: Option<String>,
) {
    let cmd = WriteCmd::Finalize {
        message_id: req.gen.message_id,
        content: content.clone(),
        status,
        // What `complete` says, kept with the row: history and replay show it.
        meta_json: {
            let mut v = serde_json::to_value(&meta).unwrap_or_default();
            v["finish_reason"] = serde_json::json!(reason);
            v.to_string()
        },
    };
    let reply = Reply::Finish(Box::new(FinishReply {
        gen: req.gen.clone(),
        room_id: req.room_id.clone(),
        content,
        reason,
        meta,
        error,
        client_id: req.client_id.clone(),
        agent: req.plan.agent.name.clone(),
    }));
    ctx.store.write(cmd, reply);
}

/// The final row is committed (or could not be: `row` is `None`): tell every subscriber.
pub fn finished(ctx: &ServerCtx, f: FinishReply, row: Option<crate::protocol::MessageView>) {
    announce_end(
        ctx,
        &f.gen,
        f.room_id,
        row,
        &f.content,
        f.reason,
        f.meta,
        f.error,
        f.client_id,
        &f.agent,
    )
}

#[allow(clippy::too_many_arguments)]
fn announce_end(
    ctx: &ServerCtx,
    gen: &Arc<Generation>,
    room_id: Option<String>,
    row: Option<crate::protocol::MessageView>,
    content: &str,
    reason: &'static str,
    meta: CompletionMeta,
    error: Option<String>,
    client_id: Option<String>,
    agent: &str,
) {
    let conv = &gen.conversation_id;
    ctx.metrics.generations.record(&meta, reason);
    if let Some(msg) = error {
        ctx.metrics.error(ErrorCode::LlmError);
        let ev = Event::Error {
            code: ErrorCode::LlmError,
            error: msg,
            id: client_id,
            retry_after: None,
        };
        ctx.publish(
            MayBlock::worker(),
            topic_event(
                conv,
                TopicKind::Updated {
                    message_id: gen.message_id,
                },
                ev,
            ),
        );
    }
    if let Some(view) = row {
        let ev = Event::MessageUpdated {
            conversation_id: conv.to_string(),
            room_id: room_id.clone(),
            message: view,
        };
        ctx.publish(
            MayBlock::worker(),
            topic_event(
                conv,
                TopicKind::Updated {
                    message_id: gen.message_id,
                },
                ev,
            ),
        );
    }
    let ev = Event::Complete {
        conversation_id: conv.to_string(),
        message_id: gen.message_id,
        seq: gen.seq,
        response: content.to_string(),
        finish_reason: reason,
        metadata: meta,
    };
    ctx.publish(
        MayBlock::worker(),
        topic_event(
            conv,
            TopicKind::Complete {
                message_id: gen.message_id,
            },
            ev,
        ),
    );
    if room_id.is_some() {
        publish_typing_as(
            ctx,
            conv,
            room_id,
            &format!("agent:{agent}"),
            agent,
            false,
            false,
        );
    }
    ctx.hub.generations.remove(conv, gen.message_id);
    ctx.metrics.llm_completed.fetch_add(1, Relaxed);
}
