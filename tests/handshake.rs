//! The opening handshake: upstream first, negotiated end to end, honest statuses.

mod support;

use std::sync::Arc;

use support::*;

#[tokio::test]
async fn subprotocol_is_the_backends_choice() {
    let mut opts = BackendOpts::named("a");
    opts.pick_protocol = Arc::new(|offered: &[String]| offered.get(1).cloned());
    let b = Backend::start(opts).await;
    let g = gate(&one_route(&[&b.url], "")).await;
    let (_ws, resp) = connect_with(
        &ws_url(&g, "/ws"),
        &[("sec-websocket-protocol", "chat.v2, chat.v1")],
    )
    .await
    .unwrap();
    assert_eq!(resp.headers()["sec-websocket-protocol"], "chat.v1");
}

#[tokio::test]
async fn backend_choosing_no_subprotocol_gives_the_client_none() {
    let mut opts = BackendOpts::named("a");
    opts.pick_protocol = Arc::new(|_: &[String]| None);
    let b = Backend::start(opts).await;
    let g = gate(&one_route(&[&b.url], "")).await;
    // tungstenite refuses a handshake that offered protocols and got none back, so look
    // at the raw answer.
    let resp = raw_handshake(
        &g.listen[0].to_string(),
        "/ws",
        "Sec-WebSocket-Protocol: chat.v1\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 101"), "{resp}");
    assert!(
        !resp.to_ascii_lowercase().contains("sec-websocket-protocol"),
        "{resp}"
    );
}

#[tokio::test]
async fn path_query_and_end_to_end_headers_reach_the_backend() {
    let mut b = Backend::start(BackendOpts::named("a")).await;
    let g = gate(&one_route(&[&b.url], "")).await;
    let _ws = connect_with(
        &ws_url(&g, "/app/room/42?user=ann&x=%20y"),
        &[
            ("x-custom", "kept"),
            ("x-forwarded-for", "6.6.6.6"),
            ("forwarded", "for=6.6.6.6"),
            ("x-real-ip", "6.6.6.6"),
            ("true-client-ip", "6.6.6.6"),
            ("cf-connecting-ip", "6.6.6.6"),
            ("x-client-ip", "6.6.6.6"),
            ("x-forwarded-port", "1"),
            ("keep-alive", "timeout=5"),
        ],
    )
    .await
    .unwrap();
    let (uri, h) = b.next_request().await;
    assert_eq!(uri, "/app/room/42?user=ann&x=%20y");
    assert_eq!(h["x-custom"], "kept");
    // An untrusted client cannot choose the IP the backend sees.
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-real-ip"], "127.0.0.1");
    // Nor through the address headers of CDNs and balancers, which wsgate drops.
    for name in [
        "true-client-ip",
        "cf-connecting-ip",
        "x-client-ip",
        "x-forwarded-port",
    ] {
        assert!(h.get(name).is_none(), "{name} reached the backend");
    }
    assert!(h["forwarded"]
        .to_str()
        .unwrap()
        .starts_with("for=127.0.0.1;proto=http"));
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], g.listen[0].to_string().as_str());
    assert!(h.get("keep-alive").is_none());
    assert!(h.get("x-request-id").is_some());
    assert_eq!(h["host"], b.addr.to_string().as_str());
}

#[tokio::test]
async fn backend_refusal_status_is_passed_through() {
    for status in [403u16, 404] {
        let mut opts = BackendOpts::named("a");
        opts.refuse = Some(status);
        let b = Backend::start(opts).await;
        let g = gate(&one_route(&[&b.url], "")).await;
        assert_eq!(refused_status(&ws_url(&g, "/ws"), &[]).await, status);
        assert_no_leak(&g).await;
    }
}

