//! Hostile input, over real sockets: malformed and smuggling handshakes, slowloris, and
//! frames RFC 6455 forbids. Each gets its status or close code quickly, nothing is left
//! open, and a well-behaved client is served normally right after.

mod support;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use futures_util::{SinkExt, StreamExt};
use support::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_tungstenite::tungstenite::{
    protocol::{frame::coding::CloseCode, CloseFrame},
    Bytes, Error as WsError, Message,
};
use tokio_util::sync::CancellationToken;

/// How long an answer to hostile input may take (generous: 2 cores shared with builds).
const QUICK: Duration = Duration::from_secs(3);

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// A validating echo backend: tokio-tungstenite checks every frame and UTF-8, and this
/// backend answers what it rejects with the RFC 6455 close code (1007 for invalid UTF-8,
/// 1002 for protocol errors; a bad close code gets tungstenite's own 1002 reply).
struct ValidatingBackend {
    url: String,
    stop: CancellationToken,
}

impl ValidatingBackend {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}", listener.local_addr().unwrap());
        let stop = CancellationToken::new();
        let s = stop.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    _ = s.cancelled() => return,
                    a = listener.accept() => a.unwrap(),
                };
                tokio::spawn(validating_conn(stream));
            }
        });
        Self { url, stop }
    }
}

impl Drop for ValidatingBackend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn validating_conn(stream: TcpStream) {
    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    while let Some(msg) = ws.next().await {
        let (code, reason) = match msg {
            Ok(m @ (Message::Text(_) | Message::Binary(_))) => {
                if ws.send(m).await.is_err() {
                    return;
                }
                continue;
            }
            Ok(_) => continue,
            Err(WsError::Utf8(_)) => (CloseCode::Invalid, "invalid UTF-8"),
            Err(WsError::Protocol(_)) => (CloseCode::Protocol, "protocol error"),
            Err(_) => return,
        };
        let _ = ws
            .close(Some(CloseFrame {
                code,
                reason: reason.into(),
            }))
            .await;
        while let Some(Ok(_)) = ws.next().await {}
        return;
    }
}

/// wsgate in front of a validating backend, with short timeouts so hostile peers are
/// cut off within the test's patience.
async fn gate_over(backend: &ValidatingBackend) -> wsgate::server::Running {
    gate_over_with(backend, "").await
}

/// [`gate_over`] with a `[relay]` table.
async fn gate_over_with(backend: &ValidatingBackend, relay: &str) -> wsgate::server::Running {
    gate(&format!(
        r#"
[server]
listen = "{{LISTEN}}"
handshake_timeout = "1s"
close_timeout = "1s"
shutdown_timeout = "200ms"

{relay}

[[upstream]]
name = "b"
backends = ["{}"]

[[route]]
path = "/ws"
upstream = "b"
max_message = "64KiB"
"#,
        backend.url
    ))
    .await
}

/// A well-behaved client: text and binary echoed in order, a clean 1000 close.
async fn served_normally(g: &wsgate::server::Running, after: &str) {
    let (mut ws, _) = tokio::time::timeout(QUICK, connect_with(&ws_url(g, "/ws"), &[]))
        .await
        .unwrap_or_else(|_| panic!("after {after}: handshake took more than {QUICK:?}"))
        .unwrap_or_else(|e| panic!("after {after}: good client refused: {e}"));
    ws.send(Message::text("héllo")).await.unwrap();
    ws.send(Message::Binary(Bytes::from_static(&[0, 255, 7])))
        .await
        .unwrap();
    assert_eq!(recv(&mut ws).await, Message::text("héllo"), "after {after}");
    assert_eq!(
        recv(&mut ws).await,
        Message::Binary(Bytes::from_static(&[0, 255, 7])),
        "after {after}"
    );
    ws.close(None).await.unwrap();
    let (code, _) = recv_close(&mut ws).await;
    assert_eq!(
        code, 1005,
        "after {after}: a close without code comes back as such"
    );
}

