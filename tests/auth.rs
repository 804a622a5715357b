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

/// An HS256 backend `a` behind one JWT route (`/ws`, forwarding `sub`); the secret's
/// directory lives as long as the first value.
async fn jwt_gate() -> (tempfile::TempDir, Backend, wsgate::server::Running) {
    let (dir, secret) = hs256_secret_file();
    let b = Backend::start(BackendOpts::named("a")).await;
    let g = gate(&one_route(
        &[&b.url],
        &jwt_route(secret.to_str().unwrap(), ""),
    ))
    .await;
    (dir, b, g)
}

#[tokio::test]
async fn jwt_route_refuses_without_token_and_forwards_identity_not_token() {
    let (_dir, mut b, g) = jwt_gate().await;
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
    let (_dir, _b, g) = jwt_gate().await;
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

/// The test keys of the layers crate (`layers/tests/fixtures`).
fn fixture(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/layers/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {path}: {e}"))
}

fn rsa_key() -> EncodingKey {
    EncodingKey::from_rsa_pem(&fixture("rsa_private.pem")).unwrap()
}

/// Standard claims (sub alice, the route's iss and aud, ten minutes) with `extra` over them.
fn claims_with(extra: serde_json::Value) -> serde_json::Value {
    let mut c = serde_json::json!({
        "sub": "alice", "iss": "https://issuer.test", "aud": "wsgate", "exp": now() + 600,
    });
    if let (Some(base), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            base.insert(k.clone(), v.clone());
        }
    }
    c
}

fn signed(
    alg: jsonwebtoken::Algorithm,
    kid: Option<&str>,
    key: &EncodingKey,
    claims: &serde_json::Value,
) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_owned);
    encode(&h, claims, key).unwrap()
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A raw upgrade request's answer: its status line, `None` if the connection ended first.
async fn raw_status(addr: std::net::SocketAddr, extra: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {SAMPLE_KEY}\r\n{extra}\r\n");
    // wsgate may answer and close before reading it all: a failed write is fine.
    let _ = s.write_all(req.as_bytes()).await;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while !out.windows(2).any(|w| w == b"\r\n") {
        match tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => panic!("no answer within 5 s"),
        }
    }
    let text = String::from_utf8_lossy(&out);
    text.lines().next().map(str::to_owned)
}

