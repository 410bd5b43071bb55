//! The batch exporter: a task that takes finished spans off the queue and sends them to the
//! collector every `OTEL_BSP_SCHEDULE_DELAY`, or as soon as a batch is full.

use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use prost::Message;
use tokio::sync::{mpsc, oneshot};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use super::otlp;
use super::settings::{Protocol, Settings};
use super::{SpanData, Value};
use crate::proxy::{PooledClient, http_client};

/// The OTLP gRPC method spans are sent with.
const EXPORT_METHOD: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// Asks the exporter task to send what is queued now.
#[derive(Debug)]
pub(super) struct Handle {
    flush: mpsc::Sender<oneshot::Sender<()>>,
}

impl Handle {
    pub(super) async fn flush(&self, within: Duration) {
        let (done, flushed) = oneshot::channel();
        if self.flush.send(done).await.is_ok() {
            let _ = tokio::time::timeout(within, flushed).await;
        }
    }
}

enum Transport {
    Http { client: Box<PooledClient>, uri: http::Uri },
    Grpc(tonic::client::Grpc<Channel>),
}

struct Exporter {
    transport: Transport,
    settings: Settings,
    resource: otlp::Resource,
}

pub(super) fn start(settings: Settings, node_uid: &str, spans: mpsc::Receiver<SpanData>) -> Result<Handle> {
    let transport = match settings.protocol {
        Protocol::HttpProtobuf => Transport::Http {
            client: Box::new(http_client("opentelemetry", &Default::default())?),
            uri: settings
                .endpoint
                .parse()
                .with_context(|| format!("OTLP endpoint {:?}", settings.endpoint))?,
        },
        Protocol::Grpc => Transport::Grpc(grpc_client(&settings)?),
    };
    let resource = resource(&settings, node_uid);
    let (flush, flushes) = mpsc::channel(4);
    tokio::spawn(Exporter { transport, settings, resource }.run(spans, flushes));
    Ok(Handle { flush })
}

fn grpc_client(settings: &Settings) -> Result<tonic::client::Grpc<Channel>> {
    let mut endpoint = Endpoint::from_shared(settings.endpoint.clone())
        .with_context(|| format!("OTLP endpoint {:?}", settings.endpoint))?
        .timeout(settings.timeout);
    if settings.endpoint.starts_with("https://") {
        endpoint = endpoint.tls_config(ClientTlsConfig::new().with_native_roots()).context("OTLP TLS")?;
    }
    let client = tonic::client::Grpc::new(endpoint.connect_lazy());
    Ok(if settings.gzip { client.send_compressed(tonic::codec::CompressionEncoding::Gzip) } else { client })
}

fn attribute(key: &str, value: &Value) -> otlp::KeyValue {
    use otlp::any_value::Value as Any;
    let value = match value {
        Value::Str(text) => Any::StringValue(text.clone()),
        Value::Int(number) => Any::IntValue(*number),
    };
    otlp::KeyValue { key: key.to_owned(), value: Some(otlp::AnyValue { value: Some(value) }) }
}

/// `service.name`, `service.instance.id` (the node's uid) and `version`, as Centrifugo's;
/// `OTEL_RESOURCE_ATTRIBUTES` overrides any of them.
fn resource(settings: &Settings, node_uid: &str) -> otlp::Resource {
    let mut pairs: Vec<(String, String)> = vec![
        ("service.instance.id".into(), node_uid.into()),
        ("service.name".into(), settings.service_name.clone()),
        ("version".into(), crate::product_version()),
    ];
    for (key, value) in &settings.resource {
        match pairs.iter_mut().find(|(k, _)| k == key) {
            Some((_, existing)) => *existing = value.clone(),
            None => pairs.push((key.clone(), value.clone())),
        }
    }
    otlp::Resource { attributes: pairs.iter().map(|(k, v)| attribute(k, &Value::Str(v.clone()))).collect() }
}

fn span(data: SpanData) -> otlp::Span {
    // Bit 8: whether the parent is remote is known; bit 9: it is.
    let remote_bits = match &data.parent {
        Some(parent) if parent.remote => 0x300,
        _ => 0x100,
    };
    otlp::Span {
        trace_id: data.context.trace_id.to_vec(),
        span_id: data.context.span_id.to_vec(),
        trace_state: data.context.trace_state.clone(),
        parent_span_id: data.parent.map(|parent| parent.span_id.to_vec()).unwrap_or_default(),
        name: data.name,
        kind: data.kind as i32,
        start_time_unix_nano: data.start_unix_nanos,
        end_time_unix_nano: data.end_unix_nanos,
        attributes: data.attributes.iter().map(|(key, value)| attribute(key, value)).collect(),
        status: data.error.map(|message| otlp::Status { message, code: 2 }),
        flags: u32::from(data.context.flags) | remote_bits,
    }
}

