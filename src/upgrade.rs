//! HTTP/1.1 WebSocket upgrades served without hyper's connection driver.
//!
//! A proxied WebSocket's HTTP life is one request: read a head, answer 101, hand the socket
//! to the relay. hyper serves that through its general dispatcher (a read buffer of 8 KiB
//! or more, a `Request<Incoming>`, the upgrade machinery that boxes the socket and hands it
//! back through a shared future, a `writev` of the answer), which in the connection
//! benchmark was a visible share of wsgate's CPU per connection next to the peers. Here
//! the head is read into one small buffer, parsed with `httparse`, turned into a
//! `Request<Body>` whose header values are slices of that buffer (no copies, as hyper
//! does), passed through the same router and layers, and a 101 is written with one
//! `send`; the socket then goes to the relay as it is.
//!
//! Only the plain shape takes this path: a complete `GET … HTTP/1.1` head with an
//! `Upgrade: websocket` header, no body (no `Content-Length`, no `Transfer-Encoding`, no
//! `Expect`), every header valid, no more headers than [`MAX_FAST_HEADERS`]. Anything
//! else (a parse error, a longer head, a plain GET, an upgrade to something else, a
//! request after an answer that kept the connection open) goes to hyper, with the bytes
//! already read replayed through [`Prefixed`], so hyper answers those exactly as before.

use std::{
    io,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::TcpStream,
    sync::oneshot,
};
use tokio_util::sync::CancellationToken;

use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;

use crate::{
    handshake::{header_line, RawHeaders},
    relay::Stream,
};

/// Most headers a request on the fast path may carry; more go to hyper (which applies
/// `server.max_headers`).
pub(crate) const MAX_FAST_HEADERS: usize = 48;

/// First read's buffer: a browser's upgrade head is 400–1,500 bytes.
const FIRST_READ: usize = 2048;

/// The largest response body the fast path writes (wsgate's own refusals are one line;
/// a backend's refusal body was already bounded when it was read).
const MAX_BODY: usize = 1 << 20;

/// What the relay needs from the client side once the 101 is out: the socket, and any
/// bytes the client sent after its request head.
pub(crate) type ClientSide = (Stream, Bytes);

/// Put in the request's extensions by the fast path, in place of hyper's `OnUpgrade`:
/// the handler takes the receiving end and waits on it for the client's socket.
///
/// Extensions must be `Clone`; only the first [`take`](Self::take) gets the receiver.
#[derive(Debug, Clone)]
pub(crate) struct ClientUpgrade(Arc<Mutex<Option<oneshot::Receiver<ClientSide>>>>);

impl ClientUpgrade {
    /// The receiver, once.
    fn take(&self) -> Option<oneshot::Receiver<ClientSide>> {
        self.0.lock().ok().and_then(|mut r| r.take())
    }
}

/// A client socket the handler accepted, before the 101 has been written.
#[derive(Debug)]
pub(crate) enum PendingUpgrade {
    /// From the fast path.
    Fast(oneshot::Receiver<ClientSide>),
    /// From hyper (HTTP/1.1 after a fallback; HTTP/2 extended CONNECT).
    Hyper(hyper::upgrade::OnUpgrade),
}

impl PendingUpgrade {
    /// Takes the pending upgrade out of a request's extensions.
    pub(crate) fn take(ext: &mut http::Extensions) -> Option<Self> {
        if let Some(fast) = ext.remove::<ClientUpgrade>().and_then(|c| c.take()) {
            return Some(Self::Fast(fast));
        }
        ext.remove::<hyper::upgrade::OnUpgrade>().map(Self::Hyper)
    }

    /// Waits until the 101 is written and the socket is free; an error if the client
    /// left (or the answer could not be written) first.
    pub(crate) async fn wait(self) -> Result<ClientSide, String> {
        match self {
            Self::Fast(rx) => rx
                .await
                .map_err(|_| "the 101 could not be written".to_string()),
            Self::Hyper(on) => on.await.map(unwrap_upgraded).map_err(|e| e.to_string()),
        }
    }
}

