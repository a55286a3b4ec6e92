//! The `files` table: uploads recorded after their bytes are safely on disk.

use rusqlite::{params, Connection, OptionalExtension};

use super::cmd::{FileRecord, FileRow};
use super::writer::conv_access;
use super::StoreError;
use crate::protocol::ErrorCode;

/// Record a stored upload. Access to its conversation is checked again (membership may
/// have changed since the upload began).
pub fn record(db: &Connection, now: i64, f: &FileRecord) -> Result<(), StoreError> {
    if let Some(conv) = &f.conversation_id {
        let a = conv_access(db, conv, &f.owner)?;
        if !a.is_member && !f.owner_admin {
            return Err(StoreError::refused(
                ErrorCode::Forbidden,
                "you are no longer a participant of this conversation",
            ));
        }
    }
    db.prepare_cached(
        "INSERT INTO files (id, owner, conversation_id, file_name, mime_type, size, sha256, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        f.file_id,
        f.owner,
        f.conversation_id,
        f.file_name,
        f.mime_type,
        f.size as i64,
        f.sha256,
        now
    ])?;
    Ok(())
}

/// A file's row if `user` may read it: its uploader, an admin, or a member of the
/// conversation it was attached to. Unknown: NOT_FOUND; no access: FORBIDDEN.
pub fn readable(
    db: &Connection,
    file_id: &str,
    user: &str,
    admin: bool,
) -> Result<FileRow, StoreError> {
    let row = db
        .prepare_cached(
            "SELECT owner, conversation_id, file_name, mime_type, size, sha256 FROM files WHERE id = ?1",
        )?
        .query_row([file_id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Option<String>>(1)?,
                FileRow {
                    file_id: file_id.to_string(),
                    file_name: r.get(2)?,
                    mime_type: r.get(3)?,
                    size: r.get::<_, i64>(4)?.max(0) as u64,
                    sha256: r.get(5)?,
                },
            ))
        })
        .optional()?;
    let Some((owner, conv, file)) = row else {
        return Err(StoreError::refused(ErrorCode::NotFound, "no such file"));
    };
    let allowed = owner == user
        || admin
        || conv.is_some_and(|c| conv_access(db, &c, user).is_ok_and(|a| a.is_member));
    if !allowed {
        return Err(StoreError::refused(
            ErrorCode::Forbidden,
            "no access to this file",
        ));
    }
    Ok(file)
}

/// Is there a row for `file_id`? (Start-up cleanup of files that never got one.)
pub fn known_ids(db: &Connection) -> Result<std::collections::HashSet<String>, StoreError> {
    Ok(db
        .prepare("SELECT id FROM files")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?)
}
