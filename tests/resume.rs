//! Resume mode: a client whose backend dies is re-attached to another backend.

mod support;

use futures_util::{SinkExt, StreamExt};
use support::*;
use tokio_tungstenite::tungstenite::{
    protocol::frame::{
        coding::{Data, OpCode},
        Frame,
    },
    Message,
};

fn config(backends: &[&str], extra: &str) -> String {
    let list = backends
        .iter()
        .map(|b| format!("\"{b}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"
[server]
listen = "{{LISTEN}}"
shutdown_timeout = "200ms"
close_timeout = "2s"

[[upstream]]
name = "b"
backends = [{list}]
resume = true
{extra}

[[route]]
path = "/ws"
upstream = "b"
"#
    )
}

async fn whoami(ws: &mut Client) -> String {
    ws.send(Message::text("whoami")).await.unwrap();
    recv(ws).await.into_text().unwrap().to_string()
}

/// The backend (of `a`, `b`) that answered `name`, and the other one.
fn split<'a>(
    name: &str,
    a: &'a mut Backend,
    b: &'a mut Backend,
) -> (&'a mut Backend, &'a mut Backend) {
    if name == "a" {
        (a, b)
    } else {
        (b, a)
    }
}

#[tokio::test]
async fn a_dead_backend_is_replaced_without_closing_the_client() {
    let mut a = Backend::start(BackendOpts::named("a")).await;
    let mut b = Backend::start(BackendOpts::named("b")).await;
    let g = gate(&config(&[&a.url, &b.url], "resume_notice = \"resync\"")).await;
    // A client cannot pose as a resumed session: its copies of the headers are dropped.
    let (mut ws, _) = connect_with(
        &ws_url(&g, "/ws?room=7"),
        &[("X-Wsgate-Resumed", "1"), ("X-Wsgate-Session", "forged")],
    )
    .await
    .unwrap();
    let first = whoami(&mut ws).await;
    let (dead, alive) = split(&first, &mut a, &mut b);
    let (uri, h) = dead.next_request().await;
    assert_eq!(uri, "/ws?room=7");
    assert!(h.get("x-wsgate-resumed").is_none());
    assert!(h.get("x-wsgate-session").is_none());
    let id = h["x-request-id"].to_str().unwrap().to_string();

    dead.kill();
    // The notice first, then the new backend answers on the same client socket.
    assert_eq!(recv(&mut ws).await.into_text().unwrap().as_str(), "resync");
    let (uri, h) = alive.next_request().await;
    assert_eq!(uri, "/ws?room=7", "same path and query");
    assert_eq!(h["x-wsgate-resumed"], "1");
    assert_eq!(h["x-wsgate-session"].to_str().unwrap(), id);
    assert_eq!(h["x-request-id"].to_str().unwrap(), id);
    let second = whoami(&mut ws).await;
    assert_ne!(second, first);
    ws.send(Message::text("still here")).await.unwrap();
    assert_eq!(
        recv(&mut ws).await.into_text().unwrap().as_str(),
        "still here"
    );
    ws.close(None).await.unwrap();
    drop(ws);
    assert_no_leak(&g).await;
    g.shutdown().await;
}

#[tokio::test]
async fn the_rest_of_a_half_sent_message_is_dropped_after_a_resume() {
    let mut a = Backend::start(BackendOpts::named("a")).await;
    let mut b = Backend::start(BackendOpts::named("b")).await;
    let g = gate(&config(&[&a.url, &b.url], "resume_notice = \"resync\"")).await;
    let mut ws = connect(&ws_url(&g, "/ws")).await;
    let first = whoami(&mut ws).await;
    let (dead, alive) = split(&first, &mut a, &mut b);
    // First fragment of a text message, then a ping: its pong proves the fragment
    // reached the (soon dead) backend.
    ws.send(Message::Frame(Frame::message(
        "lost-part-1",
        OpCode::Data(Data::Text),
        false,
    )))
    .await
    .unwrap();
    ws.send(Message::Ping("p".into())).await.unwrap();
    let pong = tokio::time::timeout(std::time::Duration::from_secs(10), ws.next())
        .await
        .unwrap();
    assert!(
        matches!(pong, Some(Ok(Message::Pong(_)))),
        "expected the pong, got {pong:?}"
    );
    dead.kill();
    assert_eq!(recv(&mut ws).await.into_text().unwrap().as_str(), "resync");
    // The rest of the message: dropped, so the new backend sees no orphan continuation
    // (tungstenite would fail the connection on one).
    ws.send(Message::Frame(Frame::message(
        "lost-part-2",
        OpCode::Data(Data::Continue),
        true,
    )))
    .await
    .unwrap();
    let second = whoami(&mut ws).await;
    assert_ne!(
        second, first,
        "the next reply is the new backend's, no echo of the lost message"
    );
    ws.send(Message::text("whole")).await.unwrap();
    assert_eq!(recv(&mut ws).await.into_text().unwrap().as_str(), "whole");
    ws.close(None).await.unwrap();
    let (c, _) = alive.next_close().await;
    assert_eq!(
        c, 1005,
        "the client's close (no code) reached the new backend"
    );
    drop(ws);
    assert_no_leak(&g).await;
    g.shutdown().await;
}

