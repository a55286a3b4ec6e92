//! Inbound WebSocket frames (RFC 6455 §5), decoded by the shard itself.
//!
//! A connection's reader state is one pointer: [`Reader`] allocates only while a frame is
//! cut across reads, a message arrives in fragments, or read input waits for the next
//! turn (the shard's read budget ran out). Everything else is decoded straight from the
//! shard's one read buffer, unmasked in place, and handed on as a [`Unit`]. An idle
//! connection keeps no buffer (tungstenite's context kept ~512 bytes per connection for
//! its whole life).
//!
//! What is checked, each a [`Violation`] with its close code: reserved bits and opcodes,
//! unmasked client frames, control frames fragmented or over 125 bytes, a 64-bit length
//! with its top bit set, continuation frames out of place (1002); UTF-8 of text messages,
//! failing fast inside fragments, and of close reasons (1007); frame and message sizes
//! (1009) — checked from the header, before any of the payload is buffered.

use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Bytes, Utf8Bytes};

use super::close;

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

const NEW_INSIDE_FRAGMENTED: Violation =
    Violation::Protocol("a new message inside a fragmented one");
const CONTINUATION_WITHOUT_MESSAGE: Violation =
    Violation::Protocol("continuation frame without a message");

/// Sizes one endpoint accepts (8 bytes: every connection keeps its endpoint's; a limit
/// past 4 GiB is 4 GiB).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    max_frame: u32,
    max_message: u32,
}

impl Limits {
    pub const fn new(max_frame: usize, max_message: usize) -> Limits {
        const fn clamp(n: usize) -> u32 {
            if n > u32::MAX as usize {
                u32::MAX
            } else {
                n as u32
            }
        }
        Limits {
            max_frame: clamp(max_frame),
            max_message: clamp(max_message),
        }
    }

    pub fn max_message(&self) -> usize {
        self.max_message as usize
    }
}

/// What a client did wrong; the connection is closed with [`code`](Violation::code).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    Protocol(&'static str),
    InvalidUtf8,
    TooBig,
}

impl Violation {
    pub fn code(&self) -> u16 {
        match self {
            Violation::Protocol(_) => close::PROTOCOL_ERROR,
            Violation::InvalidUtf8 => close::INVALID_DATA,
            Violation::TooBig => close::TOO_BIG,
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            Violation::Protocol(why) => why,
            Violation::InvalidUtf8 => "invalid UTF-8",
            Violation::TooBig => "message too big",
        }
    }
}

/// One complete thing the client sent.
#[derive(Debug, PartialEq)]
pub enum Unit {
    Text(Utf8Bytes),
    Binary(Bytes),
    Ping(Bytes),
    Pong,
    /// The client's close frame: the code to answer with (its own when allowed, 1002
    /// when not; none when it sent none).
    Close(Option<u16>),
}

/// A connection's reader: nothing while no frame or message is partly received.
#[derive(Debug, Default)]
pub struct Reader {
    partial: Option<Box<Partial>>,
}

#[derive(Debug, Default)]
struct Partial {
    /// The start of a frame whose rest has not arrived: its payload unmasked up to
    /// `unmasked` bytes, the rest as received.
    frame: Vec<u8>,
    /// Payload bytes of `frame` already unmasked (text is checked as it arrives).
    unmasked: usize,
    /// Text payload bytes of `frame` known to be valid UTF-8 up to a character boundary.
    checked: usize,
    /// A message whose final fragment has not arrived.
    message: Option<Fragments>,
    /// Input read but not decoded yet: the read budget ran out (`stash`).
    unread: Vec<u8>,
}

#[derive(Debug)]
struct Fragments {
    text: bool,
    data: Vec<u8>,
    /// `data[..valid]` is known to be valid UTF-8 (text only); the rest is at most the
    /// start of one character.
    valid: usize,
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy)]
struct Header {
    fin: bool,
    opcode: u8,
    mask: [u8; 4],
    /// Header bytes, mask included.
    len: usize,
    payload: usize,
}

