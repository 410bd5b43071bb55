//! Admission at the socket, before any protocol: every TCP listener (HTTP, the gRPC API, the
//! gRPC client streams) takes its accepted sockets through one [`Gate`], which caps open
//! connections in total (`http_server.max_connections`, by default the open-file limit less a
//! reserve) and per client address (`max_connections_per_ip`), and then waits for the client's
//! first bytes at most `header_read_timeout`: a socket that never speaks is closed instead of
//! holding a descriptor forever.
//!
//! A refused plain-HTTP socket gets a bare `503` (SDKs retry those); TLS and gRPC sockets are
//! closed before the handshake, which costs nothing.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::config::HttpServer;
use crate::sync::Mutex;

/// Descriptors kept free for everything that is not a client: engines, proxies, files.
const RESERVED_DESCRIPTORS: usize = 256;
/// Pause after a failed accept (typically EMFILE) instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
const REFUSAL: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\nRetry-After: 1\r\n\r\n";

/// The connection caps shared by every listener.
#[derive(Debug)]
pub struct Gate {
    max_total: usize,
    max_per_ip: usize,
    open: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Sockets refused by a cap, and sockets closed for never speaking.
    refused: AtomicU64,
    silent: AtomicU64,
    pub header_read_timeout: Duration,
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
pub struct Pass {
    gate: Arc<Gate>,
    ip: IpAddr,
}

impl Drop for Pass {
    fn drop(&mut self) {
        self.gate.open.fetch_sub(1, Ordering::Relaxed);
        if self.gate.max_per_ip > 0 {
            let mut per_ip = self.gate.per_ip.locked();
            if let Some(count) = per_ip.get_mut(&self.ip) {
                *count -= 1;
                if *count == 0 {
                    per_ip.remove(&self.ip);
                }
            }
        }
    }
}

/// The soft open-file limit (Linux `/proc/self/limits`), when readable.
fn open_file_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|line| line.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

impl Gate {
    pub fn new(server: &HttpServer) -> Arc<Self> {
        let max_total = match usize::try_from(server.max_connections) {
            Ok(configured) if configured > 0 => configured,
            _ => open_file_limit().map_or(16_384, |limit| limit.saturating_sub(RESERVED_DESCRIPTORS).max(64)),
        };
        Arc::new(Self {
            max_total,
            max_per_ip: usize::try_from(server.max_connections_per_ip).unwrap_or(0),
            open: AtomicUsize::new(0),
            per_ip: Mutex::default(),
            refused: AtomicU64::new(0),
            silent: AtomicU64::new(0),
            header_read_timeout: server.header_read_timeout.0.max(Duration::from_millis(100)),
        })
    }

    /// A place for a connection from `ip`, or `None` when a cap is reached.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Pass> {
        if self.open.fetch_add(1, Ordering::Relaxed) >= self.max_total {
            self.open.fetch_sub(1, Ordering::Relaxed);
            self.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        if self.max_per_ip > 0 {
            let mut per_ip = self.per_ip.locked();
            let count = per_ip.entry(ip).or_insert(0);
            if *count >= self.max_per_ip {
                drop(per_ip);
                self.open.fetch_sub(1, Ordering::Relaxed);
                self.refused.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            *count += 1;
        }
        Some(Pass { gate: self.clone(), ip })
    }

    /// (open connections, refused by a cap, closed for silence).
    pub fn counts(&self) -> (usize, u64, u64) {
        (
            self.open.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
            self.silent.load(Ordering::Relaxed),
        )
    }

    /// Up to the first four bytes the client sent, waiting at most `header_read_timeout` (and
    /// for all four while they could still be HTTP/2's preface); `None`: it said nothing.
    pub async fn first_bytes(&self, stream: &TcpStream) -> Option<Vec<u8>> {
        let wait = async {
            let mut buffer = [0u8; 4];
            loop {
                let read = stream.peek(&mut buffer).await.ok()?;
                if read == 0 {
                    return None; // closed
                }
                if read == buffer.len() || !b"PRI ".starts_with(&buffer[..read]) {
                    return Some(buffer[..read].to_vec());
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        let first = tokio::time::timeout(self.header_read_timeout, wait).await.ok().flatten();
        if first.is_none() {
            self.silent.fetch_add(1, Ordering::Relaxed);
        }
        first
    }
}

/// Tells a plain-HTTP client it was refused (best effort, bounded), then closes.
pub fn refuse_http(mut stream: TcpStream) {
    tokio::spawn(async move {
        let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(REFUSAL)).await;
    });
}

/// Accepts the next connection, backing off after failures (typically out of descriptors).
pub async fn accept(listener: &TcpListener) -> (TcpStream, std::net::SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(accepted) => return accepted,
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// A socket that passed the gate, for tonic: it keeps its place while open.
#[derive(Debug)]
pub struct GatedStream {
    stream: TcpStream,
    _pass: Pass,
}

impl AsyncRead for GatedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for GatedStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for GatedStream {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

/// The gated connections of a gRPC listener, as the stream tonic serves: each admitted socket
/// waits for its first bytes in its own task, so a silent one holds up nobody.
pub fn incoming(
    listener: TcpListener,
    gate: Arc<Gate>,
    stop: CancellationToken,
) -> impl futures_util::Stream<Item = io::Result<GatedStream>> + Send + 'static {
    let (ready, waiting) = tokio::sync::mpsc::channel::<GatedStream>(256);
    tokio::spawn(async move {
        loop {
            let (stream, peer) = tokio::select! {
                _ = stop.cancelled() => return,
                accepted = accept(&listener) => accepted,
            };
            let Some(pass) = gate.admit(peer.ip()) else { continue };
            let (gate, ready) = (gate.clone(), ready.clone());
            tokio::spawn(async move {
                if gate.first_bytes(&stream).await.is_some() {
                    let _ = stream.set_nodelay(true);
                    let _ = ready.send(GatedStream { stream, _pass: pass }).await;
                }
            });
        }
    });
    futures_util::stream::unfold(waiting, |mut waiting| async move {
        waiting.recv().await.map(|s| (Ok(s), waiting))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(total: i64, per_ip: i64) -> Arc<Gate> {
        Gate::new(&HttpServer {
            max_connections: total,
            max_connections_per_ip: per_ip,
            ..HttpServer::default()
        })
    }

    #[test]
    fn caps_count_open_connections_and_free_on_drop() {
        let gate = gate(3, 2);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let first = gate.admit(a).unwrap();
        let _second = gate.admit(a).unwrap();
        assert!(gate.admit(a).is_none(), "per address");
        let _third = gate.admit(b).unwrap();
        assert!(gate.admit(b).is_none(), "in total");
        drop(first);
        assert!(gate.admit(a).is_some(), "a closed connection frees its place");
        assert_eq!(gate.counts().1, 2);
    }

    #[test]
    fn the_default_total_follows_the_open_file_limit() {
        let limit = open_file_limit().expect("linux");
        assert_eq!(gate(0, 0).max_total, limit.saturating_sub(RESERVED_DESCRIPTORS).max(64));
    }
}