#[tokio::test]
async fn a_new_backend_that_drops_the_subprotocol_fails_the_resume_with_1012() {
    let a = Backend::start(BackendOpts::named("a")).await;
    let mut no_proto = BackendOpts::named("b");
    no_proto.pick_protocol = std::sync::Arc::new(|_: &[String]| None);
    let b = Backend::start(no_proto).await;
    let g = gate(&config(&[&a.url, &b.url], "")).await;
    // Round robin: the first socket goes to `a`, which agrees to the subprotocol.
    let (mut ws, resp) = connect_with(&ws_url(&g, "/ws"), &[("Sec-WebSocket-Protocol", "chat.v1")])
        .await
        .unwrap();
    assert_eq!(resp.headers()["sec-websocket-protocol"], "chat.v1");
    assert_eq!(whoami(&mut ws).await, "a");
    a.kill();
    let (code, _) = recv_close(&mut ws).await;
    assert_eq!(code, 1012, "b would speak no subprotocol: no resume");
    drop(ws);
    assert_no_leak(&g).await;
    g.shutdown().await;
}

#[tokio::test]
async fn without_another_backend_the_client_gets_1012() {
    let a = Backend::start(BackendOpts::named("a")).await;
    let g = gate(&config(&[&a.url], "")).await;
    let mut ws = connect(&ws_url(&g, "/ws")).await;
    assert_eq!(whoami(&mut ws).await, "a");
    a.kill();
    let (code, reason) = recv_close(&mut ws).await;
    assert_eq!((code, reason.as_str()), (1012, "backend went away"));
    drop(ws);
    assert_no_leak(&g).await;
    g.shutdown().await;
}

#[tokio::test]
async fn resume_notice_without_resume_is_refused() {
    let text =
        config(&["ws://127.0.0.1:1"], "resume_notice = \"x\"").replace("resume = true\n", "");
    let text = text.replace("{LISTEN}", "127.0.0.1:0");
    let err = wsgate::config::Config::parse(&text, "t.toml")
        .unwrap_err()
        .to_string();
    assert!(err.contains("upstream[0].resume_notice"), "{err}");
}

/// A hand-written backend on its own listener: the first backend of the group, so the
/// first socket (round robin) lands on it.
async fn raw_backend() -> (tokio::net::TcpListener, String) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}", l.local_addr().unwrap());
    (l, url)
}

/// A resume-mode gate over a raw backend (tried first) and a `whoami` backend `b`, with
/// one client upgraded through it. `cfg` gets the config text to adjust. Returns the
/// gate, `b`, the client socket and the raw backend's socket.
async fn client_on_raw_backend(
    cfg: impl FnOnce(String) -> String,
) -> (
    wsgate::server::Running,
    Backend,
    tokio::net::TcpStream,
    tokio::net::TcpStream,
) {
    let (l, raw_url) = raw_backend().await;
    let b = Backend::start(BackendOpts::named("b")).await;
    let g = gate(&cfg(config(
        &[&raw_url, &b.url],
        "resume_notice = \"resync\"",
    )))
    .await;
    let backend = tokio::spawn(async move { accept_raw_upgrade(&l, "").await.0 });
    let client = raw_ws(g.listen[0]).await;
    let up = backend.await.unwrap();
    (g, b, client, up)
}

/// Reads everything until EOF (at most 5 s): what the client got after the 101.
async fn read_to_eof(s: &mut tokio::net::TcpStream) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut got))
        .await
        .expect("the client socket was not closed within 5 s")
        .expect("read error");
    got
}

