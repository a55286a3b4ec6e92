//! Files: chunked upload over the WebSocket (`file_upload`) and download over HTTP
//! (`GET /v1/files/{id}`).
//!
//! Who owns what:
//! - The **shard** checks what it can without I/O (name, type, declared size, chunk size)
//!   and keeps the ids of the uploads each connection has open (`Ws::uploads`). A chunk
//!   for an upload the connection did not start is refused right there, and a connection
//!   that closes aborts its uploads: an upload lives and dies with its connection.
//! - **Upload workers** (`uploads.workers` threads) own the uploads in progress: the
//!   partial file under `<data_dir>/files/tmp/`, the running SHA-256, the next chunk
//!   expected. An upload always lands on the same worker (chosen by its id), so its chunks
//!   are written in the order the connection sent them, without locks. Queues are bounded:
//!   a full one answers `BUSY` and the client resends the same chunk.
//! - `finalize` checks size, chunk count and checksum, fsyncs the file, renames it to
//!   `<data_dir>/files/<file_id>` (never the client's name) and asks the **store writer**
//!   to record it; the client hears `complete` only after that COMMIT.
//! - **Downloads** run on the read pool: access check (the uploader, an admin, or a member
//!   of the conversation the file was uploaded to), then the body, within a byte budget
//!   (`uploads.download_memory_bytes`) so concurrent downloads cannot exhaust memory.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use base64::Engine;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use parking_lot::Mutex;
use rusqlite::Connection;
use sha2::{Digest, Sha256};

use crate::app::{ConnMsg, Shard};
use crate::auth::User;
use crate::completion::{Reply, UploadReply};
use crate::config::UploadsConfig;
use crate::net::http::Response;
use crate::net::{ConnId, MayBlock};
use crate::protocol::{ErrorCode, Event, Upload, UploadEvent};
use crate::server::ServerCtx;
use crate::session::{send_error, send_error_retry};
use crate::store::cmd::{FileRecord, FileRow};
use crate::store::{StoreError, WriteCmd};

/// Base64 as browsers' `btoa` and most clients write it; padding optional.
const B64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// Work for an upload worker.
enum Job {
    Init {
        conn: ConnId,
        user: Arc<User>,
        id: Option<String>,
        file_id: Arc<str>,
        file_name: String,
        mime_type: String,
        file_size: u64,
        conversation_id: Option<String>,
    },
    Chunk {
        conn: ConnId,
        id: Option<String>,
        file_id: Arc<str>,
        chunk_index: u32,
        total_chunks: u32,
        data: String,
    },
    Finalize {
        conn: ConnId,
        id: Option<String>,
        file_id: Arc<str>,
        checksum: String,
    },
    Abort {
        file_id: Arc<str>,
    },
    Stop,
}

/// The upload workers' queues, the file directories and the download budget.
pub struct Uploads {
    senders: Vec<Sender<Job>>,
    receivers: Mutex<Vec<Receiver<Job>>>,
    /// Finished files: `<data_dir>/files/<file_id>`.
    pub dir: PathBuf,
    /// Uploads in progress: `<data_dir>/files/tmp/<file_id>`.
    tmp: PathBuf,
    /// Bytes of file bodies currently held for downloads.
    download_bytes: Arc<AtomicU64>,
}

impl Uploads {
    /// Create the directories and clean up after an earlier run: partial files are
    /// deleted (their connections are gone, so nobody can finish them), and so is a file
    /// renamed into place whose row never committed (a crash inside `finalize`; its
    /// client never heard `complete`).
    pub fn open(cfg: &crate::Config) -> std::io::Result<Uploads> {
        let dir = UploadsConfig::dir(&cfg.store);
        let tmp = dir.join("tmp");
        std::fs::create_dir_all(&tmp)?;
        for e in std::fs::read_dir(&tmp)?.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
        remove_unrecorded(&dir, &cfg.store.db_path());
        let (senders, receivers) = (0..cfg.uploads.workers)
            .map(|_| crossbeam_channel::bounded(cfg.uploads.queue))
            .unzip();
        Ok(Uploads {
            senders,
            receivers: Mutex::new(receivers),
            dir,
            tmp,
            download_bytes: Arc::new(AtomicU64::new(0)),
        })
    }

