//! Rooms in the store: a room is a conversation with a room id, a type and members.
//! Run by the writer inside its batch transaction (reads of a room by the readers too).

use rusqlite::{params, Connection, OptionalExtension};

use super::writer::{touch_user, WriterState};
use super::StoreError;
use crate::protocol::{ErrorCode, RoomType};

#[derive(Debug, Clone)]
pub struct RoomRow {
    pub room_id: String,
    pub room_name: String,
    pub room_type: RoomType,
    pub conversation_id: String,
    pub owner: String,
    pub last_seq: i64,
    pub ai: bool,
}

pub fn room_by_id(conn: &Connection, room_id: &str) -> Result<Option<RoomRow>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT room_id, room_name, room_type, id, owner, last_seq, ai FROM conversations WHERE room_id = ?1 AND deleted = 0")?
        .query_row([room_id], |r| {
            Ok(RoomRow {
                room_id: r.get(0)?,
                room_name: r.get(1)?,
                room_type: RoomType::parse(&r.get::<_, String>(2)?).unwrap_or(RoomType::Shared),
                conversation_id: r.get(3)?,
                owner: r.get(4)?,
                last_seq: r.get(5)?,
                ai: r.get(6)?,
            })
        })
        .optional()?)
}

pub fn is_member(conn: &Connection, conv: &str, user: &str) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM members WHERE conversation_id = ?1 AND user_id = ?2")?
        .query_row([conv, user], |_| Ok(()))
        .optional()?
        .is_some())
}

pub struct NewRoom<'a> {
    pub room_id: &'a str,
    pub room_name: &'a str,
    pub room_type: RoomType,
    pub owner: &'a str,
    pub owner_name: &'a str,
    pub members: &'a [String],
    pub ai: bool,
    pub conversation_id: &'a str,
}

pub fn create_room(
    conn: &Connection,
    state: &mut WriterState,
    r: &NewRoom,
) -> Result<RoomRow, StoreError> {
    if room_by_id(conn, r.room_id)?.is_some()
        || conn
            .prepare_cached("SELECT 1 FROM conversations WHERE room_id = ?1")?
            .query_row([r.room_id], |_| Ok(()))
            .optional()?
            .is_some()
    {
        return Err(StoreError::refused(
            ErrorCode::BadRequest,
            format!("room {} already exists", r.room_id),
        ));
    }
    touch_user(conn, state, r.owner, r.owner_name)?;
    let now = state.now_ms;
    conn.prepare_cached(
        "INSERT INTO conversations (id, owner, kind, room_id, room_name, room_type, created_at, last_updated, ai)
         VALUES (?1, ?2, 'room', ?3, ?4, ?5, ?6, ?6, ?7)",
    )?
    .execute(params![r.conversation_id, r.owner, r.room_id, r.room_name, r.room_type.as_str(), now, r.ai])?;
    conn.prepare_cached("INSERT INTO members (conversation_id, user_id, role, joined_at, room) VALUES (?1, ?2, 'owner', ?3, 1)")?
        .execute(params![r.conversation_id, r.owner, now])?;
    for m in r.members {
        if m != r.owner {
            add_member(conn, now, r.conversation_id, m)?;
        }
    }
    Ok(RoomRow {
        room_id: r.room_id.to_string(),
        room_name: r.room_name.to_string(),
        room_type: r.room_type,
        conversation_id: r.conversation_id.to_string(),
        owner: r.owner.to_string(),
        last_seq: 0,
        ai: r.ai,
    })
}

/// Add a member to a room.
pub fn add_member(conn: &Connection, now: i64, conv: &str, user: &str) -> Result<(), StoreError> {
    conn.prepare_cached("INSERT OR IGNORE INTO members (conversation_id, user_id, role, joined_at, room) VALUES (?1, ?2, 'member', ?3, 1)")?
        .execute(params![conv, user, now])?;
    Ok(())
}

pub fn remove_member(conn: &Connection, conv: &str, user: &str) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached(
            "DELETE FROM members WHERE conversation_id = ?1 AND user_id = ?2 AND role != 'owner'",
        )?
        .execute([conv, user])?
        > 0)
}

pub fn delete_room(conn: &Connection, now: i64, conv: &str) -> Result<(), StoreError> {
    conn.prepare_cached(
        "UPDATE conversations SET deleted = 1, room_id = NULL, last_updated = ?2 WHERE id = ?1",
    )?
    .execute(params![conv, now])?;
    Ok(())
}

/// Join a room for `join_room`: create it when allowed and missing; check membership.
#[allow(clippy::too_many_arguments)]
pub fn join_room(
    conn: &Connection,
    state: &mut WriterState,
    user: &str,
    user_name: &str,
    is_admin: bool,
    room_id: &str,
    room_name: Option<&str>,
    room_type: Option<RoomType>,
    create_allowed: bool,
    new_conversation_id: &str,
) -> Result<(RoomRow, bool), StoreError> {
    match room_by_id(conn, room_id)? {
        Some(room) => {
            let member = is_member(conn, &room.conversation_id, user)?;
            if !member {
                match room.room_type {
                    RoomType::Shared => {
                        add_member(conn, state.now_ms, &room.conversation_id, user)?
                    }
                    _ if is_admin => add_member(conn, state.now_ms, &room.conversation_id, user)?,
                    _ => {
                        return Err(StoreError::refused(
                            ErrorCode::Forbidden,
                            format!(
                                "room {room_id} is {} and you are not a member",
                                room.room_type.as_str()
                            ),
                        ))
                    }
                }
            }
            touch_user(conn, state, user, user_name)?;
            Ok((room, false))
        }
        None if create_allowed => {
            let room = create_room(
                conn,
                state,
                &NewRoom {
                    room_id,
                    room_name: room_name.unwrap_or(room_id),
                    room_type: room_type.unwrap_or(RoomType::Shared),
                    owner: user,
                    owner_name: user_name,
                    members: &[],
                    ai: false,
                    conversation_id: new_conversation_id,
                },
            )?;
            Ok((room, true))
        }
        None => Err(StoreError::refused(
            ErrorCode::NotFound,
            format!("no room {room_id}"),
        )),
    }
}
