//! A bounded queue to one consumer thread that, finding the queue empty, parks at once.
//!
//! crossbeam's blocking `recv` spins, then gives up the CPU with `sched_yield` up to four
//! times before it parks. On a core shared with a busy thread — a shard in a long fan-out
//! turn, the usual case on a small box — every yield is a pair of context switches that
//! the busy thread pays for: with all of confab on one core during broadcast 5,000 the
//! store writer ran ~23 times and its completion thread ~27 times per message. Parking at
//! once, the writer runs ~9 times (broadcast 5,000; 6 at broadcast 1,000, its fsync among
//! them) and the completion thread ~2 (BENCHMARKS.md, closing-session steps). The commit
//! path's threads (`store/writer.rs`) wait on these queues; the channel underneath is
//! still crossbeam's (its bounded array, its `try_recv`), only the wait differs.
//!
//! The producer side ([`Outbox`]) rings after each send: one fence and one load when the
//! consumer is awake, an unpark when it sleeps.

use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::atomic::{fence, AtomicBool};
use std::sync::{Arc, OnceLock};
use std::thread::Thread;

use crossbeam_channel::{Receiver, RecvError, SendError, Sender, TryRecvError, TrySendError};

/// The consumer's sleep, shared by both ends.
#[derive(Default)]
struct Bell {
    sleeping: AtomicBool,
    /// The consumer's thread, recorded by its first `recv`.
    consumer: OnceLock<Thread>,
}

impl Bell {
    fn ring(&self) {
        // Pairs with the fence in `Inbox::recv`: either the consumer's second look at the
        // queue finds what was just sent, or this load finds it asleep.
        fence(SeqCst);
        if self.sleeping.load(Relaxed) && self.sleeping.swap(false, SeqCst) {
            if let Some(t) = self.consumer.get() {
                t.unpark();
            }
        }
    }
}

/// A queue of at most `cap` messages; see the module docs.
pub fn bounded<T>(cap: usize) -> (Outbox<T>, Inbox<T>) {
    let (tx, rx) = crossbeam_channel::bounded(cap);
    let bell = Arc::new(Bell::default());
    (
        Outbox {
            tx: Some(tx),
            bell: bell.clone(),
        },
        Inbox { rx, bell },
    )
}

/// The sending end; clones share the queue.
pub struct Outbox<T> {
    /// `None` only inside `drop`, which lets the sender go before it rings.
    tx: Option<Sender<T>>,
    bell: Arc<Bell>,
}

impl<T> Clone for Outbox<T> {
    fn clone(&self) -> Self {
        Outbox {
            tx: self.tx.clone(),
            bell: self.bell.clone(),
        }
    }
}

impl<T> Outbox<T> {
    /// Send, waiting for room while the queue is full.
    pub fn send(&self, msg: T) -> Result<(), SendError<T>> {
        let r = match &self.tx {
            Some(tx) => tx.send(msg),
            None => Err(SendError(msg)),
        };
        if r.is_ok() {
            self.bell.ring();
        }
        r
    }

    /// Send if there is room now.
    pub fn try_send(&self, msg: T) -> Result<(), TrySendError<T>> {
        let r = match &self.tx {
            Some(tx) => tx.try_send(msg),
            None => Err(TrySendError::Disconnected(msg)),
        };
        if r.is_ok() {
            self.bell.ring();
        }
        r
    }

    /// Messages waiting.
    pub fn len(&self) -> usize {
        self.tx.as_ref().map_or(0, Sender::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T> Drop for Outbox<T> {
    /// The last sender gone disconnects the queue: wake the consumer to see it.
    fn drop(&mut self) {
        drop(self.tx.take());
        self.bell.ring();
    }
}

/// The receiving end: one consumer thread.
pub struct Inbox<T> {
    rx: Receiver<T>,
    bell: Arc<Bell>,
}

impl<T> Inbox<T> {
    /// The next message, parking while there is none; an error once every sender is gone
    /// and the queue is empty. Call it from one thread only (the first caller's is the
    /// one a send wakes).
    pub fn recv(&self) -> Result<T, RecvError> {
        let me = self.bell.consumer.get_or_init(std::thread::current);
        debug_assert_eq!(me.id(), std::thread::current().id());
        loop {
            match self.rx.try_recv() {
                Ok(m) => return Ok(m),
                Err(TryRecvError::Disconnected) => return Err(RecvError),
                Err(TryRecvError::Empty) => {}
            }
            self.bell.sleeping.store(true, SeqCst);
            fence(SeqCst);
            let next = self.rx.try_recv();
            if let Err(TryRecvError::Empty) = next {
                // Until a send rings (an unpark that came first is kept: this returns at
                // once); a spurious return costs one more look.
                std::thread::park();
            }
            self.bell.sleeping.store(false, Relaxed);
            match next {
                Ok(m) => return Ok(m),
                Err(TryRecvError::Disconnected) => return Err(RecvError),
                Err(TryRecvError::Empty) => {}
            }
        }
    }

    /// The next message if one is waiting.
    pub fn try_recv(&self) -> Result<T, TryRecvError> {
        self.rx.try_recv()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Run `f` on a consumer thread; its result, or a failure (not a hang) if a lost
    /// wake-up leaves it parked.
    fn consume<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> impl FnOnce() -> T {
        let (tx, rx) = crossbeam_channel::bounded(1);
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        move || {
            rx.recv_timeout(Duration::from_secs(10))
                .expect("the consumer did not finish: a wake-up was lost")
        }
    }

    #[test]
    fn every_message_arrives_in_order_across_sleeps() {
        let (tx, rx) = bounded::<u32>(4);
        let result = consume(move || {
            let mut got = Vec::new();
            while let Ok(m) = rx.recv() {
                got.push(m);
            }
            got
        });
        for i in 0..10_000u32 {
            tx.send(i).unwrap();
            if i % 1_000 == 0 {
                // Let the consumer fall asleep on an empty queue now and then.
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        let tx2 = tx.clone();
        drop(tx);
        tx2.send(10_000).unwrap();
        // The last sender's drop wakes the sleeping consumer to see the disconnection.
        drop(tx2);
        assert_eq!(result(), (0..=10_000).collect::<Vec<_>>());
    }

    #[test]
    fn a_consumer_asleep_on_an_empty_queue_wakes_when_the_last_sender_goes() {
        let (tx, rx) = bounded::<()>(1);
        let result = consume(move || rx.recv().is_err());
        std::thread::sleep(Duration::from_millis(50));
        drop(tx);
        assert!(result());
    }

    #[test]
    fn try_send_on_a_full_queue_gives_the_message_back() {
        let (tx, rx) = bounded::<u8>(1);
        tx.try_send(1).unwrap();
        assert!(matches!(tx.try_send(2), Err(TrySendError::Full(2))));
        assert_eq!(tx.len(), 1);
        assert_eq!(rx.try_recv(), Ok(1));
        assert!(tx.is_empty());
    }
}
