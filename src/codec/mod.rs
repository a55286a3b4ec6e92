//! The codec seam: how one connection's text frames become typed commands, and typed
//! events become its frames. The native protocol `confab.v1` ([`native`]) is one codec;
//! a dialect (a seed document's own wire format) is another module implementing
//! [`Codec`] plus one line in [`for_path`].
//!
//! A codec only translates. Authentication, ack-after-commit, idempotency, replay, rate
//! limits, rooms and uploads happen behind it, the same for every codec.
//!
//! An event that goes to many connections is encoded once per codec that needs it
//! ([`Encoded`]): the native form eagerly, by the thread that publishes it; any other
//! form lazily, by the first shard that delivers it to a connection of that codec.

pub mod native;

use std::sync::OnceLock;

use tungstenite::Utf8Bytes;

use crate::net::TokenItem;
use crate::protocol::{DecodeError, Decoder, Event, Incoming};

/// Codecs that can exist at once (each has an id below this): the native one and the
/// five seed dialects.
pub const MAX_CODECS: usize = 6;

pub trait Codec: Sync {
    /// Index of this codec in [`Encoded`]'s frame cache; unique, below [`MAX_CODECS`].
    fn id(&self) -> usize;
    /// Name for logs and docs (`confab.v1`, …).
    fn name(&self) -> &'static str;
    /// The WebSocket subprotocol this codec selects when the client offers it.
    fn subprotocol(&self) -> Option<&'static str>;
    /// One text frame → one typed command. `scratch` is the shard's reusable parser state.
    fn decode(&self, scratch: &mut Decoder, text: &str) -> Result<Incoming, DecodeError>;
    /// One typed event → one text frame.
    fn encode(&self, ev: &Event) -> Utf8Bytes;
    /// The wire form of a (possibly merged) token delta.
    fn token_encoder(&self) -> fn(&TokenItem) -> String;
}

/// The native protocol.
pub static NATIVE: native::Native = native::Native;

/// Every codec, at the index of its `id()`.
pub static CODECS: [&dyn Codec; 1] = [&NATIVE];

/// The codec with this id (the native one for an id no codec has).
pub fn by_id(id: usize) -> &'static dyn Codec {
    CODECS.get(id).copied().unwrap_or(&NATIVE)
}

/// The codec that serves WebSocket upgrades on `path`, if any.
pub fn for_path(path: &str) -> Option<&'static dyn Codec> {
    match path {
        "/v1/ws" => Some(&NATIVE),
        _ => None,
    }
}

/// An event shared by many connections, with its frame cached per codec.
#[derive(Debug)]
pub struct Encoded {
    pub event: Event,
    frames: [OnceLock<Utf8Bytes>; MAX_CODECS],
}

impl Encoded {
    /// Wrap `event`, encoding the native form now (on the publishing thread).
    pub fn new(event: Event) -> Encoded {
        let e = Encoded::lazy(event);
        let _ = e.frames[NATIVE.id()].set(NATIVE.encode(&e.event));
        e
    }

    /// Wrap `event` without encoding it: for events that are usually queued in another
    /// form (token deltas become mergeable `TokenItem`s).
    pub fn lazy(event: Event) -> Encoded {
        Encoded {
            event,
            frames: Default::default(),
        }
    }

    /// The frame for `codec`, encoded on first use.
    pub fn frame(&self, codec: &dyn Codec) -> Utf8Bytes {
        self.frames[codec.id()]
            .get_or_init(|| codec.encode(&self.event))
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_codec_sits_at_its_own_id() {
        assert!(CODECS.len() <= MAX_CODECS);
        for (i, c) in CODECS.iter().enumerate() {
            assert_eq!(c.id(), i, "{}", c.name());
            assert_eq!(by_id(i).name(), c.name());
        }
        assert_eq!(for_path("/v1/ws").map(|c| c.name()), Some("confab.v1"));
        assert!(for_path("/nope").is_none());
    }
}