    fn worker_for(&self, file_id: &str) -> &Sender<Job> {
        // FNV-1a: stable, cheap, and ids are random anyway.
        let h = file_id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
        });
        &self.senders[(h % self.senders.len() as u64) as usize]
    }

    fn try_send(&self, file_id: &str, job: Job) -> bool {
        self.worker_for(file_id).try_send(job).is_ok()
    }

    /// A connection closed with this upload open. Best effort: when the worker's queue
    /// is full the idle sweep deletes the partial file later.
    pub fn abort(&self, file_id: Arc<str>) {
        let _ = self.worker_for(&file_id).try_send(Job::Abort {
            file_id: file_id.clone(),
        });
    }

    /// Ask every worker to stop after the jobs already queued.
    pub fn shutdown(&self) {
        for s in &self.senders {
            let _ = s.send(Job::Stop);
        }
    }
}

pub fn start_workers(ctx: &Arc<ServerCtx>) -> std::io::Result<Vec<JoinHandle<()>>> {
    let receivers = std::mem::take(&mut *ctx.uploads.receivers.lock());
    receivers
        .into_iter()
        .enumerate()
        .map(|(i, rx)| {
            let ctx = ctx.clone();
            std::thread::Builder::new()
                .name(format!("upload-{i}"))
                .spawn(move || Worker::new(ctx).run(rx))
        })
        .collect()
}

/// Delete files under `dir` that have no row in `files`. Best effort: when the database
/// cannot be read, nothing is deleted.
fn remove_unrecorded(dir: &Path, db: &Path) {
    let Ok(db) = crate::store::open_reader(db) else {
        return;
    };
    let Ok(known) = crate::store::files::known_ids(&db) else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(id) = name.to_str() else { continue };
        if !e.path().is_file() || !id.starts_with("f_") {
            continue;
        }
        if !known.contains(id) {
            log::warn!("uploads: removing {id}, stored but never recorded (crash during finalize)");
            let _ = std::fs::remove_file(e.path());
        }
    }
}

// ---------------------------------------------------------------- on the shard

/// A `file_upload` message on a native connection.
pub fn on_message(
    shard: &mut Shard,
    slot: usize,
    user: &Arc<User>,
    id: Option<String>,
    up: Upload,
) {
    let ctx = shard.app().clone();
    let cfg = &ctx.cfg.uploads;
    let Some(conn) = shard.conn_id(slot) else {
        return;
    };
    match up {
        Upload::Init {
            file_name,
            file_size,
            mime_type,
            conversation_id,
            room_id,
        } => {
            let file_name = match check_file(cfg, &file_name, &mime_type, file_size) {
                Ok(safe) => safe,
                Err((code, msg)) => return send_error(shard, slot, code, &msg, id),
            };
            let conversation_id = match (conversation_id, room_id) {
                (Some(c), _) => Some(c),
                (None, Some(room)) => match crate::chat::joined_room(shard, slot, &room, &id) {
                    Some(conv) => Some(conv.to_string()),
                    None => return,
                },
                (None, None) => None,
            };
            let Some(ws) = shard.session_mut(slot) else {
                return;
            };
            if ws.uploads.len() >= cfg.max_per_connection {
                return send_error_retry(
                    shard,
                    slot,
                    ErrorCode::RateLimit,
                    &format!(
                        "at most {} uploads in progress per connection",
                        cfg.max_per_connection
                    ),
                    id,
                    1.0,
                );
            }
            let file_id: Arc<str> = Arc::from(crate::chat::random_id("f_"));
            ws.uploads.push(OpenUpload {
                file_id: file_id.clone(),
                next_chunk: 0,
                resends: 0,
            });
            let job = Job::Init {
                conn,
                user: user.clone(),
                id: id.clone(),
                file_id: file_id.clone(),
                file_name,
                mime_type: mime_type.to_ascii_lowercase(),
                file_size,
                conversation_id,
            };
            if !ctx.uploads.try_send(&file_id, job) {
                forget(shard, slot, &file_id);
                send_error_retry(shard, slot, ErrorCode::Busy, "uploads are busy", id, 0.5);
            }
        }
        Upload::Chunk {
            file_id,
            chunk_index,
            total_chunks,
            chunk_data,
        } => {
            let Some(file_id) = open_upload(shard, slot, &file_id, &id) else {
                return;
            };
            if chunk_data.len() > (cfg.max_chunk_bytes.div_ceil(3) * 4) {
                return send_error(
                    shard,
                    slot,
                    ErrorCode::UploadTooLarge,
                    &format!("a chunk holds at most {} bytes", cfg.max_chunk_bytes),
                    id,
                );
            }
            let job = Job::Chunk {
                conn,
                id: id.clone(),
                file_id: file_id.clone(),
                chunk_index,
                total_chunks,
                data: chunk_data,
            };
            if !ctx.uploads.try_send(&file_id, job) {
                send_error_retry(
                    shard,
                    slot,
                    ErrorCode::Busy,
                    "uploads are busy: send this chunk again",
                    id,
                    0.2,
                );
            }
        }
        Upload::Finalize { file_id, checksum } => {
            let Some(file_id) = open_upload(shard, slot, &file_id, &id) else {
                return;
            };
            let job = Job::Finalize {
                conn,
                id: id.clone(),
                file_id: file_id.clone(),
                checksum,
            };
            if !ctx.uploads.try_send(&file_id, job) {
                send_error_retry(shard, slot, ErrorCode::Busy, "uploads are busy", id, 0.2);
            }
        }
    }
}

