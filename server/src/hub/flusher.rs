//! The hub's flusher tasks: they write deliveries that a broadcast queued without waking the
//! sessions' writer tasks (see [`super::outbound`]'s direct writes).
//!
//! One task polling through 10k sockets is far cheaper than 10k tasks woken once each, and
//! because a flusher runs only after the publishing task yields, the publications of one burst
//! still go out together in one write per connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::SessionHandle;
use crate::sync::{Mutex, Notify};

/// Sessions a flusher writes before it yields to other tasks.
const FLUSH_SLICE: usize = 128;

/// Sessions owed a direct flush, and the task that flushes them.
#[derive(Debug, Default)]
pub(super) struct Flusher {
    owed: Mutex<Vec<Arc<SessionHandle>>>,
    wake: Notify,
    started: AtomicBool,
    stopped: AtomicBool,
}

impl Flusher {
    /// Queues sessions for flushing; starts the task on first use (inside the runtime).
    pub(super) fn hand_over(self: &Arc<Self>, sessions: &mut Vec<Arc<SessionHandle>>) {
        if sessions.is_empty() {
            return;
        }
        self.owed.locked().append(sessions);
        // Under the model checker a thread of the model plays the task (`Self::round`).
        if !cfg!(feature = "loom") && !self.started.swap(true, Ordering::AcqRel) {
            let flusher = self.clone();
            tokio::spawn(async move { flusher.run().await });
        }
        self.wake.notify_one();
    }

    /// Ends the task (when the hub is dropped).
    pub(super) fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// Flushes every session owed now, once (the model checker's stand-in for the task).
    #[cfg(all(test, feature = "loom"))]
    pub(super) fn round(&self) {
        let round = std::mem::take(&mut *self.owed.locked());
        for session in round {
            session.flush_deliveries();
        }
    }

    async fn run(self: Arc<Self>) {
        // Swapped with `owed` so the vector's allocation is reused between rounds.
        let mut round = Vec::new();
        while !self.stopped.load(Ordering::Acquire) {
            std::mem::swap(&mut round, &mut *self.owed.locked());
            if round.is_empty() {
                self.wake.notified().await;
                continue;
            }
            for (i, session) in round.iter().enumerate() {
                session.flush_deliveries();
                // A round over a big channel is thousands of syscalls: yield now and then so
                // the other tasks on this worker (publishers, sessions, timers) keep running.
                if (i + 1) % FLUSH_SLICE == 0 {
                    tokio::task::yield_now().await;
                }
            }
            round.clear();
            tokio::task::yield_now().await;
        }
    }
}
