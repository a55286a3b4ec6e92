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
use sha2::{Digest, Sha256};

use crate::app::{ConnMsg, Shard};
use crate::auth::User;
use crate::completion::{Reply, UploadReply};
use crate::config::UploadsConfig;
use crate::net::http::Response;
use crate::net::ConnId;
use crate::protocol::{ErrorCode, Event, Upload, UploadEvent};
use crate::server::ServerCtx;
use crate::session::{send_error, send_error_retry};
use crate::store::cmd::{FileRecord, FileRow};
use crate::store::{StoreError, WriteCmd};

mod download;
mod names;
pub mod scan;
mod shard;
mod worker;

pub use download::{serve, well_formed_id};
pub use names::{check_file, safe_file_name};
pub use shard::{exempt_chunk, forget, on_message, OpenUpload};
use worker::Worker;
pub use worker::{not_recorded, recorded};

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
        /// Largest chunk after decoding, for this connection's protocol.
        max_chunk: usize,
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
    /// clamd, when `uploads.virus_scan = "clamd"`.
    pub scanner: Option<scan::Scanner>,
    /// Why every upload is refused, if it is: a cluster whose nodes do not share one
    /// files directory (a file stored on one node could not be downloaded from another).
    pub off: Option<&'static str>,
}

impl Uploads {
    /// Create the directories and clean up after an earlier run: partial files are
    /// deleted (their connections are gone, so nobody can finish them), and so is a file
    /// renamed into place whose row never committed (a crash inside `finalize`; its
    /// client never heard `complete`).
    pub fn open(cfg: &crate::Config) -> std::io::Result<Uploads> {
        let dir = UploadsConfig::dir(&cfg.store);
        // In a cluster the directory is shared: each node cleans only its own partial
        // files, and a file without a row may be another node's finishing upload.
        let tmp = match &cfg.cluster {
            Some(c) => dir.join("tmp").join(&c.node_id),
            None => dir.join("tmp"),
        };
        std::fs::create_dir_all(&tmp)?;
        for e in std::fs::read_dir(&tmp)?.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
        if cfg.cluster.is_none() {
            remove_unrecorded(&dir, &cfg.store.db_path());
        }
        let off = match &cfg.cluster {
            Some(c) if !c.shared_files => {
                log::warn!("uploads are off: cluster.shared_files is false (every node must see one files directory)");
                Some("uploads are off on this server: its nodes do not share a files directory (cluster.shared_files)")
            }
            _ => None,
        };
        let (senders, receivers) = (0..cfg.uploads.workers)
            .map(|_| crossbeam_channel::bounded(cfg.uploads.queue))
            .unzip();
        Ok(Uploads {
            senders,
            receivers: Mutex::new(receivers),
            dir,
            tmp,
            download_bytes: Arc::new(AtomicU64::new(0)),
            scanner: cfg.uploads.scan.clone().map(scan::Scanner::new),
            off,
        })
    }

    /// Jobs waiting for the upload workers now.
    pub fn queue_len(&self) -> usize {
        self.senders.iter().map(|s| s.len()).sum()
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
                .spawn(move || Worker::new(ctx, i == 0).run(rx))
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

/// The upload ended (complete or failed): tell the client and close it on the shard.
fn finish(ctx: &ServerCtx, conn: ConnId, file_id: Arc<str>, ev: Event) {
    let event = Some(Box::new(ev));
    ctx.to_shard(conn, ConnMsg::UploadDone { file_id, event });
}