#[tokio::test]
async fn forged_and_confused_tokens_get_their_status_and_never_reach_the_backend() {
    use jsonwebtoken::{jwk::Jwk, Algorithm};
    let dir = tempfile::tempdir().unwrap();
    let rsa_jwk = |kid: &str, alg: Algorithm| {
        let mut v = serde_json::to_value(Jwk::from_encoding_key(&rsa_key(), alg).unwrap()).unwrap();
        v["kid"] = serde_json::json!(kid);
        v
    };
    let jwks = serde_json::json!({"keys": [
        rsa_jwk("rsa-1", Algorithm::RS256),
        rsa_jwk("rsa-2", Algorithm::RS256),
        {"kty": "oct", "kid": "hs-1", "alg": "HS256", "k": b64(HS256_SECRET.as_bytes())},
    ]});
    let jwks_path = dir.path().join("jwks.json");
    std::fs::write(&jwks_path, jwks.to_string()).unwrap();
    let mut b = Backend::start(BackendOpts::named("a")).await;
    let route = format!(
        "[route.jwt]\njwks_file = \"{}\"\nissuer = \"https://issuer.test\"\naudience = \"wsgate\"\nleeway = \"30s\"\n",
        jwks_path.display()
    );
    let g = gate(&one_route(&[&b.url], &route)).await;
    let url = ws_url(&g, "/ws");
    let hs = EncodingKey::from_secret(HS256_SECRET.as_bytes());
    let rsa_pem_as_secret = EncodingKey::from_secret(&fixture("rsa_public.pem"));
    let ok = claims_with(serde_json::json!({}));
    let unsigned = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(ok.to_string().as_bytes())
    );
    let refused: Vec<(&str, String)> = vec![
        ("alg none", unsigned.clone()),
        ("alg none with a signature", format!("{unsigned}c2ln")),
        (
            "HS256 signed with the RSA public key, RSA kid",
            signed(Algorithm::HS256, Some("rsa-1"), &rsa_pem_as_secret, &ok),
        ),
        (
            "HS256 signed with the RSA public key, no kid",
            signed(Algorithm::HS256, None, &rsa_pem_as_secret, &ok),
        ),
        (
            "RS256 naming the HMAC key's kid",
            signed(Algorithm::RS256, Some("hs-1"), &rsa_key(), &ok),
        ),
        (
            "HS256 naming the RSA key's kid",
            signed(Algorithm::HS256, Some("rsa-1"), &hs, &ok),
        ),
        (
            "RS384 under a JWK pinned to RS256",
            signed(Algorithm::RS384, Some("rsa-1"), &rsa_key(), &ok),
        ),
        (
            "PS256 under a JWK pinned to RS256",
            signed(Algorithm::PS256, Some("rsa-2"), &rsa_key(), &ok),
        ),
        (
            "kidless HS256 with another secret",
            signed(
                Algorithm::HS256,
                None,
                &EncodingKey::from_secret(b"another secret, just as long as the real one"),
                &ok,
            ),
        ),
        (
            "unknown kid",
            signed(Algorithm::RS256, Some("rsa-9"), &rsa_key(), &ok),
        ),
        (
            "wrong iss",
            signed(
                Algorithm::HS256,
                Some("hs-1"),
                &hs,
                &claims_with(serde_json::json!({"iss": "https://evil.test"})),
            ),
        ),
        (
            "aud array without ours",
            signed(
                Algorithm::HS256,
                Some("hs-1"),
                &hs,
                &claims_with(serde_json::json!({"aud": ["other", "wsgate2"]})),
            ),
        ),
        (
            "exp beyond the leeway",
            signed(
                Algorithm::HS256,
                Some("hs-1"),
                &hs,
                &claims_with(serde_json::json!({"exp": now() - 45})),
            ),
        ),
        (
            "nbf beyond the leeway",
            signed(
                Algorithm::HS256,
                Some("hs-1"),
                &hs,
                &claims_with(serde_json::json!({"nbf": now() + 45})),
            ),
        ),
        (
            "exp as a string",
            signed(
                Algorithm::HS256,
                Some("hs-1"),
                &hs,
                &claims_with(serde_json::json!({"exp": "never"})),
            ),
        ),
        ("garbage base64", "%%%.@@@.###".to_owned()),
        (
            "header not JSON",
            format!("{}.{}.c2ln", b64(b"\xff\xfe{"), b64(b"{}")),
        ),
        (
            "10 KiB token, over max_token_size",
            format!(
                "{}.{}.{}",
                b64(br#"{"alg":"HS256"}"#),
                "a".repeat(10 * 1024),
                "c2ln"
            ),
        ),
    ];
    for (what, token) in &refused {
        let auth = format!("Bearer {token}");
        assert_eq!(
            refused_status(&url, &[("authorization", &auth)]).await,
            401,
            "{what}"
        );
        // The same token as a subprotocol is refused the same way.
        let proto = format!("bearer, {token}");
        assert_eq!(
            refused_status(&url, &[("sec-websocket-protocol", &proto)]).await,
            401,
            "{what} (subprotocol)"
        );
    }
    // Heads too large for any token: 431, not a 500 and not a parse of the token.
    for size in [200 * 1024, 1024 * 1024] {
        let line = format!(
            "Authorization: Bearer {}.{}.c2ln\r\n",
            b64(br#"{"alg":"HS256"}"#),
            "a".repeat(size)
        );
        let status = raw_status(g.listen[0], &line).await;
        assert!(
            status
                .as_deref()
                .is_none_or(|s| s.starts_with("HTTP/1.1 431")),
            "{size} bytes: {status:?}"
        );
    }
    // Edges inside the leeway, an aud array holding ours, a kidless RS256 token: served.
    let accepted = [
        signed(
            Algorithm::HS256,
            Some("hs-1"),
            &hs,
            &claims_with(serde_json::json!({"exp": now() - 10})),
        ),
        signed(
            Algorithm::HS256,
            Some("hs-1"),
            &hs,
            &claims_with(serde_json::json!({"nbf": now() + 10})),
        ),
        signed(
            Algorithm::HS256,
            Some("hs-1"),
            &hs,
            &claims_with(serde_json::json!({"aud": ["other", "wsgate"]})),
        ),
        signed(Algorithm::RS256, None, &rsa_key(), &ok),
    ];
    for token in &accepted {
        let auth = format!("Bearer {token}");
        let (ws, _) = connect_with(&url, &[("authorization", &auth)])
            .await
            .unwrap();
        drop(ws);
    }
    // Only the accepted handshakes reached the backend, and no refusal was a 500.
    for _ in &accepted {
        b.next_request().await;
    }
    assert_no_leak(&g).await;
    let mut extra = 0;
    while let Ok(seen) = b.seen.try_recv() {
        extra += usize::from(matches!(seen, Seen::Request(..)));
    }
    assert_eq!(extra, 0, "a refused token reached the backend");
    assert_eq!(
        g.metrics.handshakes(wsgate::metrics::Outcome::AuthFailed),
        2 * refused.len() as u64
    );
}

/// A named connection: what, URL, extra headers.
type Case<'a> = (&'a str, String, Vec<(&'a str, &'a str)>);