/// The header at the start of `b`: `Ok(None)` while incomplete.
fn parse_header(b: &[u8], limits: &Limits) -> Result<Option<Header>, Violation> {
    if b.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (b[0], b[1]);
    if b0 & 0x70 != 0 {
        return Err(Violation::Protocol("reserved bits set"));
    }
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0F;
    match opcode {
        OP_CONTINUATION | OP_TEXT | OP_BINARY => {}
        OP_CLOSE | OP_PING | OP_PONG => {
            if !fin {
                return Err(Violation::Protocol("fragmented control frame"));
            }
            if b1 & 0x7F > 125 {
                return Err(Violation::Protocol("control frame over 125 bytes"));
            }
        }
        _ => return Err(Violation::Protocol("unknown opcode")),
    }
    if b1 & 0x80 == 0 {
        return Err(Violation::Protocol("unmasked client frame"));
    }
    let (ext, payload) = match b1 & 0x7F {
        126 => {
            if b.len() < 4 {
                return Ok(None);
            }
            (2, u16::from_be_bytes([b[2], b[3]]) as u64)
        }
        127 => {
            if b.len() < 10 {
                return Ok(None);
            }
            let mut n = [0u8; 8];
            n.copy_from_slice(&b[2..10]);
            (8, u64::from_be_bytes(n))
        }
        n => (0, n as u64),
    };
    if payload > i64::MAX as u64 {
        return Err(Violation::Protocol("invalid frame length"));
    }
    if payload > u64::from(limits.max_frame) || payload > u64::from(limits.max_message) {
        return Err(Violation::TooBig);
    }
    let len = 2 + ext + 4;
    if b.len() < len {
        return Ok(None);
    }
    let mut mask = [0u8; 4];
    mask.copy_from_slice(&b[2 + ext..len]);
    Ok(Some(Header {
        fin,
        opcode,
        mask,
        len,
        payload: payload as usize,
    }))
}

/// The header bytes still missing from `b` (the start of a frame), given what is there.
fn header_wanted(b: &[u8]) -> usize {
    let need: usize = match b.get(1).map(|b1| b1 & 0x7F) {
        None => 2,
        Some(126) => 2 + 2 + 4,
        Some(127) => 2 + 8 + 4,
        Some(_) => 2 + 4,
    };
    need.saturating_sub(b.len()).max(1)
}

/// Unmask `payload`, whose first byte is byte `offset` of its frame's payload.
fn unmask_from(payload: &mut [u8], mask: [u8; 4], offset: usize) {
    let mut m = [0u8; 4];
    for (i, b) in m.iter_mut().enumerate() {
        *b = mask[(offset + i) % 4];
    }
    unmask(payload, m);
}

fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let word = u32::from_ne_bytes(mask);
    let mut chunks = payload.chunks_exact_mut(4);
    for c in &mut chunks {
        let v = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]) ^ word;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i];
    }
}

/// Close codes a client may send (RFC 6455 §7.4, the IANA registry): tungstenite's table.
fn close_code_allowed(code: u16) -> bool {
    CloseCode::from(code).is_allowed()
}

impl Reader {
    /// Nothing held: no partial frame, no open fragmented message, no unread input.
    pub fn is_idle(&self) -> bool {
        self.partial.is_none()
    }

    /// A fragmented message is open.
    pub fn in_message(&self) -> bool {
        self.partial.as_ref().is_some_and(|p| p.message.is_some())
    }

    /// Keep `input` (read, not decoded: the read budget ran out) for the next turn.
    /// Only called with nothing unread already held.
    pub fn stash(&mut self, input: &[u8]) {
        if input.is_empty() {
            return;
        }
        let p = self.partial.get_or_insert_with(Box::default);
        p.unread.extend_from_slice(input);
    }

