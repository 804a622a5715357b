//! Request hygiene over real sockets: paths, query rules, hosts, header limits.

mod support;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn raw(addr: std::net::SocketAddr, req: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    // The peer may answer and close before reading everything: a failed write is fine.
    let _ = s.write_all(req).await;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while !out.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => panic!("no answer"),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn upgrade(path: &str, extra: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: gw.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n").into_bytes()
}

#[tokio::test]
async fn traversal_and_bad_encodings_get_400_before_routing() {
    let mut b = Backend::start(BackendOpts::named("a")).await;
    let g = gate(&one_route(&[&b.url], "")).await;
    for path in [
        "/app/../admin",
        "/app/%2e%2e/admin",
        "/app/%2E%2e/admin",
        "/app%2fadmin",
        "//app",
        "/app/x%zz",
        "/app/%0d%0aX-Injected:%201",
        "/app/%ff",
        "/ws?x=%zz",
    ] {
        let resp = raw(g.listen[0], &upgrade(path, "")).await;
        assert!(resp.starts_with("HTTP/1.1 400"), "{path}: {resp}");
    }
    // Nothing reached the backend, and a clean path still works.
    let ok = raw(g.listen[0], &upgrade("/app/room", "")).await;
    assert!(ok.starts_with("HTTP/1.1 101"), "{ok}");
    let (uri, _) = b.next_request().await;
    assert_eq!(uri, "/app/room");
}

#[tokio::test]
async fn query_rules_refuse_and_strip_parameters() {
    let mut b = Backend::start(BackendOpts::named("a")).await;
    let rules =
        "[route.query]\ndeny = [\"debug\"]\nstrip = [\"session_hint\"]\nmax_value_len = 16\n";
    let g = gate(&one_route(&[&b.url], rules)).await;
    let url = ws_url(&g, "/ws");
    assert_eq!(refused_status(&format!("{url}?debug=1"), &[]).await, 400);
    assert_eq!(
        refused_status(&format!("{url}?room={}", "x".repeat(17)), &[]).await,
        400
    );
    let _ws = connect(&format!("{url}?room=7&session_hint=abc&user=ann")).await;
    let (uri, _) = b.next_request().await;
    assert_eq!(uri, "/ws?room=7&user=ann");
}

#[tokio::test]
async fn configured_head_limits_hold_for_websocket_upgrades() {
    let b = Backend::start(BackendOpts::named("a")).await;
    let toml = one_route(&[&b.url], "").replace(
        "shutdown_timeout = \"200ms\"",
        "shutdown_timeout = \"200ms\"\nmax_headers = 8\nmax_header_bytes = \"8KiB\"",
    );
    let g = gate(&toml).await;
    // Five lines of its own plus four: over `max_headers` though far under 64.
    let few: String = (0..4).map(|i| format!("X-H{i}: v\r\n")).collect();
    let resp = raw(g.listen[0], &upgrade("/ws", &few)).await;
    assert!(resp.starts_with("HTTP/1.1 431"), "{resp}");
    // Over `max_header_bytes` (8 KiB) though under the default 16 KiB.
    let big = format!("X-Big: {}\r\n", "a".repeat(9_000));
    let resp = raw(g.listen[0], &upgrade("/ws", &big)).await;
    assert!(resp.starts_with("HTTP/1.1 431"), "{resp}");
    let resp = raw(g.listen[0], &upgrade("/ws", "")).await;
    assert!(resp.starts_with("HTTP/1.1 101"), "{resp}");
}

#[tokio::test]
async fn host_allow_list_answers_421_for_other_hosts() {
    let b = Backend::start(BackendOpts::named("a")).await;
    let g = gate(&one_route(&[&b.url], "hosts = [\"gw.test\"]")).await;
    let ok = raw(g.listen[0], &upgrade("/ws", "")).await;
    assert!(ok.starts_with("HTTP/1.1 101"), "{ok}");
    let other = raw(
        g.listen[0],
        b"GET /ws HTTP/1.1\r\nHost: evil.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await;
    assert!(other.starts_with("HTTP/1.1 421"), "{other}");
}

#[tokio::test]
async fn oversized_or_too_many_headers_get_431() {
    let b = Backend::start(BackendOpts::named("a")).await;
    let g = gate(&one_route(&[&b.url], "")).await;
    let big = format!("X-Big: {}\r\n", "a".repeat(20_000));
    let resp = raw(g.listen[0], &upgrade("/ws", &big)).await;
    assert!(resp.starts_with("HTTP/1.1 431"), "{resp}");
    let many: String = (0..100).map(|i| format!("X-H{i}: v\r\n")).collect();
    let resp = raw(g.listen[0], &upgrade("/ws", &many)).await;
    assert!(resp.starts_with("HTTP/1.1 431"), "{resp}");
    // A well-behaved client is served right after.
    let _ws = connect(&ws_url(&g, "/ws")).await;
}

#[tokio::test]
async fn smuggling_shapes_are_refused() {
    let b = Backend::start(BackendOpts::named("a")).await;
    let g = gate(&one_route(&[&b.url], "")).await;
    for extra in [
        "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        "Content-Length: 0\r\nContent-Length: 5\r\n",
        "X-Folded: a\r\n  continued\r\n",
    ] {
        let resp = raw(g.listen[0], &upgrade("/ws", extra)).await;
        assert!(
            resp.starts_with("HTTP/1.1 400") || resp.is_empty(),
            "{extra:?} was accepted: {resp}"
        );
        assert!(!resp.starts_with("HTTP/1.1 101"));
    }
}

#[tokio::test]
async fn handshakes_beyond_max_handshakes_get_503_at_once() {
    // A backend that accepts TCP and never answers the upgrade keeps a handshake in
    // progress; with max_handshakes = 1 the next client must not queue behind it.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (accepted_tx, accepted) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        let _ = accepted_tx.send(());
        std::future::pending::<()>().await;
        drop(s);
    });
    let cfg = one_route(&[&format!("ws://{addr}")], "").replace(
        "admin = \"127.0.0.1:0\"",
        "admin = \"127.0.0.1:0\"\nmax_handshakes = 1",
    );
    let g = gate(&cfg).await;
    let url = ws_url(&g, "/ws");
    let stuck = tokio::spawn({
        let url = url.clone();
        async move { connect_with(&url, &[]).await.map(|_| ()) }
    });
    accepted.await.unwrap();
    assert_eq!(refused_status(&url, &[]).await, 503);
    // The cap is in front of everything, the not-found answer included.
    assert_eq!(refused_status(&ws_url(&g, "/nowhere"), &[]).await, 503);
    // Refused before the outcome counter: not a route's handshake.
    assert_eq!(g.metrics.handshakes(wsgate::metrics::Outcome::NoBackend), 0);
    stuck.abort();
}
