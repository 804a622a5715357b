//! What wsgate logs about a proxied socket: every line its task logs carries the
//! socket's request id, route, client and backend (the `ws` span around the task).

mod support;

use std::{
    io,
    sync::{Arc, Mutex},
};

use futures_util::SinkExt;
use support::*;
use tokio_tungstenite::tungstenite::Message;

/// Log output, formatted as the binary's plain-text logs are.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn text(&self) -> String {
        let bytes = self.0.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl io::Write for Captured {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        if let Ok(mut buf) = self.0.lock() {
            buf.extend_from_slice(b);
        }
        Ok(b.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn the_closed_line_carries_the_sockets_id_route_client_and_backend() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    // The only test in this binary: the relay runs on the runtime's threads, so the
    // subscriber must be global.
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let b = Backend::start(BackendOpts::named("a")).await;
    let g = gate(&one_route(&[&b.url], "")).await;
    let mut ws = connect(&ws_url(&g, "/ws")).await;
    ws.send(Message::text("whoami")).await.unwrap();
    assert_eq!(recv(&mut ws).await, Message::text("a"));
    ws.close(None).await.unwrap();
    eventually("the socket's closed line", || {
        logs.text().contains(": closed ")
    })
    .await;

    let text = logs.text();
    let line = text
        .lines()
        .find(|l| l.contains(": closed "))
        .unwrap_or_default();
    let port = b.addr.port().to_string();
    assert!(line.contains("ws{id="), "no ws span: {line}");
    assert!(line.contains(" route=/ws "), "no route: {line}");
    assert!(line.contains(" client=127.0.0.1 "), "no client: {line}");
    assert!(
        line.contains(" backend=") && line.contains(&port),
        "no backend: {line}"
    );
    assert!(
        line.contains("closed_by=\"client\"") && line.contains("messages_up=1"),
        "no report: {line}"
    );
    assert_no_leak(&g).await;
}
