//! The shard's side of uploads: `file_upload` messages, the connection's open uploads,
//! and the chunk exemption from the message rate limit.

use super::*;

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
    // A dialect may allow larger chunks (004: 1 MiB).
    let max_chunk = shard
        .session(slot)
        .and_then(|s| s.dialect.as_ref())
        .and_then(|d| d.max_chunk_bytes(&ctx.cfg))
        .unwrap_or(cfg.max_chunk_bytes);
    match up {
        Upload::Init {
            file_name,
            file_size,
            mime_type,
            conversation_id,
            room_id,
        } => {
            if let Some(why) = ctx.uploads.off {
                return send_error(shard, slot, ErrorCode::Forbidden, why, id);
            }
            let file_name = match check_file(cfg, &file_name, &mime_type, file_size) {
                Ok(safe) => safe,
                Err((code, msg)) => return send_error(shard, slot, code, &msg, id),
            };
            // A file the virus scanner would not take is refused now, not after upload.
            if let Some(limit) = cfg.scan.as_ref().map(|s| s.stream_max_bytes) {
                if file_size > limit {
                    let msg = format!(
                        "the file is larger than the virus scanner accepts ({limit} bytes)"
                    );
                    return send_error(shard, slot, ErrorCode::UploadTooLarge, &msg, id);
                }
            }
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
            if ws.extras().map_or(0, |e| e.uploads.len()) >= cfg.max_per_connection {
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
            ws.extras_mut().uploads.push(OpenUpload {
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
                max_chunk,
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
            if chunk_data.len() > (max_chunk.div_ceil(3) * 4) {
                return send_error(
                    shard,
                    slot,
                    ErrorCode::UploadTooLarge,
                    &format!("a chunk holds at most {max_chunk} bytes"),
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
        .and_then(|ws| ws.extras.as_mut())
        .and_then(|e| e.uploads.iter_mut().find(|u| &*u.file_id == file_id))
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
    let found = shard
        .session_mut(slot)
        .and_then(|ws| ws.extras())
        .and_then(|e| {
            e.uploads
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
        if let Some(e) = ws.extras.as_mut() {
            e.uploads.retain(|u| &*u.file_id != file_id);
        }
        ws.tidy();
    }
}
