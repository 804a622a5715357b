//! `[route.jwt]` and `[route.rate_limit]` in the proxy, end to end.

mod support;

use std::time::{SystemTime, UNIX_EPOCH};

use futures_util::SinkExt;
use jsonwebtoken::{encode, EncodingKey, Header};
use support::*;
use tokio_tungstenite::tungstenite::Message;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token(sub: &str, exp: u64) -> String {
    let claims = serde_json::json!({ "sub": sub, "exp": exp, "iss": "https://issuer.test", "aud": "wsgate" });
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(HS256_SECRET.as_bytes()),
    )
    .unwrap()
}

fn jwt_route(secret_path: &str, extra: &str) -> String {
    format!(
        r#"
[route.jwt]
secret_file = "{secret_path}"
issuer = "https://issuer.test"
audience = "wsgate"
leeway = "0s"
forward_claims = {{ sub = "X-Auth-Subject" }}
{extra}"#
    )
}

#[tokio::test]
async fn jwt_route_refuses_without_token_and_forwards_identity_not_token() {
    let (_dir, secret) = hs256_secret_file();
    let mut b = Backend::start(BackendOpts::named("a")).await;
    let g = gate(&one_route(
        &[&b.url],
        &jwt_route(secret.to_str().unwrap(), ""),
    ))
    .await;
    let url = ws_url(&g, "/ws");
    assert_eq!(refused_status(&url, &[]).await, 401);
    assert_eq!(
        refused_status(&url, &[("authorization", "Bearer not.a.token")]).await,
        401
    );
    assert_eq!(
        g.metrics.handshakes(wsgate::metrics::Outcome::AuthFailed),
        2
    );

    let t = token("alice", now() + 600);
    let auth = format!("Bearer {t}");
    let (mut ws, _) = connect_with(
        &url,
        &[("authorization", &auth), ("x-auth-subject", "mallory")],
    )
    .await
    .unwrap();
    let (_, h) = b.next_request().await;
    assert!(
        h.get("authorization").is_none(),
        "token reached the backend"
    );
    let subjects: Vec<_> = h.get_all("x-auth-subject").iter().collect();
    assert_eq!(subjects, ["alice"], "client could spoof identity");
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(recv(&mut ws).await, Message::text("hi"));
}

#[tokio::test]
async fn socket_is_closed_with_4401_when_the_token_expires() {
    let (_dir, secret) = hs256_secret_file();
    let b = Backend::start(BackendOpts::named("a")).await;
    let g = gate(&one_route(
        &[&b.url],
        &jwt_route(secret.to_str().unwrap(), ""),
    ))
    .await;
    let t = token("bob", now() + 2);
    let auth = format!("Bearer {t}");
    let (mut ws, _) = connect_with(&ws_url(&g, "/ws"), &[("authorization", &auth)])
        .await
        .unwrap();
    let (code, reason) = recv_close(&mut ws).await;
    assert_eq!((code, reason.as_str()), (4401, "token expired"));
    assert_no_leak(&g).await;
}