/// Sends `req` and reads the response head; returns it and the stream.
async fn answer_to(addr: SocketAddr, req: &[u8]) -> (String, TcpStream) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    // The peer may answer (and close) before reading everything: a write error is fine.
    let _ = s.write_all(req).await;
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout(QUICK, s.read(&mut buf)).await {
            Err(_) => panic!("no answer within {QUICK:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => head.extend_from_slice(&buf[..n]),
        }
    }
    (String::from_utf8_lossy(&head).into_owned(), s)
}

fn status_of(head: &str) -> Option<u16> {
    let mut parts = head.split(' ');
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    parts.next()?.parse().ok()
}

/// Reads until the peer closes, failing if it keeps the socket open past `QUICK`;
/// returns what arrived.
async fn until_eof(s: &mut TcpStream, what: &str) -> Vec<u8> {
    let mut rest = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(QUICK, s.read(&mut buf)).await {
            Err(_) => panic!("{what}: wsgate kept the socket open past {QUICK:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return rest,
            Ok(Ok(n)) => rest.extend_from_slice(&buf[..n]),
        }
    }
}

fn upgrade(method: &str, path: &str, version: &str, extra: &str) -> String {
    format!(
        "{method} {path} {version}\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{extra}\r\n"
    )
}

fn good_headers(extra: &str) -> String {
    format!("Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n{extra}")
}

#[tokio::test]
async fn hostile_handshakes_get_their_status_quickly_and_a_good_client_follows() {
    let backend = ValidatingBackend::start().await;
    let g = gate_over(&backend).await;
    let addr = g.listen[0];
    let huge_value = "a".repeat(20 * 1024);
    let many_headers: String = (0..100).map(|i| format!("X-H{i}: v\r\n")).collect();
    let long_path = format!("/ws?{}", "q".repeat(20 * 1024));
    let cases: Vec<(&str, String, u16)> = vec![
        (
            "missing Sec-WebSocket-Key",
            upgrade("GET", "/ws", "HTTP/1.1", "Sec-WebSocket-Version: 13\r\n"),
            400,
        ),
        (
            "Sec-WebSocket-Key not base64",
            upgrade(
                "GET",
                "/ws",
                "HTTP/1.1",
                "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: !!!!!!!!!!!!!!!!!!!!!!==\r\n",
            ),
            400,
        ),
        (
            "Sec-WebSocket-Key of 15 bytes",
            upgrade(
                "GET",
                "/ws",
                "HTTP/1.1",
                "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAA\r\n",
            ),
            400,
        ),
        (
            "empty Sec-WebSocket-Key",
            upgrade(
                "GET",
                "/ws",
                "HTTP/1.1",
                "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key:\r\n",
            ),
            400,
        ),
        (
            "two Sec-WebSocket-Keys",
            upgrade(
                "GET",
                "/ws",
                "HTTP/1.1",
                &good_headers("Sec-WebSocket-Key: AQIDBAUGBwgJCgsMDQ4PEA==\r\n"),
            ),
            400,
        ),
        (
            "Sec-WebSocket-Version 8",
            upgrade(
                "GET",
                "/ws",
                "HTTP/1.1",
                &format!("Sec-WebSocket-Version: 8\r\nSec-WebSocket-Key: {KEY}\r\n"),
            ),
            426,
        ),
        (
            "Sec-WebSocket-Version missing",
            upgrade(
                "GET",
                "/ws",
                "HTTP/1.1",
                &format!("Sec-WebSocket-Key: {KEY}\r\n"),
            ),
            400,
        ),
        (
            "POST upgrade",
            upgrade("POST", "/ws", "HTTP/1.1", &good_headers("")),
            405,
        ),
        (
            "PUT upgrade",
            upgrade("PUT", "/ws", "HTTP/1.1", &good_headers("")),
            405,
        ),
        (
            "DELETE upgrade",
            upgrade("DELETE", "/ws", "HTTP/1.1", &good_headers("")),
            405,
        ),
        (
            "HTTP/1.0 upgrade",
            upgrade("GET", "/ws", "HTTP/1.0", &good_headers("")),
            400,
        ),
        (
            "plain GET without Upgrade",
            format!("GET /ws HTTP/1.1\r\nHost: x\r\n{}\r\n", good_headers("")),
            426,
        ),
        (
            "Upgrade: h2c",
            format!(
                "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n{}\r\n",
                good_headers("")
            ),
            426,
        ),
        (
            "a 20 KiB header",
            upgrade(
                "GET",
                "/ws",
                "HTTP/1.1",
                &good_headers(&format!("X-Big: {huge_value}\r\n")),
            ),
            431,
        ),
        (
            "100 headers",
            upgrade("GET", "/ws", "HTTP/1.1", &good_headers(&many_headers)),
            431,
        ),
        (
            "a 20 KiB request line",
            upgrade("GET", &long_path, "HTTP/1.1", &good_headers("")),
            431,
        ),
        (
            "upgrade carrying a Content-Length body",
            upgrade(
                "GET",
                "/ws",
                "HTTP/1.1",
                &good_headers("Content-Length: 5\r\n"),
            ) + "hello",
            400,
        ),
        (
            "dot segments in the path",
            upgrade("GET", "/x/../ws", "HTTP/1.1", &good_headers("")),
            400,
        ),
        (
            "encoded dot segments in the path",
            upgrade("GET", "/x/%2e%2E/ws", "HTTP/1.1", &good_headers("")),
            400,
        ),
        (
            "encoded slash in the path",
            upgrade("GET", "/ws%2fx", "HTTP/1.1", &good_headers("")),
            400,
        ),
        (
            "encoded NUL in the query",
            upgrade("GET", "/ws?a=%00", "HTTP/1.1", &good_headers("")),
            400,
        ),
        (
            "bad percent-encoding in the query",
            upgrade("GET", "/ws?a=%zz", "HTTP/1.1", &good_headers("")),
            400,
        ),
        (
            "space before the colon",
            upgrade("GET", "/ws", "HTTP/1.1", &good_headers("X-A : b\r\n")),
            400,
        ),
        (
            "obs-fold continuation line",
            upgrade("GET", "/ws", "HTTP/1.1", &good_headers("X-A: b\r\n c\r\n")),
            400,
        ),
        (
            "NUL in a header value",
            upgrade("GET", "/ws", "HTTP/1.1", &good_headers("X-A: b\0c\r\n")),
            400,
        ),
        (
            "garbage request line",
            "\x16\x03\x01\x02\x00\x01\x00\x01\x7c\x03\x03\r\n\r\n".to_string(),
            400,
        ),
    ];
    for (name, req, want) in &cases {
        let started = Instant::now();
        let (head, _s) = answer_to(addr, req.as_bytes()).await;
        let took = started.elapsed();
        assert_eq!(status_of(&head), Some(*want), "{name}: got {head:?}");
        assert!(took < QUICK, "{name}: answered after {took:?}");
        served_normally(&g, name).await;
    }
    assert_no_leak(&g).await;
}

