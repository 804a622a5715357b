//! Frames cross wsgate unchanged, both ways, whatever their size or shape.

mod support;

use futures_util::SinkExt;
use support::*;
use tokio_tungstenite::tungstenite::{
    protocol::{
        frame::{
            coding::{CloseCode, Data, OpCode},
            Frame,
        },
        CloseFrame,
    },
    Bytes, Message,
};

#[tokio::test]
async fn messages_from_empty_to_16_mib_round_trip_unchanged() {
    let b = Backend::start(BackendOpts::named("a")).await;
    let g = gate(&one_route(&[&b.url], "")).await;
    let mut ws = connect(&ws_url(&g, "/ws")).await;
    for size in [0usize, 1, 125, 126, 127, 65535, 65536, 1 << 20, 16 << 20] {
        let data: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
        ws.send(Message::Binary(Bytes::from(data.clone())))
            .await
            .unwrap();
        assert_eq!(
            recv(&mut ws).await,
            Message::Binary(Bytes::from(data)),
            "binary {size}"
        );
        let text: String = (0..size.min(1 << 20))
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        ws.send(Message::text(text.clone())).await.unwrap();
        assert_eq!(recv(&mut ws).await, Message::text(text), "text {size}");
    }
    ws.close(None).await.unwrap();
    assert_no_leak(&g).await;
}

#[tokio::test]
async fn fragmented_messages_arrive_whole() {
    let b = Backend::start(BackendOpts::named("a")).await;
    let g = gate(&one_route(&[&b.url], "")).await;
    let mut ws = connect(&ws_url(&g, "/ws")).await;
    let parts = ["frag", "mented ", "message ", "in four"];
    for (i, p) in parts.iter().enumerate() {
        let opcode = if i == 0 {
            OpCode::Data(Data::Text)
        } else {
            OpCode::Data(Data::Continue)
        };
        let fin = i == parts.len() - 1;
        let frame = Frame::message(Bytes::from(p.as_bytes().to_vec()), opcode, fin);
        ws.send(Message::Frame(frame)).await.unwrap();
        if i == 1 {
            // A control frame in the middle of a fragmented message is legal.
            ws.send(Message::Ping(Bytes::from_static(b"mid")))
                .await
                .unwrap();
        }
    }
    assert_eq!(recv(&mut ws).await, Message::text(parts.concat()));
}

#[tokio::test]
async fn ping_is_answered_with_its_payload() {
    let b = Backend::start(BackendOpts::named("a")).await;
    let g = gate(&one_route(&[&b.url], "")).await;
    let mut ws = connect(&ws_url(&g, "/ws")).await;
    ws.send(Message::Ping(Bytes::from_static(b"are you there")))
        .await
        .unwrap();
    loop {
        match tokio::time::timeout(
            std::time::Duration::from_secs(5),
            futures_util::StreamExt::next(&mut ws),
        )
        .await
        .expect("no pong")
        {
            Some(Ok(Message::Pong(p))) => {
                assert_eq!(&p[..], b"are you there");
                break;
            }
            Some(Ok(_)) => continue,
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn client_close_code_and_reason_reach_the_backend() {
    let mut b = Backend::start(BackendOpts::named("a")).await;
    let g = gate(&one_route(&[&b.url], "")).await;
    let mut ws = connect(&ws_url(&g, "/ws")).await;
    b.next_request().await;
    ws.close(Some(CloseFrame {
        code: CloseCode::from(4001),
        reason: "bye".into(),
    }))
    .await
    .unwrap();
    assert_eq!(b.next_close().await, (4001, "bye".to_string()));
    // The backend's echo of the close comes back to the client.
    assert_eq!(recv_close(&mut ws).await.0, 4001);
    assert_no_leak(&g).await;
}

#[tokio::test]
async fn backend_close_code_and_reason_reach_the_client() {
    let b = Backend::start(BackendOpts::named("a")).await;
    let g = gate(&one_route(&[&b.url], "")).await;
    let mut ws = connect(&ws_url(&g, "/ws")).await;
    ws.send(Message::text("close:4002:see you later"))
        .await
        .unwrap();
    assert_eq!(
        recv_close(&mut ws).await,
        (4002, "see you later".to_string())
    );
    assert_no_leak(&g).await;
}

#[tokio::test]
async fn many_messages_in_flight_keep_their_order() {
    let b = Backend::start(BackendOpts::named("a")).await;
    let g = gate(&one_route(&[&b.url], "")).await;
    let mut ws = connect(&ws_url(&g, "/ws")).await;
    for i in 0..2000 {
        ws.feed(Message::text(format!("m{i}"))).await.unwrap();
    }
    ws.flush().await.unwrap();
    for i in 0..2000 {
        assert_eq!(recv(&mut ws).await, Message::text(format!("m{i}")));
    }
}
