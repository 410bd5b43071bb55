//! Client transports over gRPC: thin adapters between tonic and [`Session`].
//!
//! * **Unidirectional** (`uni_grpc`): `CentrifugoUniStream/Consume(ConnectRequest) returns
//!   (stream Push)`, Centrifugo's service. The connect request becomes the session's one
//!   command; every queued reply goes out as the bare push inside it (pings as empty pushes).
//! * **Bidirectional** (`grpc_stream`, Spinwire's own): `ClientStreamService/Connect(stream
//!   Command) returns (stream Reply)`, the WebSocket Protobuf protocol one message per gRPC
//!   frame.
//!
//! Both are hand-written tower services rather than tonic-generated ones because they stream
//! pre-encoded bytes: the hub encodes a publication once per protocol, the outbound queue holds
//! those bytes, and [`PreEncoded`] hands them to tonic as they are (a generated prost codec
//! would need a decoded message per subscriber and encode it again).
//!
//! A session ends its stream with a `disconnect` push (code and reason, as on the emulated
//! HTTP transports) and then an OK status; a malformed message ends it with the push (3501)
//! and an `INVALID_ARGUMENT` status; a message over `max_receive_message_size` with the push
//! (3501) and `RESOURCE_EXHAUSTED`. A uni request that does not arrive within
//! `client.stale_close_delay` gets `DEADLINE_EXCEEDED`.

use crate::sync::Mutex;
use std::convert::Infallible;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes};
use futures_util::{Stream, StreamExt, stream};
use prost::Message;
use tonic::body::Body;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{BoxFuture, StdError};
use tonic::server::{Grpc, NamedService, ServerStreamingService, StreamingService};
use tonic::{Code, Request, Response, Status, Streaming};

use super::outgoing::{OneByOne, Outgoing, Shape};
use crate::config::client_stream_receive_limit;
use crate::hub::SessionHandle;
use crate::node::Node;
use crate::proto::client::{Command, ConnectRequest};
use crate::proto::stream_paths;
use crate::protocol::{self, ProtocolType};
use crate::proxy::{HeaderSource, capture_headers};
use crate::session::{Direction, Inbound, Session, TransportInfo};

/// Response stream of both services: encoded messages or a final error status.
type ResponseStream = Pin<Box<dyn Stream<Item = Result<Bytes, Status>> + Send>>;

/// Codec that decodes requests with prost but writes already-encoded messages verbatim.
struct PreEncoded<D>(PhantomData<fn() -> D>);

impl<D> Default for PreEncoded<D> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<D: Message + Default + Send + 'static> Codec for PreEncoded<D> {
    type Encode = Bytes;
    type Decode = D;
    type Encoder = RawEncoder;
    type Decoder = ProstDecoder<D>;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> ProstDecoder<D> {
        ProstDecoder(PhantomData)
    }
}

struct RawEncoder;

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

struct ProstDecoder<D>(PhantomData<fn() -> D>);

impl<D: Message + Default> Decoder for ProstDecoder<D> {
    type Item = D;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<D>, Status> {
        D::decode(src).map(Some).map_err(|error| {
            let name = std::any::type_name::<D>().rsplit("::").next().unwrap_or("message");
            Status::invalid_argument(format!("malformed {name}: {error}"))
        })
    }
}

/// Status the stream ends with after the session closed, when the transport failed.
type FailureSlot = Arc<Mutex<Option<Status>>>;

/// The response stream: the session's messages one per gRPC frame, Protobuf replies without
/// their varint prefix, then the failure status if the transport failed.
fn outgoing(handle: Arc<SessionHandle>, shape: Shape, failure: FailureSlot) -> ResponseStream {
    let messages = OneByOne::new(Outgoing::new(handle, ProtocolType::Protobuf, shape));
    Box::pin(stream::unfold(Some((messages, failure)), move |state| async move {
        let (mut messages, failure) = state?;
        match messages.next().await {
            Some(message) => {
                let message = if shape == Shape::Replies { protocol::undelimit(&message) } else { message };
                Some((Ok(message), Some((messages, failure))))
            }
            None => {
                let status = failure.locked().take()?;
                Some((Err(status), None))
            }
        }
    }))
}

