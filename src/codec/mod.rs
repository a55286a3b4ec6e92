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

/// Codecs that can exist at once (each has an id below this).
pub const MAX_CODECS: usize = 8;

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
        let frames: [OnceLock<Utf8Bytes>; MAX_CODECS] = Default::default();
        let _ = frames[NATIVE.id()].set(NATIVE.encode(&event));
        Encoded { event, frames }
    }

    /// The frame for `codec`, encoded on first use.
    pub fn frame(&self, codec: &dyn Codec) -> Utf8Bytes {
        self.frames[codec.id()]
            .get_or_init(|| codec.encode(&self.event))
            .clone()
    }
}
