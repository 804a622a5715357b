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
