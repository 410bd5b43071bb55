//! The server's locks and the delivery path's wake-ups, in one place so a model checker can
//! replace them.
//!
//! The engine's memory broker, the hub, the session handles and their outbound queues share
//! state across the publishing task, the flusher tasks and each connection's writer. Their
//! correctness (no lost wake-up, nothing delivered twice or out of order, nothing queued after
//! a close) depends on how these primitives interleave, so they come from here: `std` locks and
//! tokio's [`Notify`] in the server, [loom](https://docs.rs/loom)'s models of them when the
//! crate is built with the `loom` feature. The models in `node::models` then run the real code
//! under every interleaving loom explores (ARCHITECTURE.md, invariant "delivery path is
//! model-checked").
//!
//! The locks never poison: a panic in one session must not take down every later user of a
//! shared lock (see `session::Session::survived`), so a poisoned lock is taken over as is.
//!
//! **Boundary:** imports nothing from the crate.

use std::sync::PoisonError;

#[cfg(not(feature = "loom"))]
use std::sync as imp;

#[cfg(feature = "loom")]
use loom::sync as imp;

pub use imp::{MutexGuard, RwLockReadGuard, RwLockWriteGuard};

/// A mutual-exclusion lock that never reports poisoning.
#[derive(Debug, Default)]
pub struct Mutex<T>(imp::Mutex<T>);

impl<T> Mutex<T> {
    pub fn new(value: T) -> Self {
        Self(imp::Mutex::new(value))
    }

    pub fn locked(&self) -> MutexGuard<'_, T> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A reader-writer lock that never reports poisoning.
#[derive(Debug, Default)]
pub struct RwLock<T>(imp::RwLock<T>);

impl<T> RwLock<T> {
    pub fn new(value: T) -> Self {
        Self(imp::RwLock::new(value))
    }

    pub fn read_locked(&self) -> RwLockReadGuard<'_, T> {
        self.0.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn write_locked(&self) -> RwLockWriteGuard<'_, T> {
        self.0.write().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(not(feature = "loom"))]
pub use tokio::sync::Notify;

#[cfg(feature = "loom")]
pub use model::Notify;

#[cfg(feature = "loom")]
mod model {
    use loom::sync::{Condvar, Mutex};

    /// tokio's `Notify` as the model sees it: one stored permit, taken by the next waiter.
    /// Waiting blocks the loom thread, so the future is driven with `loom::future::block_on`.
    #[derive(Debug)]
    pub struct Notify {
        permit: Mutex<bool>,
        wake: Condvar,
    }

    impl Default for Notify {
        fn default() -> Self {
            Self::new()
        }
    }

    impl Notify {
        pub fn new() -> Self {
            Self { permit: Mutex::new(false), wake: Condvar::new() }
        }

        pub fn notify_one(&self) {
            *self.permit.lock().unwrap() = true;
            self.wake.notify_one();
        }

        pub async fn notified(&self) {
            let mut permit = self.permit.lock().unwrap();
            while !*permit {
                permit = self.wake.wait(permit).unwrap();
            }
            *permit = false;
        }
    }
}
