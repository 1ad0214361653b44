//! The server side of a TLS connection, closed with `close_notify`.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tokio_rustls::server::TlsStream;

use super::io::TrackedIo;

/// A handshaken TLS connection. hyper shuts the connections it closes down,
/// which sends `close_notify` before the FIN; an upgraded one (a WebSocket)
/// is dropped by its handler instead, without a shutdown. Dropped unshut,
/// this sends `close_notify` itself, with one non-blocking write (a few
/// dozen bytes, which a socket's send buffer takes unless the peer stopped
/// reading long ago), so that the peer can tell the end from a truncation.
pub(crate) struct TlsIo {
    inner: TlsStream<TrackedIo>,
    shut_down: bool,
}

impl std::fmt::Debug for TlsIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIo")
            .field("shut_down", &self.shut_down)
            .finish_non_exhaustive()
    }
}

impl TlsIo {
    pub(crate) fn new(inner: TlsStream<TrackedIo>) -> Self {
        Self {
            inner,
            shut_down: false,
        }
    }
}

impl Drop for TlsIo {
    fn drop(&mut self) {
        if self.shut_down {
            return;
        }
        let (io, conn) = self.inner.get_mut();
        conn.send_close_notify();
        let mut socket = NonBlocking(io.get_ref());
        // Bounded: each round writes what the socket takes now, or stops.
        for _ in 0..4 {
            if !conn.wants_write() || conn.write_tls(&mut socket).is_err() {
                break;
            }
        }
    }
}

/// `std::io::Write` over a socket's non-blocking `try_write`.
struct NonBlocking<'a>(&'a TcpStream);

impl io::Write for NonBlocking<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsyncRead for TlsIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // tokio-rustls sends `close_notify` first thing in its shutdown.
        self.shut_down = true;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
