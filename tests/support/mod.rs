//! Shared test helpers: real backends, a real wsgate, real clients, all on loopback.
#![allow(dead_code)]
// tungstenite's handshake callback returns its large ErrorResponse by value.
#![allow(clippy::result_large_err)]

use std::{net::SocketAddr, sync::Arc, time::Duration};

use futures_util::{SinkExt, StreamExt};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tokio_tungstenite::{
    tungstenite::{
        client::IntoClientRequest,
        handshake::server::{ErrorResponse, Request, Response},
        protocol::{frame::coding::CloseCode, CloseFrame, WebSocketConfig},
        Message,
    },
    MaybeTlsStream, WebSocketStream,
};
use tokio_util::sync::CancellationToken;
use wsgate::{config::Config, server::Running};

pub type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What a test backend saw.
#[derive(Debug, Clone)]
pub enum Seen {
    /// The upgrade request: URI and headers.
    Request(String, http::HeaderMap),
    /// A close frame from the proxy (code, reason).
    Close(u16, String),
    /// The connection ended.
    Gone,
}

/// Chooses a subprotocol from the client's offer.
pub type PickProtocol = Arc<dyn Fn(&[String]) -> Option<String> + Send + Sync>;

/// How a test backend behaves.
#[derive(Clone)]
pub struct BackendOpts {
    pub name: String,
    /// Pick a subprotocol from the offered list.
    pub pick_protocol: PickProtocol,
    /// Refuse the upgrade with this status.
    pub refuse: Option<u16>,
}

impl BackendOpts {
    pub fn named(name: &str) -> Self {
        Self {
            name: name.into(),
            pick_protocol: Arc::new(|offered: &[String]| offered.first().cloned()),
            refuse: None,
        }
    }
}

/// A real WebSocket backend (tokio-tungstenite): echoes messages, answers `whoami` with
/// its name, closes with CODE and REASON on `close:CODE:REASON`, and reports what it saw.
pub struct Backend {
    pub addr: SocketAddr,
    pub url: String,
    pub seen: mpsc::UnboundedReceiver<Seen>,
    stop: CancellationToken,
}

