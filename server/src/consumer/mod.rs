//! Asynchronous consumers (`consumers[]`): server API commands read from a PostgreSQL outbox
//! table, Kafka topics, a NATS JetStream stream or Redis Streams, and executed through the
//! same API executor as the HTTP and gRPC API ([`Dispatcher`]).
//!
//! Every source keeps the same promises:
//! - **at least once**: a message is acknowledged (deleted, committed, acked) only after its
//!   command ran, or after it was found impossible to run (malformed, refused by the API),
//!   which is logged and counted (`spinwire_consumers_messages_skipped_total`), never retried;
//! - **in order** within a partition, stream or outbox partition: a message that must be
//!   retried (API error 100, the source unreachable) holds back the ones behind it, retried
//!   with a capped exponential backoff ([`Backoff`]);
//! - **survives its source restarting**: connections are re-established with the backoff;
//! - **drains on shutdown**: a command in flight finishes and is acknowledged before the
//!   consumer stops ([`Consumers::stop`]).
//!
//! Duplicates after a crash between execution and acknowledgement are possible, as in
//! Centrifugo; publishers that set `idempotency_key` get them dropped by the broker.

mod dispatch;
mod kafka;
mod nats_jetstream;
mod postgres;
mod redis_stream;

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::Executor;
use crate::config::ConsumerConfig;
use crate::metrics::ConsumerCounts;

pub use dispatch::{ConsumedPublication, Dispatcher, Outcome, SkipReason};

/// The running consumers.
#[derive(Debug, Default)]
pub struct Consumers {
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Consumers {
    /// Starts every enabled consumer. A consumer whose source cannot be set up (a bad DSN, a
    /// missing stream when told to use an existing consumer) fails the start, as in Centrifugo.
    pub async fn start(configs: &[ConsumerConfig], executor: &Executor) -> anyhow::Result<Self> {
        let mut consumers = Self::default();
        for config in configs.iter().filter(|c| c.enabled) {
            let context = Context::new(config, executor);
            let stop = consumers.stop.clone();
            let task = match config.kind.as_str() {
                "postgresql" => postgres::spawn(&config.postgresql, context, stop)?,
                "redis_stream" => redis_stream::spawn(&config.redis_stream, context, stop)?,
                "nats_jetstream" => nats_jetstream::spawn(&config.nats_jetstream, context, stop).await?,
                "kafka" => kafka::spawn(&config.kafka, context, stop)?,
                other => anyhow::bail!("consumers: type {other:?} is not served"),
            };
            tracing::info!(consumer = %config.name, kind = %config.kind, "running consumer");
            consumers.tasks.extend(task);
        }
        Ok(consumers)
    }

    /// Stops reading new messages, lets each consumer finish (and acknowledge) the command in
    /// flight, and waits for them until `deadline`.
    pub async fn stop(self, deadline: tokio::time::Instant) {
        self.stop.cancel();
        for task in self.tasks {
            if tokio::time::timeout_at(deadline, task).await.is_err() {
                tracing::warn!("a consumer did not stop in time");
            }
        }
    }
}

/// What every consumer task shares: its name, the dispatcher and its counters.
#[derive(Debug, Clone)]
pub(crate) struct Context {
    pub name: Arc<str>,
    pub dispatcher: Dispatcher,
    counts: Arc<ConsumerCounts>,
    executor: Executor,
}

impl Context {
    fn new(config: &ConsumerConfig, executor: &Executor) -> Self {
        // The series exist (at 0) from the start, as Centrifugo's do.
        let counts = executor.node().metrics.consumers.get(&[&config.name]);
        Self {
            name: config.name.as_str().into(),
            dispatcher: Dispatcher::new(executor.clone()),
            counts,
            executor: executor.clone(),
        }
    }

    /// Counts an outcome, and logs it unless it is done. `what` names the message; it is
    /// only built for the log, so the common case allocates nothing.
    pub fn settle(&self, outcome: &Outcome, what: &Describe<'_>) {
        match outcome {
            Outcome::Done => self.counts.processed.inc(),
            Outcome::Skipped(reason) => {
                tracing::warn!(consumer = %self.name, message = %what(), reason = reason.label(), "skipping a consumed message that cannot be executed");
                self.counts.processed.inc();
                self.executor.node().metrics.consumer_skips.get(&[&self.name, reason.label()]).inc();
            }
            Outcome::Retry(error) => self.failed(&format!("{}: {error}", what())),
        }
    }

