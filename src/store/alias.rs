//! Conversation aliases of the seed dialects: a client-chosen id (001's `session_id`,
//! 003's `conversation_id`, 004's numeric ids, 002's per-user default) names one of the
//! user's conversations within one profile. An alias and the conversation it creates are
//! written in the same transaction; native ids stay valid alongside.

use super::db::{p, Db};
use super::writer::WriterState;
use super::StoreError;
use crate::config::Profile;

/// The conversation `alias` names for `user` in `profile`, if any.
pub fn lookup(
    db: &impl Db,
    user: &str,
    profile: Profile,
    alias: &str,
) -> Result<Option<String>, StoreError> {
    db.row(
        "SELECT a.conversation_id FROM compat_alias a JOIN conversations c ON c.id = a.conversation_id
         WHERE a.user_id = ?1 AND a.profile = ?2 AND a.alias = ?3 AND c.deleted = 0",
        p![user, profile.name(), alias],
        |r| r.text(0),
    )
}

/// The alias `user` gave `conv` in `profile`, if any.
pub fn alias_of(
    db: &impl Db,
    user: &str,
    profile: Profile,
    conv: &str,
) -> Result<Option<String>, StoreError> {
    db.row(
        "SELECT alias FROM compat_alias WHERE conversation_id = ?1 AND profile = ?2 AND user_id = ?3 LIMIT 1",
        p![conv, profile.name(), user],
        |r| r.text(0),
    )
}

/// The conversation `alias` names, created (owned by `user`, id `new_id`) with the alias
/// when there is none. `(conversation id, created)`.
pub fn resolve_or_create(
    db: &impl Db,
    state: &mut WriterState,
    user: (&str, &str),
    profile: Profile,
    alias: &str,
    new_id: &str,
) -> Result<(String, bool), StoreError> {
    let (user_id, user_name) = user;
    if let Some(c) = lookup(db, user_id, profile, alias)? {
        return Ok((c, false));
    }
    super::writer::touch_user(db, state, user_id, user_name)?;
    let now = state.now_ms;
    super::writer::new_conversation(db, new_id, user_id, now)?;
    // A deleted conversation may still hold the alias: the new one takes it over.
    db.exec(
        "INSERT INTO compat_alias (user_id, profile, alias, conversation_id, created_at) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (user_id, profile, alias) DO UPDATE SET conversation_id = excluded.conversation_id, created_at = excluded.created_at",
        p![user_id, profile.name(), alias, new_id, now],
    )?;
    Ok((new_id.to_string(), true))
}
