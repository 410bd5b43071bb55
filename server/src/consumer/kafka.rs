//! Kafka (`type: kafka`): a member of `consumer_group` on `topics`, through librdkafka.
//!
//! One reader takes every fetched record and hands it to the worker of its partition (one
//! task per assigned partition, a queue of `partition_queue_max_size`). A worker executes its
//! records in offset order, retrying in place with the backoff, and after each one stores its
//! offset; stored offsets are committed every second, on a rebalance and on shutdown, so a
//! record is committed only after its command ran (at least once). When a worker's queue
//! stays full for [`STUCK`], its partition is paused and the records already fetched wait
//! with the reader, so a partition stuck on retries holds back the others for at most that
//! long (Centrifugo pauses at once; librdkafka makes a pause cost a refetch, which a worker
//! that is merely slower than the fetcher, draining a backlog, would pay over and over).
//!
//! Rebalances come from librdkafka's callbacks as the set of assigned partitions; the reader
//! stops the workers of revoked partitions (each finishes the record in flight) and starts
//! workers on demand. Broker restarts are librdkafka's to ride out: it reconnects and the
//! group carries on from the committed offsets.
//!
//! `max_poll_records` is franz-go's batch size and has no meaning here (librdkafka hands
//! records over one by one from its own prefetch), so it is accepted and inert.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::{ClientContext, TopicPartitionList};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{ConsumedPublication, Context, Outcome, SkipReason};
use crate::config::{KafkaConsumer, PublicationFieldNames};
use crate::sync::Mutex;

/// How often the reader reaps revoked workers and retries handing held records over.
const TICK: Duration = Duration::from_millis(50);
/// How long a full partition queue may keep the reader waiting before that partition is paused.
const STUCK: Duration = Duration::from_secs(1);

type PartitionKey = (String, i32);

/// librdkafka's callbacks: keeps the set of partitions this member owns.
#[derive(Default)]
struct GroupContext {
    assigned: Mutex<HashSet<PartitionKey>>,
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let keys = |list: &TopicPartitionList| -> Vec<PartitionKey> {
            list.elements().iter().map(|e| (e.topic().to_owned(), e.partition())).collect()
        };
        let mut assigned = self.assigned.locked();
        match rebalance {
            Rebalance::Assign(list) => assigned.extend(keys(list)),
            Rebalance::Revoke(list) => keys(list).iter().for_each(|k| {
                assigned.remove(k);
            }),
            Rebalance::Error(error) => tracing::warn!(%error, "kafka rebalance failed"),
        }
    }
}

type GroupConsumer = StreamConsumer<GroupContext>;

pub(super) fn spawn(
    config: &KafkaConsumer,
    context: Context,
    stop: CancellationToken,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    let key = format!("consumers.{}.kafka", context.name);
    let consumer: GroupConsumer = client_config(config, &key)?
        .create_with_context(GroupContext::default())
        .map_err(|e| anyhow::anyhow!("{key}: {e}"))?;
    let topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics).map_err(|e| anyhow::anyhow!("{key}.topics: {e}"))?;
    let reader = Reader {
        consumer: Arc::new(consumer),
        queue_size: usize::try_from(config.partition_queue_max_size).unwrap_or(1).clamp(1, 100_000),
        method_header: config.method_header.clone(),
        publication_fields: config
            .publication_data_mode
            .enabled
            .then(|| config.publication_data_mode.field_names()),
    };
    Ok(vec![tokio::spawn(reader.run(context, stop))])
}

