//! Timers and limits inside an open socket: lifetime, keep-alive pings, message rates,
//! and backpressure against a reader that never reads.

mod support;

use std::time::Duration;

use futures_util::SinkExt;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn sockets_are_closed_at_their_max_lifetime() {
    let b = Backend::start(BackendOpts::named("a")).await;
    let g = gate(&one_route(&[&b.url], "max_lifetime = \"300ms\"")).await;
    let mut ws = connect(&ws_url(&g, "/ws")).await;
    assert_eq!(
        recv_close(&mut ws).await,
        (1001, "max lifetime".to_string())
    );
    assert_no_leak(&g).await;
}

#[tokio::test]
async fn silent_clients_are_pinged_then_closed() {
    let b = Backend::start(BackendOpts::named("a")).await;
    let g = gate(&one_route(&[&b.url], "ping_interval = \"200ms\"")).await;
    let mut s = raw_ws(g.listen[0]).await;
    // A client that never answers: first a ping arrives, then the close.
    let mut h = [0u8; 2];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut h))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(h, [0x89, 0x00], "expected an empty ping");
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut h))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(h[0], 0x88, "expected a close frame");
    let mut payload = vec![0u8; h[1] as usize];
    s.read_exact(&mut payload).await.unwrap();
    assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1001);
    assert_eq!(&payload[2..], b"ping timeout");
    assert_no_leak(&g).await;
}

#[tokio::test]
async fn clients_that_answer_pings_stay_connected() {
    let b = Backend::start(BackendOpts::named("a")).await;
    let g = gate(&one_route(&[&b.url], "ping_interval = \"100ms\"")).await;
    let mut ws = connect(&ws_url(&g, "/ws")).await;
    // tungstenite answers pings while it is being read; read for 8 intervals.
    let mut pings = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(800);
    while let Ok(m) =
        tokio::time::timeout_at(deadline, futures_util::StreamExt::next(&mut ws)).await
    {
        match m {
            Some(Ok(Message::Ping(_))) => pings += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(pings >= 2, "only {pings} pings");
    ws.send(Message::text("still here")).await.unwrap();
    assert_eq!(recv(&mut ws).await, Message::text("still here"));
}

#[tokio::test]
async fn message_rate_over_the_limit_closes_with_1008() {
    let b = Backend::start(BackendOpts::named("a")).await;
    let limits =
        "[route.rate_limit]\nmessage_rate = \"1/m\"\nmessage_burst = 2\non_excess = \"close\"\n";
    let g = gate(&one_route(&[&b.url], limits)).await;
    let mut ws = connect(&ws_url(&g, "/ws")).await;
    for i in 0..3 {
        ws.send(Message::text(format!("m{i}"))).await.unwrap();
    }
    // The close goes out at once, so an echo still on its way may be cut off; what must
    // never come back is the third message.
    let mut echoed = Vec::new();
    let code = loop {
        match recv(&mut ws).await {
            Message::Text(t) => echoed.push(t.to_string()),
            Message::Close(f) => break f.map(|f| u16::from(f.code)),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(code, Some(1008));
    assert!(!echoed.contains(&"m2".to_string()), "{echoed:?}");
    assert_no_leak(&g).await;
}

#[tokio::test]
async fn message_rate_drop_mode_drops_whole_messages_and_keeps_the_socket() {
    let mut b = Backend::start(BackendOpts::named("a")).await;
    let limits =
        "[route.rate_limit]\nmessage_rate = \"1/m\"\nmessage_burst = 2\non_excess = \"drop\"\n";
    let g = gate(&one_route(&[&b.url], limits)).await;
    let mut ws = connect(&ws_url(&g, "/ws")).await;
    for i in 0..5 {
        // Large enough to span several reads, so dropping crosses buffer boundaries.
        let body = format!("m{i}:{}", "x".repeat(100_000));
        ws.send(Message::text(body)).await.unwrap();
    }
    ws.send(Message::Close(None)).await.unwrap();
    let mut got = Vec::new();
    loop {
        match recv(&mut ws).await {
            Message::Text(t) => got.push(t.as_str()[..2].to_string()),
            Message::Close(_) => break,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(got, ["m0", "m1"]);
    assert_eq!(b.next_close().await.0, 1005);
    assert_no_leak(&g).await;
}

#[tokio::test]
async fn a_reader_that_never_reads_cannot_make_wsgate_buffer_without_bound() {
    // A raw backend floods 64 KiB frames at a client that never reads. With backpressure
    // the backend's writes stall once the socket buffers and wsgate's one buffer per
    // direction are full; without it wsgate would absorb the whole flood.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let flood = tokio::spawn(async move {
        let (mut s, _) = accept_raw_upgrade(&l, "").await;
        let mut frame = vec![0x82u8, 127];
        frame.extend_from_slice(&(65536u64).to_be_bytes());
        frame.extend(std::iter::repeat_n(7u8, 65536));
        let mut sent: usize = 0;
        // Stop when a write stalls for a second, or at 256 MiB (no backpressure at all).
        while sent < 256 << 20 {
            match tokio::time::timeout(Duration::from_secs(1), s.write_all(&frame)).await {
                Ok(Ok(())) => sent += frame.len(),
                _ => break,
            }
        }
        sent
    });
    let g = gate(&one_route(&[&format!("ws://{addr}")], "")).await;
    let _client = raw_ws(g.listen[0]).await; // never reads
    let sent = flood.await.unwrap();
    assert!(
        sent < 64 << 20,
        "backend pushed {} MiB into a non-reading client",
        sent >> 20
    );
}

#[tokio::test]
async fn a_backend_that_never_reads_stalls_the_client_instead_of_growing_wsgate() {
    // The mirror case: the backend accepts the upgrade and never reads again, while the
    // client floods 64 KiB frames. The client's writes must stall.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let backend = tokio::spawn(async move {
        let (s, _) = accept_raw_upgrade(&l, "").await;
        // Hold the socket open without reading until the test ends.
        std::future::pending::<()>().await;
        drop(s);
    });
    let g = gate(&one_route(&[&format!("ws://{addr}")], "")).await;
    let mut client = raw_ws(g.listen[0]).await;
    let key = [1u8, 2, 3, 4];
    let mut frame = vec![0x82u8, 0x80 | 127];
    frame.extend_from_slice(&(65536u64).to_be_bytes());
    frame.extend_from_slice(&key);
    frame.extend((0..65536).map(|i| 7u8 ^ key[i % 4]));
    let mut sent: usize = 0;
    while sent < 256 << 20 {
        match tokio::time::timeout(Duration::from_secs(1), client.write_all(&frame)).await {
            Ok(Ok(())) => sent += frame.len(),
            _ => break,
        }
    }
    assert!(
        sent < 64 << 20,
        "client pushed {} MiB at a backend that never reads",
        sent >> 20
    );
    backend.abort();
}