/// An upload as its connection's shard sees it.
#[derive(Debug)]
pub struct OpenUpload {
    pub file_id: Arc<str>,
    /// The chunk index the client should send next, as far as the shard can tell.
    next_chunk: u32,
    /// Resends of the chunk before `next_chunk` in a row (after BUSY or a lost answer).
    resends: u8,
}

/// Resends of one chunk that still skip the message rate limit.
const FREE_RESENDS: u8 = 3;

/// Whether this chunk skips the message rate limit: only the next chunk of an upload the
/// connection has open, or a few resends of the previous one. Anything else (chunks out of
/// order, endless resends) is an ordinary message and is rate-limited like any other.
pub fn exempt_chunk(shard: &mut Shard, slot: usize, file_id: &str, index: u32) -> bool {
    let Some(up) = shard
        .session_mut(slot)
        .and_then(|ws| ws.uploads.iter_mut().find(|u| &*u.file_id == file_id))
    else {
        return false;
    };
    if index == up.next_chunk {
        up.next_chunk += 1;
        up.resends = 0;
        true
    } else if index.checked_add(1) == Some(up.next_chunk) && up.resends < FREE_RESENDS {
        up.resends += 1;
        true
    } else {
        false
    }
}

/// The connection's open upload with this id, or a `NOT_FOUND` error.
fn open_upload(
    shard: &mut Shard,
    slot: usize,
    file_id: &str,
    id: &Option<String>,
) -> Option<Arc<str>> {
    let found = shard.session_mut(slot).and_then(|ws| {
        ws.uploads
            .iter()
            .find(|u| &*u.file_id == file_id)
            .map(|u| u.file_id.clone())
    });
    if found.is_none() {
        send_error(
            shard,
            slot,
            ErrorCode::NotFound,
            &format!("no upload {file_id} in progress on this connection"),
            id.clone(),
        );
    }
    found
}

/// The connection no longer has this upload open.
pub fn forget(shard: &mut Shard, slot: usize, file_id: &str) {
    if let Some(ws) = shard.session_mut(slot) {
        ws.uploads.retain(|u| &*u.file_id != file_id);
    }
}

/// The upload ended (complete or failed): tell the client and close it on the shard.
fn finish(ctx: &ServerCtx, conn: ConnId, file_id: Arc<str>, ev: Event) {
    let event = Some(Box::new(ev));
    ctx.to_shard(conn, ConnMsg::UploadDone { file_id, event });
}

/// Characters that reorder or hide text (bidi controls and marks): a name like
/// `invoice\u{202E}fdp.exe` shows as `invoiceexe.pdf`.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// The name a file is stored and shown under: the last path component of what the client
/// sent, without control or bidi characters, trimmed. `None` when nothing usable is left
/// (empty, `.`, `..`, a bare path) or it is longer than 255 bytes.
pub fn safe_file_name(name: &str) -> Option<String> {
    let base = name.rsplit(['/', '\\']).next().unwrap_or("");
    let clean: String = base
        .chars()
        .filter(|c| !c.is_control() && !is_bidi_control(*c))
        .collect();
    let clean = clean.trim();
    if clean.is_empty() || clean == "." || clean == ".." || clean.len() > 255 {
        return None;
    }
    Some(clean.to_string())
}