/// librdkafka's settings for the section (its keys, Centrifugo's meanings).
fn client_config(config: &KafkaConsumer, key: &str) -> anyhow::Result<ClientConfig> {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", config.brokers.join(","))
        .set("group.id", &config.consumer_group)
        .set("client.id", "spinwire")
        // Commit only what a worker stored, after executing it.
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        // A new group starts at the beginning, as franz-go's does.
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", config.fetch_max_wait.0.as_millis().max(1).to_string())
        .set("socket.connection.setup.timeout.ms", config.dial_timeout.0.as_millis().max(1000).to_string())
        .set(
            "isolation.level",
            if config.fetch_read_uncommitted { "read_uncommitted" } else { "read_committed" },
        );
    if config.fetch_max_bytes > 0 {
        client.set("fetch.max.bytes", config.fetch_max_bytes.to_string());
    }
    if !config.instance_id.is_empty() {
        client.set("group.instance.id", &config.instance_id);
    }
    let sasl = !config.sasl_mechanism.is_empty();
    let protocol = match (config.tls.enabled, sasl) {
        (false, false) => "plaintext",
        (true, false) => "ssl",
        (false, true) => "sasl_plaintext",
        (true, true) => "sasl_ssl",
    };
    client.set("security.protocol", protocol);
    if sasl {
        client
            .set("sasl.mechanism", config.sasl_mechanism.to_ascii_uppercase())
            .set("sasl.username", &config.sasl_user)
            .set("sasl.password", &config.sasl_password);
    }
    if config.tls.enabled {
        let pem = |field: &str, source: &str| -> anyhow::Result<Option<String>> {
            if source.is_empty() {
                return Ok(None);
            }
            let bytes = crate::config::read_pem_source(&format!("{key}.tls.{field}"), source)?;
            Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
        };
        if let Some(ca) = pem("server_ca_pem", &config.tls.server_ca_pem)? {
            client.set("ssl.ca.pem", ca);
        }
        if let Some(cert) = pem("cert_pem", &config.tls.cert_pem)? {
            client.set("ssl.certificate.pem", cert);
        }
        if let Some(private_key) = pem("key_pem", &config.tls.key_pem)? {
            client.set("ssl.key.pem", private_key);
        }
        if config.tls.insecure_skip_verify {
            client.set("enable.ssl.certificate.verification", "false");
        }
    }
    Ok(client)
}

/// The reader: fetched records to partition workers, with pausing for full queues.
struct Reader {
    consumer: Arc<GroupConsumer>,
    queue_size: usize,
    method_header: String,
    publication_fields: Option<PublicationFieldNames>,
}

/// One partition's worker, and the records it could not take yet (its partition is paused
/// while there are any).
struct Worker {
    key: PartitionKey,
    queue: mpsc::Sender<OwnedMessage>,
    held: VecDeque<OwnedMessage>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Reader {
    async fn run(self, context: Context, stop: CancellationToken) {
        let shared = Arc::new(Executing {
            consumer: self.consumer.clone(),
            method_header: self.method_header.clone(),
            publication_fields: self.publication_fields.clone(),
        });
        // A handful (the assigned partitions): a scan finds one without building a key.
        let mut workers: Vec<Worker> = Vec::new();
        let mut tick = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                received = self.consumer.recv() => match received {
                    Ok(message) => {
                        let message = message.detach();
                        let (topic, partition) = (message.topic(), message.partition());
                        let index = match workers.iter().position(|w| w.key.1 == partition && w.key.0 == topic) {
                            Some(index) => index,
                            None => {
                                workers.push(self.start_worker((topic.to_owned(), partition), &shared, &context, &stop));
                                workers.len() - 1
                            }
                        };
                        self.hand_over(&mut workers[index], message).await;
                    }
                    Err(error) => {
                        context.failed(&format!("kafka: {error}"));
                        tokio::time::sleep(TICK).await;
                    }
                },
                _ = tick.tick() => self.maintain(&mut workers),
            }
        }
        self.drain(workers).await;
    }

    fn start_worker(
        &self,
        key: PartitionKey,
        shared: &Arc<Executing>,
        context: &Context,
        stop: &CancellationToken,
    ) -> Worker {
        let (queue, records) = mpsc::channel(self.queue_size);
        let stop = stop.child_token();
        let task = tokio::spawn(shared.clone().work(records, context.clone(), stop.clone()));
        Worker { key, queue, held: VecDeque::new(), stop, task }
    }

    /// Queues `message` for its worker, waiting up to [`STUCK`] for room; after that the
    /// partition is paused and the message held.
    async fn hand_over(&self, worker: &mut Worker, message: OwnedMessage) {
        if !worker.held.is_empty() {
            worker.held.push_back(message);
            return;
        }
        match tokio::time::timeout(STUCK, worker.queue.reserve()).await {
            Ok(Ok(permit)) => permit.send(message),
            // The worker stopped (revoked): the record goes to the partition's next owner.
            Ok(Err(_)) => {}
            Err(_) => {
                self.set_paused(&worker.key, true);
                worker.held.push_back(message);
            }
        }
    }

    /// Stops the workers of revoked partitions; moves held records on, resuming partitions.
    fn maintain(&self, workers: &mut Vec<Worker>) {
        let assigned = self.consumer.context().assigned.locked().clone();
        workers.retain(|worker| {
            let keep = assigned.contains(&worker.key);
            if !keep {
                // It finishes the record in flight; the new owner starts from the commit.
                worker.stop.cancel();
                if !worker.held.is_empty() {
                    // Should the partition come back, it must not come back paused.
                    self.set_paused(&worker.key, false);
                }
            }
            keep
        });
        for worker in workers.iter_mut() {
            let was_holding = !worker.held.is_empty();
            while let Some(message) = worker.held.pop_front() {
                if let Err(mpsc::error::TrySendError::Full(message)) = worker.queue.try_send(message) {
                    worker.held.push_front(message);
                    break;
                }
            }
            if was_holding && worker.held.is_empty() {
                self.set_paused(&worker.key, false);
            }
        }
    }

    fn set_paused(&self, (topic, partition): &PartitionKey, paused: bool) {
        let mut list = TopicPartitionList::new();
        list.add_partition(topic, *partition);
        let result = if paused { self.consumer.pause(&list) } else { self.consumer.resume(&list) };
        if let Err(error) = result {
            tracing::debug!(%error, topic, partition, paused, "kafka: pause or resume refused");
        }
    }

    /// Shutdown: every worker finishes its record in flight, then the stored offsets (the
    /// records executed, not the ones fetched ahead: librdkafka commits `rktp_stored_pos` when
    /// given no list) are committed before the consumer leaves the group.
    async fn drain(self, workers: Vec<Worker>) {
        for worker in workers {
            worker.stop.cancel();
            let _ = worker.task.await;
        }
        let consumer = self.consumer.clone();
        let committed =
            tokio::task::spawn_blocking(move || consumer.commit_consumer_state(CommitMode::Sync)).await;
        if let Ok(Err(error)) = committed {
            tracing::warn!(%error, "kafka: committing on shutdown failed");
        }
    }
}

