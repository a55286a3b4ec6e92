//! A connection's outbound queue, bounded in bytes, and the writer of its frames.
//!
//! Events wait here until the socket can take them, and go out from here: a server frame
//! is a 2–10 byte header and the payload as it is (never masked, never fragmented), so the
//! queue writes header and payload slices of up to [`BATCH`] frames with one `writev`, the
//! payload straight from the (often shared) event bytes — no copy into a per-connection
//! write buffer, and no buffer kept by an idle connection. Control frames (pong, ping,
//! close) queue here too, so no frame ever lands inside another. Over `cap` bytes the
//! client is a slow consumer and is closed with 1013 — memory stays flat whatever the
//! client does.
//!
//! Token deltas are the one kind of event that can be merged: when a `token` for the same
//! message is already waiting at the back of the queue (the socket is backed up), the new
//! delta is appended to it (first index kept, text joined) instead of queueing another
//! event. A slow reader gets fewer, larger token events and the same text.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use tungstenite::{Bytes, Utf8Bytes};

use super::stats::NetMetrics;

/// Frames gathered into one `writev` (two slices each; far below IOV_MAX).
pub const BATCH: usize = 64;

/// The longest server frame header: FIN/opcode, 127, 64-bit length (RFC 6455 §5.2).
const MAX_HEADER: usize = 10;

/// Framing overhead charged per queued event, so a flood of tiny events is bounded too.
const PER_ITEM_OVERHEAD: usize = 64;

/// A text delta of one streamed message, kept unencoded so that deltas can merge. The
/// wire form belongs to the connection's codec, which sets `encode`.
#[derive(Debug, Clone)]
pub struct TokenItem {
    pub conversation_id: Arc<str>,
    pub message_id: i64,
    /// Index of the first token in `text`.
    pub index: u64,
    /// How many deltas `text` holds.
    pub count: u64,
    pub text: String,
    /// The codec's encoder for this item (a plain function: data, not a closure).
    pub encode: fn(&TokenItem) -> String,
}

impl TokenItem {
    pub fn encode(&self) -> String {
        (self.encode)(self)
    }
}

#[derive(Debug, Clone)]
pub enum OutItem {
    /// An encoded text frame, possibly shared with other connections.
    Frame(Utf8Bytes),
    /// A token delta, kept unencoded so that it can be merged.
    Token(TokenItem),
    /// A binary frame (the echo endpoint).
    Binary(Bytes),
    /// A control frame: [`OP_PING`], [`OP_PONG`] or [`OP_CLOSE`] and its payload
    /// (at most 125 bytes).
    Control(u8, Bytes),
}

impl OutItem {
    fn cost(&self) -> usize {
        PER_ITEM_OVERHEAD
            + match self {
                OutItem::Frame(b) => b.len(),
                OutItem::Token(t) => t.text.len() + t.conversation_id.len(),
                OutItem::Binary(b) | OutItem::Control(_, b) => b.len(),
            }
    }

    /// Opcode and payload of an item ready for the wire; `None` for a token delta that is
    /// not encoded yet (`freeze`).
    fn frame(&self) -> Option<(u8, &[u8])> {
        match self {
            OutItem::Frame(b) => Some((OP_TEXT, b.as_bytes())),
            OutItem::Binary(b) => Some((OP_BINARY, b)),
            OutItem::Control(op, b) => Some((*op, b)),
            OutItem::Token(_) => None,
        }
    }

    /// Header and payload bytes on the wire, and payload bytes (`None`: not encoded yet).
    fn wire_len(&self) -> Option<(usize, usize)> {
        self.frame()
            .map(|(_, p)| (header_len(p.len()) + p.len(), p.len()))
    }
}

const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

impl OutItem {
    /// A close frame: the code (none: an empty payload) and a reason, cut to fit.
    pub fn close(code: Option<u16>, reason: &str) -> OutItem {
        let Some(code) = code else {
            return OutItem::Control(OP_CLOSE, Bytes::new());
        };
        let mut end = reason.len().min(123);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        let mut b = Vec::with_capacity(2 + end);
        b.extend_from_slice(&code.to_be_bytes());
        b.extend_from_slice(&reason.as_bytes()[..end]);
        OutItem::Control(OP_CLOSE, Bytes::from(b))
    }
}

fn header_len(payload: usize) -> usize {
    match payload {
        0..=125 => 2,
        126..=0xFFFF => 4,
        _ => 10,
    }
}

