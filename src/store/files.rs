//! The `files` table: uploads recorded after their bytes are safely on disk.

use super::cmd::{FileRecord, FileRow};
use super::db::{p, Db};
use super::writer::conv_access;
use super::StoreError;
use crate::protocol::ErrorCode;

/// Record a stored upload. Access to its conversation is checked again (membership may
/// have changed since the upload began).
pub fn record(db: &impl Db, now: i64, f: &FileRecord) -> Result<(), StoreError> {
    if let Some(conv) = &f.conversation_id {
        let a = conv_access(db, conv, &f.owner)?;
        if !a.is_member && !f.owner_admin {
            return Err(StoreError::refused(
                ErrorCode::Forbidden,
                "you are no longer a participant of this conversation",
            ));
        }
    }
    db.exec(
        "INSERT INTO files (id, owner, conversation_id, file_name, mime_type, size, sha256, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        p![
            &f.file_id,
            &f.owner,
            &f.conversation_id,
            &f.file_name,
            &f.mime_type,
            f.size as i64,
            &f.sha256,
            now
        ],
    )?;
    Ok(())
}

/// A file's row if `user` may read it: its uploader, an admin, or a member of the
/// conversation it was attached to. Unknown: NOT_FOUND; no access: FORBIDDEN.
pub fn readable(
    db: &impl Db,
    file_id: &str,
    user: &str,
    admin: bool,
) -> Result<FileRow, StoreError> {
    let row = db.row(
        "SELECT owner, conversation_id, file_name, mime_type, size, sha256 FROM files WHERE id = ?1",
        p![file_id],
        |r| {
            Ok((
                r.text(0)?,
                r.opt_text(1)?,
                FileRow {
                    file_id: file_id.to_string(),
                    file_name: r.text(2)?,
                    mime_type: r.text(3)?,
                    size: r.int(4)?.max(0) as u64,
                    sha256: r.text(5)?,
                },
            ))
        },
    )?;
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
pub fn known_ids(db: &impl Db) -> Result<std::collections::HashSet<String>, StoreError> {
    Ok(db
        .rows("SELECT id FROM files", &[], |r| r.text(0))?
        .into_iter()
        .collect())
}