/// Name, type and size rules, checked before any byte is accepted. `Ok`: the safe name
/// (`safe_file_name`) to store.
pub fn check_file(
    cfg: &UploadsConfig,
    name: &str,
    mime: &str,
    size: u64,
) -> Result<String, (ErrorCode, String)> {
    let Some(name) = safe_file_name(name) else {
        return Err((
            ErrorCode::BadRequest,
            "file_name must name a file (not a path, `.` or `..`) in 1 to 255 bytes".into(),
        ));
    };
    if size > cfg.max_file_bytes {
        return Err((
            ErrorCode::UploadTooLarge,
            format!("files are limited to {} bytes", cfg.max_file_bytes),
        ));
    }
    if !valid_mime(mime) {
        return Err((
            ErrorCode::UploadType,
            format!("mime_type {mime:?} is not a media type like text/plain"),
        ));
    }
    if cfg.allowed_extensions.iter().any(|e| e == "*") {
        return Ok(name);
    }
    let ext = name
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    if ext.is_empty() || !cfg.allowed_extensions.contains(&ext) {
        return Err((
            ErrorCode::UploadType,
            format!(
                "file type {:?} is not accepted (accepted: {})",
                ext,
                cfg.allowed_extensions.join(", ")
            ),
        ));
    }
    Ok(name)
}

/// `type/subtype` of RFC 6838 characters: safe to send back as a Content-Type.
fn valid_mime(m: &str) -> bool {
    let ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-".contains(&b))
    };
    match m.split_once('/') {
        Some((t, s)) => ok(t) && ok(s),
        None => false,
    }
}

// ---------------------------------------------------------------- the workers

/// An upload in progress.
struct Pending {
    conn: ConnId,
    owner: Arc<User>,
    conversation_id: Option<String>,
    file_name: String,
    mime_type: String,
    file_size: u64,
    file: std::fs::File,
    path: PathBuf,
    hasher: Sha256,
    next_chunk: u32,
    total_chunks: Option<u32>,
    received: u64,
    last: Instant,
}

struct Worker {
    ctx: Arc<ServerCtx>,
    /// For the access check at `init`; `None` when it could not be opened (then every
    /// init that names a conversation fails with INTERNAL).
    db: Option<Connection>,
    pending: HashMap<Arc<str>, Pending>,
}

impl Worker {
    fn new(ctx: Arc<ServerCtx>) -> Worker {
        let db = match crate::store::open_reader(&ctx.store.path) {
            Ok(c) => Some(c),
            Err(e) => {
                log::error!("upload worker: cannot open the database: {e}");
                None
            }
        };
        Worker {
            ctx,
            db,
            pending: HashMap::new(),
        }
    }

    fn run(mut self, rx: Receiver<Job>) {
        let idle = self.ctx.cfg.uploads.idle_timeout;
        let tick = idle.min(Duration::from_secs(1));
        let mut last_sweep = Instant::now();
        loop {
            match rx.recv_timeout(tick) {
                Ok(Job::Stop) | Err(RecvTimeoutError::Disconnected) => break,
                Ok(job) => self.handle(job),
                Err(RecvTimeoutError::Timeout) => {}
            }
            if last_sweep.elapsed() >= tick {
                last_sweep = Instant::now();
                self.sweep(idle);
            }
        }
        let left: Vec<Arc<str>> = self.pending.keys().cloned().collect();
        for file_id in left {
            self.drop_pending(&file_id);
        }
    }

    /// Uploads with no chunk for `idle` are abandoned.
    fn sweep(&mut self, idle: Duration) {
        let now = Instant::now();
        let stale: Vec<Arc<str>> = self
            .pending
            .iter()
            .filter(|(_, p)| now.duration_since(p.last) >= idle)
            .map(|(k, _)| k.clone())
            .collect();
        for file_id in stale {
            if let Some(p) = self.take(&file_id) {
                log::info!("upload {file_id} abandoned after {} s idle", idle.as_secs());
                let _ = std::fs::remove_file(&p.path);
                let event = None;
                self.ctx
                    .to_shard(p.conn, ConnMsg::UploadDone { file_id, event });
            }
        }
    }

