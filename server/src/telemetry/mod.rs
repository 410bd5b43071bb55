//! OpenTelemetry traces (`opentelemetry.enabled`): spans for server API calls and proxy calls,
//! W3C trace context in and out, exported over OTLP (HTTP/protobuf or gRPC) in batches.
//!
//! As in Centrifugo, the `opentelemetry` section only switches tracing on; where spans go comes
//! from the standard `OTEL_*` environment variables ([`Settings`]). Beyond Centrifugo, proxy
//! calls get client spans and carry `traceparent` to the backend, as a child of the
//! `traceparent` the client's connection request carried (so a backend's trace continues the
//! one the client started), and spans still queued are flushed on shutdown.
//!
//! The model is deliberately small: a [`Span`] is a value the caller owns; ending it (or
//! dropping it) hands its data to a bounded queue, which a background task drains in batches
//! to the collector. A full queue drops spans (counted), never blocks a request.

mod context;
mod export;
pub mod otlp;
mod settings;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;

pub use context::{SpanContext, TRACEPARENT, TRACESTATE};
pub use settings::{Sampler, Settings};

/// Whom a span is for (OTLP `SpanKind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    /// A request this node answers.
    Server = 2,
    /// A request this node makes.
    Client = 3,
}

/// An attribute value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(String),
    Int(i64),
}

impl From<&str> for Value {
    fn from(value: &str) -> Self {
        Value::Str(value.to_owned())
    }
}

impl From<String> for Value {
    fn from(value: String) -> Self {
        Value::Str(value)
    }
}

impl From<i64> for Value {
    fn from(value: i64) -> Self {
        Value::Int(value)
    }
}

/// A finished span, as the exporter sends it.
#[derive(Debug, Clone)]
pub struct SpanData {
    pub context: SpanContext,
    pub parent: Option<SpanContext>,
    pub name: String,
    pub kind: SpanKind,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    pub attributes: Vec<(&'static str, Value)>,
    /// `Some(description)`: the span ended in error.
    pub error: Option<String>,
}

/// The node's tracer: makes spans and queues the finished ones for export.
#[derive(Debug)]
pub struct Tracer {
    sampler: Sampler,
    queue: mpsc::Sender<SpanData>,
    /// Spans dropped because the queue was full.
    dropped: AtomicU64,
    exporter: export::Handle,
}

fn unix_nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

impl Tracer {
    /// A tracer exporting as `settings` say, for the node `node_uid` (the resource's
    /// `service.instance.id`). Needs a tokio runtime: the exporter runs as a task.
    pub fn start(settings: Settings, node_uid: &str) -> anyhow::Result<Arc<Self>> {
        let (queue, spans) = mpsc::channel(settings.max_queue_size);
        let sampler = settings.sampler;
        let exporter = export::start(settings, node_uid, spans)?;
        Ok(Arc::new(Self { sampler, queue, dropped: AtomicU64::new(0), exporter }))
    }

    /// Starts a span called `name`, a child of `parent` when there is one (from a
    /// `traceparent` or a span of this node), else the root of a new trace.
    pub fn span(
        self: &Arc<Self>,
        name: impl Into<String>,
        kind: SpanKind,
        parent: Option<SpanContext>,
    ) -> Span {
        let context = SpanContext::child_of(parent.as_ref(), |trace_id| {
            self.sampler.samples(parent.as_ref(), trace_id)
        });
        let recording = context.sampled();
        Span {
            data: recording.then(|| {
                Box::new(SpanData {
                    context: context.clone(),
                    parent,
                    name: name.into(),
                    kind,
                    start_unix_nanos: unix_nanos(),
                    end_unix_nanos: 0,
                    attributes: Vec::new(),
                    error: None,
                })
            }),
            context,
            tracer: recording.then(|| self.clone()),
        }
    }

    fn finish(&self, data: SpanData) {
        if self.queue.try_send(data).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Spans lost to a full queue since the start (`spinwire_telemetry_spans_dropped_total`).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Exports what is queued now, waiting at most `within`; for shutdown.
    pub async fn flush(&self, within: Duration) {
        self.exporter.flush(within).await;
    }
}

/// A span in progress. Ending it (or dropping it) queues it for export; an unsampled span
/// records nothing but still has a context to propagate.
#[derive(Debug)]
pub struct Span {
    context: SpanContext,
    data: Option<Box<SpanData>>,
    tracer: Option<Arc<Tracer>>,
}

impl Span {
    /// What a request made inside this span carries as its `traceparent`.
    pub fn context(&self) -> &SpanContext {
        &self.context
    }

    pub fn set_attribute(&mut self, key: &'static str, value: impl Into<Value>) {
        if let Some(data) = &mut self.data {
            match data.attributes.iter_mut().find(|(k, _)| *k == key) {
                Some((_, existing)) => *existing = value.into(),
                None => data.attributes.push((key, value.into())),
            }
        }
    }

    /// Marks the span failed, with `description` (the first failure wins).
    pub fn set_error(&mut self, description: impl Into<String>) {
        if let Some(data) = &mut self.data
            && data.error.is_none()
        {
            data.error = Some(description.into());
        }
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        if let (Some(mut data), Some(tracer)) = (self.data.take(), self.tracer.take()) {
            data.end_unix_nanos = unix_nanos();
            tracer.finish(*data);
        }
    }
}

tokio::task_local! {
    /// The server span of the request this task is answering, for code deep in the call
    /// (the API executor) to annotate without passing it along.
    static CURRENT: Arc<crate::sync::Mutex<Option<Span>>>;
}

/// Runs `work` with `span` as the current span, and gives the span back when it is done.
pub async fn in_span<F: std::future::Future>(span: Span, work: F) -> (F::Output, Span) {
    let shared = Arc::new(crate::sync::Mutex::new(Some(span)));
    let output = CURRENT.scope(shared.clone(), work).await;
    let span = shared.locked().take().expect("the span is only taken here");
    (output, span)
}

/// Sets an attribute on the current span, if any.
pub fn annotate(key: &'static str, value: impl Into<Value>) {
    let _ = CURRENT.try_with(|current| {
        if let Some(span) = current.locked().as_mut() {
            span.set_attribute(key, value);
        }
    });
}

/// Marks the current span (if any) failed with `description`.
pub fn fail(description: impl Into<String>) {
    let _ = CURRENT.try_with(|current| {
        if let Some(span) = current.locked().as_mut() {
            span.set_error(description);
        }
    });
}