    /// Input stashed for this turn, if any (the caller decodes it before reading more).
    pub fn take_unread(&mut self) -> Option<Vec<u8>> {
        let p = self.partial.as_mut()?;
        if p.unread.is_empty() {
            return None;
        }
        let v = std::mem::take(&mut p.unread);
        self.release_if_empty();
        Some(v)
    }

    fn release_if_empty(&mut self) {
        if self
            .partial
            .as_ref()
            .is_some_and(|p| p.frame.is_empty() && p.message.is_none() && p.unread.is_empty())
        {
            self.partial = None;
        }
    }

    /// Decode from `input`: how many of its bytes were used and the unit they completed,
    /// if any. Uses at least one byte of a non-empty input; bytes of a frame not complete
    /// yet are kept. Call again with the rest until all of it is used.
    pub fn next(
        &mut self,
        input: &mut [u8],
        limits: &Limits,
    ) -> Result<(usize, Option<Unit>), Violation> {
        if input.is_empty() {
            return Ok((0, None));
        }
        let Some(p) = self.partial.as_mut().filter(|p| !p.frame.is_empty()) else {
            // The common case: the whole frame is in this input.
            match parse_header(input, limits)? {
                Some(h) if input.len() >= h.len + h.payload => {
                    let total = h.len + h.payload;
                    let payload = &mut input[h.len..total];
                    unmask(payload, h.mask);
                    let unit = self.complete(h, payload, limits)?;
                    return Ok((total, unit));
                }
                _ => {
                    // Partial: keep it (the header may still be incomplete).
                    let p = self.partial.get_or_insert_with(Box::default);
                    p.frame.extend_from_slice(input);
                    p.check_so_far(limits)?;
                    return Ok((input.len(), None));
                }
            }
        };
        let take = match parse_header(&p.frame, limits)? {
            Some(h) => (h.len + h.payload - p.frame.len()).min(input.len()),
            None => header_wanted(&p.frame).min(input.len()),
        };
        // Grown as bytes arrive (a doubling at most), never reserved from the header's
        // length: a client that announces a big frame and sends one byte costs one byte.
        p.frame.extend_from_slice(&input[..take]);
        let Some(h) = parse_header(&p.frame, limits)? else {
            return Ok((take, None));
        };
        if p.frame.len() < h.len + h.payload {
            p.check_so_far(limits)?;
            return Ok((take, None));
        }
        let mut frame = std::mem::take(&mut p.frame);
        let done = std::mem::take(&mut p.unmasked);
        p.checked = 0;
        let payload = &mut frame[h.len..];
        unmask_from(&mut payload[done..], h.mask, done);
        let unit = self.complete(h, payload, limits)?;
        self.release_if_empty();
        Ok((take, unit))
    }

    /// A whole frame (payload unmasked) arrived.
    fn complete(
        &mut self,
        h: Header,
        payload: &mut [u8],
        limits: &Limits,
    ) -> Result<Option<Unit>, Violation> {
        match h.opcode {
            OP_TEXT | OP_BINARY => {
                if self.in_message() {
                    return Err(NEW_INSIDE_FRAGMENTED);
                }
                let text = h.opcode == OP_TEXT;
                if h.fin {
                    return whole(text, payload.to_vec()).map(Some);
                }
                let mut f = Fragments {
                    text,
                    data: Vec::new(),
                    valid: 0,
                };
                f.extend(payload, limits)?;
                self.partial.get_or_insert_with(Box::default).message = Some(f);
                Ok(None)
            }
            OP_CONTINUATION => {
                let p = self.partial.as_mut();
                let Some(message) = p.map(|p| &mut p.message) else {
                    return Err(CONTINUATION_WITHOUT_MESSAGE);
                };
                let Some(f) = message.as_mut() else {
                    return Err(CONTINUATION_WITHOUT_MESSAGE);
                };
                f.extend(payload, limits)?;
                if !h.fin {
                    return Ok(None);
                }
                let Some(f) = message.take() else {
                    return Ok(None);
                };
                self.release_if_empty();
                whole(f.text, f.data).map(Some)
            }
            OP_PING => Ok(Some(Unit::Ping(Bytes::copy_from_slice(payload)))),
            OP_PONG => Ok(Some(Unit::Pong)),
            OP_CLOSE => match payload.len() {
                0 => Ok(Some(Unit::Close(None))),
                1 => Err(Violation::Protocol("close frame with a 1-byte payload")),
                _ => {
                    if std::str::from_utf8(&payload[2..]).is_err() {
                        return Err(Violation::InvalidUtf8);
                    }
                    let code = u16::from_be_bytes([payload[0], payload[1]]);
                    let answer = if close_code_allowed(code) {
                        code
                    } else {
                        close::PROTOCOL_ERROR
                    };
                    Ok(Some(Unit::Close(Some(answer))))
                }
            },
            _ => Err(Violation::Protocol("unknown opcode")),
        }
    }
}

