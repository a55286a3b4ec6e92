//! The native wire protocol `confab.v1` (see `docs/protocol.md`).
//!
//! - [`codes`]: error codes (shared by every dialect) and close codes;
//! - [`inbound`]: what clients send — one text frame = one JSON object, parsed once with
//!   simd-json into a DOM and read field by field into a typed [`ClientMsg`]. Anything
//!   else — not JSON, not an object, a missing or mistyped field, an unknown `type` — is a
//!   [`DecodeError`] that the connection answers with `BAD_REQUEST` (echoing `id` when it
//!   could be read); the connection stays usable. Unknown fields are ignored;
//! - [`outbound`]: every server message is a typed [`Event`], encoded once with serde into
//!   a string. An event that goes to many connections is encoded once per codec and shared;
//! - [`time`]: timestamps and ids in wire form.
//!
//! The wire form itself is chosen per connection by a codec (`crate::codec`); these types
//! are what every codec translates to and from.

pub mod codes;
pub mod inbound;
pub mod intern;
pub mod outbound;
pub mod time;

pub use codes::{close, ErrorCode};
pub use inbound::*;
pub use outbound::*;
pub use time::*;

pub const PROTOCOL: &str = "confab.v1";
/// Longest client `id` echoed back.
pub const MAX_CLIENT_ID: usize = 64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_lower_case_two_digits_per_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
        assert_eq!(hex(&[]), "");
    }

    fn decode(s: &str) -> Result<Incoming, DecodeError> {
        Decoder::default().decode(s)
    }

    #[test]
    fn chat_decodes_with_its_optional_fields() {
        let m = decode(r#"{"type":"chat","id":"c1","message":"hi","conversation_id":"abc","temperature":0.5,"max_tokens":10,"extra":1}"#).unwrap();
        assert_eq!(m.id.as_deref(), Some("c1"));
        match m.msg {
            ClientMsg::Chat(c) => {
                assert_eq!(c.message, "hi");
                assert_eq!(c.conversation_id.as_deref(), Some("abc"));
                assert_eq!(c.temperature, Some(0.5));
                assert_eq!(c.max_tokens, Some(10));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn malformed_input_is_a_decode_error_not_a_panic() {
        assert!(decode("{not json").is_err());
        assert!(decode("[1,2]").unwrap_err().reason.contains("object"));
        assert!(decode("42").is_err());
        assert!(decode("").is_err());
        let e = decode(r#"{"type":"bogus","id":"x"}"#).unwrap_err();
        assert_eq!(e.id.as_deref(), Some("x"));
        assert!(e.reason.contains("unknown message type"));
        let e =
            decode(r#"{"type":"read","id":"r","conversation_id":"c","seq":"nope"}"#).unwrap_err();
        assert!(e.reason.contains("`seq`"), "{}", e.reason);
        assert_eq!(e.id.as_deref(), Some("r"));
        assert!(decode(r#"{"type":"subscribe"}"#)
            .unwrap_err()
            .reason
            .contains("conversation_id"));
        assert!(decode(r#"{"id":"no-type"}"#)
            .unwrap_err()
            .reason
            .contains("type"));
        let deep = "[".repeat(10_000);
        assert!(decode(&deep).is_err());
    }

    #[test]
    fn events_encode_with_their_type_tag() {
        let e = Event::error(ErrorCode::RateLimit, "slow down", Some("7".into()));
        let s = e.encode();
        assert!(
            s.starts_with(r#"{"type":"error","code":"RATE_LIMIT""#),
            "{s}"
        );
        assert!(s.contains(r#""id":"7""#));
        let t = Event::Token {
            conversation_id: "c".into(),
            message_id: 3,
            index: 0,
            token: "\"q\"".into(),
            count: None,
        }
        .encode();
        assert_eq!(
            t,
            r#"{"type":"token","conversation_id":"c","message_id":3,"index":0,"token":"\"q\""}"#
        );
    }

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_795_397_483_123), "2026-11-23T01:31:23.123Z");
        assert_eq!(rfc3339_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }
}