    /// A failed attempt (source unreachable, command to retry): logged and counted.
    pub fn failed(&self, error: &str) {
        tracing::warn!(consumer = %self.name, %error, "consumer error; retrying");
        self.counts.errors.inc();
    }

    /// Runs `outcome_of` until it no longer asks for a retry, waiting the backoff between
    /// attempts. True once settled (acknowledge it); false when `stop` came first (leave it
    /// unacknowledged for the next consumer).
    pub async fn until_settled<F, Fut>(
        &self,
        stop: &CancellationToken,
        what: &Describe<'_>,
        mut outcome_of: F,
    ) -> bool
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Outcome>,
    {
        let mut backoff = Backoff::default();
        loop {
            let outcome = outcome_of().await;
            self.settle(&outcome, what);
            if !matches!(outcome, Outcome::Retry(_)) {
                return true;
            }
            if !backoff.sleep(stop).await {
                return false;
            }
        }
    }
}

/// Names a message for the log (`stream 1700000000000-0`), built only when logged.
pub(crate) type Describe<'a> = dyn Fn() -> String + Sync + 'a;

/// A boolean header or field, spelt as Go's `strconv.ParseBool` accepts (Centrifugo's parser).
pub(crate) fn parse_bool(text: &str) -> Option<bool> {
    match text {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// Capped exponential backoff with jitter: 10–20 ms doubled per attempt, at most 5 s (the
/// bounds Centrifugo's consumers use).
#[derive(Debug, Default)]
pub(crate) struct Backoff {
    attempts: u32,
}

impl Backoff {
    const MIN: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_secs(5);

    pub fn next_delay(&mut self) -> Duration {
        self.attempts = (self.attempts + 1).min(16);
        let jitter = Duration::from_millis(rand::random::<u64>() % Self::MIN.as_millis() as u64);
        ((Self::MIN + jitter) * (1 << self.attempts)).min(Self::MAX)
    }

    pub fn reset(&mut self) {
        self.attempts = 0;
    }

    /// Waits the next delay; false when `stop` was cancelled first.
    pub async fn sleep(&mut self, stop: &CancellationToken) -> bool {
        let delay = self.next_delay();
        tokio::select! {
            _ = stop.cancelled() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::node::Node;

    fn context() -> Context {
        let config = crate::config::build(None, &|_| None).unwrap().config;
        let executor = Executor::new(Node::new(config).unwrap());
        Context::new(&ConsumerConfig { name: "cons".into(), ..Default::default() }, &executor)
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_runs_again_after_a_backoff_until_it_settles() {
        let context = context();
        let attempts = AtomicU32::new(0);
        let stop = CancellationToken::new();
        let settled = context
            .until_settled(&stop, &|| "m1".into(), || async {
                if attempts.fetch_add(1, Ordering::Relaxed) < 2 {
                    Outcome::Retry("100".into())
                } else {
                    Outcome::Done
                }
            })
            .await;
        assert!(settled);
        assert_eq!(attempts.load(Ordering::Relaxed), 3);
        assert_eq!((context.counts.errors.get(), context.counts.processed.get()), (2, 1));

        // Stopped while waiting to retry: not settled, so not acknowledged.
        stop.cancel();
        let never =
            context.until_settled(&stop, &|| "m2".into(), || async { Outcome::Retry("100".into()) }).await;
        assert!(!never);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let mut backoff = Backoff::default();
        let first = backoff.next_delay();
        assert!(first >= Duration::from_millis(20) && first < Duration::from_millis(40), "{first:?}");
        let delays: Vec<Duration> = (0..20).map(|_| backoff.next_delay()).collect();
        assert!(delays.windows(2).all(|w| w[0] <= w[1] || w[1] == Backoff::MAX));
        assert_eq!(*delays.last().unwrap(), Backoff::MAX);
        backoff.reset();
        assert!(backoff.next_delay() < Duration::from_millis(40));
    }
}
