//! Protect an axum WebSocket route with a JWT.
//!
//! ```text
//! export WSGATE_JWT_SECRET=$(openssl rand -hex 32)
//! cargo run -p wsgate-layers --example protect_ws_route
//! ```
//!
//! Then connect with an HS256 token signed with that secret (any JWT tool), either in a
//! header or, as a browser must, in the subprotocol list:
//!
//! ```text
//! websocat -H "Authorization: Bearer $TOKEN" ws://127.0.0.1:3000/ws
//! // browser: new WebSocket("ws://127.0.0.1:3000/ws", ["bearer", token])
//! ```
//!
//! The server greets with the token's subject, echoes every message, and closes the
//! socket with code 4401 when the token expires.

use std::net::SocketAddr;

use axum::{
    extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade},
    response::Response,
    routing::get,
    Extension, Router,
};
use wsgate_layers::jwt::{Claims, JwtAuthLayer, TokenExpiry, TokenSource};

#[derive(serde::Deserialize)]
struct User {
    sub: String,
}

async fn ws(
    upgrade: WebSocketUpgrade,
    Claims(user): Claims<User>,
    expiry: Option<Extension<TokenExpiry>>,
) -> Response {
    upgrade.on_upgrade(move |socket| session(socket, user, expiry.map(|Extension(e)| e)))
}

async fn session(mut socket: WebSocket, user: User, expiry: Option<TokenExpiry>) {
    if socket
        .send(Message::Text(format!("hello {}", user.sub).into()))
        .await
        .is_err()
    {
        return;
    }
    let deadline = expiry.filter(|e| e.close).map(|e| e.remaining());
    let expired = async move {
        match deadline {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(expired);
    loop {
        tokio::select! {
            _ = &mut expired => {
                let _ = socket
                    .send(Message::Close(Some(CloseFrame {
                        code: TokenExpiry::CLOSE_CODE,
                        reason: TokenExpiry::CLOSE_REASON.into(),
                    })))
                    .await;
                break;
            }
            msg = socket.recv() => match msg {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(m)) => {
                    if socket.send(m).await.is_err() {
                        break;
                    }
                }
            },
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let jwt = JwtAuthLayer::builder()
        .secret_env("WSGATE_JWT_SECRET")
        .sources([TokenSource::Header, TokenSource::Protocol])
        .require_claims(["sub"])
        .build()
        .await?;
    let app = Router::new().route("/ws", get(ws)).layer(jwt);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on ws://{}/ws", listener.local_addr()?);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}