/// What workers share: the consumer (to store offsets) and how to read a record.
struct Executing {
    consumer: Arc<GroupConsumer>,
    method_header: String,
    publication_fields: Option<PublicationFieldNames>,
}

impl Executing {
    async fn work(
        self: Arc<Self>,
        mut records: mpsc::Receiver<OwnedMessage>,
        context: Context,
        stop: CancellationToken,
    ) {
        loop {
            let message = tokio::select! {
                _ = stop.cancelled() => return,
                next = records.recv() => match next {
                    Some(message) => message,
                    None => return,
                },
            };
            let what = || format!("{}[{}]@{}", message.topic(), message.partition(), message.offset());
            if !context.until_settled(&stop, &what, || self.execute(&context, &message)).await {
                return;
            }
            if let Err(error) =
                self.consumer.store_offset(message.topic(), message.partition(), message.offset())
            {
                // The partition was revoked meanwhile: its new owner executes it again.
                tracing::debug!(%error, record = %what(), "kafka: offset not stored");
            }
        }
    }

    async fn execute(&self, context: &Context, message: &OwnedMessage) -> Outcome {
        let body = message.payload().unwrap_or_default();
        let header = |name: &str| -> Option<&str> {
            if name.is_empty() {
                return None;
            }
            let headers = message.headers()?;
            headers.iter().find(|h| h.key == name).and_then(|h| std::str::from_utf8(h.value?).ok())
        };
        let Some(names) = &self.publication_fields else {
            return context.dispatcher.command(header(&self.method_header), body).await;
        };
        let all = message.headers().into_iter().flat_map(|headers| headers.iter().map(|h| h.key));
        let data = bytes::Bytes::copy_from_slice(body);
        let parsed = ConsumedPublication::from_fields(names, data, |k| header(k).map(str::to_owned), all);
        match parsed {
            Some(publication) => context.dispatcher.publication(publication).await,
            None => Outcome::Skipped(SkipReason::Malformed),
        }
    }
}
