//! The per-connection outbound queue: bounded in bytes, never awaited by producers.
//!
//! Producers (the hub's fan-out, the session's replies) call [`Outbound::enqueue`], which only
//! takes a short lock. When the queued bytes would exceed `client.queue_max_size` the queue is
//! dropped and the connection is closed with 3008 "slow": one slow client never slows a
//! broadcast and never grows memory without bound. The transport's writer task waits on
//! [`Outbound::next_batch`] and writes everything queued as one frame.
//!
//! **Direct writes.** A transport that can write without awaiting (a socket it shares)
//! installs a [`DirectWrite`]. The hub then queues a fan-out message with
//! [`Outbound::enqueue_deferred`] and, after leaving its locks, calls
//! [`Outbound::flush_direct`]: if the writer task is idle, the queued messages go out as one
//! frame in a non-blocking write from the broadcasting thread, and the writer task is not
//! woken at all. Whatever the socket does not take (a partial write, a full buffer) is queued
//! as raw bytes ahead of everything else and left to the writer task. Ordering holds because
//! every socket write happens either under the queue lock with the writer idle, or by the
//! writer while it holds a batch (`writing`), when direct writes stand aside.

use std::collections::VecDeque;
use std::sync::OnceLock;

use bytes::Bytes;

use crate::errors::Disconnect;
use crate::metrics::{FrameType, TransportTraffic};
use crate::sync::{Mutex, MutexGuard, Notify};

/// Writes a frame at once, from any thread, without waiting for the socket.
pub trait DirectWrite: Send + Sync {
    /// Frames `messages` as the writer task would and writes what the socket takes now.
    /// Returns the part of the frame that was not written (empty when all of it was).
    fn write_now(&self, messages: &[Bytes]) -> std::io::Result<Bytes>;
}

#[derive(Debug)]
enum Item {
    /// An encoded protocol message, framed by the writer; counted in the metrics as `FrameType`
    /// when it is taken for writing.
    Message(Bytes, FrameType),
    /// Bytes already framed for the transport (a partially written frame, a control frame).
    Raw(Bytes),
}

impl Item {
    fn len(&self) -> usize {
        match self {
            Item::Message(bytes, _) | Item::Raw(bytes) => bytes.len(),
        }
    }
}

#[derive(Debug)]
struct State {
    /// The transport's frame counters: messages are counted per batch taken for writing, so
    /// the cost shrinks per message as batches grow under load (counting each message as it
    /// was queued measurably lowered the fan-out rate at saturation).
    traffic: std::sync::Arc<TransportTraffic>,
    queue: VecDeque<Item>,
    bytes: usize,
    /// Set once; the writer flushes what is queued, then closes with it.
    close: Option<Disconnect>,
    /// The writer task holds a batch it has not finished writing (cleared when it asks for the
    /// next one).
    writing: bool,
    /// A producer queued with [`Outbound::enqueue_deferred`] and owes a [`Outbound::flush_direct`].
    flush_owed: bool,
}

impl State {
    /// Takes the messages at the front of the queue, up to `max_bytes` (at least one), and
    /// counts them in the metrics: one add per run of one frame type in the batch.
    /// `preallocate` caps the vector allocated up front.
    fn take_messages(&mut self, max_bytes: usize, preallocate: usize) -> Vec<Bytes> {
        let mut messages = Vec::with_capacity(self.queue.len().min(preallocate));
        let mut size = 0;
        let mut tally: Option<(FrameType, u64, usize)> = None;
        while let Some(Item::Message(message, _)) = self.queue.front() {
            if !messages.is_empty() && size + message.len() > max_bytes {
                break;
            }
            let Some(Item::Message(message, frame)) = self.queue.pop_front() else { unreachable!() };
            size += message.len();
            tally = match tally {
                Some((kind, count, bytes)) if kind == frame => Some((kind, count + 1, bytes + message.len())),
                Some((kind, count, bytes)) => {
                    self.traffic.sent_many(kind, count, bytes);
                    Some((frame, 1, message.len()))
                }
                None => Some((frame, 1, message.len())),
            };
            messages.push(message);
        }
        if let Some((kind, count, bytes)) = tally {
            self.traffic.sent_many(kind, count, bytes);
        }
        self.bytes -= size;
        messages
    }
}

/// What the writer should do next.
#[derive(Debug)]
pub enum Batch {
    /// Messages to write, in order.
    Messages(Vec<Bytes>),
    /// Framed bytes to write as they are (only with a [`DirectWrite`] installed).
    Raw(Bytes),
    /// Everything is written; close the transport with this.
    Close(Disconnect),
}