    fn handle(&mut self, job: Job) {
        match job {
            Job::Init {
                conn,
                user,
                id,
                file_id,
                file_name,
                mime_type,
                file_size,
                conversation_id,
            } => {
                let r = self.init(
                    conn,
                    user,
                    &file_id,
                    file_name,
                    mime_type,
                    file_size,
                    conversation_id,
                );
                match r {
                    Ok(ev) => self.ctx.send_event(
                        MayBlock::worker(),
                        conn,
                        &Event::FileUpload(Box::new(UploadEvent { id, ..ev })),
                    ),
                    Err((code, msg)) => {
                        let retry_after = (code == ErrorCode::Busy).then_some(1.0);
                        let ev = Event::Error {
                            code,
                            error: msg,
                            id,
                            retry_after,
                        };
                        finish(&self.ctx, conn, file_id, ev)
                    }
                }
            }
            Job::Chunk {
                conn,
                id,
                file_id,
                chunk_index,
                total_chunks,
                data,
            } => match self.chunk(&file_id, chunk_index, total_chunks, &data) {
                Ok(ev) => self.ctx.send_event(
                    MayBlock::worker(),
                    conn,
                    &Event::FileUpload(Box::new(UploadEvent { id, ..ev })),
                ),
                Err((code, msg, fatal)) => {
                    let ev = Event::error(code, msg, id);
                    if fatal {
                        if code == ErrorCode::Internal {
                            self.ctx.metrics.uploads_failed.fetch_add(1, Relaxed);
                        }
                        self.drop_pending(&file_id);
                        finish(&self.ctx, conn, file_id, ev);
                    } else {
                        self.ctx.metrics.error(code);
                        self.ctx.send_event(MayBlock::worker(), conn, &ev);
                    }
                }
            },
            Job::Finalize {
                conn,
                id,
                file_id,
                checksum,
            } => self.finalize(conn, id, file_id, &checksum),
            Job::Abort { file_id } => self.drop_pending(&file_id),
            Job::Stop => {}
        }
    }

    /// Take an upload out of the worker's table (it is over, one way or another).
    fn take(&mut self, file_id: &str) -> Option<Pending> {
        let p = self.pending.remove(file_id)?;
        self.ctx.metrics.uploads_active.fetch_sub(1, Relaxed);
        Some(p)
    }

    fn drop_pending(&mut self, file_id: &str) {
        if let Some(p) = self.take(file_id) {
            let _ = std::fs::remove_file(&p.path);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn init(
        &mut self,
        conn: ConnId,
        user: Arc<User>,
        file_id: &Arc<str>,
        file_name: String,
        mime_type: String,
        file_size: u64,
        conversation_id: Option<String>,
    ) -> Result<UploadEvent, (ErrorCode, String)> {
        if let Some(conv) = &conversation_id {
            let Some(db) = &self.db else {
                return Err((ErrorCode::Internal, "storage unavailable".into()));
            };
            let a = crate::store::writer::conv_access(db, conv, &user.id)
                .map_err(|e| e.client_error())?;
            if !a.is_member && !user.admin {
                return Err((
                    ErrorCode::Forbidden,
                    "you are not a participant of this conversation".into(),
                ));
            }
        }
        // The server-wide count of uploads in progress (each holds an open file and disk
        // space) is the `uploads_active` gauge itself: reserved here, released in `take`.
        let active = &self.ctx.metrics.uploads_active;
        let max_active = self.ctx.cfg.uploads.max_active;
        if active.fetch_add(1, Relaxed) >= max_active as i64 {
            active.fetch_sub(1, Relaxed);
            return Err((
                ErrorCode::Busy,
                format!("{max_active} uploads are in progress on this server; try again"),
            ));
        }
        let path = self.ctx.uploads.tmp.join(&**file_id);
        let file = match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) => {
                active.fetch_sub(1, Relaxed);
                log::error!("upload {file_id}: cannot create {}: {e}", path.display());
                return Err((ErrorCode::Internal, "cannot store the upload".to_string()));
            }
        };
        let ev = UploadEvent {
            upload_type: "init",
            file_id: file_id.to_string(),
            file_name: Some(file_name.clone()),
            mime_type: Some(mime_type.clone()),
            conversation_id: conversation_id.clone(),
            size: Some(file_size),
            max_chunk_bytes: Some(self.ctx.cfg.uploads.max_chunk_bytes),
            received_chunks: Some(0),
            received_bytes: Some(0),
            progress: Some(if file_size == 0 { 100.0 } else { 0.0 }),
            ..Default::default()
        };
        self.pending.insert(
            file_id.clone(),
            Pending {
                conn,
                owner: user,
                conversation_id,
                file_name,
                mime_type,
                file_size,
                file,
                path,
                hasher: Sha256::new(),
                next_chunk: 0,
                total_chunks: None,
                received: 0,
                last: Instant::now(),
            },
        );
        Ok(ev)
    }