/// Asserts that `b` was never asked for a (resumed) session. Call it once wsgate's
/// socket task is over ([`assert_no_leak`]): a re-attachment would have completed its
/// handshake with `b` before the task ended.
fn never_asked(b: &mut Backend) {
    while let Ok(s) = b.seen.try_recv() {
        assert!(
            !matches!(s, Seen::Request(..)),
            "the socket was re-attached to the other backend"
        );
    }
}

#[tokio::test]
async fn a_backend_dying_inside_a_frame_is_not_resumed_and_the_client_is_cut_at_once() {
    use tokio::io::AsyncWriteExt;
    // A long close timeout: the client must not be waiting for it.
    let (g, mut b, mut client, mut up) =
        client_on_raw_backend(|c| c.replace("close_timeout = \"2s\"", "close_timeout = \"30s\""))
            .await;
    // A binary frame announcing 100 bytes, of which 10 are sent; then the backend dies.
    let mut half = vec![0x82, 100];
    half.extend_from_slice(b"0123456789");
    up.write_all(&half).await.unwrap();
    up.flush().await.unwrap();
    let died = std::time::Instant::now();
    drop(up);
    // The client gets exactly the bytes sent, then the end of the connection: no close
    // frame (written inside the frame's payload it would be read as payload, and no
    // other backend can finish the frame), no re-attachment.
    let got = read_to_eof(&mut client).await;
    let cut_after = died.elapsed();
    assert_eq!(got, half, "nothing after the half frame");
    assert!(
        cut_after < std::time::Duration::from_secs(5),
        "cut at once, not after the close timeout: {cut_after:?}"
    );
    eprintln!("backend died mid-frame: client cut after {cut_after:?}");
    drop(client);
    assert_no_leak(&g).await;
    never_asked(&mut b);
    g.shutdown().await;
}

#[tokio::test]
async fn a_backend_dying_inside_a_fragmented_message_is_not_resumed_and_the_client_gets_1012() {
    use tokio::io::AsyncWriteExt;
    let (g, mut b, mut client, mut up) = client_on_raw_backend(|c| c).await;
    // The first fragment of a text message (FIN = 0), whole; then the backend dies.
    let mut first = vec![0x01, 6];
    first.extend_from_slice(b"part-1");
    up.write_all(&first).await.unwrap();
    up.flush().await.unwrap();
    drop(up);
    let (op, payload) = read_frame(&mut client).await;
    assert_eq!((op, payload.as_slice()), (0x1, &b"part-1"[..]));
    // Between fragments a control frame is legal: the close, with no notice and no
    // continuation from another backend (which could not finish this message).
    let (op, payload) = read_frame(&mut client).await;
    assert_eq!(op, 0x8, "a close frame, not {payload:?}");
    assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1012);
    assert_eq!(&payload[2..], b"backend went away");
    client
        .write_all(&masked_frame(0x88, &1012u16.to_be_bytes()))
        .await
        .unwrap();
    assert!(read_to_eof(&mut client).await.is_empty());
    drop(client);
    assert_no_leak(&g).await;
    never_asked(&mut b);
    g.shutdown().await;
}

#[tokio::test]
async fn a_backend_dying_while_a_client_frame_is_half_forwarded_is_resumed_without_that_message() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (g, mut b, mut client, mut up) = client_on_raw_backend(|c| c).await;
    // A 20-byte text frame of which the client sends the header and 5 payload bytes.
    let whole = masked_frame(0x81, b"lost-lost-lost-lost!");
    let cut = 2 + 4 + 5;
    client.write_all(&whole[..cut]).await.unwrap();
    // They reach the backend (so the backend has a frame it will never see the end of).
    let mut got = vec![0u8; cut];
    up.read_exact(&mut got).await.unwrap();
    assert_eq!(got, whole[..cut]);
    drop(up);
    // The client's stream toward it is intact (it has only received whole messages), so
    // it is re-attached: the notice arrives.
    let (op, payload) = read_frame(&mut client).await;
    assert_eq!((op, payload.as_slice()), (0x1, &b"resync"[..]));
    let (_, h) = b.next_request().await;
    assert_eq!(h["x-wsgate-resumed"], "1");
    // The rest of the half-sent frame is dropped; the next message reaches b whole.
    client.write_all(&whole[cut..]).await.unwrap();
    client
        .write_all(&masked_frame(0x81, b"whoami"))
        .await
        .unwrap();
    let (op, payload) = read_frame(&mut client).await;
    assert_eq!(
        (op, payload.as_slice()),
        (0x1, &b"b"[..]),
        "b answers; it never saw a piece of the lost frame"
    );
    client
        .write_all(&masked_frame(0x81, b"whole"))
        .await
        .unwrap();
    let (_, payload) = read_frame(&mut client).await;
    assert_eq!(payload, b"whole");
    client
        .write_all(&masked_frame(0x88, &1000u16.to_be_bytes()))
        .await
        .unwrap();
    let (op, _) = read_frame(&mut client).await;
    assert_eq!(op, 0x8);
    assert_eq!(b.next_close().await.0, 1000);
    drop(client);
    assert_no_leak(&g).await;
    g.shutdown().await;
}

