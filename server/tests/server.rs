//! In-process server tests over real sockets on 127.0.0.1: the WebSocket endpoint's handshake
//! rules and the shutdown sequence (clients get close 3001, `serve` returns).

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use spinwire::auth::mint_hs256;
use spinwire::config;
use spinwire::node::Node;
use spinwire::server::Server;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Message, http::HeaderValue};

const SECRET: &str = "server-test-secret";

async fn start() -> (SocketAddr, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let file = json!({
        "http_server": {"address": "127.0.0.1", "port": 0},
        "client": {"token": {"hmac_secret_key": SECRET}},
        "http_api": {"key": "k"},
        "shutdown": {"timeout": "5s"}
    });
    let config = config::build(Some(file), &|_| None).unwrap().config;
    let node = Node::new(config).unwrap();
    let server = Server::bind(node).unwrap();
    let addr = server.http_addr();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        server
            .serve(async {
                let _ = stop_rx.await;
            })
            .await
            .unwrap();
    });
    (addr, stop_tx, task)
}

async fn open(
    addr: SocketAddr,
    subprotocol: Option<&str>,
) -> (
    tokio_tungstenite::WebSocketStream<TcpStream>,
    tokio_tungstenite::tungstenite::handshake::client::Response,
) {
    let mut request = format!("ws://{addr}/connection/websocket").into_client_request().unwrap();
    if let Some(subprotocol) = subprotocol {
        request.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_str(subprotocol).unwrap());
    }
    let stream = TcpStream::connect(addr).await.unwrap();
    tokio_tungstenite::client_async(request, stream).await.unwrap()
}

#[tokio::test]
async fn protobuf_subprotocol_is_echoed_and_used() {
    let (addr, _stop, _task) = start().await;
    let (mut ws, response) = open(addr, Some("centrifuge-protobuf")).await;
    assert_eq!(response.headers().get("sec-websocket-protocol").unwrap(), "centrifuge-protobuf");
    // Connect command in protobuf: varint length + Command{id=1, connect{token}}.
    use prost::Message as _;
    let command = spinwire::proto::client::Command {
        id: 1,
        connect: Some(spinwire::proto::client::ConnectRequest {
            token: mint_hs256(SECRET, &json!({"sub": "7"})),
            ..Default::default()
        }),
        ..Default::default()
    };
    ws.send(Message::Binary(command.encode_length_delimited_to_vec().into())).await.unwrap();
    let Some(Ok(Message::Binary(frame))) = ws.next().await else { panic!("expected a binary frame") };
    let reply = spinwire::proto::client::Reply::decode_length_delimited(&frame[..]).unwrap();
    assert_eq!(reply.id, 1);
    assert!(!reply.connect.unwrap().client.is_empty());
}

#[tokio::test]
async fn shutdown_sends_3001_and_returns() {
    let (addr, stop, task) = start().await;
    let (mut ws, response) = open(addr, None).await;
    assert!(response.headers().get("sec-websocket-protocol").is_none());
    let token = mint_hs256(SECRET, &json!({"sub": "7"}));
    ws.send(Message::Text(json!({"id": 1, "connect": {"token": token}}).to_string().into())).await.unwrap();
    let Some(Ok(Message::Text(text))) = ws.next().await else { panic!("expected the connect reply") };
    assert!(text.contains("\"client\""));
    stop.send(()).unwrap();
    let close = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => return frame,
                Some(Ok(_)) => continue,
                other => panic!("connection ended without a close frame: {other:?}"),
            }
        }
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(u16::from(close.code), 3001);
    assert_eq!(close.reason.as_str(), "shutdown");
    drop(ws);
    tokio::time::timeout(Duration::from_secs(6), task).await.unwrap().unwrap();
}

#[tokio::test]
async fn browser_origin_is_rejected_without_allowed_origins() {
    let (addr, _stop, _task) = start().await;
    let mut request = format!("ws://{addr}/connection/websocket").into_client_request().unwrap();
    request.headers_mut().insert("Origin", HeaderValue::from_static("https://evil.example"));
    let stream = TcpStream::connect(addr).await.unwrap();
    let error = tokio_tungstenite::client_async(request, stream).await.unwrap_err();
    assert!(error.to_string().contains("403"), "{error}");
}

/// An `Origin` that is not text is not taken for a missing one (which would pass).
#[tokio::test]
async fn an_origin_that_is_not_text_is_rejected() {
    let (addr, _stop, _task) = start().await;
    let mut request = format!("ws://{addr}/connection/websocket").into_client_request().unwrap();
    request.headers_mut().insert("Origin", HeaderValue::from_bytes(b"https://\xffevil").unwrap());
    let stream = TcpStream::connect(addr).await.unwrap();
    let error = tokio_tungstenite::client_async(request, stream).await.unwrap_err();
    assert!(error.to_string().contains("403"), "{error}");
}