/// A backend's refusal reaches the client with its body, also when the body is longer
/// than what wsgate reads with the head (2 KiB), so that it takes further reads.
#[tokio::test]
async fn backend_refusal_body_reaches_the_client_whole() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body: Vec<u8> = (0..10_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let sent = body.clone();
    let backend = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut b).await.unwrap();
            head.push(b[0]);
        }
        let answer = format!(
            "HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
            sent.len()
        );
        s.write_all(answer.as_bytes()).await.unwrap();
        s.write_all(&sent).await.unwrap();
        // Held open: the body must be read by its length, not to the end of the stream.
        let _ = s.read(&mut b).await;
    });
    let g = gate(&one_route(&[&format!("ws://{addr}")], "")).await;
    let mut c = tokio::net::TcpStream::connect(g.listen[0]).await.unwrap();
    c.write_all(format!("GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {SAMPLE_KEY}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut got = Vec::new();
    let end = loop {
        let mut chunk = [0u8; 4096];
        let n = c.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed before the whole answer: {got:?}");
        got.extend_from_slice(&chunk[..n]);
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            if got.len() >= i + 4 + body.len() {
                break i + 4;
            }
        }
    };
    let head = String::from_utf8_lossy(&got[..end]).to_lowercase();
    assert!(head.starts_with("http/1.1 403"), "{head}");
    assert!(
        head.contains(&format!("content-length: {}", body.len())),
        "{head}"
    );
    assert_eq!(&got[end..], &body[..]);
    backend.abort();
}

#[tokio::test]
async fn unreachable_backend_is_502_and_nothing_leaks() {
    // A port with nothing listening: bind, note it, close.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let g = gate(&one_route(&[&format!("ws://{dead}")], "")).await;
    // The first client finds the backend dead (502); passive health checks then eject
    // it, so the next ones are refused at once with 503 instead of waiting on a connect.
    assert_eq!(refused_status(&ws_url(&g, "/ws"), &[]).await, 502);
    for _ in 0..4 {
        let status = refused_status(&ws_url(&g, "/ws"), &[]).await;
        assert!(status == 503 || status == 502, "{status}");
    }
    assert!(
        g.metrics
            .handshakes(wsgate::metrics::Outcome::UpstreamFailed)
            >= 1
    );
    assert_no_leak(&g).await;
}

#[tokio::test]
async fn failed_backend_is_retried_on_the_next_one_before_the_101() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let b = Backend::start(BackendOpts::named("alive")).await;
    let g = gate(&one_route(&[&format!("ws://{dead}"), &b.url], "")).await;
    for _ in 0..4 {
        let mut ws = connect(&ws_url(&g, "/ws")).await;
        futures_util::SinkExt::send(
            &mut ws,
            tokio_tungstenite::tungstenite::Message::text("whoami"),
        )
        .await
        .unwrap();
        assert_eq!(recv(&mut ws).await.into_text().unwrap().as_str(), "alive");
    }
}