impl Backend {
    pub async fn start(opts: BackendOpts) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, opts)
    }

    pub fn serve(listener: TcpListener, opts: BackendOpts) -> Backend {
        let addr = listener.local_addr().unwrap();
        let (tx, seen) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let s = stop.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    _ = s.cancelled() => return,
                    a = listener.accept() => a.unwrap(),
                };
                tokio::spawn(backend_conn(stream, opts.clone(), tx.clone(), s.clone()));
            }
        });
        Backend {
            addr,
            url: format!("ws://{addr}"),
            seen,
            stop,
        }
    }

    /// Stops accepting and drops every open connection abruptly (a crash).
    pub fn kill(&self) {
        self.stop.cancel();
    }

    pub async fn next_seen(&mut self) -> Seen {
        tokio::time::timeout(Duration::from_secs(10), self.seen.recv())
            .await
            .expect("backend saw nothing within 10 s")
            .expect("backend channel closed")
    }

    /// The next upgrade request this backend received.
    pub async fn next_request(&mut self) -> (String, http::HeaderMap) {
        loop {
            if let Seen::Request(u, h) = self.next_seen().await {
                return (u, h);
            }
        }
    }

    /// The next close frame this backend received.
    pub async fn next_close(&mut self) -> (u16, String) {
        loop {
            match self.next_seen().await {
                Seen::Close(c, r) => return (c, r),
                Seen::Gone => panic!("backend connection ended without a close frame"),
                Seen::Request(..) => {}
            }
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn backend_conn(
    stream: TcpStream,
    opts: BackendOpts,
    tx: mpsc::UnboundedSender<Seen>,
    stop: CancellationToken,
) {
    let tx2 = tx.clone();
    let name = opts.name.clone();
    let refuse = opts.refuse;
    let pick_protocol = opts.pick_protocol.clone();
    let cb = move |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        let _ = tx2.send(Seen::Request(req.uri().to_string(), req.headers().clone()));
        if let Some(status) = refuse {
            let mut r = ErrorResponse::new(Some(format!("refused by {name}")));
            *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
            return Err(r);
        }
        let offered: Vec<String> = req
            .headers()
            .get_all("sec-websocket-protocol")
            .iter()
            .flat_map(|v| v.to_str().unwrap().split(','))
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        if let Some(p) = pick_protocol(&offered) {
            resp.headers_mut()
                .insert("sec-websocket-protocol", p.parse().unwrap());
        }
        Ok(resp)
    };
    let cfg = WebSocketConfig::default()
        .max_message_size(Some(64 << 20))
        .max_frame_size(Some(64 << 20));
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async_with_config(stream, cb, Some(cfg)).await
    else {
        return;
    };
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => return, // dropped without a close: a crash
            m = ws.next() => m,
        };
        let reply = match msg {
            Some(Ok(Message::Text(t))) if t.as_str() == "whoami" => {
                Message::text(opts.name.clone())
            }
            Some(Ok(Message::Text(t))) if t.as_str().starts_with("close:") => {
                let mut parts = t.as_str().splitn(3, ':').skip(1);
                let code: u16 = parts.next().unwrap().parse().unwrap();
                let reason = parts.next().unwrap_or("").to_string();
                let _ = ws
                    .close(Some(CloseFrame {
                        code: CloseCode::from(code),
                        reason: reason.into(),
                    }))
                    .await;
                while let Some(Ok(_)) = ws.next().await {}
                let _ = tx.send(Seen::Gone);
                return;
            }
            Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => m,
            Some(Ok(Message::Close(frame))) => {
                let (c, r) = frame
                    .map(|f| (u16::from(f.code), f.reason.to_string()))
                    .unwrap_or((1005, String::new()));
                let _ = tx.send(Seen::Close(c, r));
                while let Some(Ok(_)) = ws.next().await {}
                let _ = tx.send(Seen::Gone);
                return;
            }
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => {
                let _ = tx.send(Seen::Gone);
                return;
            }
        };
        if ws.send(reply).await.is_err() {
            let _ = tx.send(Seen::Gone);
            return;
        }
    }
}

/// Starts wsgate on a free loopback port with `toml`, in which `{LISTEN}` is replaced.
pub async fn gate(toml: &str) -> Running {
    let text = toml.replace("{LISTEN}", "127.0.0.1:0");
    let cfg = Config::parse(&text, "test.toml").unwrap_or_else(|e| panic!("{e}"));
    wsgate::server::start(&cfg).await.unwrap()
}

/// A config with one route `/ws` (and prefix route `/app/*`) over `backends`.
pub fn one_route(backends: &[&str], extra_route: &str) -> String {
    let list = backends
        .iter()
        .map(|b| format!("\"{b}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"
[server]
listen = "{{LISTEN}}"
admin = "127.0.0.1:0"
shutdown_timeout = "200ms"
close_timeout = "2s"

[[upstream]]
name = "b"
backends = [{list}]
connect_timeout = "2s"

[[route]]
path = "/ws"
upstream = "b"
{extra_route}

[[route]]
path = "/app/*"
upstream = "b"
"#
    )
}

pub fn ws_url(g: &Running, path: &str) -> String {
    format!("ws://{}{}", g.listen[0], path)
}

/// Opens a client WebSocket with extra headers.
pub async fn connect_with(
    url: &str,
    headers: &[(&str, &str)],
) -> Result<
    (
        Client,
        tokio_tungstenite::tungstenite::handshake::client::Response,
    ),
    tokio_tungstenite::tungstenite::Error,
> {
    let mut req = url.into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let cfg = WebSocketConfig::default()
        .max_message_size(Some(64 << 20))
        .max_frame_size(Some(64 << 20));
    tokio_tungstenite::connect_async_with_config(req, Some(cfg), false).await
}

pub async fn connect(url: &str) -> Client {
    connect_with(url, &[]).await.unwrap().0
}

/// The HTTP status of a refused handshake.
pub async fn refused_status(url: &str, headers: &[(&str, &str)]) -> u16 {
    match connect_with(url, headers).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
        Ok(_) => panic!("expected an HTTP refusal, got a WebSocket"),
    }
}

