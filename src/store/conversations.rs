//! Renaming and deleting a (non-room) conversation: its owner or an admin.

use rusqlite::{params, Connection};

use super::writer::conv_access;
use super::StoreError;
use crate::protocol::ErrorCode;

/// The owner of a chat conversation, or the reason the user may not change it.
fn check_owner(conn: &Connection, conv: &str, user: &str, admin: bool) -> Result<(), StoreError> {
    let a = conv_access(conn, conv, user)?;
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
    conn: &Connection,
    now: i64,
    conv: &str,
    user: &str,
    admin: bool,
    title: Option<&str>,
) -> Result<(), StoreError> {
    check_owner(conn, conv, user, admin)?;
    conn.prepare_cached("UPDATE conversations SET title = ?2, last_updated = ?3 WHERE id = ?1")?
        .execute(params![conv, title, now])?;
    Ok(())
}

/// Delete a conversation with its messages, aliases and file rows; the ids of its files
/// (their bytes are removed after COMMIT).
pub fn delete(
    conn: &Connection,
    conv: &str,
    user: &str,
    admin: bool,
) -> Result<Vec<String>, StoreError> {
    check_owner(conn, conv, user, admin)?;
    let files: Vec<String> = conn
        .prepare_cached("DELETE FROM files WHERE conversation_id = ?1 RETURNING id")?
        .query_map([conv], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for sql in [
        "DELETE FROM messages WHERE conversation_id = ?1",
        "DELETE FROM compat_alias WHERE conversation_id = ?1",
        "DELETE FROM members WHERE conversation_id = ?1",
        "DELETE FROM conversations WHERE id = ?1",
    ] {
        conn.prepare_cached(sql)?.execute([conv])?;
    }
    Ok(files)
}
