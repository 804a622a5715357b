//! Shared helpers of the JWT integration tests: fixture keys, token minting, an axum app
//! with a WebSocket route behind the layer, and a tungstenite client.
#![allow(dead_code)]

use std::{
    net::SocketAddr,
    time::{SystemTime, UNIX_EPOCH},
};

use axum::{
    extract::{ws::Message, Extension, WebSocketUpgrade},
    http::{HeaderMap, Uri},
    response::Response,
    routing::get,
    Router,
};
use base64::Engine;
use futures_util::StreamExt;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest, http::HeaderValue};
use wsgate_layers::jwt::{Claims, JwtAuthLayer, TokenExpiry, TokenProtocolMarker, VerifiedClaims};

pub const SECRET: &[u8] = b"test-secret-0123456789abcdef0123456789";
pub const ISS: &str = "https://issuer.test";
pub const AUD: &str = "wsgate";

pub fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {path}: {e}"))
}

pub fn fixture_path(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// Standard valid claims, with `extra` merged over them (`null` removes a claim).
pub fn claims(extra: Value) -> Value {
    let mut c = json!({
        "sub": "alice",
        "iss": ISS,
        "aud": AUD,
        "iat": now(),
        "exp": now() + 300,
    });
    if let (Some(base), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            if v.is_null() {
                base.remove(k);
            } else {
                base.insert(k.clone(), v.clone());
            }
        }
    }
    c
}

pub fn hs_key() -> EncodingKey {
    EncodingKey::from_secret(SECRET)
}

pub fn encoding_key(alg: Algorithm) -> EncodingKey {
    match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => hs_key(),
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => EncodingKey::from_rsa_pem(&fixture("rsa_private.pem")).expect("rsa"),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&fixture("ec256_private.pem")).expect("ec256"),
        Algorithm::ES384 => EncodingKey::from_ec_pem(&fixture("ec384_private.pem")).expect("ec384"),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&fixture("ed25519_private.pem")).expect("ed"),
    }
}

pub fn mint_with(header: &Header, key: &EncodingKey, claims: &Value) -> String {
    jsonwebtoken::encode(header, claims, key).expect("encode")
}

pub fn mint(alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_owned);
    mint_with(&h, &encoding_key(alg), claims)
}

/// An HS256 token with the standard claims.
pub fn good_token() -> String {
    mint(Algorithm::HS256, None, &claims(json!({})))
}

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A JWK (public part) of a fixture key, with `kid`.
pub fn jwk(alg: Algorithm, kid: &str) -> Value {
    let mut v = match alg {
        Algorithm::EdDSA => {
            let pk = jsonwebtoken::DecodingKey::from_ed_pem(&fixture("ed25519_public.pem"))
                .expect("ed pub");
            json!({"kty": "OKP", "crv": "Ed25519", "x": b64(pk.as_bytes()), "alg": "EdDSA"})
        }
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
            json!({"kty": "oct", "k": b64(SECRET), "alg": format!("{alg:?}")})
        }
        _ => serde_json::to_value(
            jsonwebtoken::jwk::Jwk::from_encoding_key(&encoding_key(alg), alg).expect("jwk"),
        )
        .expect("jwk json"),
    };
    v["kid"] = json!(kid);
    v
}

/// The JWK of the second P-256 key (`ec256b`), used for rotation and as "attacker" key.
pub fn jwk_ec256b(kid: &str) -> Value {
    let key = EncodingKey::from_ec_pem(&fixture("ec256b_private.pem")).expect("ec256b");
    let mut v = serde_json::to_value(
        jsonwebtoken::jwk::Jwk::from_encoding_key(&key, Algorithm::ES256).expect("jwk"),
    )
    .expect("jwk json");
    v["kid"] = json!(kid);
    v
}

pub fn mint_ec256b(kid: Option<&str>, claims: &Value) -> String {
    let key = EncodingKey::from_ec_pem(&fixture("ec256b_private.pem")).expect("ec256b");
    let mut h = Header::new(Algorithm::ES256);
    h.kid = kid.map(str::to_owned);
    mint_with(&h, &key, claims)
}

/// A builder with the HS secret, issuer and audience configured.
pub fn hs_builder() -> wsgate_layers::jwt::JwtAuthBuilder {
    JwtAuthLayer::builder()
        .secret(SECRET)
        .issuer(ISS)
        .audience(AUD)
}

