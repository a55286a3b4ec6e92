//! Rooms in the store: a room is a conversation with a room id, a type and members.
//! Run by the writer inside its batch transaction (reads of a room by the readers too).

use super::db::{p, Db};
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

pub fn room_by_id(db: &impl Db, room_id: &str) -> Result<Option<RoomRow>, StoreError> {
    db.row(
        "SELECT room_id, room_name, room_type, id, owner, last_seq, ai FROM conversations WHERE room_id = ?1 AND deleted = 0",
        p![room_id],
        |r| {
            Ok(RoomRow {
                room_id: r.text(0)?,
                room_name: r.text(1)?,
                room_type: RoomType::parse(&r.text(2)?).unwrap_or(RoomType::Shared),
                conversation_id: r.text(3)?,
                owner: r.text(4)?,
                last_seq: r.int(5)?,
                ai: r.flag(6)?,
            })
        },
    )
}

pub fn is_member(db: &impl Db, conv: &str, user: &str) -> Result<bool, StoreError> {
    Ok(db
        .row(
            "SELECT 1 FROM members WHERE conversation_id = ?1 AND user_id = ?2",
            p![conv, user],
            |_| Ok(()),
        )?
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
    db: &impl Db,
    state: &mut WriterState,
    r: &NewRoom,
) -> Result<RoomRow, StoreError> {
    if room_by_id(db, r.room_id)?.is_some()
        || db
            .row(
                "SELECT 1 FROM conversations WHERE room_id = ?1",
                p![r.room_id],
                |_| Ok(()),
            )?
            .is_some()
    {
        return Err(StoreError::refused(
            ErrorCode::BadRequest,
            format!("room {} already exists", r.room_id),
        ));
    }
    touch_user(db, state, r.owner, r.owner_name)?;
    let now = state.now_ms;
    db.exec(
        "INSERT INTO conversations (id, owner, kind, room_id, room_name, room_type, created_at, last_updated, ai)
         VALUES (?1, ?2, 'room', ?3, ?4, ?5, ?6, ?6, ?7)",
        p![r.conversation_id, r.owner, r.room_id, r.room_name, r.room_type.as_str(), now, r.ai],
    )?;
    db.exec(
        "INSERT INTO members (conversation_id, user_id, role, joined_at, room) VALUES (?1, ?2, 'owner', ?3, 1)",
        p![r.conversation_id, r.owner, now],
    )?;
    for m in r.members {
        if m != r.owner {
            add_member(db, now, r.conversation_id, m)?;
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
pub fn add_member(db: &impl Db, now: i64, conv: &str, user: &str) -> Result<(), StoreError> {
    db.exec(
        "INSERT INTO members (conversation_id, user_id, role, joined_at, room) VALUES (?1, ?2, 'member', ?3, 1)
         ON CONFLICT DO NOTHING",
        p![conv, user, now],
    )?;
    Ok(())
}

pub fn remove_member(db: &impl Db, conv: &str, user: &str) -> Result<bool, StoreError> {
    Ok(db.exec(
        "DELETE FROM members WHERE conversation_id = ?1 AND user_id = ?2 AND role != 'owner'",
        p![conv, user],
    )? > 0)
}

pub fn delete_room(db: &impl Db, now: i64, conv: &str) -> Result<(), StoreError> {
    db.exec(
        "UPDATE conversations SET deleted = 1, room_id = NULL, last_updated = ?2 WHERE id = ?1",
        p![conv, now],
    )?;
    Ok(())
}

/// Join a room for `join_room`: create it when allowed and missing; check membership.
#[allow(clippy::too_many_arguments)]
pub fn join_room(
    db: &impl Db,
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
    match room_by_id(db, room_id)? {
        Some(room) => {
            let member = is_member(db, &room.conversation_id, user)?;
            if !member {
                match room.room_type {
                    RoomType::Shared => add_member(db, state.now_ms, &room.conversation_id, user)?,
                    _ if is_admin => add_member(db, state.now_ms, &room.conversation_id, user)?,
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
            touch_user(db, state, user, user_name)?;
            Ok((room, false))
        }
        None if create_allowed => {
            let created = create_room(
                db,
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
            );
            match created {
                Ok(room) => Ok((room, true)),
                // Created meanwhile by another node's writer (cluster mode): join it.
                Err(StoreError::Refused(..)) if room_by_id(db, room_id)?.is_some() => join_room(
                    db,
                    state,
                    user,
                    user_name,
                    is_admin,
                    room_id,
                    room_name,
                    room_type,
                    false,
                    new_conversation_id,
                ),
                Err(e) => Err(e),
            }
        }
        None => Err(StoreError::refused(
            ErrorCode::NotFound,
            format!("no room {room_id}"),
        )),
    }
}