    /// Append one chunk. Errors: (code, text, whether the upload is over).
    fn chunk(
        &mut self,
        file_id: &str,
        index: u32,
        total: u32,
        data: &str,
    ) -> Result<UploadEvent, (ErrorCode, String, bool)> {
        let max_chunk = self.ctx.cfg.uploads.max_chunk_bytes;
        let Some(p) = self.pending.get_mut(file_id) else {
            return Err((
                ErrorCode::NotFound,
                format!("no upload {file_id} in progress"),
                true,
            ));
        };
        p.last = Instant::now();
        if let Some(t) = p.total_chunks.filter(|t| *t != total) {
            return Err((
                ErrorCode::BadRequest,
                format!("total_chunks changed from {t} to {total}"),
                false,
            ));
        }
        // The same chunk again (a client retry): nothing is written twice.
        let retry = index + 1 == p.next_chunk;
        if !retry && index != p.next_chunk {
            return Err((
                ErrorCode::BadRequest,
                format!("chunks go in order: expected chunk_index {}", p.next_chunk),
                false,
            ));
        }
        if !retry {
            let bytes = B64.decode(data.as_bytes()).map_err(|e| {
                (
                    ErrorCode::BadRequest,
                    format!("chunk_data is not valid base64: {e}"),
                    false,
                )
            })?;
            if bytes.len() > max_chunk {
                return Err((
                    ErrorCode::UploadTooLarge,
                    format!("a chunk holds at most {max_chunk} bytes"),
                    false,
                ));
            }
            if p.received + bytes.len() as u64 > p.file_size {
                return Err((
                    ErrorCode::UploadTooLarge,
                    format!("the chunks exceed the declared file_size {}", p.file_size),
                    false,
                ));
            }
            if let Err(e) = p.file.write_all(&bytes) {
                log::error!("upload {file_id}: write failed: {e}");
                return Err((ErrorCode::Internal, "cannot store the upload".into(), true));
            }
            p.hasher.update(&bytes);
            self.ctx
                .metrics
                .upload_bytes
                .fetch_add(bytes.len() as u64, Relaxed);
            p.received += bytes.len() as u64;
            p.next_chunk += 1;
            p.total_chunks = Some(total);
        }
        Ok(UploadEvent {
            upload_type: "chunk",
            file_id: file_id.to_string(),
            chunk_index: Some(index),
            received_chunks: Some(p.next_chunk),
            total_chunks: Some(total),
            received_bytes: Some(p.received),
            progress: Some(percent(p.received, p.file_size)),
            ..Default::default()
        })
    }

    fn finalize(&mut self, conn: ConnId, id: Option<String>, file_id: Arc<str>, checksum: &str) {
        let ctx = self.ctx.clone();
        let Some(p) = self.pending.get(&file_id) else {
            let ev = Event::error(
                ErrorCode::NotFound,
                format!("no upload {file_id} in progress"),
                id,
            );
            return finish(&ctx, conn, file_id, ev);
        };
        let want = checksum.trim().to_ascii_lowercase();
        let soft_error = |code: ErrorCode, msg: String| {
            ctx.metrics.error(code);
            ctx.send_event(
                MayBlock::worker(),
                conn,
                &Event::error(code, msg, id.clone()),
            );
        };
        if want.len() != 64 || !want.bytes().all(|b| b.is_ascii_hexdigit()) {
            return soft_error(
                ErrorCode::BadRequest,
                "checksum must be the file's SHA-256 as 64 hex digits".into(),
            );
        }
        let chunks_done = p.total_chunks.is_none_or(|t| p.next_chunk == t);
        if p.received != p.file_size || !chunks_done {
            return soft_error(
                ErrorCode::BadRequest,
                format!(
                    "upload incomplete: {} of {} bytes, {} of {} chunks",
                    p.received,
                    p.file_size,
                    p.next_chunk,
                    p.total_chunks.unwrap_or(0)
                ),
            );
        }
        let Some(p) = self.take(&file_id) else {
            return;
        };
        let got = crate::protocol::hex(&p.hasher.clone().finalize());
        if got != want {
            ctx.metrics.uploads_failed.fetch_add(1, Relaxed);
            let _ = std::fs::remove_file(&p.path);
            let ev = Event::error(
                ErrorCode::ChecksumMismatch,
                format!("SHA-256 of the received bytes is {got}, not {want}; upload discarded"),
                id,
            );
            return finish(&ctx, conn, file_id, ev);
        }
        let dest = ctx.uploads.dir.join(&*file_id);
        if let Err(e) = persist(&p.file, &p.path, &dest) {
            log::error!("upload {file_id}: cannot persist: {e}");
            ctx.metrics.uploads_failed.fetch_add(1, Relaxed);
            let _ = std::fs::remove_file(&p.path);
            let ev = Event::error(ErrorCode::Internal, "cannot store the upload", id);
            return finish(&ctx, conn, file_id, ev);
        }
        let size = p.received;
        let done = UploadEvent {
            id: id.clone(),
            upload_type: "complete",
            file_id: file_id.to_string(),
            file_name: Some(p.file_name.clone()),
            mime_type: Some(p.mime_type.clone()),
            conversation_id: p.conversation_id.clone(),
            url: Some(format!("/v1/files/{file_id}")),
            size: Some(size),
            sha256: Some(got.clone()),
            received_bytes: Some(size),
            received_chunks: Some(p.next_chunk),
            total_chunks: p.total_chunks,
            progress: Some(100.0),
            ..Default::default()
        };
        let cmd = WriteCmd::RecordFile(FileRecord {
            file_id: file_id.to_string(),
            owner: p.owner.id.clone(),
            owner_admin: p.owner.admin,
            conversation_id: p.conversation_id.clone(),
            file_name: p.file_name.clone(),
            mime_type: p.mime_type.clone(),
            size: p.received,
            sha256: got,
        });
        let reply = Reply::Upload(Box::new(UploadReply {
            conn,
            id,
            file_id,
            dest,
            done,
        }));
        ctx.store.write(cmd, reply);
    }
}