/// Outcome of [`Outbound::enqueue_deferred`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "FlushOwed owes a flush_direct() call"]
pub enum Deferred {
    /// Queued; the writer task was woken or a flush is already owed.
    Queued,
    /// Queued without waking anyone: the caller must call [`Outbound::flush_direct`].
    FlushOwed,
    /// Not queued: the connection is closing, or just overflowed (3008).
    Refused,
}

/// A connection's outbound queue.
pub struct Outbound {
    state: Mutex<State>,
    notify: Notify,
    max_bytes: usize,
    direct: OnceLock<Box<dyn DirectWrite>>,
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound")
            .field("state", &self.state)
            .field("max_bytes", &self.max_bytes)
            .field("direct", &self.direct.get().is_some())
            .finish()
    }
}

impl Outbound {
    /// A queue whose frames count in `traffic`.
    pub fn new(max_bytes: usize, traffic: std::sync::Arc<TransportTraffic>) -> Self {
        let state = State {
            traffic,
            queue: VecDeque::new(),
            bytes: 0,
            close: None,
            writing: false,
            flush_owed: false,
        };
        Self { state: Mutex::new(state), notify: Notify::new(), max_bytes, direct: OnceLock::new() }
    }

    /// Lets producers write through `direct` while the writer task is idle (set once, by the
    /// transport, before the session starts).
    pub fn set_direct(&self, direct: Box<dyn DirectWrite>) {
        let _ = self.direct.set(direct);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.locked()
    }

    /// Adds `item` unless closing or over the bound (then closes as slow). Returns the state
    /// for the caller to decide about waking the writer, or `None` when refused.
    fn push(&self, item: Item) -> Option<MutexGuard<'_, State>> {
        let mut state = self.lock();
        if state.close.is_some() {
            return None;
        }
        if state.bytes + item.len() > self.max_bytes {
            // A raw item at the front may be the tail of a frame already partly on the wire:
            // it must go out before the close frame, or the client reads the close as payload.
            let tail = match state.queue.front() {
                Some(Item::Raw(_)) => state.queue.pop_front(),
                _ => None,
            };
            state.queue.clear();
            state.bytes = tail.as_ref().map_or(0, Item::len);
            state.queue.extend(tail);
            state.close = Some(Disconnect::slow());
            drop(state);
            self.notify.notify_one();
            return None;
        }
        state.bytes += item.len();
        state.queue.push_back(item);
        Some(state)
    }

    /// Queues one encoded message and wakes the writer. Returns false when the connection is
    /// closing or was just closed as slow (3008).
    pub fn enqueue(&self, frame: FrameType, message: Bytes) -> bool {
        let Some(state) = self.push(Item::Message(message, frame)) else { return false };
        drop(state);
        self.notify.notify_one();
        true
    }

    /// Queues bytes already framed for the transport (they are written as they are, in order).
    pub fn enqueue_raw(&self, frame: Bytes) -> bool {
        let Some(state) = self.push(Item::Raw(frame)) else { return false };
        drop(state);
        self.notify.notify_one();
        true
    }

    /// Queues a fan-out message. With a direct writer installed and the writer task idle, it
    /// does not wake the writer but returns [`Deferred::FlushOwed`]: the caller then calls
    /// [`Self::flush_direct`] once it holds no other locks.
    pub fn enqueue_deferred(&self, frame: FrameType, message: Bytes) -> Deferred {
        let Some(mut state) = self.push(Item::Message(message, frame)) else {
            return Deferred::Refused;
        };
        if state.flush_owed {
            return Deferred::Queued;
        }
        if self.direct.get().is_some() && !state.writing {
            state.flush_owed = true;
            return Deferred::FlushOwed;
        }
        drop(state);
        self.notify.notify_one();
        Deferred::Queued
    }

    /// Writes what is queued through the direct writer if the writer task is idle; otherwise
    /// (or for what the socket did not take) wakes the writer task. False means the socket
    /// failed; the queue is then closed with `write_error`.
    pub fn flush_direct(&self) -> bool {
        let mut state = self.lock();
        state.flush_owed = false;
        let Some(direct) = self.direct.get() else { return true };
        if state.queue.is_empty() {
            // The writer task took the messages already.
            return true;
        }
        let first_is_message = matches!(state.queue.front(), Some(Item::Message(..)));
        if state.writing || state.close.is_some() || !first_is_message {
            drop(state);
            self.notify.notify_one();
            return true;
        }
        let messages = state.take_messages(DIRECT_BATCH_BYTES, 16);
        // The write happens under the lock: a concurrent producer or the writer task must not
        // slip a frame in between.
        match direct.write_now(&messages) {
            Ok(rest) if rest.is_empty() => {
                if state.queue.is_empty() {
                    return true;
                }
            }
            Ok(rest) => {
                state.bytes += rest.len();
                state.queue.push_front(Item::Raw(rest));
            }
            Err(_) => {
                state.queue.clear();
                state.bytes = 0;
                state.close = Some(Disconnect::write_error());
                drop(state);
                self.notify.notify_one();
                return false;
            }
        }
        drop(state);
        self.notify.notify_one();
        true
    }

    /// Asks the writer to close after flushing what is queued. The first close wins.
    pub fn close(&self, disconnect: Disconnect) {
        let mut state = self.lock();
        if state.close.is_none() {
            state.close = Some(disconnect);
        }
        drop(state);
        self.notify.notify_one();
    }

    /// Bytes waiting to be written.
    pub fn pending_bytes(&self) -> usize {
        self.lock().bytes
    }

    /// The disconnect this queue was closed with, if any.
    pub fn closed_with(&self) -> Option<Disconnect> {
        self.lock().close.clone()
    }

    /// Waits for queued messages (up to about `max_batch_bytes`) or for the close. Calling it
    /// again says the previous batch was written.
    pub async fn next_batch(&self, max_batch_bytes: usize) -> Batch {
        loop {
            {
                let mut state = self.lock();
                state.writing = false;
                match state.queue.front() {
                    Some(Item::Raw(_)) => {
                        let Some(Item::Raw(raw)) = state.queue.pop_front() else { unreachable!() };
                        state.bytes -= raw.len();
                        state.writing = true;
                        return Batch::Raw(raw);
                    }
                    Some(Item::Message(..)) => {
                        let batch = state.take_messages(max_batch_bytes, 0);
                        state.writing = true;
                        return Batch::Messages(batch);
                    }
                    None => {}
                }
                if let Some(disconnect) = &state.close {
                    return Batch::Close(disconnect.clone());
                }
            }
            self.notify.notified().await;
        }
    }
}