#[tokio::test]
async fn the_token_is_removed_from_every_source_the_backend_could_read() {
    let (_dir, secret) = hs256_secret_file();
    let mut b = Backend::start(BackendOpts {
        // Chooses the client's real subprotocol, never a marker or the token.
        pick_protocol: std::sync::Arc::new(|offered: &[String]| {
            offered.iter().find(|p| p.starts_with("chat")).cloned()
        }),
        ..BackendOpts::named("a")
    })
    .await;
    let route = format!(
        "origins = [\"https://app.test\"]\n{}",
        jwt_route(
            secret.to_str().unwrap(),
            "sources = [\"header\", \"protocol\", \"cookie\", \"query\"]"
        )
    );
    let g = gate(&one_route(&[&b.url], &route)).await;
    let t = token("alice", now() + 600);
    let base = ws_url(&g, "/ws");
    let origin = ("origin", "https://app.test");
    let cookie = format!("a=1; access_token={t}; b=2");
    let pair = format!("bearer, {t}, chat.v1");
    let prefixed = format!("wsgate.bearer.{t}, wsgate.bearer, chat.v1");
    let auth = format!("Bearer {t}");
    // Each source alone, then all of them at once (the header wins, the rest is still
    // removed).
    let cases: Vec<Case> = vec![
        (
            "query",
            format!("{base}?room=7&access_token={t}&user=ann"),
            vec![origin],
        ),
        (
            "cookie",
            format!("{base}?room=7&user=ann"),
            vec![origin, ("cookie", &cookie)],
        ),
        (
            "subprotocol pair",
            format!("{base}?room=7&user=ann"),
            vec![origin, ("sec-websocket-protocol", &pair)],
        ),
        (
            "subprotocol prefix",
            format!("{base}?room=7&user=ann"),
            vec![origin, ("sec-websocket-protocol", &prefixed)],
        ),
        (
            "all sources",
            format!("{base}?room=7&access_token={t}&user=ann"),
            vec![
                origin,
                ("authorization", &auth),
                ("cookie", &cookie),
                ("sec-websocket-protocol", &pair),
            ],
        ),
    ];
    for (what, url, headers) in &cases {
        let (mut ws, resp) = connect_with(url, headers)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let (uri, h) = b.next_request().await;
        assert_eq!(uri, "/ws?room=7&user=ann", "{what}: query");
        assert!(h.get("authorization").is_none(), "{what}: authorization");
        let cookies: Vec<_> = h.get_all("cookie").iter().collect();
        if headers.iter().any(|(k, _)| *k == "cookie") {
            assert_eq!(cookies, ["a=1; b=2"], "{what}: cookie");
        }
        if headers.iter().any(|(k, _)| *k == "sec-websocket-protocol") {
            assert_eq!(h["sec-websocket-protocol"], "chat.v1", "{what}: protocols");
            assert_eq!(resp.headers()["sec-websocket-protocol"], "chat.v1");
        }
        let seen = format!("{uri} {h:?}");
        assert!(
            !seen.contains(&t),
            "{what}: the token reached the backend: {seen}"
        );
        assert!(
            !format!("{:?}", resp.headers()).contains(&t),
            "{what}: token in the 101"
        );
        ws.send(Message::text("hi")).await.unwrap();
        assert_eq!(recv(&mut ws).await, Message::text("hi"));
    }
}

