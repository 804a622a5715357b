//! What wsgate logs about a proxied socket: every line its task logs carries the
//! socket's request id, route, client and backend (the `ws` span around the task); and
//! what it never logs, at any level: a token.

mod support;

use std::{
    io,
    sync::{Arc, Mutex, OnceLock},
    time::{SystemTime, UNIX_EPOCH},
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

/// Everything wsgate and its dependencies log in this test binary, at every level
/// (`RUST_LOG=trace`), `log` records included. The relay runs on the runtime's threads,
/// so the subscriber is global and shared by the tests.
///
/// Except tungstenite's: the tests' own clients and backends are tungstenite (its client
/// traces the request it sends, token and all), while wsgate's proxy path does not use it.
fn logs() -> &'static Captured {
    static LOGS: OnceLock<Captured> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Captured::default();
        let writer = logs.clone();
        tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "trace,tungstenite=off,tokio_tungstenite=off",
            ))
            .try_init()
            .unwrap();
        logs
    })
}

#[tokio::test]
async fn the_closed_line_carries_the_sockets_id_route_client_and_backend() {
    let logs = logs();

    let b = Backend::start(BackendOpts::named("a")).await;
    let g = gate(&one_route(&[&b.url], "")).await;
    let mut ws = connect(&ws_url(&g, "/ws")).await;
    ws.send(Message::text("whoami")).await.unwrap();
    assert_eq!(recv(&mut ws).await, Message::text("a"));
    ws.close(None).await.unwrap();
    let port = b.addr.port();
    eventually("the socket's closed line", || {
        logs.text()
            .lines()
            .any(|l| l.contains(": closed ") && l.contains(&format!(":{port}")))
    })
    .await;

    let text = logs.text();
    let port = b.addr.port().to_string();
    let line = text
        .lines()
        .find(|l| l.contains(": closed ") && l.contains(&format!(":{port}")))
        .unwrap_or_default();
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

fn token(secret: &str, sub: &str, exp: u64) -> String {
    let claims = serde_json::json!({ "sub": sub, "exp": exp });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn no_token_reaches_a_log_line_even_at_trace_level() {
    let logs = logs();
    let (_dir, secret) = hs256_secret_file();
    let b = Backend::start(BackendOpts::named("a")).await;
    let refusing = Backend::start(BackendOpts {
        refuse: Some(403),
        ..BackendOpts::named("r")
    })
    .await;
    let jwt = format!(
        "[route.jwt]\nsecret_file = \"{}\"\nsources = [\"query\", \"protocol\"]\n",
        secret.display()
    );
    let cfg = format!(
        "{}\n[[upstream]]\nname = \"r\"\nbackends = [\"{}\"]\n\n[[route]]\npath = \"/refused\"\nupstream = \"r\"\n{jwt}",
        one_route(&[&b.url], &jwt),
        refusing.url
    );
    let g = gate(&cfg).await;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let good = token(HS256_SECRET, "alice", now + 600);
    let expired = token(HS256_SECRET, "bob", now - 3600);
    let forged = token(
        "not the secret, but long enough to sign with",
        "eve",
        now + 600,
    );
    // Served, then closed by the backend with a reason.
    let mut ws = connect(&ws_url(&g, &format!("/ws?access_token={good}&room=1"))).await;
    ws.send(Message::text("close:4000:bye")).await.unwrap();
    recv_close(&mut ws).await;
    // Refused by the JWT layer, for each reason and source.
    for t in [&expired, &forged] {
        let url = ws_url(&g, &format!("/ws?access_token={t}"));
        assert_eq!(refused_status(&url, &[]).await, 401);
        let proto = format!("bearer, {t}");
        let url = ws_url(&g, "/ws");
        assert_eq!(
            refused_status(&url, &[("sec-websocket-protocol", &proto)]).await,
            401
        );
    }
    // A valid token on a route whose backend refuses the upgrade.
    let url = ws_url(&g, &format!("/refused?access_token={good}"));
    assert_eq!(refused_status(&url, &[]).await, 403);
    // A bad query next to the token: refused before the JWT layer.
    let url = ws_url(&g, &format!("/ws?access_token={good}&x=%zz"));
    assert_eq!(refused_status(&url, &[]).await, 400);
    assert_no_leak(&g).await;
    let port = b.addr.port();
    eventually("the served socket's closed line", || {
        logs.text()
            .lines()
            .any(|l| l.contains(": closed ") && l.contains(&format!(":{port}")))
    })
    .await;

    let text = logs.text();
    for (what, t) in [("valid", &good), ("expired", &expired), ("forged", &forged)] {
        // The signature is what makes a token usable; no part of the token may show.
        let sig = t.rsplit('.').next().unwrap_or_default();
        let line = text
            .lines()
            .find(|l| l.contains(t.as_str()) || l.contains(sig));
        assert!(line.is_none(), "the {what} token was logged: {line:?}");
    }
    assert!(
        text.contains("jwt: handshake refused"),
        "the refusals were not logged at all, so this proves nothing:\n{text}"
    );
}
