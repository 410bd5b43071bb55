//! `floor`: the reference fan-out server — plain tokio + tokio-tungstenite, no protocol, no
//! sessions, no hub. WebSocket clients on `/subscribe` receive every frame that a client on
//! `/publish` sends, wrapped in the same push bytes Spinwire would write (so the load generator
//! reads both the same way). It batches queued messages per write like Spinwire's writer.
//! Measured in the same run, it is the cost floor that shows what the protocol, session and hub
//! add.
//!
//! `floor [--addr 127.0.0.1:8001] [--protocol json|protobuf] [--workers 1]`

use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use spinwire_bench::Protocol;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

/// Per-subscriber queue bound (messages); a full queue drops the subscriber.
const QUEUE: usize = 8192;
const MAX_BATCH: usize = 64 * 1024;

type Subscribers = Arc<Mutex<Vec<(u64, mpsc::Sender<Bytes>)>>>;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let get = |key: &str, default: &str| {
        args.iter()
            .position(|a| a == key)
            .and_then(|i| args.get(i + 1))
            .cloned()
            .unwrap_or_else(|| default.to_owned())
    };
    let addr = get("--addr", "127.0.0.1:8001");
    let protocol: Protocol = get("--protocol", "json").parse()?;
    let workers: usize = get("--workers", "1").parse()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_all().build()?;
    runtime.block_on(serve(addr, protocol))
}

async fn serve(addr: String, protocol: Protocol) -> Result<()> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr.parse().context("--addr")?)?;
    let listener: TcpListener = socket.listen(4096)?;
    eprintln!("floor listening on {addr} ({protocol})");
    let subscribers: Subscribers = Arc::default();
    let mut next_id = 0u64;
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        next_id += 1;
        let (subscribers, id) = (subscribers.clone(), next_id);
        tokio::spawn(async move {
            let mut path = String::new();
            // The error type is fixed by tungstenite's callback trait.
            #[allow(clippy::result_large_err)]
            let callback = |request: &Request, response: Response| {
                path = request.uri().path().to_owned();
                Ok(response)
            };
            let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else { return };
            if path == "/publish" {
                publisher(ws, protocol, subscribers).await;
            } else {
                subscriber(ws, protocol, subscribers, id).await;
            }
        });
    }
}

/// Wraps a payload the way Spinwire frames a publication push.
fn wrap(protocol: Protocol, payload: &[u8]) -> Bytes {
    match protocol {
        Protocol::Json => {
            let mut out = BytesMut::with_capacity(payload.len() + 48);
            out.put_slice(br#"{"push":{"channel":"bench:fan","pub":{"data":"#);
            out.put_slice(payload);
            out.put_slice(b"}}}");
            out.freeze()
        }
        Protocol::Protobuf => {
            let mut out = BytesMut::with_capacity(payload.len() + 5);
            prost::encoding::encode_varint(payload.len() as u64, &mut out);
            out.put_slice(payload);
            out.freeze()
        }
    }
}

async fn publisher(
    mut ws: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    protocol: Protocol,
    subscribers: Subscribers,
) {
    while let Some(Ok(message)) = ws.next().await {
        let payload = match &message {
            Message::Text(text) => text.as_bytes(),
            Message::Binary(data) => &data[..],
            _ => continue,
        };
        let wrapped = wrap(protocol, payload);
        subscribers.lock().expect("lock").retain(|(_, tx)| tx.try_send(wrapped.clone()).is_ok());
    }
}

async fn subscriber(
    ws: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    protocol: Protocol,
    subscribers: Subscribers,
    id: u64,
) {
    let (tx, mut rx) = mpsc::channel::<Bytes>(QUEUE);
    subscribers.lock().expect("lock").push((id, tx));
    let (mut sink, mut stream) = ws.split();
    let reader = tokio::spawn(async move { while let Some(Ok(_)) = stream.next().await {} });
    let mut frame = BytesMut::new();
    while let Some(first) = rx.recv().await {
        frame.clear();
        frame.put_slice(&first);
        while frame.len() < MAX_BATCH {
            let Ok(next) = rx.try_recv() else { break };
            if protocol == Protocol::Json {
                frame.put_u8(b'\n');
            }
            frame.put_slice(&next);
        }
        let data = frame.split().freeze();
        let message = match protocol {
            Protocol::Json => match tokio_tungstenite::tungstenite::Utf8Bytes::try_from(data) {
                Ok(text) => Message::Text(text),
                Err(_) => break,
            },
            Protocol::Protobuf => Message::Binary(data),
        };
        if sink.send(message).await.is_err() {
            break;
        }
    }
    subscribers.lock().expect("lock").retain(|(sid, _)| *sid != id);
    reader.abort();
}