#[tokio::test]
async fn smuggling_shapes_are_refused_and_the_smuggled_request_is_never_read() {
    let backend = ValidatingBackend::start().await;
    let g = gate_over(&backend).await;
    let addr = g.listen[0];
    // Each carries a second, valid upgrade request as its "body": if wsgate (or the
    // backend behind it) read that as a request, a second response would follow.
    let smuggled = upgrade("GET", "/ws", "HTTP/1.1", &good_headers(""));
    let body_len = smuggled.len();
    let chunked = format!("{:x}\r\n{smuggled}\r\n0\r\n\r\n", body_len);
    let cases: Vec<(&str, String)> = vec![
        (
            "Content-Length and Transfer-Encoding",
            upgrade(
                "GET",
                "/ws",
                "HTTP/1.1",
                &good_headers(&format!(
                    "Content-Length: {body_len}\r\nTransfer-Encoding: chunked\r\n"
                )),
            ) + &chunked,
        ),
        (
            "two different Content-Lengths",
            upgrade(
                "GET",
                "/ws",
                "HTTP/1.1",
                &good_headers(&format!(
                    "Content-Length: 0\r\nContent-Length: {body_len}\r\n"
                )),
            ) + &smuggled,
        ),
        (
            "two equal Content-Lengths",
            upgrade(
                "GET",
                "/ws",
                "HTTP/1.1",
                &good_headers(&format!(
                    "Content-Length: {body_len}\r\nContent-Length: {body_len}\r\n"
                )),
            ) + &smuggled,
        ),
        (
            "Transfer-Encoding: chunked upgrade",
            upgrade(
                "GET",
                "/ws",
                "HTTP/1.1",
                &good_headers("Transfer-Encoding: chunked\r\n"),
            ) + &chunked,
        ),
        (
            "obfuscated Transfer-Encoding",
            upgrade(
                "GET",
                "/ws",
                "HTTP/1.1",
                &good_headers(&format!(
                    "Content-Length: {body_len}\r\nTransfer-Encoding: xchunked\r\n"
                )),
            ) + &smuggled,
        ),
        (
            "POST with a body followed by an upgrade",
            format!("POST /ws HTTP/1.1\r\nHost: x\r\nContent-Length: {body_len}\r\n\r\n")
                + &smuggled,
        ),
    ];
    for (name, req) in &cases {
        let (head, mut s) = answer_to(addr, req.as_bytes()).await;
        let status = status_of(&head);
        assert!(
            matches!(status, Some(400 | 405 | 501)),
            "{name}: expected a refusal, got {head:?}"
        );
        let rest = until_eof(&mut s, name).await;
        let rest = String::from_utf8_lossy(&rest);
        assert!(
            !rest.contains("HTTP/1.1 101") && !head.contains("HTTP/1.1 101"),
            "{name}: the smuggled upgrade was answered: {head}{rest}"
        );
        served_normally(&g, name).await;
    }
    assert_no_leak(&g).await;
}

