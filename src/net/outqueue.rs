//! A connection's outbound queue, bounded in bytes.
//!
//! Events wait here until the socket can take them; the shard feeds tungstenite only while
//! the socket is writable, so tungstenite's own buffer stays small and this queue is where
//! backlog is measured. Over `cap` bytes the client is a slow consumer and is closed with
//! 1013 — memory stays flat whatever the client does.
//!
//! Token deltas are the one kind of event that can be merged: when a `token` for the same
//! message is already waiting at the back of the queue (the socket is backed up), the new
//! delta is appended to it (first index kept, text joined) instead of queueing another
//! event. A slow reader gets fewer, larger token events and the same text.

use std::collections::VecDeque;
use std::sync::Arc;

use tungstenite::Utf8Bytes;

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
}

impl OutItem {
    fn cost(&self) -> usize {
        PER_ITEM_OVERHEAD
            + match self {
                OutItem::Frame(b) => b.len(),
                OutItem::Token(t) => t.text.len() + t.conversation_id.len(),
            }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct Overflow;

#[derive(Debug)]
pub struct OutQueue {
    items: VecDeque<OutItem>,
    bytes: usize,
    cap: usize,
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
        }
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

    pub fn pop(&mut self) -> Option<OutItem> {
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

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn clear(&mut self) {
        self.items = VecDeque::new();
        self.bytes = 0;
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