/// The header of a final, unmasked frame; returns its length (`header_len`).
fn header(opcode: u8, payload: usize, h: &mut [u8; MAX_HEADER]) -> usize {
    h[0] = 0x80 | opcode;
    let len = header_len(payload);
    match len {
        2 => h[1] = payload as u8,
        4 => {
            h[1] = 126;
            h[2..4].copy_from_slice(&(payload as u16).to_be_bytes());
        }
        _ => {
            h[1] = 127;
            h[2..10].copy_from_slice(&(payload as u64).to_be_bytes());
        }
    }
    len
}

/// What a write burst of the queue achieved.
#[derive(Debug, PartialEq, Eq)]
pub enum Wrote {
    /// Everything asked for is on the wire.
    All,
    /// The socket would block; the rest waits for a writable event.
    Blocked,
    /// The socket is gone.
    Closed,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Overflow;

#[derive(Debug)]
pub struct OutQueue {
    items: VecDeque<OutItem>,
    bytes: usize,
    cap: usize,
    /// Bytes of the front frame already written: it must be finished before anything
    /// else (ours or tungstenite's) goes on the wire.
    sent: usize,
}

/// What a push did.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    Merged,
}

impl OutQueue {
    pub fn new(cap: usize) -> OutQueue {
        OutQueue {
            items: VecDeque::new(),
            bytes: 0,
            cap,
            sent: 0,
        }
    }

    /// Queue a frame of the transport's own that must go out whatever the queue holds
    /// (our ping, our close): not counted against `cap`, and bounded by its callers (one
    /// ping per heartbeat, one close per connection).
    pub fn push_unbounded(&mut self, item: OutItem) {
        self.bytes += item.cost();
        self.items.push_back(item);
    }

    pub fn push(&mut self, item: OutItem) -> Result<Pushed, Overflow> {
        if let OutItem::Token(t) = &item {
            if let Some(OutItem::Token(back)) = self.items.back_mut() {
                if back.message_id == t.message_id && back.index + back.count == t.index {
                    back.text.push_str(&t.text);
                    back.count += t.count;
                    self.bytes += t.text.len();
                    return if self.bytes > self.cap {
                        Err(Overflow)
                    } else {
                        Ok(Pushed::Merged)
                    };
                }
            }
        }
        self.bytes += item.cost();
        self.items.push_back(item);
        if self.bytes > self.cap {
            Err(Overflow)
        } else {
            Ok(Pushed::Queued)
        }
    }

    fn pop(&mut self) -> Option<OutItem> {
        let item = self.items.pop_front()?;
        self.bytes = self.bytes.saturating_sub(item.cost());
        if self.items.is_empty() {
            self.bytes = 0;
            // Give the memory back: most connections are idle most of the time, and one
            // allocation per burst is cheaper than 256+ bytes kept by every idle one.
            self.items = VecDeque::new();
        }
        Some(item)
    }

    /// The front frame is partly on the wire.
    pub fn partial(&self) -> bool {
        self.sent > 0
    }

    /// Take every item not started on the wire (all of them, or all but a partly written
    /// front frame, which stays and is finished by `write_to`).
    fn take_unsent(&mut self) -> Vec<OutItem> {
        let keep = usize::from(self.partial());
        let rest: Vec<OutItem> = self.items.drain(keep..).collect();
        self.bytes = self.items.iter().map(OutItem::cost).sum();
        if self.items.is_empty() {
            self.items = VecDeque::new();
        }
        rest
    }

    /// Encode the token deltas among the first `n` items: from here their bytes are fixed
    /// (a delta that arrives later queues behind them instead of merging).
    fn freeze(&mut self, n: usize) {
        for item in self.items.iter_mut().take(n) {
            if let OutItem::Token(t) = item {
                let encoded = OutItem::Frame(Utf8Bytes::from(t.encode()));
                self.bytes = self.bytes.saturating_sub(item.cost()) + encoded.cost();
                *item = encoded;
            }
        }
    }

    /// Write queued frames to `w`, up to [`BATCH`] per vectored write, until the queue is
    /// empty or `w` would block. Interrupted writes are retried; a partial write is
    /// remembered.
    pub fn write_to(&mut self, w: &mut impl Write, metrics: &NetMetrics) -> Wrote {
        loop {
            if self.items.is_empty() {
                return Wrote::All;
            }
            // One frame (the common case: a reply, one delivery of a broadcast) gets
            // stack arrays its size; zeroing the arrays for BATCH frames costs more.
            let r = if self.items.len() == 1 {
                self.write_batch::<1, 2>(w, metrics)
            } else {
                self.write_batch::<BATCH, { 2 * BATCH }>(w, metrics)
            };
            if let Err(outcome) = r {
                return outcome;
            }
        }
    }