#[tokio::test]
async fn slowloris_clients_are_cut_off_at_the_handshake_timeout_while_others_are_served() {
    let backend = ValidatingBackend::start().await;
    let g = gate_over(&backend).await; // handshake_timeout = 1s
    let addr = g.listen[0];
    let head = upgrade("GET", "/ws", "HTTP/1.1", &good_headers(""));
    let mut slow = Vec::new();
    for i in 0..20 {
        let head = head.clone().into_bytes();
        slow.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let started = Instant::now();
            // Half of them trickle a byte every 100 ms, never finishing the head; the
            // other half send a few bytes and then nothing.
            let trickle = i % 2 == 0;
            let mut sent = 0;
            let mut buf = [0u8; 1024];
            loop {
                if trickle || sent < 5 {
                    if s.write_all(&head[sent..sent + 1]).await.is_err() {
                        return started.elapsed();
                    }
                    sent += 1;
                }
                match tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
                    // An answer (408) is fine; the socket must still be closed after it.
                    Ok(Ok(_)) => {}
                    Err(_) => {}
                }
                assert!(
                    started.elapsed() < Duration::from_secs(6),
                    "slowloris client {i} still connected after 6 s (handshake_timeout 1 s)"
                );
                assert!(
                    sent < head.len() - 2,
                    "slowloris client {i} nearly finished"
                );
            }
        }));
    }
    // While they hang on, a well-behaved client is served.
    served_normally(&g, "slowloris clients connected").await;
    for t in slow {
        let took = t.await.unwrap();
        assert!(
            took >= Duration::from_millis(900),
            "cut off before the timeout: {took:?}"
        );
    }
    // An idle connection that never sends a byte is also cut off.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    let _ = until_eof(&mut idle, "idle connection that sent nothing").await;
    assert!(started.elapsed() >= Duration::from_millis(900));
    served_normally(&g, "slowloris").await;
    assert_no_leak(&g).await;
}