/// Reports what reached the handler, as the first text message on the socket, then
/// echoes.
async fn report_handler(
    ws: WebSocketUpgrade,
    headers: HeaderMap,
    uri: Uri,
    claims: Option<Extension<VerifiedClaims>>,
    marker: Option<Extension<TokenProtocolMarker>>,
    expiry: Option<Extension<TokenExpiry>>,
) -> Response {
    let h = |name: &str| -> Value {
        let all: Vec<String> = headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        if all.is_empty() {
            Value::Null
        } else {
            json!(all.join(" | "))
        }
    };
    let report = json!({
        "authorization": h("authorization"),
        "cookie": h("cookie"),
        "protocol": h("sec-websocket-protocol"),
        "x_auth_subject": h("x-auth-subject"),
        "x_auth_level": h("x-auth-level"),
        "x_auth_roles": h("x-auth-roles"),
        "query": uri.query(),
        "sub": claims.as_ref().and_then(|c| c.subject().map(str::to_owned)),
        "marker": marker.map(|m| m.0 .0.clone()),
        "expiry_at": expiry.map(|e| e.at.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)),
        "expiry_close": expiry.map(|e| e.close),
    })
    .to_string();
    ws.protocols(["chat.v1"])
        .on_upgrade(move |mut socket| async move {
            if socket.send(Message::Text(report.into())).await.is_err() {
                return;
            }
            while let Some(Ok(m)) = socket.recv().await {
                if matches!(m, Message::Close(_)) || socket.send(m).await.is_err() {
                    break;
                }
            }
        })
}

#[derive(serde::Deserialize)]
struct User {
    sub: String,
}

async fn typed_handler(ws: WebSocketUpgrade, Claims(user): Claims<User>) -> Response {
    ws.on_upgrade(move |mut socket| async move {
        let _ = socket
            .send(Message::Text(format!("hello {}", user.sub).into()))
            .await;
    })
}

/// Serves `/ws` (report + echo) and `/typed` (`Claims<User>`) behind `layer`, and
/// `/open/typed` (the `Claims` extractor without the layer).
pub async fn serve(layer: JwtAuthLayer) -> SocketAddr {
    let protected = Router::new()
        .route("/ws", get(report_handler))
        .route("/typed", get(typed_handler))
        .layer(layer);
    let app = Router::new()
        .route("/open/typed", get(typed_handler))
        .merge(protected);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await;
    });
    addr
}

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a WebSocket to `path` with extra request headers.
pub async fn connect(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(Ws, tungstenite::handshake::client::Response), tungstenite::Error> {
    let mut req = format!("ws://{addr}{path}")
        .into_client_request()
        .expect("request");
    for (k, v) in headers {
        req.headers_mut().append(
            tungstenite::http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
            HeaderValue::from_str(v).expect("value"),
        );
    }
    tokio_tungstenite::connect_async(req).await
}

/// The handshake status: 101 on success, else the HTTP error status.
pub async fn status(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> u16 {
    match connect(addr, path, headers).await {
        Ok(_) => 101,
        Err(tungstenite::Error::Http(res)) => res.status().as_u16(),
        Err(e) => panic!("handshake failed without an HTTP status: {e}"),
    }
}

/// The refused handshake's response (panics when the upgrade succeeds).
pub async fn refusal(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> tungstenite::http::Response<Option<Vec<u8>>> {
    match connect(addr, path, headers).await {
        Ok(_) => panic!("handshake to {path} unexpectedly succeeded"),
        Err(tungstenite::Error::Http(res)) => *res,
        Err(e) => panic!("handshake failed without an HTTP status: {e}"),
    }
}

/// The status with `Authorization: Bearer <token>`.
pub async fn status_with(addr: SocketAddr, token: &str) -> u16 {
    status(
        addr,
        "/ws",
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await
}

/// Connects and returns the handler's report (first message).
pub async fn report(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Value {
    let (mut ws, _) = connect(addr, path, headers).await.expect("handshake");
    first_text(&mut ws).await
}

pub async fn first_text(ws: &mut Ws) -> Value {
    loop {
        match ws.next().await {
            Some(Ok(tungstenite::Message::Text(t))) => {
                return serde_json::from_str(t.as_str()).unwrap_or(Value::String(t.to_string()))
            }
            Some(Ok(_)) => continue,
            other => panic!("no text message: {other:?}"),
        }
    }
}

/// Runs one request with `Authorization: Bearer <token>` through `layer` in process (no
/// socket) and returns the status: `200` when the inner service was reached.
pub async fn oneshot_status(layer: &JwtAuthLayer, token: &str) -> u16 {
    use tower::{Layer, ServiceExt};
    let inner = tower::service_fn(|_req: axum::http::Request<axum::body::Body>| async {
        Ok::<_, std::convert::Infallible>(axum::http::Response::new(axum::body::Body::empty()))
    });
    let req = axum::http::Request::get("/ws")
        .header("authorization", format!("Bearer {token}"))
        .body(axum::body::Body::empty())
        .expect("request");
    match layer.layer(inner).oneshot(req).await {
        Ok(res) => res.status().as_u16(),
        Err(never) => match never {},
    }
}
