//! gRPC front end of the server API: `centrifugal.centrifugo.api.CentrifugoApi`, so clients
//! generated from Centrifugo's schema (or from `proto/`) work unchanged.
//!
//! With `grpc_api.key` set every call needs metadata `authorization: apikey <key>`, else
//! `UNAUTHENTICATED`. Errors travel in the response's `error` field with status OK, unless the
//! caller sends `x-centrifugo-error-mode: transport` (or the config says so), in which case
//! they become gRPC statuses.

use subtle::ConstantTimeEq;
use tonic::{Request, Response, Status};

use super::{ApiError, Executor};
use crate::config::grpc_receive_limit;
use crate::proto::api::centrifugo_api_server::{CentrifugoApi, CentrifugoApiServer};
use crate::proto::api::*;

/// The gRPC service.
#[derive(Debug, Clone)]
pub struct GrpcApi {
    executor: Executor,
}

impl GrpcApi {
    /// The tonic service, with the configured message size limit.
    pub fn service(executor: Executor) -> CentrifugoApiServer<Self> {
        let limit = grpc_receive_limit(executor.node().config.grpc_api.max_receive_message_size);
        CentrifugoApiServer::new(Self { executor: executor.with_protocol("grpc") })
            .max_decoding_message_size(limit)
    }

    /// Checks the key; returns whether errors use transport mode.
    fn admit<T>(&self, request: &Request<T>) -> Result<bool, Status> {
        let config = &self.executor.node().config.grpc_api;
        if !config.insecure {
            // Fails closed: an empty key matches nothing.
            let expected = format!("apikey {}", config.key);
            let given = request.metadata().get("authorization").map(|v| v.as_bytes()).unwrap_or(b"");
            if config.key.is_empty() || !bool::from(given.ct_eq(expected.as_bytes())) {
                return Err(Status::unauthenticated("unauthenticated"));
            }
        }
        Ok(config.error_mode == "transport"
            || request
                .metadata()
                .get("x-centrifugo-error-mode")
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"transport")))
    }
}

fn status_of(error: &ApiError) -> Status {
    let message = error.message;
    match error.code {
        102 | 104 => Status::not_found(message),
        107 | 108 => Status::invalid_argument(message),
        112 => Status::out_of_range(message),
        113 => Status::already_exists(message),
        _ => Status::internal(message),
    }
}

/// Wraps an executor outcome into the method's `{error, result}` response (or a status in
/// transport error mode), and records it in the metrics.
macro_rules! respond {
    ($self:ident, $method:literal, $response:ident, $transport_mode:expr, $outcome:expr) => {{
        let started = std::time::Instant::now();
        let outcome = $outcome;
        $self.executor.observe($method, started, &outcome);
        match outcome {
            Ok(result) => Ok(Response::new($response { error: None, result: Some(result) })),
            Err(error) if $transport_mode => Err(status_of(&error)),
            Err(error) => Ok(Response::new($response { error: Some(error.to_proto()), result: None })),
        }
    }};
}

#[tonic::async_trait]
impl CentrifugoApi for GrpcApi {
    async fn batch(&self, request: Request<BatchRequest>) -> Result<Response<BatchResponse>, Status> {
        self.admit(&request)?;
        Ok(Response::new(self.executor.batch(request.into_inner()).await))
    }

