//! Renaming and deleting a (non-room) conversation: its owner or an admin.

use super::db::{p, Db};
use super::writer::conv_access;
use super::StoreError;
use crate::protocol::ErrorCode;

/// The owner of a chat conversation, or the reason the user may not change it.
fn check_owner(db: &impl Db, conv: &str, user: &str, admin: bool) -> Result<(), StoreError> {
    let a = conv_access(db, conv, user)?;
    if a.kind == "room" {
        return Err(StoreError::refused(
            ErrorCode::BadRequest,
            "this conversation is a room's: change the room (/v1/rooms/{id})",
        ));
    }
    if a.owner != user && !admin {
        return Err(StoreError::refused(
            ErrorCode::Forbidden,
            "only the conversation's owner may change it",
        ));
    }
    Ok(())
}

/// Give a conversation a title (`None` clears it: lists show the preview).
pub fn rename(
    db: &impl Db,
    now: i64,
    conv: &str,
    user: &str,
    admin: bool,
    title: Option<&str>,
) -> Result<(), StoreError> {
    check_owner(db, conv, user, admin)?;
    db.exec(
        "UPDATE conversations SET title = ?2, last_updated = ?3 WHERE id = ?1",
        p![conv, title, now],
    )?;
    Ok(())
}

/// Delete a conversation with its messages, aliases and file rows; the ids of its files
/// (their bytes are removed after COMMIT).
pub fn delete(
    db: &impl Db,
    conv: &str,
    user: &str,
    admin: bool,
) -> Result<Vec<String>, StoreError> {
    check_owner(db, conv, user, admin)?;
    let files = db.rows(
        "DELETE FROM files WHERE conversation_id = ?1 RETURNING id",
        p![conv],
        |r| r.text(0),
    )?;
    for sql in [
        "DELETE FROM messages WHERE conversation_id = ?1",
        "DELETE FROM compat_alias WHERE conversation_id = ?1",
        "DELETE FROM members WHERE conversation_id = ?1",
        "DELETE FROM conversations WHERE id = ?1",
    ] {
        db.exec(sql, p![conv])?;
    }
    Ok(files)
}
