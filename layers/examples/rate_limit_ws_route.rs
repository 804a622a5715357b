//! Protect an axum WebSocket route with per-IP limits.
//!
//! ```text
//! cargo run -p wsgate-layers --example rate_limit_ws_route
//! websocat ws://127.0.0.1:8080/ws     # the 41st handshake within 2 s gets 429
//! ```

use std::{net::SocketAddr, time::Instant};

use axum::{
    extract::ws::{CloseFrame, Message, WebSocketUpgrade},
    response::Response,
    routing::get,
    Extension, Router,
};
use wsgate_layers::{
    client_ip::ClientIpLayer,
    ratelimit::{
        Admit, ConnectionLimitLayer, HandshakeLimitLayer, IpRateLimitLayer, MessageLimits,
    },
    Leases,
};

async fn echo(
    ws: WebSocketUpgrade,
    leases: Option<Extension<Leases>>,
    Extension(limits): Extension<MessageLimits>,
) -> Response {
    ws.on_upgrade(move |mut socket| async move {
        let _leases = leases; // the connection slots are held until this task ends
        let mut limiter = limits.limiter();
        while let Some(Ok(msg)) = socket.recv().await {
            let len = match &msg {
                Message::Text(t) => t.len(),
                Message::Binary(b) => b.len(),
                Message::Close(_) => break,
                _ => continue,
            };
            match limiter.admit(Instant::now(), len) {
                Admit::Pass => {
                    if socket.send(msg).await.is_err() {
                        break;
                    }
                }
                Admit::Drop(_) => {}
                Admit::Close(excess) => {
                    let frame = CloseFrame {
                        code: excess.close_code(),
                        reason: excess.reason().into(),
                    };
                    let _ = socket.send(Message::Close(Some(frame))).await;
                    break;
                }
            }
        }
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // [route.rate_limit]
    // per_ip = "20/s"; burst = 40; max_connections_per_ip = 100; max_connections = 10000
    let messages = MessageLimits::new()
        .messages("50/s".parse()?, 100)
        .bytes("1MiB/s".parse()?, 4 << 20);
    let app = Router::new()
        .route("/ws", get(echo))
        .layer(Extension(messages))
        .layer(ConnectionLimitLayer::new().per_ip(100).global(10_000))
        .layer(HandshakeLimitLayer::new(1_024))
        .layer(IpRateLimitLayer::new("20/s".parse()?).burst(40))
        .layer(ClientIpLayer::new());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
    println!("listening on ws://{}/ws", listener.local_addr()?);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}
