//! PROXY protocol on the client listener: believed from trusted proxies only.

mod support;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const UPGRADE: &[u8] = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

fn config(backend: &str, trusted: &str) -> String {
    one_route(&[backend], "").replace(
        "admin = \"127.0.0.1:0\"",
        &format!(
            "admin = \"127.0.0.1:0\"\nproxy_protocol = true\ntrusted_proxies = [\"{trusted}\"]"
        ),
    )
}

/// Sends `bytes` and returns the response head, or "" if the connection closed first.
async fn exchange(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    while !out.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("no answer and no close")
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn v1_and_v2_headers_from_a_trusted_proxy_set_the_client_address() {
    let mut b = Backend::start(BackendOpts::named("a")).await;
    let g = gate(&config(&b.url, "127.0.0.1/32")).await;

    let mut v1 = b"PROXY TCP4 203.0.113.7 127.0.0.1 5555 80\r\n".to_vec();
    v1.extend_from_slice(UPGRADE);
    assert!(exchange(g.listen[0], &v1).await.starts_with("HTTP/1.1 101"));
    let (_, h) = b.next_request().await;
    assert_eq!(h["x-forwarded-for"], "203.0.113.7");

    let mut v2 = vec![
        0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
    ];
    v2.extend_from_slice(&[0x21, 0x11, 0x00, 12]); // v2 PROXY, TCP over IPv4, 12 bytes
    v2.extend_from_slice(&[198, 51, 100, 9, 127, 0, 0, 1, 0x30, 0x39, 0x00, 0x50]);
    v2.extend_from_slice(UPGRADE);
    assert!(exchange(g.listen[0], &v2).await.starts_with("HTTP/1.1 101"));
    let (_, h) = b.next_request().await;
    assert_eq!(h["x-forwarded-for"], "198.51.100.9");
}

#[tokio::test]
async fn untrusted_peers_and_missing_headers_are_not_served() {
    let b = Backend::start(BackendOpts::named("a")).await;
    // 127.0.0.1 is not inside the trusted list: its PROXY header must not be believed.
    let g = gate(&config(&b.url, "10.0.0.0/8")).await;
    let mut v1 = b"PROXY TCP4 203.0.113.7 127.0.0.1 5555 80\r\n".to_vec();
    v1.extend_from_slice(UPGRADE);
    assert_eq!(exchange(g.listen[0], &v1).await, "");

    let g = gate(&config(&b.url, "127.0.0.1/32")).await;
    assert_eq!(
        exchange(g.listen[0], UPGRADE).await,
        "",
        "request without a PROXY header"
    );
    assert_no_leak(&g).await;
}

#[test]
fn proxy_protocol_without_trusted_proxies_is_refused() {
    let text = one_route(&["ws://127.0.0.1:1"], "")
        .replace("{LISTEN}", "127.0.0.1:0")
        .replace("admin = \"127.0.0.1:0\"", "proxy_protocol = true");
    let e = wsgate::config::Config::parse(&text, "t.toml").unwrap_err();
    assert_eq!(e.key, "server.proxy_protocol");
}