/// Recovers the client's socket from hyper's upgrade, so the relay reads the socket
/// directly (and can wait for readability without holding a buffer).
fn unwrap_upgraded(upgraded: Upgraded) -> (Stream, Bytes) {
    type Tls = tokio_rustls::server::TlsStream<TcpStream>;
    // hyper's leftover bytes are a view into its whole read buffer (8 KiB or more);
    // holding the view would pin that buffer for the socket's life. Copy the few bytes
    // (usually none, which allocates nothing) and let the buffer go.
    let own = |b: Bytes| Bytes::copy_from_slice(&b);
    // A socket the fast path read from first may still have unread bytes in front.
    fn unprefix<I: IntoStream>(p: Prefixed<I>, read_buf: Bytes) -> (Stream, Bytes) {
        let (prefix, io) = p.into_parts();
        let mut initial = prefix.to_vec();
        initial.extend_from_slice(&read_buf);
        (io.into_stream(), Bytes::from(initial))
    }
    let upgraded = match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => return (Stream::Tcp(parts.io.into_inner()), own(parts.read_buf)),
        Err(u) => u,
    };
    let upgraded = match upgraded.downcast::<TokioIo<Tls>>() {
        Ok(parts) => return (parts.io.into_inner().into_stream(), own(parts.read_buf)),
        Err(u) => u,
    };
    let upgraded = match upgraded.downcast::<TokioIo<Prefixed<TcpStream>>>() {
        Ok(parts) => return unprefix(parts.io.into_inner(), parts.read_buf),
        Err(u) => u,
    };
    match upgraded.downcast::<TokioIo<Prefixed<Tls>>>() {
        Ok(parts) => unprefix(parts.io.into_inner(), parts.read_buf),
        Err(u) => (Stream::Upgraded(Box::new(TokioIo::new(u))), Bytes::new()),
    }
}

/// A socket type the relay can take over.
pub(crate) trait IntoStream {
    /// The relay's view of the socket.
    fn into_stream(self) -> Stream;
}

impl IntoStream for TcpStream {
    fn into_stream(self) -> Stream {
        Stream::Tcp(self)
    }
}

impl IntoStream for tokio_rustls::server::TlsStream<TcpStream> {
    fn into_stream(self) -> Stream {
        Stream::ServerTls(Box::new(self))
    }
}

/// How far the fast path got with a connection.
pub(crate) enum Outcome<I> {
    /// Done: the socket went to the relay, or was answered and closed, or left.
    Done,
    /// Not for the fast path: serve it with hyper, replaying what was read.
    Fallback(Prefixed<I>),
}

/// The server's limits on a request head (`server.max_header_bytes`, `server.max_headers`):
/// a head beyond either goes to hyper, which answers 431 as before.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Longest head, bytes.
    pub(crate) bytes: usize,
    /// Most header lines.
    pub(crate) headers: usize,
}

/// Reads one request head from `io`; if it is a plain WebSocket upgrade, runs it through
/// `router` and writes the answer. `read_timeout` bounds the wait for the head
/// (`server.handshake_timeout`).
/// A shutdown (`stop`) ends the wait for a head at once, as hyper's graceful shutdown
/// closes idle connections.
pub(crate) async fn serve<I, F, Fut>(
    mut io: I,
    limits: Limits,
    read_timeout: std::time::Duration,
    stop: &CancellationToken,
    call: F,
) -> Outcome<I>
where
    I: AsyncRead + AsyncWrite + Unpin + IntoStream,
    F: FnOnce(Request<Body>) -> Fut,
    Fut: std::future::Future<Output = Response<Body>>,
{
    let read = tokio::select! {
        r = tokio::time::timeout(read_timeout, read_head(&mut io, limits)) => r,
        _ = stop.cancelled() => return Outcome::Done,
    };
    let head = match read {
        // A client silent (or trickling) past the handshake timeout is cut off, as hyper's
        // header read timeout does.
        Err(_) | Ok(Err(_)) => return Outcome::Done,
        Ok(Ok(h)) => h,
    };
    let (buf, head_len) = match head {
        Head::Complete(buf, len) => (buf, len),
        Head::Other(buf) => return Outcome::Fallback(Prefixed::new(buf, io)),
        Head::Closed => return Outcome::Done,
    };
    let Some(mut req) = build_request(&buf, head_len) else {
        return Outcome::Fallback(Prefixed::new(buf, io));
    };
    // Bytes after the head: frames a client sent without waiting for the 101.
    let leftover = Bytes::copy_from_slice(&buf[head_len..]);
    drop(buf);
    let (tx, rx) = oneshot::channel();
    req.extensions_mut()
        .insert(ClientUpgrade(Arc::new(Mutex::new(Some(rx)))));
    let resp = call(req).await;
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let head = response_head(&resp, None);
        if io.write_all(&head).await.is_ok() && io.flush().await.is_ok() {
            // The handler's relay task owns the socket from here; if it is gone (it
            // cannot be, having answered 101), the socket is simply dropped.
            let _ = tx.send((io.into_stream(), leftover));
        }
        return Outcome::Done;
    }
    drop(tx);
    // A refusal: written with its body; the connection then stays open for another
    // request when the answer allows it (hyper serves the rest).
    let close = wants_close(resp.headers());
    let (parts, body) = resp.into_parts();
    let body = axum::body::to_bytes(body, MAX_BODY)
        .await
        .unwrap_or_default();
    let resp = Response::from_parts(parts, ());
    // 204 and 304 carry no body and no length (RFC 9110 §8.6).
    let bodyless = matches!(
        resp.status(),
        StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED
    );
    let body = if bodyless { Bytes::new() } else { body };
    let mut out = response_head(&resp, (!bodyless).then_some(body.len()));
    out.extend_from_slice(&body);
    if io.write_all(&out).await.is_err() || io.flush().await.is_err() || close {
        let _ = io.shutdown().await;
        return Outcome::Done;
    }
    Outcome::Fallback(Prefixed::new(leftover, io))
}