/// tonic reports an oversized message as `OUT_OF_RANGE`; gRPC (and Centrifugo) use
/// `RESOURCE_EXHAUSTED`.
fn receive_limit_status(status: &Status) -> Option<Status> {
    (status.code() == Code::OutOfRange && status.message().contains("message length too large"))
        .then(|| Status::resource_exhausted(status.message().to_owned()))
}

/// `centrifugal.centrifugo.unistream.CentrifugoUniStream`.
#[derive(Clone)]
pub struct UniStreamService {
    node: Arc<Node>,
    max_receive: usize,
}

impl UniStreamService {
    pub fn new(node: Arc<Node>) -> Self {
        let max_receive =
            client_stream_receive_limit(node.config.uni_grpc.max_receive_message_size, &node.config);
        Self { node, max_receive }
    }
}

impl NamedService for UniStreamService {
    const NAME: &'static str = stream_paths::CENTRIFUGO_UNI_STREAM;
}

struct Consume(Arc<Node>);

impl ServerStreamingService<ConnectRequest> for Consume {
    type Response = Bytes;
    type ResponseStream = ResponseStream;
    type Future = BoxFuture<Response<ResponseStream>, Status>;

    fn call(&mut self, request: Request<ConnectRequest>) -> Self::Future {
        let node = self.0.clone();
        Box::pin(async move {
            if node.shutdown.is_cancelled() {
                return Err(Status::unavailable("shutting down"));
            }
            if node.admit_connection().is_err() {
                return Err(Status::unavailable("connection limit"));
            }
            let headers = capture_headers(node.proxies.forwarded_names(), request.metadata().as_ref());
            let info = TransportInfo::new("uni_grpc", ProtocolType::Protobuf, Direction::Unidirectional)
                .with_headers(headers, HeaderSource::Metadata);
            let (session, handle) = Session::new(node.clone(), info);
            let connect = Inbound::connect(request.into_inner());
            // The connect request is the only input; the session then runs on its timers and
            // on pushes until it is closed (the response stream's drop closes it).
            let inbound = stream::once(async move { connect }).chain(stream::pending());
            node.tasks.spawn(session.run(Box::pin(inbound)));
            Ok(Response::new(outgoing(handle, Shape::Pushes, FailureSlot::default())))
        })
    }
}

impl<B> tower_service::Service<http::Request<B>> for UniStreamService
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let (node, limit) = (self.node.clone(), self.max_receive);
        Box::pin(async move {
            if request.uri().path() != stream_paths::CENTRIFUGO_UNI_STREAM_CONSUME {
                return Ok(Status::unimplemented("unknown method").into_http());
            }
            let mut grpc = Grpc::new(PreEncoded::<ConnectRequest>::default())
                .apply_max_message_size_config(Some(limit), None);
            // tonic reads the request to its end before calling the handler; a client that never
            // finishes it would hold the stream with no session (and no stale timer) behind it.
            let wait = node.config.client.stale_close_delay.0;
            match tokio::time::timeout(wait, grpc.server_streaming(Consume(node), request)).await {
                Ok(response) => Ok(response),
                Err(_) => Ok(Status::deadline_exceeded("connect request not received in time").into_http()),
            }
        })
    }
}

/// `spinwire.stream.v1.ClientStreamService`.
#[derive(Clone)]
pub struct ClientStreamService {
    node: Arc<Node>,
    max_receive: usize,
}

impl ClientStreamService {
    pub fn new(node: Arc<Node>) -> Self {
        let max_receive =
            client_stream_receive_limit(node.config.grpc_stream.max_receive_message_size, &node.config);
        Self { node, max_receive }
    }
}

impl NamedService for ClientStreamService {
    const NAME: &'static str = stream_paths::CLIENT_STREAM_SERVICE;
}

struct Connect(Arc<Node>);