#[tokio::test]
async fn plain_http_unknown_paths_and_bad_handshakes_get_clear_statuses() {
    let b = Backend::start(BackendOpts::named("a")).await;
    let g = gate(&one_route(&[&b.url], "")).await;
    let addr = g.listen[0].to_string();
    let get = raw_request(&addr, "GET /ws HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(get.starts_with("HTTP/1.1 426"), "{get}");
    assert!(get.to_ascii_lowercase().contains("upgrade: websocket"));
    let nf = raw_request(&addr, "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(nf.starts_with("HTTP/1.1 404"), "{nf}");
    let post = raw_request(
        &addr,
        "POST /ws HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    assert!(post.starts_with("HTTP/1.1 405"), "{post}");
    let v8 = raw_request(&addr, "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").await;
    assert!(v8.starts_with("HTTP/1.1 426"), "{v8}");
    assert!(v8.contains("sec-websocket-version: 13"), "{v8}");
    let nokey = raw_request(&addr, "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n").await;
    assert!(nokey.starts_with("HTTP/1.1 400"), "{nokey}");
    // A well-behaved client is still served.
    let _ws = connect(&ws_url(&g, "/ws")).await;
}

/// Sends raw bytes, returns what came back until the head ends (or the peer closes).
async fn raw_request(addr: &str, req: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("no answer")
            .unwrap();
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        if out.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn raw_handshake(addr: &str, path: &str, extra: &str) -> String {
    raw_request(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"),
    )
    .await
}

#[tokio::test]
async fn permessage_deflate_offer_reaches_the_backend_and_its_answer_the_client() {
    // tungstenite does not implement permessage-deflate, so a raw backend plays one that
    // does: it accepts the extension and sends a compressed (RSV1) frame, which must
    // reach the client byte for byte.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let backend = tokio::spawn(async move {
        let (mut s, req) =
            accept_raw_upgrade(&l, "Sec-WebSocket-Extensions: permessage-deflate\r\n").await;
        // "Hello" compressed, from RFC 7692 §7.2.3.1.
        s.write_all(&[0xc1, 0x07, 0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00])
            .await
            .unwrap();
        req
    });
    let g = gate(&one_route(&[&format!("ws://{addr}")], "")).await;
    let mut s = tokio::net::TcpStream::connect(g.listen[0]).await.unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits, x-unknown-ext\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let frame = [0xc1u8, 0x07, 0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
    while !got.windows(frame.len()).any(|w| w == frame) {
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed early: {:?}", got);
        got.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&got).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"));
    assert!(head.contains("sec-websocket-extensions: permessage-deflate"));
    let req = backend.await.unwrap().to_ascii_lowercase();
    assert!(
        req.contains("sec-websocket-extensions: permessage-deflate; client_max_window_bits"),
        "{req}"
    );
    assert!(
        !req.contains("x-unknown-ext"),
        "unknown extensions must not be offered upstream"
    );
}

/// Reads one HTTP answer (head and `Content-Length` body) from `s`, leaving the
/// connection open; returns the head.
async fn read_answer(s: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tokio::time::timeout(std::time::Duration::from_secs(5), s.read_exact(&mut b))
            .await
            .expect("an answer within 5 s")
            .unwrap();
        head.push(b[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await.unwrap();
    head
}

fn upgrade_request(extra: &str) -> String {
    format!(
        "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {SAMPLE_KEY}\r\n{extra}\r\n"
    )
}

#[tokio::test]
async fn a_frame_sent_in_the_same_write_as_the_request_head_is_relayed() {
    use tokio::io::AsyncWriteExt;
    let b = Backend::start(BackendOpts::named("a")).await;
    let g = gate(&one_route(&[&b.url], "")).await;
    let mut s = tokio::net::TcpStream::connect(g.listen[0]).await.unwrap();
    // A client that does not wait for the 101 before its first message.
    let mut bytes = upgrade_request("").into_bytes();
    bytes.extend_from_slice(&masked_frame(0x81, b"early"));
    s.write_all(&bytes).await.unwrap();
    let head = read_answer(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(read_frame(&mut s).await, (1, b"early".to_vec()));
}

#[tokio::test]
async fn a_connection_refused_an_upgrade_can_upgrade_with_its_next_request() {
    use tokio::io::AsyncWriteExt;
    let b = Backend::start(BackendOpts::named("a")).await;
    let g = gate(&one_route(&[&b.url], "origins = [\"https://app.test\"]")).await;
    let mut s = tokio::net::TcpStream::connect(g.listen[0]).await.unwrap();
    s.write_all(upgrade_request("Origin: https://evil.test\r\n").as_bytes())
        .await
        .unwrap();
    let head = read_answer(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert!(head.to_ascii_lowercase().contains("\r\ndate: "), "{head}");
    // The refusal kept the connection: the next request on it is served.
    s.write_all(upgrade_request("Origin: https://app.test\r\n").as_bytes())
        .await
        .unwrap();
    let head = read_answer(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s.write_all(&masked_frame(0x81, b"second")).await.unwrap();
    assert_eq!(read_frame(&mut s).await, (1, b"second".to_vec()));
}

#[tokio::test]
async fn a_plain_request_then_an_upgrade_on_one_connection_are_both_served() {
    use tokio::io::AsyncWriteExt;
    let b = Backend::start(BackendOpts::named("a")).await;
    let g = gate(&one_route(&[&b.url], "")).await;
    let mut s = tokio::net::TcpStream::connect(g.listen[0]).await.unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let head = read_answer(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 426"), "{head}");
    // The upgrade and a first frame in one write, on the connection hyper now serves.
    let mut bytes = upgrade_request("").into_bytes();
    bytes.extend_from_slice(&masked_frame(0x81, b"after"));
    s.write_all(&bytes).await.unwrap();
    let head = read_answer(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(read_frame(&mut s).await, (1, b"after".to_vec()));
    drop(s);
    assert_no_leak(&g).await;
}

/// A prefix route serves everything below it, and its base path unless an exact route
/// names it; a longer prefix or an exact path inside it takes its own paths (README,
/// `[[route]] path`).
#[tokio::test]
async fn the_most_specific_route_serves_a_path() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let names = ["chat", "admin", "exact"];
    let mut bs = Vec::new();
    for n in names {
        bs.push(Backend::start(BackendOpts::named(n)).await);
    }
    let mut toml = "[server]\nlisten = \"{LISTEN}\"\nshutdown_timeout = \"200ms\"\n".to_string();
    for (n, b) in names.iter().zip(&bs) {
        toml.push_str(&format!(
            "[[upstream]]\nname = \"{n}\"\nbackends = [\"{}\"]\n",
            b.url
        ));
    }
    for (path, n) in [
        ("/chat/*", "chat"),
        ("/chat/admin/*", "admin"),
        ("/chat/lobby", "exact"),
        // An exact route takes the prefix's base path, as `location = /chat` in nginx.
        ("/chat", "exact"),
    ] {
        toml.push_str(&format!(
            "[[route]]\npath = \"{path}\"\nupstream = \"{n}\"\n"
        ));
    }
    let g = gate(&toml).await;
    for (path, want) in [
        ("/chat", "exact"),
        ("/chat/room/1", "chat"),
        ("/chat/admin", "admin"),
        ("/chat/admin/x/y", "admin"),
        ("/chat/lobby", "exact"),
        ("/chat/lobby/2", "chat"),
    ] {
        let mut ws = connect(&ws_url(&g, path)).await;
        ws.send(Message::text("whoami")).await.unwrap();
        let who = recv(&mut ws).await.into_text().unwrap().to_string();
        assert_eq!(who, want, "{path}");
        ws.close(None).await.unwrap();
    }
    assert_eq!(refused_status(&ws_url(&g, "/chatty"), &[]).await, 404);
    assert_no_leak(&g).await;
}

#[tokio::test]
async fn a_trusted_proxys_forwarding_chain_reaches_the_backend_whole() {
    let mut b = Backend::start(BackendOpts::named("a")).await;
    let cfg = one_route(&[&b.url], "").replace(
        "admin = \"127.0.0.1:0\"",
        "admin = \"127.0.0.1:0\"\ntrusted_proxies = [\"127.0.0.1/32\"]",
    );
    let g = gate(&cfg).await;
    // A proxy that adds its own X-Forwarded-For line (HAProxy's `option forwardfor`)
    // after the one its client sent: the real client is in the second line.
    let _ws = connect_with(
        &ws_url(&g, "/ws"),
        &[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "203.0.113.7"),
            ("x-real-ip", "6.6.6.6"),
            ("x-request-id", "from-the-proxy"),
            ("true-client-ip", "203.0.113.7"),
        ],
    )
    .await
    .unwrap();
    let (_, h) = b.next_request().await;
    let chain: Vec<_> = h.get_all("x-forwarded-for").iter().collect();
    assert_eq!(chain, ["6.6.6.6, 203.0.113.7, 127.0.0.1"]);
    assert_eq!(h["x-real-ip"], "203.0.113.7");
    assert!(h["forwarded"]
        .to_str()
        .unwrap()
        .starts_with("for=203.0.113.7;"));
    assert_eq!(h["x-request-id"], "from-the-proxy");
    // A trusted proxy's other address headers pass.
    assert_eq!(h["true-client-ip"], "203.0.113.7");
}

/// `/` exact beside the catch-all `/*`: the exact route takes `/`, the prefix the rest.
#[tokio::test]
async fn an_exact_root_beside_the_catch_all_prefix_serves_both() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let root = Backend::start(BackendOpts::named("root")).await;
    let all = Backend::start(BackendOpts::named("all")).await;
    let g = gate(&format!(
        "[server]\nlisten = \"{{LISTEN}}\"\nshutdown_timeout = \"200ms\"\n\
         [[upstream]]\nname = \"root\"\nbackends = [\"{}\"]\n\
         [[upstream]]\nname = \"all\"\nbackends = [\"{}\"]\n\
         [[route]]\npath = \"/*\"\nupstream = \"all\"\n\
         [[route]]\npath = \"/\"\nupstream = \"root\"\n",
        root.url, all.url
    ))
    .await;
    for (path, want) in [("/", "root"), ("/x", "all"), ("/x/y", "all")] {
        let mut ws = connect(&ws_url(&g, path)).await;
        ws.send(Message::text("whoami")).await.unwrap();
        assert_eq!(
            recv(&mut ws).await.into_text().unwrap().as_str(),
            want,
            "{path}"
        );
        ws.close(None).await.unwrap();
    }
    assert_no_leak(&g).await;
}
