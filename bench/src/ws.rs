//! Just enough WebSocket (RFC 6455) for a load generator and an echo backend.
//!
//! A general-purpose library allocates a message per frame and unmasks into it; the
//! harness must cost less than the proxies it measures, so it frames bytes itself: a
//! client frame is a header plus a payload masked once per connection (the mask key is
//! random per connection and the payload is constant, so the masked bytes are computed
//! once), and the echo backend streams payloads through without buffering a message.

use std::{io, net::SocketAddr, time::Duration};

use base64::Engine as _;
use sha1::{Digest, Sha1};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};

/// Opcode of a binary frame.
pub const OP_BINARY: u8 = 0x2;
/// Opcode of a close frame.
pub const OP_CLOSE: u8 = 0x8;
/// Opcode of a ping frame.
pub const OP_PING: u8 = 0x9;
/// Opcode of a pong frame.
pub const OP_PONG: u8 = 0xA;

const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The `Sec-WebSocket-Accept` value for a key.
pub fn accept_key(key: &[u8]) -> String {
    let mut h = Sha1::new();
    h.update(key);
    h.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// Appends a frame header (FIN set) to `out`; `mask` is the client's masking key.
pub fn put_header(out: &mut Vec<u8>, opcode: u8, len: usize, mask: Option<[u8; 4]>) {
    out.push(0x80 | opcode);
    let m = if mask.is_some() { 0x80 } else { 0 };
    if len < 126 {
        out.push(m | len as u8);
    } else if len <= 0xFFFF {
        out.push(m | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(m | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    if let Some(k) = mask {
        out.extend_from_slice(&k);
    }
}

/// XORs `data` with `key`, starting at byte `offset` of the key stream.
pub fn apply_mask(data: &mut [u8], key: [u8; 4], offset: usize) {
    let mut k = [0u8; 8];
    for (i, b) in k.iter_mut().enumerate() {
        *b = key[(offset + i) % 4];
    }
    let k64 = u64::from_ne_bytes(k);
    let mut chunks = data.chunks_exact_mut(8);
    for c in &mut chunks {
        let v = u64::from_ne_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) ^ k64;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= k[i % 4];
    }
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy)]
pub struct Header {
    /// Opcode.
    pub opcode: u8,
    /// Header length in bytes.
    pub header_len: usize,
    /// Payload length.
    pub len: u64,
    /// Masking key, for client frames.
    pub mask: Option<[u8; 4]>,
}

/// Parses the frame header at the start of `buf`; `None` when incomplete.
pub fn parse_header(buf: &[u8]) -> Option<Header> {
    if buf.len() < 2 {
        return None;
    }
    let opcode = buf[0] & 0x0F;
    let masked = buf[1] & 0x80 != 0;
    let (len, mut at) = match buf[1] & 0x7F {
        126 => {
            if buf.len() < 4 {
                return None;
            }
            (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4)
        }
        127 => {
            if buf.len() < 10 {
                return None;
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(b), 10)
        }
        n => (u64::from(n), 2),
    };
    let mask = if masked {
        if buf.len() < at + 4 {
            return None;
        }
        let k = [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]];
        at += 4;
        Some(k)
    } else {
        None
    };
    Some(Header {
        opcode,
        header_len: at,
        len,
        mask,
    })
}

/// Where and how a client connects.
#[derive(Debug, Clone)]
pub struct Target {
    /// The proxy's (or backend's) address.
    pub addr: SocketAddr,
    /// Request path.
    pub path: String,
}

/// Connects from `source` (port chosen by the OS) to `target.addr`.
pub async fn connect_from(
    target: SocketAddr,
    source: Option<std::net::IpAddr>,
) -> io::Result<TcpStream> {
    let sock = if target.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = source {
        sock.bind(SocketAddr::new(ip, 0))?;
    }
    let s = sock.connect(target).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Opens a WebSocket: TCP connect, upgrade request (with `Authorization: Bearer` when a
/// token is given), 101 checked. Returns the socket and any bytes read past the head.
pub async fn client_handshake(
    target: &Target,
    source: Option<std::net::IpAddr>,
    token: Option<&str>,
    timeout: Duration,
) -> io::Result<(TcpStream, Vec<u8>)> {
    tokio::time::timeout(timeout, async {
        let mut s = connect_from(target.addr, source).await?;
        let key =
            base64::engine::general_purpose::STANDARD.encode(fastrand::u128(..).to_ne_bytes());
        let mut req = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n",
            target.path, target.addr
        );
        if let Some(t) = token {
            req.push_str("Authorization: Bearer ");
            req.push_str(t);
            req.push_str("\r\n");
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::with_capacity(1024);
        let mut chunk = [0u8; 1024];
        let end = loop {
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed during handshake",
                ));
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            if buf.len() > 16 << 10 {
                return Err(io::Error::other("response head too large"));
            }
        };
        if !buf.starts_with(b"HTTP/1.1 101") {
            let line = String::from_utf8_lossy(&buf[..buf.len().min(64)]).into_owned();
            return Err(io::Error::other(format!("not upgraded: {line}")));
        }
        let want = accept_key(key.as_bytes());
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        if !head.contains(&want.to_ascii_lowercase()) {
            return Err(io::Error::other("bad Sec-WebSocket-Accept"));
        }
        let rest = buf[end..].to_vec();
        Ok((s, rest))
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "handshake timed out"))?
}

/// Answers a client's upgrade request on `s`. Returns bytes read past the request head.
pub async fn server_handshake(s: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(2048);
    let mut chunk = [0u8; 2048];
    let end = loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed during handshake",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        if buf.len() > 32 << 10 {
            return Err(io::Error::other("request head too large"));
        }
    };
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    req.parse(&buf[..end]).map_err(io::Error::other)?;
    let key = req
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("sec-websocket-key"))
        .map(|h| h.value)
        .ok_or_else(|| io::Error::other("no Sec-WebSocket-Key"))?;
    let resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        accept_key(key)
    );
    s.write_all(resp.as_bytes()).await?;
    Ok(buf[end..].to_vec())
}