impl StreamingService<Command> for Connect {
    type Response = Bytes;
    type ResponseStream = ResponseStream;
    type Future = BoxFuture<Response<ResponseStream>, Status>;

    fn call(&mut self, request: Request<Streaming<Command>>) -> Self::Future {
        let node = self.0.clone();
        Box::pin(async move {
            if node.shutdown.is_cancelled() {
                return Err(Status::unavailable("shutting down"));
            }
            if node.admit_connection().is_err() {
                return Err(Status::unavailable("connection limit"));
            }
            let headers = capture_headers(node.proxies.forwarded_names(), request.metadata().as_ref());
            let info = TransportInfo::new("grpc_stream", ProtocolType::Protobuf, Direction::Bidirectional)
                .with_headers(headers, HeaderSource::Metadata);
            let (session, handle) = Session::new(node.clone(), info);
            let failure = FailureSlot::default();
            let slot = failure.clone();
            let inbound = request.into_inner().map(move |item| match item {
                Ok(command) => Inbound::Command(Box::new(command)),
                Err(status) => {
                    // Both end the session with 3501 (1009 is a WebSocket close code); the
                    // status tells the client which it was.
                    let (inbound, end) = if let Some(limit) = receive_limit_status(&status) {
                        (Inbound::Malformed, Some(limit))
                    } else if status.code() == Code::InvalidArgument {
                        (Inbound::Malformed, Some(status))
                    } else {
                        // The peer reset the stream or the connection failed.
                        (Inbound::Closed, None)
                    };
                    *slot.locked() = end;
                    inbound
                }
            });
            node.tasks.spawn(session.run(Box::pin(inbound)));
            Ok(Response::new(outgoing(handle, Shape::Replies, failure)))
        })
    }
}

impl<B> tower_service::Service<http::Request<B>> for ClientStreamService
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let (node, limit) = (self.node.clone(), self.max_receive);
        Box::pin(async move {
            if request.uri().path() != stream_paths::CLIENT_STREAM_SERVICE_CONNECT {
                return Ok(Status::unimplemented("unknown method").into_http());
            }
            // gRPC-web cannot stream requests: the session would end right after connect.
            let content_type = request.headers().get(http::header::CONTENT_TYPE).map(|v| v.as_bytes());
            if content_type.is_some_and(|v| v.starts_with(b"application/grpc-web")) {
                let status = Status::unimplemented("the bidirectional stream is not available over gRPC-web");
                return Ok(status.into_http());
            }
            let mut grpc =
                Grpc::new(PreEncoded::<Command>::default()).apply_max_message_size_config(Some(limit), None);
            Ok(grpc.streaming(Connect(node), request).await)
        })
    }
}

/// Wraps a gRPC service so that a request over the receive limit is answered with
/// `RESOURCE_EXHAUSTED` (see [`receive_limit_status`]) instead of tonic's `OUT_OF_RANGE`.
/// Applies to unary requests, whose status travels in the response headers.
#[derive(Clone)]
pub struct ReceiveLimitStatus<S>(pub S);

impl<S: NamedService> NamedService for ReceiveLimitStatus<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> tower_service::Service<http::Request<B>> for ReceiveLimitStatus<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let future = self.0.call(request);
        Box::pin(async move {
            let mut response = future.await?;
            if let Some(status) = Status::from_header_map(response.headers())
                && let Some(mapped) = receive_limit_status(&status)
            {
                let headers = response.headers_mut();
                headers.remove("grpc-status");
                headers.remove("grpc-message");
                let _ = mapped.add_header(headers);
            }
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversize_maps_to_resource_exhausted_only_for_the_size_check() {
        let tonic_status = Status::out_of_range(
            "Error, decoded message length too large: found 70000 bytes, the limit is: 65536 bytes",
        );
        assert_eq!(receive_limit_status(&tonic_status).unwrap().code(), Code::ResourceExhausted);
        assert!(receive_limit_status(&Status::out_of_range("history offset")).is_none());
    }
}
