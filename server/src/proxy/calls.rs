//! The kinds of proxy call: each request type knows its response type and its gRPC method, so
//! [`super::Backend::call`] serves every kind over both protocols with one body.

use std::future::Future;
use std::pin::Pin;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::Channel;

use crate::proto::proxy as pb;
use crate::proto::proxy::centrifugo_proxy_client::CentrifugoProxyClient;

/// The future a gRPC call returns.
pub type GrpcFuture<T> = Pin<Box<dyn Future<Output = Result<T, tonic::Status>> + Send>>;

/// The four fields every request starts with.
#[derive(Debug, Clone)]
pub struct RequestBase {
    pub client: String,
    pub transport: String,
    pub protocol: String,
    pub encoding: String,
}

/// A request the backend answers with [`ProxyCall::Response`].
pub trait ProxyCall: Serialize + prost::Message + Default + Sized + Send + 'static {
    /// The proxy's `type` label in the metrics.
    const KIND: &'static str;
    type Response: DeserializeOwned + Send + 'static;
    /// What a successful answer carries.
    type Result;

    /// A request with its common fields set and the rest empty.
    fn based(base: RequestBase) -> Self;

    /// The answer's result, error and disconnect.
    fn into_verdict(
        response: Self::Response,
    ) -> (Option<Self::Result>, Option<pb::Error>, Option<pb::Disconnect>);

    /// Calls the method of `CentrifugoProxy` that takes this request.
    fn grpc(
        client: CentrifugoProxyClient<Channel>,
        request: tonic::Request<Self>,
    ) -> GrpcFuture<Self::Response>;

    /// The response a `status_to_code_transforms` rule stands for.
    fn rejected(error: Option<pb::Error>, disconnect: Option<pb::Disconnect>) -> Self::Response;
}

macro_rules! proxy_call {
    ($request:ident => $response:ident($result:ident), $method:ident) => {
        impl ProxyCall for pb::$request {
            const KIND: &'static str = stringify!($method);
            type Response = pb::$response;
            type Result = pb::$result;

            fn based(base: RequestBase) -> Self {
                let RequestBase { client, transport, protocol, encoding } = base;
                pb::$request { client, transport, protocol, encoding, ..Default::default() }
            }

            fn into_verdict(
                response: Self::Response,
            ) -> (Option<Self::Result>, Option<pb::Error>, Option<pb::Disconnect>) {
                (response.result, response.error, response.disconnect)
            }

            fn grpc(
                mut client: CentrifugoProxyClient<Channel>,
                request: tonic::Request<Self>,
            ) -> GrpcFuture<Self::Response> {
                Box::pin(async move { client.$method(request).await.map(tonic::Response::into_inner) })
            }

            fn rejected(error: Option<pb::Error>, disconnect: Option<pb::Disconnect>) -> Self::Response {
                pb::$response { error, disconnect, ..Default::default() }
            }
        }
    };
}

proxy_call!(ConnectRequest => ConnectResponse(ConnectResult), connect);
proxy_call!(RefreshRequest => RefreshResponse(RefreshResult), refresh);
proxy_call!(SubscribeRequest => SubscribeResponse(SubscribeResult), subscribe);
proxy_call!(PublishRequest => PublishResponse(PublishResult), publish);
proxy_call!(RpcRequest => RpcResponse(RpcResult), rpc);
proxy_call!(SubRefreshRequest => SubRefreshResponse(SubRefreshResult), sub_refresh);
proxy_call!(MapPublishRequest => MapPublishResponse(MapPublishResult), map_publish);
proxy_call!(MapRemoveRequest => MapRemoveResponse(MapRemoveResult), map_remove);

/// The shared-poll refresh carries no connection: the node asks on behalf of every subscriber,
/// so the common client fields do not exist and the backend cannot disconnect anyone.
impl ProxyCall for pb::SharedPollRefreshRequest {
    const KIND: &'static str = "shared_poll_refresh";
    type Response = pb::SharedPollRefreshResponse;
    type Result = pb::SharedPollRefreshResult;

    fn based(_base: RequestBase) -> Self {
        Self::default()
    }

    fn into_verdict(
        response: Self::Response,
    ) -> (Option<Self::Result>, Option<pb::Error>, Option<pb::Disconnect>) {
        (response.result, response.error, None)
    }

    fn grpc(
        mut client: CentrifugoProxyClient<Channel>,
        request: tonic::Request<Self>,
    ) -> GrpcFuture<Self::Response> {
        Box::pin(async move { client.shared_poll_refresh(request).await.map(tonic::Response::into_inner) })
    }

    fn rejected(error: Option<pb::Error>, _disconnect: Option<pb::Disconnect>) -> Self::Response {
        pb::SharedPollRefreshResponse { error, ..Default::default() }
    }
}
