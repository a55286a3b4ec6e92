//! Conversation aliases of the seed dialects: a client-chosen id (001's `session_id`,
//! 003's `conversation_id`, 004's numeric ids, 002's per-user default) names one of the
//! user's conversations within one profile. An alias and the conversation it creates are
//! written in the same transaction; native ids stay valid alongside.

use rusqlite::{params, Connection, OptionalExtension};

use super::writer::WriterState;
use super::StoreError;
use crate::config::Profile;

/// The conversation `alias` names for `user` in `profile`, if any.
pub fn lookup(
    conn: &Connection,
    user: &str,
    profile: Profile,
    alias: &str,
) -> Result<Option<String>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT a.conversation_id FROM compat_alias a JOIN conversations c ON c.id = a.conversation_id
             WHERE a.user_id = ?1 AND a.profile = ?2 AND a.alias = ?3 AND c.deleted = 0",
        )?
        .query_row(params![user, profile.name(), alias], |r| r.get(0))
        .optional()?)
}

/// The alias `user` gave `conv` in `profile`, if any.
pub fn alias_of(
    conn: &Connection,
    user: &str,
    profile: Profile,
    conv: &str,
) -> Result<Option<String>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT alias FROM compat_alias WHERE conversation_id = ?1 AND profile = ?2 AND user_id = ?3 LIMIT 1",
        )?
        .query_row(params![conv, profile.name(), user], |r| r.get(0))
        .optional()?)
}

/// The conversation `alias` names, created (owned by `user`, id `new_id`) with the alias
/// when there is none. `(conversation id, created)`.
pub fn resolve_or_create(
    conn: &Connection,
    state: &mut WriterState,
    user: (&str, &str),
    profile: Profile,
    alias: &str,
    new_id: &str,
) -> Result<(String, bool), StoreError> {
    let (user_id, user_name) = user;
    if let Some(c) = lookup(conn, user_id, profile, alias)? {
        return Ok((c, false));
    }
    super::writer::touch_user(conn, state, user_id, user_name)?;
    let now = state.now_ms;
    conn.prepare_cached(
        "INSERT INTO conversations (id, owner, kind, created_at, last_updated) VALUES (?1, ?2, 'chat', ?3, ?3)",
    )?
    .execute(params![new_id, user_id, now])?;
    conn.prepare_cached(
        "INSERT INTO members (conversation_id, user_id, role, joined_at) VALUES (?1, ?2, 'owner', ?3)",
    )?
    .execute(params![new_id, user_id, now])?;
    // A deleted conversation may still hold the alias: the new one takes it over.
    conn.prepare_cached(
        "INSERT INTO compat_alias (user_id, profile, alias, conversation_id, created_at) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (user_id, profile, alias) DO UPDATE SET conversation_id = excluded.conversation_id, created_at = excluded.created_at",
    )?
    .execute(params![user_id, profile.name(), alias, new_id, now])?;
    Ok((new_id.to_string(), true))
}