#[tokio::test]
async fn a_socket_with_permessage_deflate_is_never_resumed() {
    use tokio::io::AsyncReadExt;
    let (l, raw_url) = raw_backend().await;
    let mut b = Backend::start(BackendOpts::named("b")).await;
    let g = gate(&config(&[&raw_url, &b.url], "resume_notice = \"resync\"")).await;
    let backend = tokio::spawn(async move {
        accept_raw_upgrade(&l, "Sec-WebSocket-Extensions: permessage-deflate\r\n")
            .await
            .0
    });
    let (mut client, head) = raw_ws_with(
        g.listen[0],
        "Sec-WebSocket-Extensions: permessage-deflate\r\n",
    )
    .await;
    assert!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-extensions: permessage-deflate"),
        "{head}"
    );
    let up = backend.await.unwrap();
    // The backend dies at a clean boundary: resumable but for the compression context,
    // which cannot move to another backend.
    drop(up);
    let (op, payload) = read_frame(&mut client).await;
    assert_eq!(op, 0x8, "a close frame, not {payload:?}");
    assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1012);
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        client.read_to_end(&mut rest),
    )
    .await;
    drop(client);
    assert_no_leak(&g).await;
    never_asked(&mut b);
    g.shutdown().await;
}

#[tokio::test]
async fn no_backend_answering_within_the_retry_budget_gives_1012_at_the_budget() {
    let a = Backend::start(BackendOpts::named("a")).await;
    // Accepts connections (the kernel's backlog) and never answers an upgrade.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_url = format!("ws://{}", silent.local_addr().unwrap());
    let g = gate(&config(
        &[&a.url, &silent_url],
        "retry_budget = \"400ms\"\nhandshake_timeout = \"30s\"",
    ))
    .await;
    let mut ws = connect(&ws_url(&g, "/ws")).await;
    assert_eq!(whoami(&mut ws).await, "a");
    let killed = std::time::Instant::now();
    a.kill();
    let (code, reason) = recv_close(&mut ws).await;
    let after = killed.elapsed();
    assert_eq!((code, reason.as_str()), (1012, "backend went away"));
    assert!(
        after >= std::time::Duration::from_millis(350),
        "the silent backend was tried: {after:?}"
    );
    assert!(
        after < std::time::Duration::from_millis(2_000),
        "bounded by retry_budget (400ms), not handshake_timeout (30s): {after:?}"
    );
    eprintln!("no backend answered: 1012 after {after:?} (retry_budget 400ms)");
    drop(ws);
    assert_no_leak(&g).await;
    g.shutdown().await;
    drop(silent);
}

#[tokio::test]
async fn no_healthy_backend_left_gives_1012_at_once() {
    let a = Backend::start(BackendOpts::named("a")).await;
    let mut b = Backend::start(BackendOpts::named("b")).await;
    let g = gate(&config(&[&a.url, &b.url], "retry_budget = \"10s\"")).await;
    let mut ws = connect(&ws_url(&g, "/ws")).await;
    assert_eq!(whoami(&mut ws).await, "a");
    // b is still running but marked down (as its health check would).
    g.upstreams[0].backends()[1].set_healthy(false);
    let killed = std::time::Instant::now();
    a.kill();
    let (code, _) = recv_close(&mut ws).await;
    let after = killed.elapsed();
    assert_eq!(code, 1012);
    assert!(
        after < std::time::Duration::from_secs(2),
        "no candidate: no wait for the 10s budget: {after:?}"
    );
    drop(ws);
    assert_no_leak(&g).await;
    never_asked(&mut b);
    g.shutdown().await;
}
