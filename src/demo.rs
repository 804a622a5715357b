//! `wsgate demo`: wsgate in front of two in-process echo backends, with a page to try it.
//!
//! Also the echo backend behind `wsgate echo` (and the examples): it echoes every text
//! and binary message, answers the text `whoami` with its name, and closes with the
//! client's close code.

use std::net::SocketAddr;

use axum::{response::Html, routing::get, Router};
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::{
    handshake::server::{Request, Response},
    protocol::WebSocketConfig,
    Message,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::debug;

use crate::{
    config::{Config, HumanDuration},
    server::{start_with, Running, StartError},
};

/// Serves an echo backend on `listener` until `stop` is cancelled.
pub async fn echo_backend(listener: TcpListener, name: String, stop: CancellationToken) {
    let tasks = TaskTracker::new();
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.cancelled() => break,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(_) => continue,
            },
        };
        tasks.spawn(echo_connection(stream, name.clone(), stop.clone()));
    }
    tasks.close();
    tasks.wait().await;
}

async fn echo_connection(stream: TcpStream, name: String, stop: CancellationToken) {
    let _ = stream.set_nodelay(true);
    let cfg = WebSocketConfig::default()
        .max_message_size(Some(64 << 20))
        .max_frame_size(Some(64 << 20));
    // Choose the client's first subprotocol, as a typical application would.
    #[allow(clippy::result_large_err)] // the signature is tungstenite's callback type
    let pick = |req: &Request, mut resp: Response| {
        if let Some(first) = req
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .and_then(|p| p.trim().parse().ok())
        {
            resp.headers_mut().insert("sec-websocket-protocol", first);
        }
        Ok(resp)
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async_with_config(stream, pick, Some(cfg)).await
    else {
        return;
    };
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => {
                let _ = ws.close(None).await;
                return;
            }
            m = ws.next() => m,
        };
        let reply = match msg {
            Some(Ok(Message::Text(t))) if t.as_str() == "whoami" => Message::text(name.clone()),
            Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => m,
            Some(Ok(Message::Close(frame))) => {
                debug!(?frame, "echo backend: client closed");
                // tungstenite answers the close itself; drain until it is done.
                while let Some(Ok(_)) = ws.next().await {}
                return;
            }
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return,
        };
        if ws.send(reply).await.is_err() {
            return;
        }
    }
}

/// A running demo: wsgate plus its two echo backends.
#[derive(Debug)]
pub struct Demo {
    /// wsgate.
    pub gate: Running,
    /// The echo backends' addresses.
    pub backends: Vec<SocketAddr>,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl Demo {
    /// Stops wsgate gracefully, then the backends.
    pub async fn shutdown(self) {
        self.gate.shutdown().await;
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// The demo's configuration: one route `/ws` to the given backends, round-robin.
pub fn demo_config(
    listen: SocketAddr,
    admin: Option<SocketAddr>,
    backends: &[SocketAddr],
) -> Result<Config, crate::config::ConfigError> {
    let backend_list = backends
        .iter()
        .map(|b| format!("\"ws://{b}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let admin = admin
        .map(|a| format!("admin = \"{a}\"\n"))
        .unwrap_or_default();
    let text = format!(
        r#"
[server]
listen = "{listen}"
{admin}shutdown_timeout = "2s"

[[upstream]]
name = "echo"
backends = [{backend_list}]
policy = "round_robin"

[[route]]
path = "/ws"
upstream = "echo"
"#
    );
    let mut cfg = Config::parse(&text, "<demo>")?;
    cfg.server.shutdown_timeout = HumanDuration(std::time::Duration::from_secs(2));
    Ok(cfg)
}

/// Starts two echo backends on free loopback ports and wsgate in front of them, with the
/// demo page at `/`.
pub async fn start_demo(listen: SocketAddr, admin: Option<SocketAddr>) -> Result<Demo, StartError> {
    let stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    let mut backends = Vec::new();
    for i in 1..=2 {
        let addr = SocketAddr::from(([127, 0, 0, 1], 0));
        let l = TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })?;
        let bound = l
            .local_addr()
            .map_err(|source| StartError::Bind { addr, source })?;
        backends.push(bound);
        tasks.spawn(echo_backend(
            l,
            format!("backend-{i} ({bound})"),
            stop.clone(),
        ));
    }
    let cfg =
        demo_config(listen, admin, &backends).map_err(|e| StartError::Config(e.to_string()))?;
    let gate = start_with(&cfg, |r: Router| {
        r.route("/", get(|| async { Html(DEMO_PAGE) }))
    })
    .await?;
    Ok(Demo {
        gate,
        backends,
        stop,
        tasks,
    })
}

const DEMO_PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>wsgate demo</title>
<style>body{font:15px system-ui,sans-serif;margin:2em;max-width:50em}#log{border:1px solid #ccc;padding:.5em;height:18em;overflow:auto;font-family:monospace;white-space:pre-wrap}.in{color:#064}.sys{color:#888}</style>
</head><body>
<h1>wsgate demo</h1>
<p>This page opens a WebSocket to <code>/ws</code> on wsgate, which relays it to one of two echo backends (round-robin). Send <code>whoami</code> to see which backend you got; reconnect to land on the other.</p>
<p><input id="msg" value="hello" size="40"> <button id="send">send</button> <button id="who">whoami</button> <button id="re">reconnect</button></p>
<div id="log"></div>
<script>
const log = (cls, t) => { const d = document.createElement('div'); d.className = cls; d.textContent = t; const l = document.getElementById('log'); l.appendChild(d); l.scrollTop = l.scrollHeight; };
let ws;
function connect(){
  if (ws) ws.close(1000, 'reconnect');
  const url = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/ws';
  ws = new WebSocket(url);
  ws.onopen = () => { log('sys', 'connected to ' + url); ws.send('whoami'); };
  ws.onmessage = e => log('in', '< ' + e.data);
  ws.onclose = e => log('sys', 'closed: ' + e.code + ' ' + e.reason);
}
document.getElementById('send').onclick = () => { const m = document.getElementById('msg').value; ws.send(m); log('', '> ' + m); };
document.getElementById('who').onclick = () => { ws.send('whoami'); log('', '> whoami'); };
document.getElementById('re').onclick = connect;
connect();
</script></body></html>"#;