impl Partial {
    /// A frame still arriving: refuse a continuation that would take its message over
    /// the limit (before buffering it), and for text unmask what came and fail at once on
    /// a byte that can never be valid UTF-8 (the frame is checked whole again when
    /// complete). Each byte is unmasked and scanned once, however the frame is cut.
    fn check_so_far(&mut self, limits: &Limits) -> Result<(), Violation> {
        let Some(h) = parse_header(&self.frame, limits)? else {
            return Ok(());
        };
        // What the whole frame would be refused for, refused from its header (the same
        // violation, however the frame is cut: the fuzz target's oracle).
        match (h.opcode, &self.message) {
            (OP_TEXT | OP_BINARY, Some(_)) => return Err(NEW_INSIDE_FRAGMENTED),
            (OP_CONTINUATION, None) => return Err(CONTINUATION_WITHOUT_MESSAGE),
            (OP_CONTINUATION, Some(m)) if m.data.len() + h.payload > limits.max_message() => {
                return Err(Violation::TooBig)
            }
            _ => {}
        }
        // A continuation may first finish a character the message's last fragment began:
        // those bytes are checked with the message when the frame completes.
        let skip = match h.opcode {
            OP_TEXT => 0,
            OP_CONTINUATION => match &self.message {
                Some(m) if m.text => m.unfinished_char_rest(),
                _ => return Ok(()),
            },
            _ => return Ok(()),
        };
        let payload = &mut self.frame[h.len..];
        let done = self.unmasked;
        unmask_from(&mut payload[done..], h.mask, done);
        self.unmasked = payload.len();
        self.checked = self.checked.max(skip);
        if payload.len() <= self.checked {
            return Ok(());
        }
        match std::str::from_utf8(&payload[self.checked..]) {
            Ok(_) => self.checked = payload.len(),
            Err(e) if e.error_len().is_some() => return Err(Violation::InvalidUtf8),
            Err(e) => self.checked += e.valid_up_to(),
        }
        Ok(())
    }
}

impl Fragments {
    /// Bytes still missing from a character the data so far ends inside (0 to 3).
    fn unfinished_char_rest(&self) -> usize {
        let tail = &self.data[self.valid..];
        let want: usize = match tail.first() {
            Some(0xC0..=0xDF) => 2,
            Some(0xE0..=0xEF) => 3,
            Some(0xF0..=0xF7) => 4,
            _ => return 0,
        };
        want.saturating_sub(tail.len())
    }

    fn extend(&mut self, more: &[u8], limits: &Limits) -> Result<(), Violation> {
        if self.data.len() + more.len() > limits.max_message() {
            return Err(Violation::TooBig);
        }
        self.data.extend_from_slice(more);
        if self.text {
            // Fail fast: a byte that can never be valid closes the connection now; the
            // start of a character cut by the fragment boundary waits for the rest.
            match std::str::from_utf8(&self.data[self.valid..]) {
                Ok(_) => self.valid = self.data.len(),
                Err(e) if e.error_len().is_some() => return Err(Violation::InvalidUtf8),
                Err(e) => self.valid += e.valid_up_to(),
            }
        }
        Ok(())
    }
}

