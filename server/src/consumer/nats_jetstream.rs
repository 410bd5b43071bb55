//! NATS JetStream (`type: nats_jetstream`): a durable pull consumer on `stream_name`.
//!
//! The consumer is created (or updated) with `durable_consumer_name`, `subjects` as its filter,
//! `deliver_policy`, explicit acks, a 30 s ack wait and `max_ack_pending`, or looked up when
//! `use_existing_consumer`. Messages run one at a time in delivery order and are acked once
//! settled. A command to retry is retried in place (the messages behind it wait), telling the
//! server it is still in progress so it is not redelivered meanwhile; Centrifugo NAKs it
//! instead, which lets the next messages overtake it. When the server goes away the client
//! reconnects and the consumer is fetched again, with the backoff.
//!
//! The method comes from the `method_header` header when present, else from the body.

use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::{self, AckKind, Message};
use futures_util::StreamExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Backoff, ConsumedPublication, Context, Outcome, SkipReason};
use crate::config::{NatsJetStreamConsumer, PublicationFieldNames};

/// How long the server waits for an ack before delivering a message again (Centrifugo's).
const ACK_WAIT: Duration = Duration::from_secs(30);

pub(super) async fn spawn(
    config: &NatsJetStreamConsumer,
    context: Context,
    stop: CancellationToken,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    let key = format!("consumers.{}.nats_jetstream", context.name);
    let mut options = async_nats::ConnectOptions::new()
        .name(format!("spinwire consumer {}", context.name))
        .retry_on_initial_connect()
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis(50u64.saturating_mul(1 << attempts.min(5))).min(Duration::from_secs(1))
        });
    if !config.credentials_file.is_empty() {
        options = options
            .credentials_file(&config.credentials_file)
            .await
            .map_err(|e| anyhow::anyhow!("{key}.credentials_file: {e}"))?;
    } else if !config.username.is_empty() {
        options = options.user_and_password(config.username.clone(), config.password.clone());
    } else if !config.token.is_empty() {
        options = options.token(config.token.clone());
    }
    if config.tls.enabled {
        let tls = crate::tls::client_config(&format!("{key}.tls"), &config.tls)
            .map_err(|e| anyhow::anyhow!("{e:#}"))?;
        options = options.require_tls(true).tls_client_config(tls);
    }
    let client = options.connect(config.url.as_str()).await.map_err(|e| anyhow::anyhow!("{key}.url: {e}"))?;
    let reader = Reader {
        context: jetstream::new(client),
        config: config.clone(),
        publication_fields: config
            .publication_data_mode
            .enabled
            .then(|| config.publication_data_mode.field_names()),
    };
    Ok(vec![tokio::spawn(reader.run(context, stop))])
}

struct Reader {
    context: jetstream::Context,
    config: NatsJetStreamConsumer,
    publication_fields: Option<PublicationFieldNames>,
}

impl Reader {
    async fn run(self, context: Context, stop: CancellationToken) {
        let mut backoff = Backoff::default();
        while !stop.is_cancelled() {
            match self.consume(&context, &stop, &mut backoff).await {
                Ok(()) => return,
                Err(error) => context.failed(&format!("jetstream {:?}: {error}", self.config.stream_name)),
            }
            if !backoff.sleep(&stop).await {
                return;
            }
        }
    }

    async fn consumer(&self) -> Result<PullConsumer, async_nats::Error> {
        let stream = self.context.get_stream(&self.config.stream_name).await?;
        let name = &self.config.durable_consumer_name;
        if self.config.use_existing_consumer {
            return stream.get_consumer(name).await;
        }
        let deliver_policy =
            if self.config.deliver_policy == "all" { DeliverPolicy::All } else { DeliverPolicy::New };
        let consumer_config = pull::Config {
            durable_name: Some(name.clone()),
            name: Some(name.clone()),
            filter_subject: match self.config.subjects.as_slice() {
                [one] => one.clone(),
                _ => String::new(),
            },
            // Several filters need nats-server 2.10.
            filter_subjects: if self.config.subjects.len() > 1 {
                self.config.subjects.clone()
            } else {
                Vec::new()
            },
            deliver_policy,
            ack_policy: AckPolicy::Explicit,
            ack_wait: ACK_WAIT,
            max_ack_pending: self.config.max_ack_pending,
            ..Default::default()
        };
        Ok(stream.create_consumer(consumer_config).await?)
    }

    /// Reads until stopped (`Ok`) or until the consumer or connection fails.
    async fn consume(
        &self,
        context: &Context,
        stop: &CancellationToken,
        backoff: &mut Backoff,
    ) -> Result<(), async_nats::Error> {
        let mut messages = self.consumer().await?.messages().await?;
        loop {
            let message = tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                next = messages.next() => match next {
                    Some(message) => message?,
                    None => return Err("message stream ended".into()),
                },
            };
            backoff.reset();
            if !self.settle(context, stop, &message).await {
                return Ok(());
            }
            message.ack().await?;
        }
    }

    /// Runs one message until it settles; false when stopped meanwhile. Before each retry the
    /// server hears the message is still in progress, so neither it nor its successors are
    /// handed out again (Centrifugo NAKs it, letting its successors overtake it).
    async fn settle(&self, context: &Context, stop: &CancellationToken, message: &Message) -> bool {
        let what = || format!("{} message", message.subject);
        let mut attempts = 0;
        context
            .until_settled(stop, &what, || {
                attempts += 1;
                let retrying = attempts > 1;
                async move {
                    if retrying {
                        let _ = message.ack_with(AckKind::Progress).await;
                    }
                    self.execute(context, message).await
                }
            })
            .await
    }

    async fn execute(&self, context: &Context, message: &Message) -> Outcome {
        let header = |name: &str| -> Option<&str> {
            if name.is_empty() {
                return None;
            }
            message.headers.as_ref()?.get(name).map(|v| v.as_str())
        };
        let Some(names) = &self.publication_fields else {
            return context.dispatcher.command(header(&self.config.method_header), &message.payload).await;
        };
        let all = message.headers.iter().flat_map(|headers| headers.iter().map(|(name, _)| name.as_ref()));
        let parsed = ConsumedPublication::from_fields(
            names,
            message.payload.clone(),
            |k| header(k).map(str::to_owned),
            all,
        );
        match parsed {
            Some(publication) => context.dispatcher.publication(publication).await,
            None => Outcome::Skipped(SkipReason::Malformed),
        }
    }
}
