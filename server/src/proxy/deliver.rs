//! One-way deliveries to a service of the backend's own rather than `CentrifugoProxy` (the
//! lifecycle events): the proxy's endpoint, static headers or metadata, TLS, timeout and
//! metrics, with any 2xx (HTTP) or OK (gRPC) as the acknowledgement and the answer's content
//! ignored (read, within the usual bound, so the connection is reused).

use bytes::Bytes;
use http::HeaderValue;
use http_body_util::{BodyExt, Full, Limited};
use tonic::metadata::MetadataMap;
use tonic::transport::Channel;

use super::backend::{Backend, CallContext, Client, PooledClient};
use super::{HeaderSource, ProxyError};

/// The most of an acknowledgement's body that is read.
const MAX_ACK_BYTES: usize = 64 * 1024;

/// The gRPC method a batch of lifecycle events goes to.
const LIFECYCLE_DELIVER_PATH: &str = "/spinwire.lifecycle.v1.LifecycleEventsService/Deliver";

/// Whatever a delivery's gRPC answer holds: nothing is read from it.
#[derive(Clone, PartialEq, prost::Message)]
struct Ignored {}

impl Backend {
    /// Delivers one batch of lifecycle events (metrics type `lifecycle`).
    pub async fn deliver_lifecycle(
        &self,
        batch: &crate::proto::lifecycle::DeliverRequest,
    ) -> Result<(), ProxyError> {
        self.deliver("lifecycle", LIFECYCLE_DELIVER_PATH, batch).await
    }

    /// Sends `request` (JSON over HTTP POST, or the gRPC method at `grpc_path`) and waits for
    /// the acknowledgement, at most the proxy's timeout. `kind` is the metrics' `type` label.
    async fn deliver<M>(
        &self,
        kind: &'static str,
        grpc_path: &'static str,
        request: &M,
    ) -> Result<(), ProxyError>
    where
        M: serde::Serialize + prost::Message + Clone + Default + Send + 'static,
    {
        let timeout = self.timeout();
        let work = async {
            match &self.client {
                Client::Http { client, uri } => self.deliver_http(client, uri, request).await,
                Client::Grpc(_, channel) => {
                    self.deliver_grpc(channel.clone(), grpc_path, request.clone()).await
                }
            }
        };
        let call = self.calls(kind).start();
        let answer = tokio::time::timeout(timeout, work).await.unwrap_or(Err(ProxyError::Timeout(timeout)));
        if answer.is_err() {
            call.failed();
        }
        answer
    }

    /// No client connection stands behind a delivery: only the static headers go.
    fn static_headers(&self, grpc: bool) -> http::HeaderMap {
        let none = Default::default();
        let context = CallContext { headers: &[], source: HeaderSource::Http, emulated: &none };
        self.outgoing_headers(&context, grpc)
    }

    async fn deliver_http<M: serde::Serialize>(
        &self,
        client: &PooledClient,
        uri: &http::Uri,
        request: &M,
    ) -> Result<(), ProxyError> {
        let body = serde_json::to_vec(request).map_err(|e| ProxyError::Decode(e.to_string()))?;
        let mut outgoing = http::Request::post(uri.clone())
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| ProxyError::Transport(e.to_string()))?;
        *outgoing.headers_mut() = self.static_headers(false);
        outgoing
            .headers_mut()
            .insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let response = client.request(outgoing).await.map_err(|e| ProxyError::Transport(e.to_string()))?;
        let status = response.status();
        let _ = Limited::new(response.into_body(), MAX_ACK_BYTES).collect().await;
        if status.is_success() { Ok(()) } else { Err(ProxyError::Status(status.as_u16())) }
    }

    async fn deliver_grpc<M>(
        &self,
        channel: Channel,
        grpc_path: &'static str,
        request: M,
    ) -> Result<(), ProxyError>
    where
        M: prost::Message + Send + 'static,
    {
        let mut grpc = tonic::client::Grpc::new(channel);
        if self.compresses() {
            let gzip = tonic::codec::CompressionEncoding::Gzip;
            grpc = grpc.send_compressed(gzip).accept_compressed(gzip);
        }
        grpc.ready().await.map_err(|e| ProxyError::Transport(e.to_string()))?;
        let mut outgoing = tonic::Request::new(request);
        *outgoing.metadata_mut() = MetadataMap::from_headers(self.static_headers(true));
        outgoing.set_timeout(self.timeout());
        let codec = tonic_prost::ProstCodec::<M, Ignored>::default();
        grpc.unary(outgoing, http::uri::PathAndQuery::from_static(grpc_path), codec)
            .await
            .map(|_| ())
            .map_err(|status| ProxyError::Grpc { code: status.code(), message: status.message().to_owned() })
    }
}