impl Exporter {
    async fn run(
        mut self,
        mut spans: mpsc::Receiver<SpanData>,
        mut flushes: mpsc::Receiver<oneshot::Sender<()>>,
    ) {
        let mut batch = Vec::new();
        let mut ticks = tokio::time::interval(self.settings.schedule_delay);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                received = spans.recv() => match received {
                    Some(span) => {
                        batch.push(span);
                        if batch.len() >= self.settings.max_batch_size {
                            self.export(&mut batch).await;
                        }
                    }
                    None => return self.export(&mut batch).await,
                },
                _ = ticks.tick() => self.export(&mut batch).await,
                Some(done) = flushes.recv() => {
                    while let Ok(span) = spans.try_recv() {
                        batch.push(span);
                    }
                    self.export(&mut batch).await;
                    let _ = done.send(());
                }
            }
        }
    }

    /// Sends `batch` (in pieces of the batch size); a failed export is logged and dropped,
    /// as the SDKs do: spans are telemetry, not data.
    async fn export(&mut self, batch: &mut Vec<SpanData>) {
        while !batch.is_empty() {
            let take = batch.len().min(self.settings.max_batch_size);
            let spans: Vec<otlp::Span> = batch.drain(..take).map(span).collect();
            let count = spans.len();
            let request = otlp::ExportTraceServiceRequest {
                resource_spans: vec![otlp::ResourceSpans {
                    resource: Some(self.resource.clone()),
                    scope_spans: vec![otlp::ScopeSpans {
                        scope: Some(otlp::InstrumentationScope {
                            name: "spinwire".into(),
                            version: crate::product_version(),
                        }),
                        spans,
                    }],
                    schema_url: String::new(),
                }],
            };
            let sent = tokio::time::timeout(self.settings.timeout, self.send(request)).await;
            match sent {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::warn!(error = %format!("{error:#}"), spans = count, "opentelemetry error")
                }
                Err(_) => tracing::warn!(spans = count, "opentelemetry error: export timed out"),
            }
        }
    }

    async fn send(&mut self, request: otlp::ExportTraceServiceRequest) -> Result<()> {
        match &mut self.transport {
            Transport::Http { client, uri } => {
                let body = request.encode_to_vec();
                let (body, encoding) =
                    if self.settings.gzip { (gzip(&body)?, Some("gzip")) } else { (body, None) };
                let mut outgoing = http::Request::post(uri.clone()).body(Full::new(Bytes::from(body)))?;
                let headers = outgoing.headers_mut();
                headers.insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/x-protobuf"),
                );
                if let Some(encoding) = encoding {
                    headers.insert(http::header::CONTENT_ENCODING, http::HeaderValue::from_static(encoding));
                }
                for (name, value) in &self.settings.headers {
                    headers.insert(
                        http::HeaderName::try_from(name.as_str())?,
                        http::HeaderValue::try_from(value.as_str())?,
                    );
                }
                let response = client.request(outgoing).await?;
                let status = response.status();
                // Read (and bound) the answer so the connection can be reused.
                let _ = http_body_util::Limited::new(response.into_body(), 64 * 1024).collect().await;
                anyhow::ensure!(status.is_success(), "collector answered {status}");
                Ok(())
            }
            Transport::Grpc(client) => {
                let mut outgoing = tonic::Request::new(request);
                for (name, value) in &self.settings.headers {
                    let name = tonic::metadata::MetadataKey::from_bytes(name.as_bytes())?;
                    outgoing.metadata_mut().insert(name, value.parse()?);
                }
                client.ready().await?;
                let codec = tonic_prost::ProstCodec::<
                    otlp::ExportTraceServiceRequest,
                    otlp::ExportTraceServiceResponse,
                >::default();
                let path = http::uri::PathAndQuery::from_static(EXPORT_METHOD);
                client.unary(outgoing, path, codec).await?;
                Ok(())
            }
        }
    }
}

fn gzip(body: &[u8]) -> Result<Vec<u8>> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(body)?;
    Ok(encoder.finish()?)
}