/// Next data or close message, with a deadline.
pub async fn recv(ws: &mut Client) -> Message {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Ping(_)))) | Ok(Some(Ok(Message::Pong(_)))) => continue,
            Ok(Some(Ok(m))) => return m,
            Ok(Some(Err(e))) => panic!("client error: {e}"),
            Ok(None) => panic!("socket ended without a close frame"),
            Err(_) => panic!("nothing received within 10 s"),
        }
    }
}

/// Waits for a close frame and returns its code and reason.
pub async fn recv_close(ws: &mut Client) -> (u16, String) {
    loop {
        match recv(ws).await {
            Message::Close(Some(f)) => return (u16::from(f.code), f.reason.to_string()),
            Message::Close(None) => return (1005, String::new()),
            _ => continue,
        }
    }
}

/// Polls `cond` until it holds, for at most 10 s: for state with no event to await
/// (counters released by another task).
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The admin listener's `/metrics` page (headers included).
pub async fn metrics(g: &Running) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(g.admin.unwrap()).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// Asserts nothing is left open: sockets, per-backend counts.
pub async fn assert_no_leak(g: &Running) {
    eventually("all proxied sockets released", || g.metrics.active() == 0).await;
    for u in &g.upstreams {
        for b in u.backends() {
            let b2 = b.clone();
            eventually("backend count released", move || b2.active() == 0).await;
        }
    }
}

/// The RFC 6455 sample key, and the accept value a backend must answer for it.
pub const SAMPLE_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
pub const SAMPLE_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// Upgrades a raw TCP socket through wsgate's `/ws` and returns it right after the 101,
/// for tests that write frames byte by byte.
pub async fn raw_ws(addr: SocketAddr) -> TcpStream {
    raw_ws_with(addr, "").await.0
}

/// [`raw_ws`] with `extra` header lines (each ending in `\r\n`) in the request; also
/// returns the 101's head.
pub async fn raw_ws_with(addr: SocketAddr, extra: &str) -> (TcpStream, String) {
    raw_ws_at(addr, "/ws", extra).await
}

/// [`raw_ws_with`] on `path`: for header lines a WebSocket client library would not send
/// as they are (its own `Connection`, names with `_`).
pub async fn raw_ws_at(addr: SocketAddr, path: &str, extra: &str) -> (TcpStream, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {SAMPLE_KEY}\r\n{extra}\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    (s, String::from_utf8_lossy(&head).into_owned())
}

/// A client frame: first byte `first` (FIN, RSV, opcode), length, a fixed mask key,
/// masked payload.
pub fn masked_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    masked_frame_with_key(first, payload, [0x37, 0xfa, 0x21, 0x3d])
}

/// Starts a test backend again on `addr`, the address of one that was killed (its old
/// listener closes asynchronously, so binding is retried for a while).
pub async fn rebind(addr: SocketAddr, opts: BackendOpts) -> Backend {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match TcpListener::bind(addr).await {
            Ok(l) => return Backend::serve(l, opts),
            Err(e) if tokio::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("cannot rebind {addr}: {e}"),
        }
    }
}

/// Reads one unmasked server frame (payload under 64 KiB): its opcode and payload.
pub async fn read_frame(s: &mut TcpStream) -> (u8, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let mut h = [0u8; 2];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut h))
        .await
        .expect("no frame within 5 s")
        .unwrap();
    assert_eq!(h[1] & 0x80, 0, "server frames are unmasked");
    let len = match h[1] & 0x7f {
        126 => {
            let mut l = [0u8; 2];
            s.read_exact(&mut l).await.unwrap();
            u16::from_be_bytes(l) as usize
        }
        127 => panic!("unexpected long frame"),
        n => n as usize,
    };
    let mut p = vec![0u8; len];
    s.read_exact(&mut p).await.unwrap();
    (h[0] & 0x0f, p)
}