#[tokio::test]
async fn handshake_rate_and_connection_caps_per_ip() {
    let b = Backend::start(BackendOpts::named("a")).await;
    let limits = "[route.rate_limit]\nper_ip = \"1/m\"\nburst = 3\nmax_connections_per_ip = 2\n";
    let g = gate(&one_route(&[&b.url], limits)).await;
    let url = ws_url(&g, "/ws");
    let first = connect(&url).await;
    let second = connect(&url).await;
    // Third concurrent socket: over the per-IP connection cap.
    assert_eq!(refused_status(&url, &[]).await, 429);
    drop((first, second));
    assert_no_leak(&g).await;
    // The burst of 3 handshakes is spent: refused by the rate limit with Retry-After.
    match connect_with(&url, &[]).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 429);
            assert!(resp.headers().get("retry-after").is_some());
        }
        other => panic!("expected 429, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn bad_limit_and_jwt_sections_are_config_errors_naming_the_key() {
    let one_route =
        |b: &[&str], extra: &str| one_route(b, extra).replace("{LISTEN}", "127.0.0.1:0");
    let base = one_route(
        &["ws://127.0.0.1:1"],
        "[route.rate_limit]\nper_ip = \"fast\"\n",
    );
    let e = wsgate::config::Config::parse(&base, "t.toml").unwrap_err();
    assert_eq!(e.key, "route[0].rate_limit.per_ip", "{e}");
    let cookie = one_route(
        &["ws://127.0.0.1:1"],
        "[route.jwt]\nsecret_env = \"X\"\nsources = [\"cookie\"]\n",
    );
    let e = wsgate::config::Config::parse(&cookie, "t.toml").unwrap_err();
    assert!(e.to_string().contains("Origin"), "{e}");
    let typo = one_route(
        &["ws://127.0.0.1:1"],
        "[route.jwt]\nsecret_env = \"X\"\nisuer = \"x\"\n",
    );
    let e = wsgate::config::Config::parse(&typo, "t.toml").unwrap_err();
    assert!(e.to_string().contains("isuer"), "{e}");
}

#[tokio::test]
async fn token_cookie_next_to_a_non_ascii_cookie_is_read_and_not_forwarded() {
    let (_dir, secret) = hs256_secret_file();
    let mut b = Backend::start(BackendOpts::named("a")).await;
    let route = format!(
        "origins = [\"https://app.test\"]\n{}",
        jwt_route(secret.to_str().unwrap(), "sources = [\"cookie\"]")
    );
    let g = gate(&one_route(&[&b.url], &route)).await;
    let url = ws_url(&g, "/ws");
    // UTF-8 cookie values on both sides of the token cookie (browsers send them).
    let cookie = format!(
        "name=caf\u{e9}; access_token={}; city=K\u{f6}ln",
        token("alice", now() + 600)
    );
    let (mut ws, _) = connect_with(&url, &[("origin", "https://app.test"), ("cookie", &cookie)])
        .await
        .expect("the token cookie next to a non-ASCII cookie is read");
    let (_, h) = b.next_request().await;
    let cookies: Vec<&[u8]> = h.get_all("cookie").iter().map(|v| v.as_bytes()).collect();
    assert_eq!(
        cookies,
        ["name=caf\u{e9}; city=K\u{f6}ln".as_bytes()],
        "the token cookie reached the backend, or the others were altered"
    );
    let subjects: Vec<_> = h.get_all("x-auth-subject").iter().collect();
    assert_eq!(subjects, ["alice"]);
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(recv(&mut ws).await, Message::text("hi"));
}

#[tokio::test]
async fn per_subject_cap_counts_the_verified_subject() {
    let (_dir, secret) = hs256_secret_file();
    let b = Backend::start(BackendOpts::named("a")).await;
    let route = format!(
        "{}\n[route.rate_limit]\nmax_connections_per_subject = 1\n",
        jwt_route(secret.to_str().unwrap(), "")
    );
    let g = gate(&one_route(&[&b.url], &route)).await;
    let url = ws_url(&g, "/ws");
    let alice = format!("Bearer {}", token("alice", now() + 600));
    let bob = format!("Bearer {}", token("bob", now() + 600));
    let (mut first, _) = connect_with(&url, &[("authorization", &alice)])
        .await
        .unwrap();
    // The JWT layer's verified `sub` is what the cap counts: a second socket for alice
    // is refused, bob still gets one.
    assert_eq!(
        refused_status(&url, &[("authorization", &alice)]).await,
        429
    );
    let (mut other, _) = connect_with(&url, &[("authorization", &bob)])
        .await
        .unwrap();
    for ws in [&mut first, &mut other] {
        ws.send(Message::text("hi")).await.unwrap();
        assert_eq!(recv(ws).await, Message::text("hi"));
    }
}
