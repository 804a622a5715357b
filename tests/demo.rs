//! `wsgate demo` works out of the box: page served, both backends reached.

mod support;

use futures_util::SinkExt;
use support::*;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn demo_serves_its_page_and_alternates_between_its_two_backends() {
    let d = wsgate::demo::start_demo(
        "127.0.0.1:0".parse().unwrap(),
        Some("127.0.0.1:0".parse().unwrap()),
    )
    .await
    .unwrap();
    let addr = d.gate.listen[0];
    let page = reqwest_get(&format!("{addr}"), "/").await;
    assert!(page.contains("new WebSocket"), "{page}");
    let mut names = Vec::new();
    for _ in 0..2 {
        let mut ws = connect(&format!("ws://{addr}/ws")).await;
        ws.send(Message::text("whoami")).await.unwrap();
        names.push(recv(&mut ws).await.into_text().unwrap().to_string());
    }
    assert_ne!(names[0], names[1]);
    assert!(names.iter().all(|n| n.starts_with("backend-")), "{names:?}");
    let admin = d.gate.admin.unwrap();
    let status = reqwest_get(&admin.to_string(), "/status.json").await;
    assert!(status.contains("\"upstreams\""), "{status}");
    d.shutdown().await;
}

/// A minimal HTTP/1.1 GET over a real socket, returning the body.
async fn reqwest_get(addr: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out
}
