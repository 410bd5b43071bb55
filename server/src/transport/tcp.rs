//! A plain TCP connection that several owners can use at once.
//!
//! hyper owns an accepted connection's IO, and after a WebSocket upgrade hands it back
//! wrapped in types that cannot be unwrapped. The accept loop therefore gives hyper a
//! [`SharedTcp`] and attaches another handle to the same socket to each request
//! ([`SharedTcp::from_request`]). The WebSocket transport keeps reading through hyper's upgraded
//! IO, and writes frames through its own handle — from its writer task, or straight from the
//! hub's flusher without waking that task ([`crate::hub::outbound::DirectWrite`]).
//!
//! tokio's `TcpStream` supports this through `&self` readiness and `try_*` calls; the socket
//! closes when the last handle drops.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A shared handle to one accepted TCP connection.
#[derive(Debug, Clone)]
pub struct SharedTcp(Arc<TcpStream>);

impl SharedTcp {
    pub fn new(stream: TcpStream) -> Self {
        Self(Arc::new(stream))
    }

    pub fn stream(&self) -> &TcpStream {
        &self.0
    }

    /// The connection a request arrived on, when it was plain TCP (not TLS).
    pub fn from_request<B>(request: &http::Request<B>) -> Option<Self> {
        request.extensions().get::<Self>().cloned()
    }
}

impl AsyncRead for SharedTcp {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            ready!(self.0.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match self.0.try_read(unfilled) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                Err(error) => return Poll::Ready(Err(error)),
            }
        }
    }
}

impl AsyncWrite for SharedTcp {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write(data) {
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                result => return Poll::Ready(result),
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write_vectored(data) {
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                result => return Poll::Ready(result),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(socket2::SockRef::from(&*self.0).shutdown(std::net::Shutdown::Write))
    }
}

/// Writes all of `data`, waiting for the socket as needed.
/// Writes `head` then `body` without joining them first (one `writev` when the socket has
/// room).
pub async fn write_all_parts(stream: &TcpStream, head: &[u8], body: &[u8]) -> io::Result<()> {
    let mut written = 0;
    let total = head.len() + body.len();
    while written < total {
        stream.writable().await?;
        let slices = if written < head.len() {
            [io::IoSlice::new(&head[written..]), io::IoSlice::new(body)]
        } else {
            [io::IoSlice::new(&body[written - head.len()..]), io::IoSlice::new(&[])]
        };
        match stream.try_write_vectored(&slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

pub async fn write_all(stream: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        stream.writable().await?;
        match stream.try_write(data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}