#[tokio::test]
async fn identity_headers_cannot_be_forged_aliased_or_unlisted_on_any_route() {
    let (_dir, mut b, g) = jwt_gate().await;
    // `/ws` forwards the verified sub; `/app/*` on the same backend is open.
    // Raw header lines: a client library sends neither its own `Connection` nor `_` names.
    let forged = "X-AUTH-SUBJECT: mallory\r\n\
        x-auth-subject: eve\r\n\
        X_Auth_Subject: mallory\r\n\
        x-auth_subject: mallory\r\n\
        Connection: X-Auth-Subject, x_auth_subject\r\n\
        X-Wsgate-Session: someone-elses-session\r\n\
        X-Wsgate-Resumed: 1\r\n\
        X_Wsgate_Session: someone-elses-session\r\n\
        X_Forwarded_For: 6.6.6.6\r\n\
        x_real_ip: 6.6.6.6\r\n\
        X_Custom: kept\r\n";
    // CGI-style backends (WSGI, Rack, PHP) read `X_Auth_Subject` as `X-Auth-Subject`;
    // listing the header in `Connection` must not drop the verified value; the resume
    // headers are wsgate's to set even where resume is off.
    let forbidden = |n: &str| n.starts_with("x-wsgate") || (n.contains('_') && n != "x_custom");
    let auth = format!("Authorization: Bearer {}\r\n", token("alice", now() + 600));
    let (_s, _) = raw_ws_at(g.listen[0], "/ws", &format!("{forged}{auth}")).await;
    let (_, h) = b.next_request().await;
    let subjects: Vec<_> = h.get_all("x-auth-subject").iter().collect();
    assert_eq!(subjects, ["alice"], "identity forged or removed: {h:?}");
    let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
    assert!(!names.iter().any(|n| forbidden(n)), "{names:?}");
    assert_eq!(h["x_custom"], "kept", "other names with _ pass");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");

    // The open route: the client's copies are removed, nothing is put in their place.
    let (_s, _) = raw_ws_at(g.listen[0], "/app/room", forged).await;
    let (_, h) = b.next_request().await;
    let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
    assert!(
        !names.iter().any(|n| forbidden(n) || *n == "x-auth-subject"),
        "a forged identity reached the backend on an open route: {names:?}"
    );
}

#[tokio::test]
async fn forged_forwarding_headers_do_not_change_the_ip_limits_count() {
    let b = Backend::start(BackendOpts::named("a")).await;
    let limits = "[route.rate_limit]\nmax_connections_per_ip = 1\n";
    let forged = |ip: &'static str| -> Vec<(&'static str, &'static str)> {
        vec![
            ("x-forwarded-for", ip),
            ("x-real-ip", ip),
            ("forwarded", "for=198.51.100.1"),
        ]
    };
    // An untrusted client: every socket counts against 127.0.0.1 whatever it claims.
    let g = gate(&one_route(&[&b.url], limits)).await;
    let url = ws_url(&g, "/ws");
    let (_first, _) = connect_with(&url, &forged("203.0.113.1")).await.unwrap();
    assert_eq!(refused_status(&url, &forged("203.0.113.2")).await, 429);

    // Behind a trusted proxy (here the loopback peer), the forwarded client is counted.
    let trusted = one_route(&[&b.url], limits).replace(
        "admin = \"127.0.0.1:0\"",
        "admin = \"127.0.0.1:0\"\ntrusted_proxies = [\"127.0.0.1/32\"]",
    );
    let g = gate(&trusted).await;
    let url = ws_url(&g, "/ws");
    let (_a, _) = connect_with(&url, &[("x-forwarded-for", "203.0.113.1")])
        .await
        .unwrap();
    let (_b, _) = connect_with(&url, &[("x-forwarded-for", "203.0.113.2")])
        .await
        .unwrap();
    assert_eq!(
        refused_status(&url, &[("x-forwarded-for", "6.6.6.6, 203.0.113.1")]).await,
        429,
        "a hop the client wrote left of the trusted proxy's must not matter"
    );
}