    async fn publish(&self, request: Request<PublishRequest>) -> Result<Response<PublishResponse>, Status> {
        let mode = self.admit(&request)?;
        respond!(self, "publish", PublishResponse, mode, self.executor.publish(request.into_inner()).await)
    }
    async fn broadcast(
        &self,
        request: Request<BroadcastRequest>,
    ) -> Result<Response<BroadcastResponse>, Status> {
        let mode = self.admit(&request)?;
        respond!(
            self,
            "broadcast",
            BroadcastResponse,
            mode,
            self.executor.broadcast(request.into_inner()).await
        )
    }
    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<SubscribeResponse>, Status> {
        let mode = self.admit(&request)?;
        respond!(
            self,
            "subscribe",
            SubscribeResponse,
            mode,
            self.executor.subscribe(request.into_inner()).await
        )
    }
    async fn unsubscribe(
        &self,
        request: Request<UnsubscribeRequest>,
    ) -> Result<Response<UnsubscribeResponse>, Status> {
        let mode = self.admit(&request)?;
        respond!(
            self,
            "unsubscribe",
            UnsubscribeResponse,
            mode,
            self.executor.unsubscribe(request.into_inner()).await
        )
    }
    async fn disconnect(
        &self,
        request: Request<DisconnectRequest>,
    ) -> Result<Response<DisconnectResponse>, Status> {
        let mode = self.admit(&request)?;
        respond!(
            self,
            "disconnect",
            DisconnectResponse,
            mode,
            self.executor.disconnect(request.into_inner()).await
        )
    }
    async fn presence(
        &self,
        request: Request<PresenceRequest>,
    ) -> Result<Response<PresenceResponse>, Status> {
        let mode = self.admit(&request)?;
        respond!(self, "presence", PresenceResponse, mode, self.executor.presence(request.into_inner()).await)
    }
    async fn presence_stats(
        &self,
        request: Request<PresenceStatsRequest>,
    ) -> Result<Response<PresenceStatsResponse>, Status> {
        let mode = self.admit(&request)?;
        respond!(
            self,
            "presence_stats",
            PresenceStatsResponse,
            mode,
            self.executor.presence_stats(request.into_inner()).await
        )
    }
    async fn history(&self, request: Request<HistoryRequest>) -> Result<Response<HistoryResponse>, Status> {
        let mode = self.admit(&request)?;
        respond!(self, "history", HistoryResponse, mode, self.executor.history(request.into_inner()).await)
    }
    async fn history_remove(
        &self,
        request: Request<HistoryRemoveRequest>,
    ) -> Result<Response<HistoryRemoveResponse>, Status> {
        let mode = self.admit(&request)?;
        respond!(
            self,
            "history_remove",
            HistoryRemoveResponse,
            mode,
            self.executor.history_remove(request.into_inner()).await
        )
    }
    async fn info(&self, request: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        let mode = self.admit(&request)?;
        respond!(self, "info", InfoResponse, mode, self.executor.info().await)
    }
    async fn rpc(&self, request: Request<RpcRequest>) -> Result<Response<RpcResponse>, Status> {
        let mode = self.admit(&request)?;
        respond!(self, "rpc", RpcResponse, mode, self.executor.rpc(request.into_inner()).await)
    }
    async fn refresh(&self, request: Request<RefreshRequest>) -> Result<Response<RefreshResponse>, Status> {
        let mode = self.admit(&request)?;
        respond!(self, "refresh", RefreshResponse, mode, self.executor.refresh(request.into_inner()).await)
    }
    async fn channels(
        &self,
        request: Request<ChannelsRequest>,
    ) -> Result<Response<ChannelsResponse>, Status> {
        let mode = self.admit(&request)?;
        respond!(self, "channels", ChannelsResponse, mode, self.executor.channels(request.into_inner()).await)
    }
    async fn map_publish(
        &self,
        request: Request<MapPublishRequest>,
    ) -> Result<Response<MapPublishResponse>, Status> {
        let mode = self.admit(&request)?;
        respond!(
            self,
            "map_publish",
            MapPublishResponse,
            mode,
            self.executor.map_publish(request.into_inner()).await
        )
    }
    async fn map_remove(
        &self,
        request: Request<MapRemoveRequest>,
    ) -> Result<Response<MapRemoveResponse>, Status> {
        let mode = self.admit(&request)?;
        respond!(
            self,
            "map_remove",
            MapRemoveResponse,
            mode,
            self.executor.map_remove(request.into_inner()).await
        )
    }
    async fn map_read_state(
        &self,
        request: Request<MapReadStateRequest>,
    ) -> Result<Response<MapReadStateResponse>, Status> {
        let mode = self.admit(&request)?;
        respond!(
            self,
            "map_read_state",
            MapReadStateResponse,
            mode,
            self.executor.map_read_state(request.into_inner()).await
        )
    }
    async fn map_read_stream(
        &self,
        request: Request<MapReadStreamRequest>,
    ) -> Result<Response<MapReadStreamResponse>, Status> {
        let mode = self.admit(&request)?;
        respond!(
            self,
            "map_read_stream",
            MapReadStreamResponse,
            mode,
            self.executor.map_read_stream(request.into_inner()).await
        )
    }
    async fn map_stats(
        &self,
        request: Request<MapStatsRequest>,
    ) -> Result<Response<MapStatsResponse>, Status> {
        let mode = self.admit(&request)?;
        respond!(
            self,
            "map_stats",
            MapStatsResponse,
            mode,
            self.executor.map_stats(request.into_inner()).await
        )
    }
    async fn map_clear(
        &self,
        request: Request<MapClearRequest>,
    ) -> Result<Response<MapClearResponse>, Status> {
        let mode = self.admit(&request)?;
        respond!(
            self,
            "map_clear",
            MapClearResponse,
            mode,
            self.executor.map_clear(request.into_inner()).await
        )
    }
    async fn shared_poll_publish(
        &self,
        request: Request<SharedPollPublishRequest>,
    ) -> Result<Response<SharedPollPublishResponse>, Status> {
        let mode = self.admit(&request)?;
        respond!(
            self,
            "shared_poll_publish",
            SharedPollPublishResponse,
            mode,
            self.executor.shared_poll_publish(request.into_inner()).await
        )
    }
}

/// The gRPC API inside server spans when it is traced (`opentelemetry.api`): each call is a
/// span named by its full method, as Centrifugo's, a child of the `traceparent` in its
/// metadata; a command's error marks it failed (through the executor, as over HTTP).
#[derive(Debug, Clone)]
pub struct TracedApi<S> {
    inner: S,
    tracer: std::sync::Arc<crate::telemetry::Tracer>,
}

impl<S> TracedApi<S> {
    pub fn new(inner: S, tracer: std::sync::Arc<crate::telemetry::Tracer>) -> Self {
        Self { inner, tracer }
    }
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for TracedApi<S> {
    const NAME: &'static str = S::NAME;
}

type CallFuture<T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, std::convert::Infallible>> + Send>>;

impl<S, B> tower_service::Service<http::Request<B>> for TracedApi<S>
where
    S: tower_service::Service<
            http::Request<B>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        >,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = CallFuture<Self::Response>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = request.uri().path().trim_start_matches('/').to_owned();
        let parent = crate::telemetry::SpanContext::from_headers(request.headers());
        let mut span = self.tracer.span(method.clone(), crate::telemetry::SpanKind::Server, parent);
        span.set_attribute("rpc.system.name", "grpc");
        span.set_attribute("rpc.method", method);
        let future = self.inner.call(request);
        Box::pin(async move {
            let (response, mut span) = crate::telemetry::in_span(span, future).await;
            let response = response?;
            // An error status comes in the headers (trailers-only); otherwise the call is OK.
            let code =
                Status::from_header_map(response.headers()).map_or(tonic::Code::Ok, |status| status.code());
            span.set_attribute("rpc.response.status_code", crate::proxy::grpc_code_name(code));
            Ok(response)
        })
    }
}