/// The upload's row is committed: it is complete.
pub fn recorded(ctx: &ServerCtx, u: UploadReply) {
    ctx.metrics.uploads_completed.fetch_add(1, Relaxed);
    finish(ctx, u.conn, u.file_id, Event::FileUpload(Box::new(u.done)));
}

/// The row could not be written (access lost, store failure): the file goes too.
pub fn not_recorded(ctx: &ServerCtx, u: UploadReply, e: &StoreError) {
    ctx.metrics.uploads_failed.fetch_add(1, Relaxed);
    let _ = std::fs::remove_file(&u.dest);
    let (code, msg) = e.client_error();
    finish(ctx, u.conn, u.file_id, Event::error(code, msg, u.id));
}

/// fsync the data, move it into place under its id, fsync the directory: after this
/// the file survives a crash, and only then is it recorded.
fn persist(file: &std::fs::File, from: &Path, to: &Path) -> std::io::Result<()> {
    file.sync_all()?;
    std::fs::rename(from, to)?;
    if let Some(dir) = to.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn percent(done: u64, of: u64) -> f64 {
    if of == 0 {
        100.0
    } else {
        ((done as f64 * 1000.0 / of as f64).round() / 10.0).min(100.0)
    }
}

// ---------------------------------------------------------------- downloads

/// Bytes of a download body held in memory; returned to the budget when dropped.
#[derive(Debug)]
struct DownloadPermit {
    bytes: u64,
    budget: Arc<AtomicU64>,
}

impl Drop for DownloadPermit {
    fn drop(&mut self) {
        self.budget.fetch_sub(self.bytes, Relaxed);
    }
}

/// `GET /v1/files/{id}` on a reader thread.
/// Is `file_id` an id this server makes (`f_` + 24 hex digits)? Only such ids ever name a
/// file on disk, so anything else is 404 before any lookup.
pub fn well_formed_id(file_id: &str) -> bool {
    file_id.len() == 26
        && file_id.starts_with("f_")
        && file_id[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// Serve a file whose row the reader found readable (on the reader thread), within the
/// download memory budget.
pub fn serve(ctx: &ServerCtx, file: FileRow) -> Response {
    let FileRow {
        file_id,
        file_name: name,
        mime_type: mime,
        size,
        sha256: sha,
    } = file;
    if !well_formed_id(&file_id) {
        return Response::error(404, ErrorCode::NotFound, "no such file");
    }
    let budget = &ctx.uploads.download_bytes;
    let before = budget.fetch_add(size, Relaxed);
    let permit = DownloadPermit {
        bytes: size,
        budget: budget.clone(),
    };
    if before > 0 && before + size > ctx.cfg.uploads.download_memory_bytes {
        return Response::error(503, ErrorCode::Busy, "too many downloads in progress")
            .with_header("Retry-After", "1");
    }
    let body = match std::fs::read(ctx.uploads.dir.join(&file_id)) {
        Ok(b) if b.len() as u64 == size => b,
        Ok(b) => {
            log::error!("file {file_id}: {} bytes on disk, {size} recorded", b.len());
            return Response::error(500, ErrorCode::Internal, "the stored file is damaged");
        }
        Err(e) => {
            log::error!("file {file_id}: {e}");
            return Response::error(500, ErrorCode::Internal, "the stored file is missing");
        }
    };
    let mut r = Response::text(200, mime, body)
        .with_header("Content-Disposition", content_disposition(&name))
        .with_header("ETag", format!("\"{sha}\""))
        .with_header("X-Content-Type-Options", "nosniff")
        .with_header("Content-Security-Policy", "sandbox");
    r.hold = Some(Arc::new(permit));
    ctx.metrics.downloads.fetch_add(1, Relaxed);
    ctx.metrics.download_bytes.fetch_add(size, Relaxed);
    r
}

/// `attachment` with an ASCII fallback name and the exact name in RFC 5987 form. The name
/// is reduced again (`safe_file_name`): rows written before names were reduced at upload
/// may still hold a path.
fn content_disposition(name: &str) -> String {
    let name = safe_file_name(name).unwrap_or_else(|| "file".to_string());
    let ascii: String = name
        .chars()
        .map(|c| match c {
            ' '..='~' if c != '"' && c != '\\' => c,
            _ => '_',
        })
        .collect();
    let mut exact = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            exact.push(b as char);
        } else {
            exact.push_str(&format!("%{b:02X}"));
        }
    }
    format!("attachment; filename=\"{ascii}\"; filename*=UTF-8''{exact}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> UploadsConfig {
        crate::Config::defaults().uploads
    }

    #[test]
    fn file_rules() {
        let c = cfg();
        assert!(check_file(&c, "a.pdf", "application/pdf", 10).is_ok());
        assert!(check_file(&c, "A.PDF", "application/pdf", 10).is_ok());
        assert_eq!(
            check_file(&c, "a.exe", "application/octet-stream", 10)
                .unwrap_err()
                .0,
            ErrorCode::UploadType
        );
        assert_eq!(
            check_file(&c, "noext", "text/plain", 10).unwrap_err().0,
            ErrorCode::UploadType
        );
        assert_eq!(
            check_file(&c, "a.txt", "text/plain\r\nX: y", 10)
                .unwrap_err()
                .0,
            ErrorCode::UploadType
        );
        assert_eq!(
            check_file(&c, "a.txt", "text/plain", c.max_file_bytes + 1)
                .unwrap_err()
                .0,
            ErrorCode::UploadTooLarge
        );
        // Control characters are dropped, not kept in a header or a listing.
        assert_eq!(check_file(&c, "a\n.txt", "text/plain", 1).unwrap(), "a.txt");
    }

    #[test]
    fn names_are_reduced_to_a_safe_base_name() {
        assert_eq!(safe_file_name("../../x.txt").as_deref(), Some("x.txt"));
        assert_eq!(
            safe_file_name("C:\\Users\\eve\\a.pdf").as_deref(),
            Some("a.pdf")
        );
        assert_eq!(
            safe_file_name(" report.pdf ").as_deref(),
            Some("report.pdf")
        );
        assert_eq!(
            safe_file_name("invoice\u{202E}fdp.exe").as_deref(),
            Some("invoicefdp.exe")
        );
        for bad in ["", ".", "..", "../", "a/..", "/", "\u{202E}", "\n"] {
            assert_eq!(safe_file_name(bad), None, "{bad:?}");
        }
        assert_eq!(safe_file_name(&"a".repeat(256)), None);
        let c = cfg();
        assert_eq!(
            check_file(&c, "../../x.txt", "text/plain", 1).unwrap(),
            "x.txt"
        );
        assert_eq!(
            check_file(&c, "..", "text/plain", 1).unwrap_err().0,
            ErrorCode::BadRequest
        );
        assert!(content_disposition("../../x.txt").starts_with("attachment; filename=\"x.txt\""));
    }

    #[test]
    fn content_disposition_is_header_safe() {
        let h = content_disposition("ré\"sumé;.pdf");
        assert!(h.is_ascii());
        assert!(
            h.starts_with("attachment; filename=\"r__sum_;.pdf\""),
            "{h}"
        );
        assert!(h.ends_with("r%C3%A9%22sum%C3%A9%3B.pdf"), "{h}");
    }
}
