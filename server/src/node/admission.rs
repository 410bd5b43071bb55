//! Admission of new client connections, before any upgrade or stream starts:
//! `client.connection_rate_limit` and `client.connection_limit`. A refused request gets HTTP
//! 503 (on a stream transport, its "unavailable" status), which SDKs retry with backoff,
//! unlike a 3504 disconnect.
//!
//! The rate limit is Centrifugo's token bucket: a burst of N, refilled at one token per second
//! (its documentation says "per second", its code does this). Every request to a client
//! transport endpoint takes a token, answered or not.

use crate::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::Node;

/// How often a refusal for `connection_limit` is logged at most.
const LOG_EVERY: Duration = Duration::from_secs(3);

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    capacity: f64,
    refilled: Instant,
}

/// The node's admission state.
#[derive(Debug, Default)]
pub struct Admission {
    bucket: Option<Mutex<Bucket>>,
    last_limit_log: Mutex<Option<Instant>>,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Rate,
    Limit,
}

impl Admission {
    pub fn new(rate_limit: u32) -> Self {
        let bucket = (rate_limit > 0).then(|| {
            Mutex::new(Bucket {
                tokens: f64::from(rate_limit),
                capacity: f64::from(rate_limit),
                refilled: Instant::now(),
            })
        });
        Self { bucket, last_limit_log: Mutex::new(None) }
    }

    /// Takes a token; false when none is left.
    fn take(&self) -> bool {
        let Some(bucket) = &self.bucket else { return true };
        let mut bucket = bucket.locked();
        let now = Instant::now();
        let refill = now.duration_since(bucket.refilled).as_secs_f64();
        bucket.tokens = (bucket.tokens + refill).min(bucket.capacity);
        bucket.refilled = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn log_limit(&self, limit: u32) {
        let mut last = self.last_limit_log.locked();
        if last.is_none_or(|at| at.elapsed() >= LOG_EVERY) {
            *last = Some(Instant::now());
            tracing::warn!(limit, "node connection limit reached");
        }
    }
}

impl Node {
    /// Whether a new client connection may start on this node now.
    pub fn admit_connection(&self) -> Result<(), Refused> {
        if !self.admission.take() {
            return Err(Refused::Rate);
        }
        let limit = self.config.client.connection_limit;
        if limit > 0 && self.hub.num_connections() >= limit as usize {
            self.admission.log_limit(limit);
            self.metrics.connection_limit.inc();
            return Err(Refused::Limit);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_burst_then_one_connection_per_second() {
        let admission = Admission::new(3);
        assert!((0..3).all(|_| admission.take()), "the bucket starts full");
        assert!(!admission.take());
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert!(admission.take(), "one token per second");
        assert!(!admission.take());
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!((0..3).all(|_| admission.take()), "refilled to the burst, not beyond");
        assert!(!admission.take());
        assert!(Admission::new(0).take(), "no limit");
    }
}
