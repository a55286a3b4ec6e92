//! The upload workers: each owns the uploads pinned to it — the partial file, the running
//! SHA-256, the next chunk — and finalizes them (verify, fsync, rename, record).

use super::*;

/// An upload in progress.
struct Pending {
    conn: ConnId,
    owner: Arc<User>,
    conversation_id: Option<String>,
    file_name: String,
    mime_type: String,
    file_size: u64,
    max_chunk: usize,
    file: std::fs::File,
    path: PathBuf,
    hasher: Sha256,
    next_chunk: u32,
    total_chunks: Option<u32>,
    received: u64,
    last: Instant,
}

pub(super) struct Worker {
    ctx: Arc<ServerCtx>,
    /// For the access check at `init`; `None` when it could not be opened (then every
    /// init that names a conversation fails with INTERNAL).
    db: Option<crate::store::ReadConn>,
    pending: HashMap<Arc<str>, Pending>,
    /// This worker asks clamd whether it is alive when idle (one worker does).
    pings: bool,
}

impl Worker {
    pub(super) fn new(ctx: Arc<ServerCtx>, pings: bool) -> Worker {
        let db = match ctx.store.read_conn() {
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
            pings,
        }
    }

    pub(super) fn run(mut self, rx: Receiver<Job>) {
        let idle = self.ctx.cfg.uploads.idle_timeout;
        let tick = idle.min(Duration::from_secs(1));
        let mut last_sweep = Instant::now();
        let mut last_ping = Instant::now();
        let pinging = self.pings && self.ctx.uploads.scanner.is_some();
        loop {
            // With no upload in progress and no scanner to ping there is nothing to time:
            // an idle server's upload workers sleep until a job comes.
            let next = if self.pending.is_empty() && !pinging {
                rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
            } else {
                rx.recv_timeout(tick)
            };
            match next {
                Ok(Job::Stop) | Err(RecvTimeoutError::Disconnected) => break,
                Ok(job) => self.handle(job),
                Err(RecvTimeoutError::Timeout) => {
                    // Keep /health's view of the scanner fresh while nothing is scanned.
                    if let (true, Some(s)) = (self.pings, &self.ctx.uploads.scanner) {
                        if last_ping.elapsed() >= super::scan::PING_EVERY {
                            last_ping = Instant::now();
                            let _ = s.ping();
                        }
                    }
                }
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
                max_chunk,
            } => {
                let r = self.init(
                    conn,
                    user,
                    &file_id,
                    (file_name, mime_type, file_size, max_chunk),
                    conversation_id,
                );
                match r {
                    Ok(ev) => self
                        .ctx
                        .send_event(conn, Event::FileUpload(Box::new(UploadEvent { id, ..ev }))),
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
                Ok(ev) => self
                    .ctx
                    .send_event(conn, Event::FileUpload(Box::new(UploadEvent { id, ..ev }))),
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
                        self.ctx.send_event(conn, ev);
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
        (file_name, mime_type, file_size, max_chunk): (String, String, u64, usize),
        conversation_id: Option<String>,
    ) -> Result<UploadEvent, (ErrorCode, String)> {
        if let Some(conv) = &conversation_id {
            let Some(db) = &self.db else {
                return Err((ErrorCode::Internal, "storage unavailable".into()));
            };
            let a = db
                .conv_access(conv, &user.id)
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
            max_chunk_bytes: Some(max_chunk),
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
                max_chunk,
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
        let Some(p) = self.pending.get_mut(file_id) else {
            return Err((
                ErrorCode::NotFound,
                format!("no upload {file_id} in progress"),
                true,
            ));
        };
        p.last = Instant::now();
        let max_chunk = p.max_chunk;
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
            ctx.send_event(conn, Event::error(code, msg, id.clone()));
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
        if let Some(refusal) = scan(&ctx, &p) {
            let _ = std::fs::remove_file(&p.path);
            ctx.metrics.uploads_failed.fetch_add(1, Relaxed);
            let (code, msg) = refusal;
            return finish(&ctx, conn, file_id, Event::error(code, msg, id));
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

/// Scan a verified upload before it is stored, when scanning is on. `Some`: refused (the
/// error for the client); `None`: store it.
fn scan(ctx: &ServerCtx, p: &Pending) -> Option<(ErrorCode, String)> {
    use super::scan::Verdict;
    let scanner = ctx.uploads.scanner.as_ref()?;
    let who = (&p.owner.id, &p.file_name);
    match scanner.scan(&p.path, p.received) {
        Verdict::Clean => None,
        Verdict::Infected(sig) => {
            ctx.metrics.uploads_infected.fetch_add(1, Relaxed);
            log::warn!(
                "upload by {:?} named {:?} refused: infected ({sig})",
                who.0,
                who.1
            );
            Some((
                ErrorCode::UploadInfected,
                format!("the file is infected ({sig}); it was deleted"),
            ))
        }
        Verdict::TooLarge => Some((
            ErrorCode::UploadTooLarge,
            format!(
                "the file is larger than the virus scanner accepts ({} bytes)",
                scanner.config().stream_max_bytes
            ),
        )),
        Verdict::Failed(why) => {
            ctx.metrics.upload_scan_failures.fetch_add(1, Relaxed);
            if scanner.config().accept_on_error {
                log::warn!(
                    "upload by {:?} named {:?} stored UNSCANNED: {why} (uploads.on_scanner_error = accept)",
                    who.0,
                    who.1
                );
                None
            } else {
                log::warn!("upload by {:?} named {:?} refused: {why}", who.0, who.1);
                Some((
                    ErrorCode::UploadScanFailed,
                    "the virus scanner is unavailable; try again later".into(),
                ))
            }
        }
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