enum Head {
    /// A whole head of the fast path's shape, `len` bytes, at the start of the buffer.
    Complete(Bytes, usize),
    /// Something else (or too long to tell): hyper's.
    Other(Bytes),
    /// The client closed before sending a whole head.
    Closed,
}

/// Reads until the head is complete, the shape is known not to fit, or `limits.bytes`
/// arrived without an end of head.
async fn read_head<I: AsyncRead + Unpin>(io: &mut I, limits: Limits) -> io::Result<Head> {
    let limit = limits.bytes;
    use tokio::io::AsyncReadExt;
    let mut buf = BytesMut::with_capacity(FIRST_READ);
    loop {
        if io.read_buf(&mut buf).await? == 0 {
            return Ok(if buf.is_empty() {
                Head::Closed
            } else {
                Head::Other(buf.freeze())
            });
        }
        match shape(&buf, limits) {
            Shape::Upgrade(len) => return Ok(Head::Complete(buf.freeze(), len)),
            Shape::Other => return Ok(Head::Other(buf.freeze())),
            Shape::Partial if buf.len() >= limit => return Ok(Head::Other(buf.freeze())),
            Shape::Partial => {
                if buf.capacity() == buf.len() {
                    buf.reserve(buf.len().min(limit));
                }
            }
        }
    }
}

/// What a request head's first bytes say about the fast path.
pub(crate) enum Shape {
    /// A complete head of `n` bytes the fast path serves.
    Upgrade(usize),
    /// Anything else: hyper's.
    Other,
    /// Not complete yet.
    Partial,
}

/// Whether `buf` starts with a complete head the fast path serves, within `limits`.
pub(crate) fn shape(buf: &[u8], limits: Limits) -> Shape {
    let mut headers = [httparse::EMPTY_HEADER; MAX_FAST_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Shape::Partial,
        Err(_) => return Shape::Other,
    };
    if req.method != Some("GET")
        || req.version != Some(1)
        || len > limits.bytes
        || req.headers.len() > limits.headers
    {
        return Shape::Other;
    }
    // A body (or a wait for one) is hyper's to handle.
    let headers = RawHeaders(req.headers);
    let body = [
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
        header::EXPECT,
    ]
    .iter()
    .any(|n| headers.get(n).is_some());
    if body || !headers.has_token(&header::UPGRADE, "websocket") {
        return Shape::Other;
    }
    Shape::Upgrade(len)
}

/// The request from a head [`shape`] accepted; `None` if a part is not valid for `http`
/// (hyper then answers it).
pub(crate) fn build_request(buf: &Bytes, head_len: usize) -> Option<Request<Body>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_FAST_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(_)) = parsed.parse(&buf[..head_len]) else {
        return None;
    };
    let uri = http::Uri::from_maybe_shared(buf.slice_ref(parsed.path?.as_bytes())).ok()?;
    let mut map = HeaderMap::with_capacity(parsed.headers.len());
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        // A slice of the head: no copy per value (the head is dropped with the request).
        let value = HeaderValue::from_maybe_shared(buf.slice_ref(h.value)).ok()?;
        map.append(name, value);
    }
    let mut req = Request::new(Body::empty());
    *req.method_mut() = Method::GET;
    *req.uri_mut() = uri;
    *req.version_mut() = http::Version::HTTP_11;
    *req.headers_mut() = map;
    Some(req)
}

/// Whether an answer ends the connection.
fn wants_close(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .any(|v| v.as_bytes().eq_ignore_ascii_case(b"close"))
}