    /// One vectored write of up to `N` frames (`S` = 2 `N` slices: header and payload);
    /// `Err` ends the burst.
    fn write_batch<const N: usize, const S: usize>(
        &mut self,
        w: &mut impl Write,
        metrics: &NetMetrics,
    ) -> Result<(), Wrote> {
        let n = self.items.len().min(N);
        self.freeze(n);
        let mut heads = [[0u8; MAX_HEADER]; N];
        let mut lens = [0usize; N];
        for (i, item) in self.items.iter().take(n).enumerate() {
            if let Some((op, payload)) = item.frame() {
                lens[i] = header(op, payload.len(), &mut heads[i]);
            }
        }
        let mut slices = [IoSlice::new(&[]); S];
        let mut k = 0;
        let mut skip = self.sent;
        for (i, item) in self.items.iter().take(n).enumerate() {
            let Some((_, payload)) = item.frame() else {
                break;
            };
            let hl = lens[i];
            let h = &heads[i][..hl];
            // Only the front frame can be partly written: skip what went out already.
            let (h, p) = if skip >= hl {
                (&h[..0], &payload[skip - hl..])
            } else {
                (&h[skip..], payload)
            };
            skip = 0;
            for s in [h, p] {
                if !s.is_empty() && k < S {
                    slices[k] = IoSlice::new(s);
                    k += 1;
                }
            }
        }
        if k == 0 {
            return Err(Wrote::All);
        }
        match w.write_vectored(&slices[..k]) {
            Ok(0) => Err(Wrote::Closed),
            Ok(m) => {
                self.advance(m, metrics);
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(Wrote::Blocked),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
            Err(_) => Err(Wrote::Closed),
        }
    }

    /// `m` more bytes are on the wire: drop the frames they complete.
    fn advance(&mut self, m: usize, metrics: &NetMetrics) {
        let mut m = m + std::mem::take(&mut self.sent);
        // Only frozen frames were written, so a token delta is never reached with m > 0.
        while let Some((len, payload)) = self.items.front().and_then(OutItem::wire_len) {
            if m < len {
                self.sent = m;
                return;
            }
            m -= len;
            if !matches!(self.items.front(), Some(OutItem::Control(..))) {
                metrics.messages_out.fetch_add(1, Relaxed);
                metrics.bytes_out.fetch_add(payload as u64, Relaxed);
            }
            self.pop();
        }
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Drop everything not started on the wire (a partly written frame is kept: the
    /// stream stays well-formed for the close frame that follows).
    pub fn clear(&mut self) {
        self.take_unsent();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok(m: i64, index: u64, text: &str) -> OutItem {
        OutItem::Token(TokenItem {
            conversation_id: Arc::from("c"),
            message_id: m,
            index,
            count: 1,
            text: text.into(),
            encode: |t| t.text.clone(),
        })
    }

    #[test]
    fn consecutive_tokens_of_one_message_merge_keeping_the_first_index() {
        let mut q = OutQueue::new(1 << 20);
        assert_eq!(q.push(tok(1, 0, "Hel")), Ok(Pushed::Queued));
        assert_eq!(q.push(tok(1, 1, "lo")), Ok(Pushed::Merged));
        assert_eq!(q.push(tok(2, 0, "x")), Ok(Pushed::Queued));
        assert_eq!(
            q.push(tok(1, 2, "!")),
            Ok(Pushed::Queued),
            "not adjacent in the queue: order is kept"
        );
        match q.pop() {
            Some(OutItem::Token(t)) => {
                assert_eq!((t.index, t.count, t.text.as_str()), (0, 2, "Hello"))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(q.len(), 2);
    }

    #[test]
    fn the_byte_cap_reports_overflow_and_pop_releases_bytes() {
        let mut q = OutQueue::new(300);
        q.push(OutItem::Frame(Utf8Bytes::from("a".repeat(100))))
            .unwrap();
        assert_eq!(
            q.push(OutItem::Frame(Utf8Bytes::from("b".repeat(100)))),
            Err(Overflow)
        );
        q.pop();
        q.pop();
        assert_eq!(q.bytes(), 0);
        assert!(q.is_empty());
    }
}