/// Largest frame a direct write assembles (the socket buffer takes far more than one frame).
const DIRECT_BATCH_BYTES: usize = 16 * 1024;

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[tokio::test]
    async fn overflow_closes_as_slow_and_drops_the_queue() {
        let outbound = Outbound::new(10, TransportTraffic::detached());
        assert!(outbound.enqueue(FrameType::Unknown, Bytes::from_static(b"12345")));
        assert!(outbound.enqueue(FrameType::Unknown, Bytes::from_static(b"12345")));
        assert!(!outbound.enqueue(FrameType::Unknown, Bytes::from_static(b"1")));
        assert_eq!(outbound.closed_with(), Some(Disconnect::slow()));
        assert!(matches!(outbound.next_batch(100).await, Batch::Close(d) if d.code == 3008));
    }

    #[tokio::test]
    async fn close_flushes_first() {
        let outbound = Outbound::new(100, TransportTraffic::detached());
        outbound.enqueue(FrameType::Unknown, Bytes::from_static(b"a"));
        outbound.enqueue(FrameType::Unknown, Bytes::from_static(b"b"));
        outbound.close(Disconnect::shutdown());
        assert!(!outbound.enqueue(FrameType::Unknown, Bytes::from_static(b"c")));
        match outbound.next_batch(1).await {
            Batch::Messages(batch) => assert_eq!(batch, vec![Bytes::from_static(b"a")]),
            other => panic!("{other:?}"),
        }
        match outbound.next_batch(100).await {
            Batch::Messages(batch) => assert_eq!(batch, vec![Bytes::from_static(b"b")]),
            other => panic!("{other:?}"),
        }
        assert!(matches!(outbound.next_batch(100).await, Batch::Close(d) if d.code == 3001));
    }

    /// A direct writer that takes at most `accept` bytes per call and records what it got.
    struct FakeSocket {
        accept: std::sync::atomic::AtomicUsize,
        fail: std::sync::atomic::AtomicBool,
        written: std::sync::Arc<Mutex<Vec<u8>>>,
    }

    impl DirectWrite for FakeSocket {
        fn write_now(&self, messages: &[Bytes]) -> std::io::Result<Bytes> {
            if self.fail.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(std::io::ErrorKind::ConnectionReset.into());
            }
            let frame = Bytes::from(messages.concat());
            let n = frame.len().min(self.accept.load(std::sync::atomic::Ordering::Relaxed));
            self.written.lock().unwrap().extend_from_slice(&frame[..n]);
            Ok(frame.slice(n..))
        }
    }

    fn with_fake(accept: usize) -> (Outbound, std::sync::Arc<Mutex<Vec<u8>>>) {
        let outbound = Outbound::new(100, TransportTraffic::detached());
        let written = std::sync::Arc::new(Mutex::new(Vec::new()));
        outbound.set_direct(Box::new(FakeSocket {
            accept: accept.into(),
            fail: false.into(),
            written: written.clone(),
        }));
        (outbound, written)
    }

    #[tokio::test]
    async fn deferred_messages_go_out_in_one_direct_write() {
        let (outbound, written) = with_fake(usize::MAX);
        assert_eq!(
            outbound.enqueue_deferred(FrameType::Unknown, Bytes::from_static(b"ab")),
            Deferred::FlushOwed
        );
        // A second delivery before the flush joins it rather than owing another one.
        assert_eq!(
            outbound.enqueue_deferred(FrameType::Unknown, Bytes::from_static(b"cd")),
            Deferred::Queued
        );
        assert!(outbound.flush_direct());
        assert_eq!(&*written.lock().unwrap(), b"abcd");
        assert_eq!(outbound.pending_bytes(), 0);
        outbound.close(Disconnect::shutdown());
        assert!(matches!(outbound.next_batch(100).await, Batch::Close(_)));
    }

    #[tokio::test]
    async fn an_unwritten_tail_goes_first_to_the_writer() {
        let (outbound, written) = with_fake(3);
        assert_eq!(
            outbound.enqueue_deferred(FrameType::Unknown, Bytes::from_static(b"hello")),
            Deferred::FlushOwed
        );
        assert!(outbound.flush_direct());
        assert_eq!(&*written.lock().unwrap(), b"hel");
        assert!(outbound.enqueue(FrameType::Unknown, Bytes::from_static(b"next")));
        match outbound.next_batch(100).await {
            Batch::Raw(tail) => assert_eq!(tail, Bytes::from_static(b"lo")),
            other => panic!("{other:?}"),
        }
        match outbound.next_batch(100).await {
            Batch::Messages(batch) => assert_eq!(batch, vec![Bytes::from_static(b"next")]),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn no_direct_write_while_the_writer_holds_a_batch() {
        let (outbound, written) = with_fake(usize::MAX);
        assert!(outbound.enqueue(FrameType::Unknown, Bytes::from_static(b"reply")));
        let Batch::Messages(_) = outbound.next_batch(100).await else { panic!("a batch") };
        // The writer is writing "reply": this delivery must wait for it, not overtake it.
        assert_eq!(
            outbound.enqueue_deferred(FrameType::Unknown, Bytes::from_static(b"pub")),
            Deferred::Queued
        );
        assert!(outbound.flush_direct());
        assert!(written.lock().unwrap().is_empty());
        match outbound.next_batch(100).await {
            Batch::Messages(batch) => assert_eq!(batch, vec![Bytes::from_static(b"pub")]),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_failed_direct_write_closes_the_queue() {
        let outbound = Outbound::new(100, TransportTraffic::detached());
        outbound.set_direct(Box::new(FakeSocket {
            accept: usize::MAX.into(),
            fail: true.into(),
            written: Default::default(),
        }));
        assert_eq!(
            outbound.enqueue_deferred(FrameType::Unknown, Bytes::from_static(b"x")),
            Deferred::FlushOwed
        );
        assert!(!outbound.flush_direct());
        assert_eq!(outbound.closed_with(), Some(Disconnect::write_error()));
        assert_eq!(
            outbound.enqueue_deferred(FrameType::Unknown, Bytes::from_static(b"y")),
            Deferred::Refused
        );
    }

    #[tokio::test]
    async fn without_a_direct_writer_deliveries_wake_the_writer() {
        let outbound = Outbound::new(100, TransportTraffic::detached());
        assert_eq!(outbound.enqueue_deferred(FrameType::Unknown, Bytes::from_static(b"x")), Deferred::Queued);
        match outbound.next_batch(100).await {
            Batch::Messages(batch) => assert_eq!(batch, vec![Bytes::from_static(b"x")]),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn overflow_keeps_a_partly_written_frame_ahead_of_the_close() {
        let (outbound, _written) = with_fake(3);
        assert_eq!(
            outbound.enqueue_deferred(FrameType::Unknown, Bytes::from_static(b"hello")),
            Deferred::FlushOwed
        );
        assert!(outbound.flush_direct());
        assert!(!outbound.enqueue(FrameType::Unknown, Bytes::from(vec![b'x'; 200])));
        match outbound.next_batch(100).await {
            Batch::Raw(tail) => assert_eq!(tail, Bytes::from_static(b"lo")),
            other => panic!("the tail must come first, got {other:?}"),
        }
        assert!(matches!(outbound.next_batch(100).await, Batch::Close(d) if d.code == 3008));
    }
}