/// Upgrades a raw TCP socket through wsgate and returns it after the 101.
async fn raw_ws(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(upgrade("GET", "/ws", "HTTP/1.1", &good_headers("")).as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tokio::time::timeout(QUICK, s.read_exact(&mut b))
            .await
            .expect("no 101 in time")
            .unwrap();
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{head:?}");
    s
}

/// Reads one server frame: (first byte, payload). Server frames must be unmasked.
async fn read_frame(s: &mut TcpStream, what: &str) -> Option<(u8, Vec<u8>)> {
    let mut h = [0u8; 2];
    match tokio::time::timeout(QUICK, s.read_exact(&mut h)).await {
        Err(_) => panic!("{what}: no frame within {QUICK:?}"),
        Ok(Err(_)) => return None,
        Ok(Ok(_)) => {}
    }
    assert_eq!(h[1] & 0x80, 0, "server frames are unmasked");
    let len = match h[1] & 0x7f {
        126 => {
            let mut l = [0u8; 2];
            s.read_exact(&mut l).await.ok()?;
            u64::from(u16::from_be_bytes(l))
        }
        127 => {
            let mut l = [0u8; 8];
            s.read_exact(&mut l).await.ok()?;
            u64::from_be_bytes(l)
        }
        n => u64::from(n),
    };
    assert!(len < 1 << 20, "absurd frame length {len}");
    let mut p = vec![0u8; len as usize];
    s.read_exact(&mut p).await.ok()?;
    Some((h[0], p))
}

#[tokio::test]
async fn hostile_frames_get_their_close_code_quickly_and_a_good_client_follows() {
    let backend = ValidatingBackend::start().await;
    let g = gate_over(&backend).await; // max_message = 64 KiB
    let addr = g.listen[0];
    let fragmented_bad_utf8 = [masked_frame(0x01, &[0xce]), masked_frame(0x80, &[0xff])].concat();
    let mut cases: Vec<(String, Vec<u8>, u16)> = vec![
        (
            "unmasked text frame".into(),
            vec![0x81, 0x02, b'h', b'i'],
            1002,
        ),
        (
            "frame length 2^63".into(),
            vec![0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4],
            1002,
        ),
        (
            "frame length 2^64-1".into(),
            vec![
                0x82, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4,
            ],
            1002,
        ),
        ("fragmented ping".into(), masked_frame(0x09, b""), 1002),
        (
            "fragmented close".into(),
            masked_frame(0x08, &[3, 232]),
            1002,
        ),
        (
            "ping of 126 bytes".into(),
            masked_frame(0x89, &[0; 126]),
            1002,
        ),
        (
            "RSV1 without an extension".into(),
            masked_frame(0xc1, b"x"),
            1002,
        ),
        ("RSV2".into(), masked_frame(0xa1, b"x"), 1002),
        ("RSV3".into(), masked_frame(0x91, b"x"), 1002),
        ("RSV1 on a ping".into(), masked_frame(0xc9, b""), 1002),
        (
            "continuation with no message".into(),
            masked_frame(0x80, b"x"),
            1002,
        ),
        (
            "text inside a fragmented message".into(),
            [masked_frame(0x01, b"a"), masked_frame(0x81, b"b")].concat(),
            1002,
        ),
        (
            "close with a 1-byte payload".into(),
            masked_frame(0x88, &[3]),
            1002,
        ),
        (
            "message over max_message".into(),
            // Header only: wsgate must refuse on the length, without waiting for 64 KiB.
            vec![0x82, 0xff, 0, 0, 0, 0, 0, 0x10, 0, 0, 1, 2, 3, 4], // 1 MiB
            1009,
        ),
        (
            "fragments adding up over max_message".into(),
            [
                masked_frame(0x02, &[1; 40000]),
                masked_frame(0x80, &[2; 40000]),
            ]
            .concat(),
            1009,
        ),
        (
            "invalid UTF-8 in a text frame".into(),
            masked_frame(0x81, b"ok \xff\xfe"),
            1007,
        ),
        (
            "UTF-16 surrogate in a text frame".into(),
            masked_frame(0x81, b"\xed\xa0\x80"),
            1007,
        ),
        (
            "invalid UTF-8 across fragments".into(),
            fragmented_bad_utf8,
            1007,
        ),
        (
            "close with the reserved code 1005".into(),
            masked_frame(0x88, &1005u16.to_be_bytes()),
            1002,
        ),
        (
            "close with code 999".into(),
            masked_frame(0x88, &999u16.to_be_bytes()),
            1002,
        ),
    ];
    for op in [3u8, 4, 5, 6, 7, 0xb, 0xc, 0xd, 0xe, 0xf] {
        cases.push((
            format!("reserved opcode {op:#x}"),
            masked_frame(0x80 | op, b""),
            1002,
        ));
    }
    for (name, bytes, want) in &cases {
        let mut s = raw_ws(addr).await;
        // A good message first: the socket works, and nothing before the hostile bytes
        // is judged by them.
        s.write_all(&masked_frame(0x81, b"before")).await.unwrap();
        assert_eq!(
            read_frame(&mut s, name).await,
            Some((0x81, b"before".to_vec())),
            "{name}: the good message before it was not echoed"
        );
        let started = Instant::now();
        let _ = s.write_all(bytes).await;
        let code = match read_frame(&mut s, name).await {
            Some((first, p)) if first & 0x0f == 8 => {
                assert!(p.len() >= 2, "{name}: close frame without a code");
                u16::from_be_bytes([p[0], p[1]])
            }
            Some((first, p)) => panic!("{name}: unexpected frame {first:#x} {p:?}"),
            None => panic!("{name}: socket ended without a close frame"),
        };
        let took = started.elapsed();
        assert_eq!(code, *want, "{name}");
        assert!(took < QUICK, "{name}: close after {took:?}");
        // The close is answered, and then wsgate must not leave the socket half open.
        let _ = s.write_all(&masked_frame(0x88, &code.to_be_bytes())).await;
        until_eof(&mut s, name).await;
        served_normally(&g, name).await;
    }
    assert_no_leak(&g).await;
}

#[tokio::test]
async fn invalid_utf8_reaches_a_validating_backend_untouched_and_its_1007_reaches_the_client() {
    // With wsgate's own check off (`relay.validate_utf8 = false`) the backend judges: the
    // close code and reason of its verdict arrive intact, and the next client is served.
    let backend = ValidatingBackend::start().await;
    let g = gate_over_with(&backend, "[relay]\nvalidate_utf8 = false").await;
    let mut s = raw_ws(g.listen[0]).await;
    s.write_all(&masked_frame(0x81, &[0xc3, 0x28]))
        .await
        .unwrap();
    let (first, p) = read_frame(&mut s, "invalid UTF-8")
        .await
        .expect("a close frame");
    assert_eq!(first, 0x88);
    assert_eq!(u16::from_be_bytes([p[0], p[1]]), 1007);
    assert_eq!(&p[2..], b"invalid UTF-8");
    drop(s);
    served_normally(&g, "invalid UTF-8").await;
    assert_no_leak(&g).await;
}

#[test]
fn proxy_protocol_v1_answer_does_not_depend_on_how_the_header_is_segmented() {
    use wsgate_layers::proxy_protocol::parse;
    // Found by the `proxy_protocol` fuzz target: a v1 UNKNOWN line with a bare LF before
    // its CRLF was accepted whole but refused when only its first part had arrived, so
    // the same bytes were served or dropped depending on TCP segmentation.
    let cases: [&[u8]; 4] = [
        b"PROXY UNKNOWN N \nPROXY \nUNKNOWN ff\0ff::2\r\n",
        b"PROXY UNKNOWN\n\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n",
        b"PROXY UNKNOWN 2001:db8::1 2001:db8::2 1 2\r\n",
    ];
    for bytes in cases {
        let whole = parse(bytes).map(|h| h.map(|(_, n)| n));
        for cut in 0..bytes.len() {
            match parse(&bytes[..cut]) {
                Ok(None) => {}
                Err(_) => assert!(
                    whole.is_err(),
                    "{:?}: refused after {cut} bytes, accepted whole",
                    String::from_utf8_lossy(bytes)
                ),
                Ok(Some(_)) => panic!("a header found before its end"),
            }
        }
        let well_formed = !bytes[..bytes.len() - 2].contains(&b'\n');
        assert_eq!(
            whole.is_ok(),
            well_formed,
            "{:?}: {whole:?}",
            String::from_utf8_lossy(bytes)
        );
    }
}