/// The status line and headers of `resp`; `body_len` adds a `content-length` (and a
/// `date`, which every non-1xx answer from wsgate carries, as with hyper).
fn response_head<B>(resp: &Response<B>, body_len: Option<usize>) -> Vec<u8> {
    let status = resp.status();
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("Unknown").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in resp.headers() {
        if body_len.is_some() && name == header::CONTENT_LENGTH {
            continue;
        }
        header_line(&mut out, name.as_str(), value.as_bytes());
    }
    if let Some(len) = body_len {
        header_line(&mut out, "content-length", len.to_string().as_bytes());
        if !resp.headers().contains_key(header::DATE) {
            let date = httpdate::fmt_http_date(std::time::SystemTime::now());
            header_line(&mut out, "date", date.as_bytes());
        }
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// A socket with bytes already read from it in front: reads return those first. Lets
/// hyper serve a connection the fast path started reading.
#[derive(Debug)]
pub(crate) struct Prefixed<I> {
    prefix: Bytes,
    inner: I,
}

impl<I> Prefixed<I> {
    fn new(prefix: Bytes, inner: I) -> Self {
        Self { prefix, inner }
    }

    /// The socket and the bytes not read yet from the prefix.
    pub(crate) fn into_parts(self) -> (Bytes, I) {
        (self.prefix, self.inner)
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Prefixed<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Prefixed<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOMY: Limits = Limits {
        bytes: 1 << 20,
        headers: 100,
    };

    #[test]
    fn only_plain_websocket_upgrades_take_the_fast_path() {
        let up =
            "GET /ws?a=1 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
        assert!(matches!(shape(up.as_bytes(), ROOMY), Shape::Upgrade(n) if n == up.len()));
        let token_list = up.replace("Upgrade: websocket", "upgrade: foo, WebSocket");
        assert!(matches!(
            shape(token_list.as_bytes(), ROOMY),
            Shape::Upgrade(_)
        ));
        assert!(matches!(shape(&up.as_bytes()[..20], ROOMY), Shape::Partial));
        for other in [
            up.replace("GET", "POST"),
            up.replace("HTTP/1.1", "HTTP/1.0"),
            up.replace("Upgrade: websocket", "Upgrade: h2c"),
            up.replace("Upgrade: websocket\r\n", ""),
            up.replace("Host: x\r\n", "Host: x\r\nContent-Length: 0\r\n"),
            up.replace("Host: x\r\n", "Host: x\r\nTransfer-Encoding: chunked\r\n"),
            up.replace("Host: x\r\n", "Host: x\r\nExpect: 100-continue\r\n"),
            up.replace("Host: x", "Host x"),
        ] {
            assert!(
                matches!(shape(other.as_bytes(), ROOMY), Shape::Other),
                "{other}"
            );
        }
        let many: String = (0..MAX_FAST_HEADERS)
            .map(|i| format!("X-{i}: v\r\n"))
            .collect();
        let crowded = up.replace("Host: x\r\n", &format!("Host: x\r\n{many}"));
        assert!(matches!(shape(crowded.as_bytes(), ROOMY), Shape::Other));
        // The server's own limits hold on the fast path too (hyper then answers 431).
        let small = Limits {
            bytes: up.len() - 1,
            headers: 64,
        };
        assert!(matches!(shape(up.as_bytes(), small), Shape::Other));
        let few = Limits {
            bytes: 1 << 20,
            headers: 2,
        };
        assert!(matches!(shape(up.as_bytes(), few), Shape::Other));
    }

    #[test]
    fn the_request_borrows_the_head_and_keeps_every_header() {
        let head = "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nX-A: 1\r\nx-a: 2\r\n\r\n";
        let buf = Bytes::from(format!("{head}\u{1}\u{2}"));
        let req = build_request(&buf, head.len()).unwrap();
        assert_eq!(req.uri(), "/ws");
        assert_eq!(req.version(), http::Version::HTTP_11);
        let a: Vec<_> = req.headers().get_all("x-a").iter().collect();
        assert_eq!(a, ["1", "2"]);
        // The values are views into the head, not copies.
        let v = req.headers()["host"].as_bytes().as_ptr();
        assert!(buf.as_ptr_range().contains(&v));
    }

    #[test]
    fn every_prefix_and_byte_flip_of_a_head_keeps_the_fuzz_invariants() {
        let head = b"GET /ws?a=1 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nX-A: 1\r\nx-a: 2\r\n\r\n\x81";
        for n in 0..=head.len() {
            crate::fuzzing::check_fast_request_head(&head[..n]);
        }
        for i in 0..head.len() {
            for b in [0u8, b'\n', b':', b' ', 0x7f, 0xff] {
                let mut h = head.to_vec();
                h[i] = b;
                crate::fuzzing::check_fast_request_head(&h);
            }
        }
    }

    #[test]
    fn answers_carry_status_headers_length_and_date() {
        let mut resp = Response::new(());
        *resp.status_mut() = StatusCode::UNAUTHORIZED;
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        let head = String::from_utf8(response_head(&resp, Some(5))).unwrap();
        assert!(head.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{head}");
        assert!(head.contains("\r\nwww-authenticate: Bearer\r\n"), "{head}");
        assert!(head.contains("\r\ncontent-length: 5\r\n"), "{head}");
        assert!(head.contains("\r\ndate: "), "{head}");
        assert!(head.ends_with("\r\n\r\n"));
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let head = String::from_utf8(response_head(&resp, None)).unwrap();
        assert!(head.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
        assert!(!head.contains("content-length") && !head.contains("date"));
    }
}
