//! Sessions whose client sends its commands on separate requests (Centrifugo's
//! bidirectional emulation), by the session id announced in their connect result.
//!
//! The transport that opens such a session registers it here and feeds what arrives on the
//! returned receiver to the session; command frames for it then come from this node's own
//! requests or, routed through the broker, from a request that reached another node. Each
//! session has a bounded queue: a client that outruns its session is told it is busy rather
//! than buffered without limit.

use crate::sync::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

/// Command frames waiting for one session.
const QUEUE: usize = 32;

/// Why a frame was not handed to a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Undelivered {
    /// No such session on this node (never was, or it ended).
    Unknown,
    /// Its queue is full.
    Busy,
}

/// This node's emulated sessions, by session id.
#[derive(Debug, Default)]
pub struct EmulationSessions {
    sessions: Mutex<HashMap<String, mpsc::Sender<Bytes>>>,
}

/// Keeps a session registered; dropping it (the session's response ended) unregisters it.
#[derive(Debug)]
pub struct EmulationRegistration {
    sessions: Arc<EmulationSessions>,
    id: String,
}

impl Drop for EmulationRegistration {
    fn drop(&mut self) {
        self.sessions.lock().remove(&self.id);
    }
}

impl EmulationSessions {
    fn lock(&self) -> crate::sync::MutexGuard<'_, HashMap<String, mpsc::Sender<Bytes>>> {
        self.sessions.locked()
    }

    /// Registers session `id`: frames delivered to it arrive on the receiver for as long as
    /// the registration lives.
    pub fn register(self: &Arc<Self>, id: String) -> (EmulationRegistration, mpsc::Receiver<Bytes>) {
        let (sender, receiver) = mpsc::channel(QUEUE);
        self.lock().insert(id.clone(), sender);
        (EmulationRegistration { sessions: self.clone(), id }, receiver)
    }

    /// Whether session `id` lives on this node.
    pub fn contains(&self, id: &str) -> bool {
        self.lock().contains_key(id)
    }

    /// Queues a command frame for session `id` without waiting.
    pub fn deliver(&self, id: &str, frame: Bytes) -> Result<(), Undelivered> {
        let Some(sender) = self.lock().get(id).cloned() else { return Err(Undelivered::Unknown) };
        sender.try_send(frame).map_err(|error| match error {
            mpsc::error::TrySendError::Full(_) => Undelivered::Busy,
            mpsc::error::TrySendError::Closed(_) => Undelivered::Unknown,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_reach_a_registered_session_until_it_goes() {
        let sessions = Arc::new(EmulationSessions::default());
        let (registration, mut frames) = sessions.register("s1".into());
        assert!(sessions.contains("s1"));
        sessions.deliver("s1", Bytes::from_static(b"a")).unwrap();
        assert_eq!(frames.recv().await.unwrap(), Bytes::from_static(b"a"));
        for _ in 0..QUEUE {
            sessions.deliver("s1", Bytes::from_static(b"x")).unwrap();
        }
        assert_eq!(sessions.deliver("s1", Bytes::from_static(b"y")), Err(Undelivered::Busy));
        drop(registration);
        assert!(!sessions.contains("s1"));
        assert_eq!(sessions.deliver("s1", Bytes::new()), Err(Undelivered::Unknown));
    }
}
