//! How sockets end: backend death, protocol violations, limits, idle, shutdown.

mod support;

use std::time::Duration;

use futures_util::SinkExt;
use support::*;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::{Bytes, Message};

#[tokio::test]
async fn backend_death_closes_the_client_with_1012() {
    let b = Backend::start(BackendOpts::named("a")).await;
    let g = gate(&one_route(&[&b.url], "")).await;
    let mut ws = connect(&ws_url(&g, "/ws")).await;
    ws.send(Message::text("whoami")).await.unwrap();
    assert_eq!(recv(&mut ws).await, Message::text("a"));
    b.kill();
    let (code, _) = recv_close(&mut ws).await;
    assert_eq!(code, 1012);
    assert_no_leak(&g).await;
}

#[tokio::test]
async fn client_vanishing_releases_everything_and_tells_the_backend() {
    let mut b = Backend::start(BackendOpts::named("a")).await;
    let g = gate(&one_route(&[&b.url], "")).await;
    let ws = connect(&ws_url(&g, "/ws")).await;
    b.next_request().await;
    eventually("socket counted", || g.metrics.active() == 1).await;
    drop(ws); // TCP closed without a close frame
    assert_eq!(b.next_close().await.0, 1001);
    assert_no_leak(&g).await;
}

#[tokio::test]
async fn message_over_the_route_limit_closes_with_1009() {
    let b = Backend::start(BackendOpts::named("a")).await;
    let g = gate(&one_route(&[&b.url], "max_message = \"1KiB\"")).await;
    let mut ws = connect(&ws_url(&g, "/ws")).await;
    ws.send(Message::Binary(Bytes::from(vec![1u8; 1024])))
        .await
        .unwrap();
    assert_eq!(recv(&mut ws).await.len(), 1024);
    ws.send(Message::Binary(Bytes::from(vec![1u8; 1025])))
        .await
        .unwrap();
    assert_eq!(recv_close(&mut ws).await.0, 1009);
    assert_no_leak(&g).await;
}

#[tokio::test]
async fn protocol_violations_close_with_1002_and_the_next_client_is_served() {
    let b = Backend::start(BackendOpts::named("a")).await;
    let g = gate(&one_route(&[&b.url], "")).await;
    let bad_frames: [&[u8]; 4] = [
        &[0x81, 0x02, b'h', b'i'], // unmasked client frame
        &[0x83, 0x80, 1, 2, 3, 4], // reserved opcode 3
        &[0x09, 0x80, 1, 2, 3, 4], // fragmented ping
        &[0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4], // length 2^63
    ];
    for bad in bad_frames {
        let mut s = raw_ws(g.listen[0]).await;
        s.write_all(bad).await.unwrap();
        let (op, payload) = read_frame(&mut s).await;
        assert_eq!(op, 8, "expected a close frame for {bad:?}");
        assert_eq!(
            u16::from_be_bytes([payload[0], payload[1]]),
            1002,
            "{bad:?}"
        );
    }
    let mut ws = connect(&ws_url(&g, "/ws")).await;
    ws.send(Message::text("still fine")).await.unwrap();
    assert_eq!(recv(&mut ws).await, Message::text("still fine"));
    drop(ws);
    assert_no_leak(&g).await;
}

#[tokio::test]
async fn idle_sockets_are_closed_with_1001() {
    let mut b = Backend::start(BackendOpts::named("a")).await;
    let g = gate(&one_route(&[&b.url], "idle_timeout = \"300ms\"")).await;
    let mut ws = connect(&ws_url(&g, "/ws")).await;
    let (code, reason) = recv_close(&mut ws).await;
    assert_eq!((code, reason.as_str()), (1001, "idle timeout"));
    assert_eq!(b.next_close().await.0, 1001);
    assert_no_leak(&g).await;
}

#[tokio::test]
async fn shutdown_closes_open_sockets_with_1001_and_waits_for_them() {
    let mut b = Backend::start(BackendOpts::named("a")).await;
    let g = gate(&one_route(&[&b.url], "")).await;
    let metrics = g.metrics.clone();
    let mut ws = connect(&ws_url(&g, "/ws")).await;
    b.next_request().await;
    let shutting = tokio::spawn(g.shutdown());
    let (code, reason) = recv_close(&mut ws).await;
    assert_eq!((code, reason.as_str()), (1001, "going away"));
    assert_eq!(b.next_close().await.0, 1001);
    drop(ws);
    tokio::time::timeout(Duration::from_secs(10), shutting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(metrics.active(), 0);
}

#[tokio::test]
async fn shutdown_closes_a_connection_still_sending_its_request_head_at_once() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let b = Backend::start(BackendOpts::named("a")).await;
    // A handshake timeout far beyond the test, so only the shutdown can end the wait.
    let g = gate(&one_route(&[&b.url], "").replace(
        "shutdown_timeout = \"200ms\"",
        "shutdown_timeout = \"200ms\"\nhandshake_timeout = \"60s\"",
    ))
    .await;
    let mut s = tokio::net::TcpStream::connect(g.listen[0]).await.unwrap();
    // Half a head: the connection is accepted (first bytes arrived) and waits for more.
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // Connections are accepted in the order their first bytes arrived: once a later one
    // has its 101, the half-sent one is being served.
    let later = connect(&ws_url(&g, "/ws")).await;
    drop(later);
    g.shutdown().await;
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
        .await
        .expect("the half-sent request still held open after shutdown");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
}

#[tokio::test]
async fn round_robin_spreads_evenly_over_three_backends() {
    let bs = [
        Backend::start(BackendOpts::named("b0")).await,
        Backend::start(BackendOpts::named("b1")).await,
        Backend::start(BackendOpts::named("b2")).await,
    ];
    let urls: Vec<&str> = bs.iter().map(|b| b.url.as_str()).collect();
    let g = gate(&one_route(&urls, "")).await;
    let mut counts = std::collections::HashMap::new();
    for _ in 0..30 {
        let mut ws = connect(&ws_url(&g, "/ws")).await;
        ws.send(Message::text("whoami")).await.unwrap();
        let who = recv(&mut ws).await.into_text().unwrap().to_string();
        *counts.entry(who).or_insert(0) += 1;
        ws.close(None).await.unwrap();
    }
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(counts.values().all(|c| *c == 10), "{counts:?}");
    assert_no_leak(&g).await;
}

#[tokio::test]
async fn a_finished_close_handshake_releases_both_sockets_without_waiting_for_the_fin() {
    let b = Backend::start(BackendOpts::named("a")).await;
    // A long close timeout: the release must come from the completed handshake, not it.
    let cfg = one_route(&[&b.url], "").replace("close_timeout = \"2s\"", "close_timeout = \"60s\"");
    let g = gate(&cfg).await;
    let mut s = raw_ws(g.listen[0]).await;
    eventually("socket counted", || g.metrics.active() == 1).await;
    // A masked close 1000, then never a FIN from this client.
    s.write_all(&[0x88, 0x82, 1, 2, 3, 4, 0x03 ^ 1, 0xe8 ^ 2])
        .await
        .unwrap();
    let (op, payload) = read_frame(&mut s).await;
    assert_eq!(op, 8);
    assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1000);
    assert_no_leak(&g).await;
    drop(s);
}
