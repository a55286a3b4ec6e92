//! `confab.v1`, the native protocol (docs/protocol.md): the typed commands and events
//! are its wire form, decoded with simd-json and encoded with serde.

use tungstenite::Utf8Bytes;

use super::Codec;
use crate::net::TokenItem;
use crate::protocol::{DecodeError, Decoder, Event, Incoming, PROTOCOL};

pub struct Native;

/// A token delta in native form (`count` only when deltas were merged).
fn encode_token(t: &TokenItem) -> String {
    Event::Token {
        conversation_id: t.conversation_id.to_string(),
        message_id: t.message_id,
        index: t.index,
        token: t.text.clone(),
        count: (t.count > 1).then_some(t.count),
    }
    .encode()
}

impl Codec for Native {
    fn id(&self) -> usize {
        0
    }

    fn name(&self) -> &'static str {
        PROTOCOL
    }

    fn subprotocol(&self) -> Option<&'static str> {
        Some(PROTOCOL)
    }

    fn decode(&self, scratch: &mut Decoder, text: &str) -> Result<Incoming, DecodeError> {
        scratch.decode(text)
    }

    fn encode(&self, ev: &Event) -> Utf8Bytes {
        Utf8Bytes::from(ev.encode())
    }

    fn token_encoder(&self) -> fn(&TokenItem) -> String {
        encode_token
    }
}
