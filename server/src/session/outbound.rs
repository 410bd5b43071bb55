//! The per-connection outbound queue: bounded in bytes, never awaited by producers.
//!
//! Producers (the hub's fan-out, the session's replies) call [`Outbound::enqueue`], which only
//! takes a short lock. When the queued bytes would exceed `client.queue_max_size` the queue is
//! dropped and the connection is closed with 3008 "slow": one slow client never slows a
//! broadcast and never grows memory without bound. The transport's writer task waits on
//! [`Outbound::next_batch`] and writes everything queued as one frame.

use std::collections::VecDeque;
use std::sync::Mutex;

use bytes::Bytes;
use tokio::sync::Notify;

use crate::errors::Disconnect;

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Bytes>,
    bytes: usize,
    /// Set once; the writer flushes what is queued, then closes with it.
    close: Option<Disconnect>,
}

/// What the writer should do next.
#[derive(Debug)]
pub enum Batch {
    /// Messages to write, in order.
    Messages(Vec<Bytes>),
    /// Everything is written; close the transport with this.
    Close(Disconnect),
}

/// A connection's outbound queue.
#[derive(Debug)]
pub struct Outbound {
    state: Mutex<State>,
    notify: Notify,
    max_bytes: usize,
}

impl Outbound {
    pub fn new(max_bytes: usize) -> Self {
        Self { state: Mutex::new(State::default()), notify: Notify::new(), max_bytes }
    }

    /// Queues one encoded message. Returns false when the connection is closing or was just
    /// closed as slow (3008).
    pub fn enqueue(&self, message: Bytes) -> bool {
        let mut state = self.state.lock().expect("outbound lock poisoned");
        if state.close.is_some() {
            return false;
        }
        if state.bytes + message.len() > self.max_bytes {
            state.queue.clear();
            state.bytes = 0;
            state.close = Some(Disconnect::slow());
            drop(state);
            self.notify.notify_one();
            return false;
        }
        state.bytes += message.len();
        state.queue.push_back(message);
        drop(state);
        self.notify.notify_one();
        true
    }

    /// Asks the writer to close after flushing what is queued. The first close wins.
    pub fn close(&self, disconnect: Disconnect) {
        let mut state = self.state.lock().expect("outbound lock poisoned");
        if state.close.is_none() {
            state.close = Some(disconnect);
        }
        drop(state);
        self.notify.notify_one();
    }

    /// Bytes waiting to be written.
    pub fn pending_bytes(&self) -> usize {
        self.state.lock().expect("outbound lock poisoned").bytes
    }

    /// The disconnect this queue was closed with, if any.
    pub fn closed_with(&self) -> Option<Disconnect> {
        self.state.lock().expect("outbound lock poisoned").close.clone()
    }

    /// Waits for queued messages (up to about `max_batch_bytes`) or for the close.
    pub async fn next_batch(&self, max_batch_bytes: usize) -> Batch {
        loop {
            {
                let mut state = self.state.lock().expect("outbound lock poisoned");
                if !state.queue.is_empty() {
                    let mut batch = Vec::new();
                    let mut size = 0;
                    while let Some(message) = state.queue.front() {
                        if !batch.is_empty() && size + message.len() > max_batch_bytes {
                            break;
                        }
                        size += message.len();
                        batch.push(state.queue.pop_front().expect("front exists"));
                    }
                    state.bytes -= size;
                    return Batch::Messages(batch);
                }
                if let Some(disconnect) = &state.close {
                    return Batch::Close(disconnect.clone());
                }
            }
            self.notify.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn overflow_closes_as_slow_and_drops_the_queue() {
        let outbound = Outbound::new(10);
        assert!(outbound.enqueue(Bytes::from_static(b"12345")));
        assert!(outbound.enqueue(Bytes::from_static(b"12345")));
        assert!(!outbound.enqueue(Bytes::from_static(b"1")));
        assert_eq!(outbound.closed_with(), Some(Disconnect::slow()));
        assert!(matches!(outbound.next_batch(100).await, Batch::Close(d) if d.code == 3008));
    }

    #[tokio::test]
    async fn close_flushes_first() {
        let outbound = Outbound::new(100);
        outbound.enqueue(Bytes::from_static(b"a"));
        outbound.enqueue(Bytes::from_static(b"b"));
        outbound.close(Disconnect::shutdown());
        assert!(!outbound.enqueue(Bytes::from_static(b"c")));
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
}