/// A hand-written backend's side of the upgrade: accepts one connection on `l`, reads
/// the request head, answers 101 (for the sample key) with `extra` header lines, and
/// returns the socket and the request head wsgate sent.
pub async fn accept_raw_upgrade(l: &TcpListener, extra: &str) -> (TcpStream, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut s, _) = l.accept().await.unwrap();
    let mut req = Vec::new();
    let mut buf = [0u8; 2048];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "wsgate closed before sending its request");
        req.extend_from_slice(&buf[..n]);
    }
    let resp = format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {SAMPLE_ACCEPT}\r\n{extra}\r\n");
    s.write_all(resp.as_bytes()).await.unwrap();
    (s, String::from_utf8(req).unwrap())
}

/// A client frame: first byte (FIN, RSV, opcode), then `payload` masked with `key`.
pub fn masked_frame_with_key(first: u8, payload: &[u8], key: [u8; 4]) -> Vec<u8> {
    let mut v = vec![first];
    match payload.len() {
        n if n < 126 => v.push(0x80 | n as u8),
        n if n < 65536 => {
            v.push(0x80 | 126);
            v.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            v.push(0x80 | 127);
            v.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    v.extend_from_slice(&key);
    v.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    v
}

/// The backend's side: reads one frame wsgate sent (masked, as from a client) and
/// returns its first byte and unmasked payload; `None` when the socket ends first.
pub async fn read_masked_frame(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let mut h = [0u8; 2];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut h))
        .await
        .expect("no frame within 5 s")
        .ok()?;
    assert_ne!(h[1] & 0x80, 0, "frames toward a backend are masked");
    let len = match h[1] & 0x7f {
        126 => {
            let mut l = [0u8; 2];
            s.read_exact(&mut l).await.ok()?;
            usize::from(u16::from_be_bytes(l))
        }
        127 => panic!("unexpected long frame"),
        n => usize::from(n),
    };
    let mut key = [0u8; 4];
    s.read_exact(&mut key).await.ok()?;
    let mut p = vec![0u8; len];
    s.read_exact(&mut p).await.ok()?;
    for (i, b) in p.iter_mut().enumerate() {
        *b ^= key[i % 4];
    }
    Some((h[0], p))
}

/// The HS256 secret the JWT tests sign with.
pub const HS256_SECRET: &str = "a test secret that is long enough for HS256";

/// [`HS256_SECRET`] written to `hs.secret` in a fresh directory, for a route's
/// `secret_file`; the file lasts as long as the returned directory.
pub fn hs256_secret_file() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("hs.secret");
    std::fs::write(&secret, HS256_SECRET).unwrap();
    (dir, secret)
}

/// An HS256 token for `sub` signed with `secret`, valid for ten minutes.
pub fn hs256_token(secret: &str, sub: &str) -> String {
    use jsonwebtoken::{encode, EncodingKey, Header};
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let claims = serde_json::json!({ "sub": sub, "exp": exp });
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// `wsgate echo`'s backend on a free loopback port, running on `rt` until `stop`: for
/// tests that drive the `wsgate` binary from a plain `#[test]`.
pub fn echo_on(rt: &tokio::runtime::Runtime, stop: &CancellationToken) -> SocketAddr {
    rt.block_on(async {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(wsgate::demo::echo_backend(l, "b".into(), stop.clone()));
        addr
    })
}

/// Runs `cmd` (the `wsgate` binary, or a shell that execs it) until its listener line
/// and returns the log lines it wrote before it, then stops it.
pub fn startup_lines(mut cmd: std::process::Command) -> Vec<String> {
    use std::io::BufRead;
    let mut child = cmd
        .env("NO_COLOR", "1")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let err = std::io::BufReader::new(child.stderr.take().unwrap());
    let lines = err
        .lines()
        .map_while(Result::ok)
        .take_while(|l| !l.contains("proxying WebSockets"))
        .collect();
    let _ = child.kill();
    let _ = child.wait();
    lines
}