/// A complete message.
fn whole(text: bool, data: Vec<u8>) -> Result<Unit, Violation> {
    if text {
        String::from_utf8(data)
            .map(|s| Unit::Text(Utf8Bytes::from(s)))
            .map_err(|_| Violation::InvalidUtf8)
    } else {
        Ok(Unit::Binary(Bytes::from(data)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits::new(1 << 20, 1 << 20);

    /// A masked client frame.
    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut f = vec![(if fin { 0x80 } else { 0 }) | opcode];
        match payload.len() {
            n @ 0..=125 => f.push(0x80 | n as u8),
            n @ 126..=0xFFFF => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        f
    }

    /// Everything `input` decodes to, fed in pieces of `step` bytes.
    fn decode(input: &[u8], step: usize, limits: &Limits) -> Result<Vec<Unit>, Violation> {
        let mut r = Reader::default();
        let mut out = Vec::new();
        for chunk in input.chunks(step) {
            let mut chunk = chunk.to_vec();
            let mut pos = 0;
            while pos < chunk.len() {
                let (used, unit) = r.next(&mut chunk[pos..], limits)?;
                assert!(used > 0, "no progress");
                pos += used;
                out.extend(unit);
            }
        }
        assert!(
            r.is_idle() || r.in_message(),
            "a complete input leaves nothing held"
        );
        Ok(out)
    }

    fn text(s: &str) -> Unit {
        Unit::Text(Utf8Bytes::from(s.to_string()))
    }

    #[test]
    fn frames_decode_whole_and_cut_at_every_byte() {
        let mut input = frame(true, OP_TEXT, b"hello");
        input.extend(frame(false, OP_BINARY, &[1, 2]));
        input.extend(frame(true, OP_PING, b"p"));
        input.extend(frame(true, OP_CONTINUATION, &[3]));
        input.extend(frame(true, OP_TEXT, &"x".repeat(300).into_bytes()));
        input.extend(frame(true, OP_BINARY, &vec![7u8; 70_000]));
        input.extend(frame(true, OP_PONG, b""));
        input.extend(frame(true, OP_CLOSE, &[0x03, 0xe8, b'o', b'k']));
        let want = vec![
            text("hello"),
            Unit::Ping(Bytes::from_static(b"p")),
            Unit::Binary(Bytes::from_static(&[1, 2, 3])),
            text(&"x".repeat(300)),
            Unit::Binary(Bytes::from(vec![7u8; 70_000])),
            Unit::Pong,
            Unit::Close(Some(1000)),
        ];
        for step in [input.len(), 1, 2, 3, 5, 7, 13, 64, 4096] {
            assert_eq!(decode(&input, step, &LIMITS).unwrap(), want, "step {step}");
        }
    }

    #[test]
    fn an_idle_reader_holds_nothing() {
        let mut r = Reader::default();
        let mut f = frame(true, OP_TEXT, b"hi");
        assert_eq!(
            r.next(&mut f, &LIMITS).unwrap(),
            (f.len(), Some(text("hi")))
        );
        assert!(r.is_idle());
        let mut f = frame(true, OP_TEXT, b"hi");
        r.next(&mut f[..3], &LIMITS).unwrap();
        assert!(!r.is_idle());
        let (used, unit) = r.next(&mut f[3..], &LIMITS).unwrap();
        assert_eq!((used, unit), (3, None), "the header first");
        assert!(!r.is_idle());
        let (used, unit) = r.next(&mut f[6..], &LIMITS).unwrap();
        assert_eq!((used, unit), (2, Some(text("hi"))));
        assert!(r.is_idle(), "the box is released once the frame completes");
    }

    #[test]
    fn utf8_is_checked_across_fragments_and_fails_fast() {
        // "€" (e2 82 ac) cut between fragments is fine.
        let mut input = frame(false, OP_TEXT, &[b'a', 0xe2]);
        input.extend(frame(false, OP_CONTINUATION, &[0x82]));
        input.extend(frame(true, OP_CONTINUATION, &[0xac, b'b']));
        assert_eq!(decode(&input, 1, &LIMITS).unwrap(), vec![text("a€b")]);
        // A byte that can never start a character fails at its fragment, before the end.
        let mut r = Reader::default();
        let mut bad = frame(false, OP_TEXT, &[b'a', 0xff]);
        assert_eq!(r.next(&mut bad, &LIMITS), Err(Violation::InvalidUtf8));
        // A character left incomplete by the final fragment fails at the end.
        let mut input = frame(false, OP_TEXT, &[b'a', 0xe2]);
        input.extend(frame(true, OP_CONTINUATION, &[0x82]));
        assert_eq!(decode(&input, 64, &LIMITS), Err(Violation::InvalidUtf8));
        // A single-frame text message and a close reason are checked too.
        assert_eq!(
            decode(&frame(true, OP_TEXT, &[0xce, 0xba, 0xe1]), 64, &LIMITS),
            Err(Violation::InvalidUtf8)
        );
        assert_eq!(
            decode(&frame(true, OP_CLOSE, &[0x03, 0xe8, 0xff]), 64, &LIMITS),
            Err(Violation::InvalidUtf8)
        );
    }

    #[test]
    fn invalid_utf8_fails_when_it_arrives_not_when_its_frame_ends() {
        let hdr = 6;
        let f = frame(true, OP_TEXT, &[b'a', b'b', 0xff, b'c', b'd', b'e']);
        let mut r = Reader::default();
        assert_eq!(
            r.next(&mut f[..hdr + 2].to_vec(), &LIMITS).unwrap(),
            (hdr + 2, None)
        );
        assert_eq!(
            r.next(&mut f[hdr + 2..hdr + 3].to_vec(), &LIMITS),
            Err(Violation::InvalidUtf8)
        );
        // In a continuation that first finishes a character its message began ("€" is
        // e2 82 ac): those bytes pass, the bad one after them fails on arrival.
        let mut r = Reader::default();
        let mut first = frame(false, OP_TEXT, &[b'a', 0xe2]);
        assert_eq!(r.next(&mut first, &LIMITS).unwrap(), (first.len(), None));
        let c = frame(true, OP_CONTINUATION, &[0x82, 0xac, b'x', 0xff, b'y']);
        for i in 0..hdr + 3 {
            assert_eq!(
                r.next(&mut c[i..i + 1].to_vec(), &LIMITS).unwrap(),
                (1, None)
            );
        }
        assert_eq!(
            r.next(&mut c[hdr + 3..hdr + 4].to_vec(), &LIMITS),
            Err(Violation::InvalidUtf8)
        );
        // A continuation over the message limit is refused from its header.
        let small = Limits::new(100, 150);
        let mut r = Reader::default();
        let mut first = frame(false, OP_BINARY, &[0u8; 100]);
        r.next(&mut first, &small).unwrap();
        let c = frame(true, OP_CONTINUATION, &[0u8; 60]);
        assert_eq!(
            r.next(&mut c[..hdr].to_vec(), &small),
            Err(Violation::TooBig)
        );
    }

    /// Found by the fuzz target: a new text message inside a fragmented one, its bytes
    /// not valid UTF-8, was refused for its UTF-8 when cut and for its place when whole.
    #[test]
    fn a_frame_is_refused_for_the_same_reason_however_it_is_cut() {
        let mut input = frame(false, OP_BINARY, b"a");
        input.extend(frame(true, OP_TEXT, &[0xff, 0xfe, 0x41]));
        input.extend(frame(true, OP_CONTINUATION, b""));
        for step in 1..input.len() {
            assert_eq!(
                decode(&input, step, &LIMITS),
                Err(NEW_INSIDE_FRAGMENTED),
                "step {step}"
            );
        }
        let input = frame(true, OP_CONTINUATION, &[0xff; 20]);
        for step in 1..input.len() {
            assert_eq!(
                decode(&input, step, &LIMITS),
                Err(CONTINUATION_WITHOUT_MESSAGE)
            );
        }
    }

    #[test]
    fn protocol_violations_are_refused() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                {
                    let mut f = frame(true, OP_TEXT, b"x");
                    f[0] |= 0x40;
                    f
                },
                "reserved bits set",
            ),
            (frame(true, 0x3, b""), "unknown opcode"),
            (frame(true, 0xB, b""), "unknown opcode"),
            (frame(false, OP_PING, b""), "fragmented control frame"),
            (
                frame(true, OP_PING, &[0u8; 126]),
                "control frame over 125 bytes",
            ),
            (vec![0x81, 0x02, b'h', b'i'], "unmasked client frame"),
            (
                frame(true, OP_CONTINUATION, b"x"),
                "continuation frame without a message",
            ),
            (
                {
                    let mut f = frame(false, OP_TEXT, b"a");
                    f.extend(frame(true, OP_TEXT, b"b"));
                    f
                },
                "a new message inside a fragmented one",
            ),
            (
                frame(true, OP_CLOSE, &[3]),
                "close frame with a 1-byte payload",
            ),
            (
                vec![0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4],
                "invalid frame length",
            ),
        ];
        for (input, why) in cases {
            assert_eq!(
                decode(&input, 64, &LIMITS),
                Err(Violation::Protocol(why)),
                "{why}"
            );
        }
    }

    #[test]
    fn sizes_are_refused_from_the_header_before_buffering() {
        let small = Limits::new(100, 150);
        // The header alone (a 1 MiB length) is enough to refuse: nothing is buffered.
        let big = frame(true, OP_BINARY, &vec![0u8; 1 << 20]);
        let mut r = Reader::default();
        assert_eq!(
            r.next(&mut big[..10].to_vec(), &small),
            Err(Violation::TooBig)
        );
        // Fragments each under the frame limit, together over the message limit.
        let mut input = frame(false, OP_BINARY, &[0u8; 100]);
        input.extend(frame(true, OP_CONTINUATION, &[0u8; 51]));
        assert_eq!(decode(&input, 7, &small), Err(Violation::TooBig));
        let mut input = frame(false, OP_BINARY, &[0u8; 100]);
        input.extend(frame(true, OP_CONTINUATION, &[0u8; 50]));
        assert_eq!(decode(&input, 7, &small).unwrap().len(), 1);
    }

    #[test]
    fn close_codes_are_answered_with_their_own_or_1002() {
        let code = |c: u16| decode(&frame(true, OP_CLOSE, &c.to_be_bytes()), 64, &LIMITS);
        for ok in [1000, 1001, 1003, 1007, 1011, 1013, 3000, 4999] {
            assert_eq!(code(ok).unwrap(), vec![Unit::Close(Some(ok))], "{ok}");
        }
        for bad in [0, 999, 1004, 1005, 1006, 1014, 1015, 1016, 2999, 5000] {
            assert_eq!(code(bad).unwrap(), vec![Unit::Close(Some(1002))], "{bad}");
        }
        assert_eq!(
            decode(&frame(true, OP_CLOSE, b""), 64, &LIMITS).unwrap(),
            vec![Unit::Close(None)]
        );
    }

    #[test]
    fn stashed_input_comes_back_once() {
        let mut r = Reader::default();
        r.stash(b"abc");
        assert_eq!(r.take_unread().as_deref(), Some(&b"abc"[..]));
        assert!(r.is_idle());
        assert_eq!(r.take_unread(), None);
    }
}
