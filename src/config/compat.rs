//! `[compat]`: the seed documents' own protocols (`src/dialect/`, docs/compat.md).

use super::*;

/// A seed document's protocol, served on its own paths (`dialect::route`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Profile {
    /// 000: AGiXT's read-only conversation stream.
    Agixt,
    /// 001: `/ws/chat` token streaming with progress.
    WsChat,
    /// 002: EdAgent's per-user socket.
    EdAgent,
    /// 003: the progress-streaming agent with REST history.
    Progress,
    /// 004: rooms, typing, uploads, receipts.
    Rooms,
}

impl Profile {
    pub const ALL: [Profile; 5] = [
        Profile::Agixt,
        Profile::WsChat,
        Profile::EdAgent,
        Profile::Progress,
        Profile::Rooms,
    ];

    /// The name used in config, logs and the alias table.
    pub fn name(self) -> &'static str {
        match self {
            Profile::Agixt => "agixt",
            Profile::WsChat => "ws_chat",
            Profile::EdAgent => "edagent",
            Profile::Progress => "progress",
            Profile::Rooms => "rooms",
        }
    }

    /// The seed document's number, as in `/compat/{number}/…`.
    pub fn number(self) -> &'static str {
        match self {
            Profile::Agixt => "000",
            Profile::WsChat => "001",
            Profile::EdAgent => "002",
            Profile::Progress => "003",
            Profile::Rooms => "004",
        }
    }

    pub fn parse(s: &str) -> Option<Profile> {
        Profile::ALL.into_iter().find(|p| p.name() == s)
    }
}

#[derive(Debug, Clone)]
pub struct CompatConfig {
    /// Profiles served (their paths answer 404 otherwise).
    pub profiles: Vec<Profile>,
    /// More addresses the same server listens on (the seeds' documented ports).
    pub extra_listen: Vec<std::net::SocketAddr>,
    /// 002/003: a connection with no token acts as the user named in the path — only on a
    /// loopback listener, and only for a loopback (or listed) browser origin.
    pub trust_path_user: bool,
    /// 004: largest inbound message and frame, bytes.
    pub rooms_max_message_bytes: usize,
    /// 004: largest upload chunk after base64 decoding, bytes.
    pub rooms_max_chunk_bytes: usize,
    /// 004: messages per connection per window.
    pub rooms_rate_max_messages: u32,
    pub rooms_rate_window: Duration,
    /// 004: the type of a room `join_room` creates when none is given.
    pub rooms_default_room_type: crate::protocol::RoomType,
}

impl CompatConfig {
    pub fn serves(&self, p: Profile) -> bool {
        self.profiles.contains(&p)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCompat {
    profiles: Vec<String>,
    extra_listen: Vec<String>,
    trust_path_user: bool,
    rooms_max_message_bytes: u64,
    rooms_max_chunk_bytes: u64,
    rooms_rate_max_messages: u32,
    rooms_rate_window_ms: u64,
    rooms_default_room_type: String,
}

impl RawCompat {
    pub(super) fn validate(self) -> Result<CompatConfig, ConfigError> {
        let mut profiles = Vec::new();
        for p in &self.profiles {
            match Profile::parse(p) {
                Some(p) if !profiles.contains(&p) => profiles.push(p),
                Some(_) => {}
                None => {
                    return Err(invalid(
                        "compat.profiles",
                        format!(
                            "unknown profile {p:?} (expected agixt, ws_chat, edagent, progress or rooms)"
                        ),
                    ))
                }
            }
        }
        let mut extra_listen = Vec::new();
        for a in &self.extra_listen {
            match a.parse() {
                Ok(addr) => extra_listen.push(addr),
                Err(_) => {
                    return Err(invalid(
                        "compat.extra_listen",
                        format!("{a:?} is not an IP:port address"),
                    ))
                }
            }
        }
        if self.rooms_max_message_bytes < 1024 || self.rooms_max_message_bytes > 64 << 20 {
            return Err(invalid(
                "compat.rooms_max_message_bytes",
                "must be between 1024 and 67108864",
            ));
        }
        // A chunk travels base64-encoded (4/3) inside a JSON envelope.
        if self.rooms_max_chunk_bytes == 0
            || self.rooms_max_chunk_bytes * 4 / 3 + 1024 > self.rooms_max_message_bytes
        {
            return Err(invalid(
                "compat.rooms_max_chunk_bytes",
                "must be at least 1, and its base64 form plus 1 KiB must fit compat.rooms_max_message_bytes",
            ));
        }
        if self.rooms_rate_max_messages == 0 {
            return Err(invalid(
                "compat.rooms_rate_max_messages",
                "must be at least 1",
            ));
        }
        let rooms_default_room_type =
            crate::protocol::RoomType::parse(&self.rooms_default_room_type).ok_or_else(|| {
                invalid(
                    "compat.rooms_default_room_type",
                    "must be private, shared or group",
                )
            })?;
        Ok(CompatConfig {
            profiles,
            extra_listen,
            trust_path_user: self.trust_path_user,
            rooms_max_message_bytes: self.rooms_max_message_bytes as usize,
            rooms_max_chunk_bytes: self.rooms_max_chunk_bytes as usize,
            rooms_rate_max_messages: self.rooms_rate_max_messages,
            rooms_rate_window: Duration::from_millis(self.rooms_rate_window_ms.max(1)),
            rooms_default_room_type,
        })
    }
}
