//! Subscribe streams (gRPC endpoints only): the backend answers a subscription on a stream of
//! its own — first the subscribe response, then publications for this one subscriber — and,
//! when bidirectional, receives the client's publications to the channel on the request stream.
//!
//! Only opening the stream (up to its first message) is bounded by the proxy's `timeout`; the
//! stream itself lives as long as the subscription. The queue towards the backend is bounded:
//! a backend that does not read makes the client's publish fail, never wait.

use bytes::Bytes;
use tokio::sync::mpsc;
use tonic::Streaming;
use tonic::metadata::MetadataMap;

use super::backend::{Backend, Client};
use super::{CallContext, ProxyError};
use crate::proto::proxy as pb;

/// Client publications waiting for a bidirectional stream's backend.
const PUBLISH_QUEUE: usize = 64;

/// What the backend sends after its subscribe response.
#[derive(Debug)]
pub enum StreamEvent {
    Publication(pb::Publication),
    /// The backend closed the stream.
    Ended,
    /// The stream broke (the backend failed or went away).
    Failed(ProxyError),
}

/// The backend's side of an open subscribe stream. (The mutex is never locked: it only makes
/// the stream `Sync`, so a subscription being set up may be borrowed across an await; its one
/// reader owns it.)
pub struct StreamPublications(std::sync::Mutex<Streaming<pb::StreamSubscribeResponse>>);

impl std::fmt::Debug for StreamPublications {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StreamPublications")
    }
}

impl StreamPublications {
    pub async fn next(&mut self) -> StreamEvent {
        loop {
            let stream = self.0.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner);
            match stream.message().await {
                Ok(Some(message)) => match message.publication {
                    Some(publication) => return StreamEvent::Publication(publication),
                    // A message without a publication carries nothing for the subscriber.
                    None => continue,
                },
                Ok(None) => return StreamEvent::Ended,
                Err(status) => {
                    let error =
                        ProxyError::Grpc { code: status.code(), message: status.message().to_owned() };
                    return StreamEvent::Failed(error);
                }
            }
        }
    }
}

/// The client's way to a bidirectional stream's backend.
#[derive(Debug, Clone)]
pub struct StreamPublisher(mpsc::Sender<pb::StreamSubscribeRequest>);

impl StreamPublisher {
    /// Queues a publication for the backend; false when the queue is full or the stream gone.
    pub fn publish(&self, data: Bytes) -> bool {
        let publication = pb::Publication { data, ..Default::default() };
        self.0
            .try_send(pb::StreamSubscribeRequest { publication: Some(publication), ..Default::default() })
            .is_ok()
    }
}

/// The request stream of a bidirectional call: what the client publishes, in order. (Written
/// out rather than a `stream::unfold`, whose closure left the awaiting session future's `Send`
/// unprovable to the compiler.)
struct Outgoing(mpsc::Receiver<pb::StreamSubscribeRequest>);

impl futures_util::Stream for Outgoing {
    type Item = pb::StreamSubscribeRequest;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

/// An opened subscribe stream: the backend's answer and what follows it.
#[derive(Debug)]
pub struct OpenedStream {
    pub response: pb::SubscribeResponse,
    pub publications: StreamPublications,
    /// Set for bidirectional streams.
    pub publisher: Option<StreamPublisher>,
}

impl Backend {
    /// Opens a subscribe stream for `request` and waits for its first message.
    pub async fn subscribe_stream(
        &self,
        request: pb::SubscribeRequest,
        bidirectional: bool,
        context: &CallContext<'_>,
    ) -> Result<OpenedStream, ProxyError> {
        let Client::Grpc(client, _) = &self.client else {
            return Err(ProxyError::Transport("subscribe streams need a grpc:// endpoint".into()));
        };
        let mut client = client.clone();
        let mut span = self.stream_span(bidirectional, context);
        let mut headers = self.outgoing_headers(context, true);
        super::backend::inject(&mut headers, span.as_ref());
        let metadata = MetadataMap::from_headers(headers);
        let status = |s: tonic::Status| ProxyError::Grpc { code: s.code(), message: s.message().to_owned() };
        let open = async move {
            let (mut stream, publisher) = if bidirectional {
                let (sender, receiver) = mpsc::channel(PUBLISH_QUEUE);
                let first =
                    pb::StreamSubscribeRequest { subscribe_request: Some(request), ..Default::default() };
                sender.try_send(first).expect("an empty queue has room");
                let mut call = tonic::Request::new(Outgoing(receiver));
                *call.metadata_mut() = metadata;
                let stream = client.subscribe_bidirectional(call).await.map_err(status)?.into_inner();
                (stream, Some(StreamPublisher(sender)))
            } else {
                let mut call = tonic::Request::new(request);
                *call.metadata_mut() = metadata;
                (client.subscribe_unidirectional(call).await.map_err(status)?.into_inner(), None)
            };
            let first = stream.message().await.map_err(status)?;
            let first = first
                .ok_or_else(|| ProxyError::Decode("the stream ended before its first message".into()))?;
            let response = first.subscribe_response.unwrap_or_default();
            Ok(OpenedStream {
                response,
                publications: StreamPublications(std::sync::Mutex::new(stream)),
                publisher,
            })
        };
        let timeout = self.timeout();
        let opened = tokio::time::timeout(timeout, open).await.unwrap_or(Err(ProxyError::Timeout(timeout)));
        if let (Some(span), Err(error)) = (&mut span, &opened) {
            span.set_error(error.to_string());
        }
        opened
    }
}
