//! The sockets on either side of a relay.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

/// A byte stream the relay reads and writes: plain TCP, TLS either way, or a hyper
/// upgrade that could not be unwrapped to its socket.
///
/// One enum rather than generics keeps a single copy of the relay in the binary; the
/// branch per call costs nothing next to a syscall.
#[derive(Debug)]
pub enum Stream {
    /// Plain TCP: the fast path, whose idle sockets hold no buffer.
    Tcp(TcpStream),
    /// TLS terminated by wsgate (client side).
    ServerTls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// TLS to a `wss://` backend.
    ClientTls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// An upgraded connection of a type wsgate did not accept itself. Boxed like the
    /// TLS variants: hyper's `Upgraded` is ~80 bytes, and every socket's task holds
    /// streams for its whole life, so the enum stays the size of a `TcpStream`.
    Upgraded(Box<TokioIo<Upgraded>>),
}

impl Stream {
    /// Whether the stream can say "readable" without a buffer, so an idle relay can give
    /// its buffer back. TLS and hyper's upgrade buffer internally, so they keep theirs.
    pub(crate) fn lends_buffers(&self) -> bool {
        matches!(self, Stream::Tcp(_))
    }

    /// Waits until a read would not block; streams that cannot tell are always ready.
    pub(crate) fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Stream::Tcp(s) => s.poll_read_ready(cx),
            _ => Poll::Ready(Ok(())),
        }
    }
}

macro_rules! each {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Stream::Tcp($s) => $e,
            Stream::ServerTls($s) => $e,
            Stream::ClientTls($s) => $e,
            Stream::Upgraded($s) => $e,
        }
    };
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        each!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        each!(self, s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}
