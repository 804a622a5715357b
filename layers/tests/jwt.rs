//! JwtAuthLayer over real sockets on loopback: every refusal happens before the upgrade.

mod jwt_common;

use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use jwt_common::*;
use serde_json::json;
use wsgate_layers::jwt::{JwtAuthLayer, JwtConfigError, OnExpiry, TokenSource};

fn www_authenticate(
    res: &tokio_tungstenite::tungstenite::http::Response<Option<Vec<u8>>>,
) -> String {
    res.headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

async fn hs_server() -> std::net::SocketAddr {
    serve(hs_builder().build().await.expect("layer")).await
}

#[tokio::test]
async fn valid_tokens_of_every_algorithm_family_are_accepted() {
    let layer = hs_builder()
        .public_keys([
            fixture_path("rsa_public.pem"),
            fixture_path("ec256_public.pem"),
            fixture_path("ec384_public.pem"),
            fixture_path("ed25519_public.pem"),
        ])
        .build()
        .await
        .expect("layer");
    assert_eq!(layer.key_count(), 5);
    let addr = serve(layer).await;
    for alg in [
        Algorithm::HS256,
        Algorithm::HS384,
        Algorithm::HS512,
        Algorithm::RS256,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
    ] {
        let token = mint(alg, None, &claims(json!({})));
        let r = report(
            addr,
            "/ws",
            &[("authorization", &format!("Bearer {token}"))],
        )
        .await;
        assert_eq!(r["sub"], "alice", "{alg:?}");
    }
}

#[tokio::test]
async fn jwks_file_keys_of_every_type_are_selected_by_kid() {
    let jwks = json!({"keys": [
        jwk(Algorithm::RS256, "rsa-1"),
        jwk(Algorithm::ES256, "ec-1"),
        jwk(Algorithm::ES384, "ec-2"),
        jwk(Algorithm::EdDSA, "ed-1"),
        jwk(Algorithm::HS256, "hs-1"),
    ]});
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, jwks.to_string()).expect("write");
    let layer = JwtAuthLayer::builder()
        .jwks_file(&path)
        .issuer(ISS)
        .audience(AUD)
        .build()
        .await
        .expect("layer");
    let addr = serve(layer).await;
    for (alg, kid) in [
        (Algorithm::RS256, "rsa-1"),
        (Algorithm::ES256, "ec-1"),
        (Algorithm::ES384, "ec-2"),
        (Algorithm::EdDSA, "ed-1"),
        (Algorithm::HS256, "hs-1"),
    ] {
        let token = mint(alg, Some(kid), &claims(json!({})));
        assert_eq!(status_with(addr, &token).await, 101, "{alg:?} {kid}");
    }
    // The JWK pins rsa-1 to RS256: a PS256 token under that kid is refused.
    let token = mint(Algorithm::PS256, Some("rsa-1"), &claims(json!({})));
    assert_eq!(status_with(addr, &token).await, 401);
    // And hs-1 to HS256.
    let token = mint(Algorithm::HS512, Some("hs-1"), &claims(json!({})));
    assert_eq!(status_with(addr, &token).await, 401);
}

#[tokio::test]
async fn missing_token_gets_401_with_a_bare_bearer_challenge() {
    let addr = hs_server().await;
    let res = refusal(addr, "/ws", &[]).await;
    assert_eq!(res.status(), 401);
    assert_eq!(www_authenticate(&res), "Bearer");
}

#[tokio::test]
async fn expired_token_is_refused_before_upgrade() {
    let addr = hs_server().await;
    let token = mint(
        Algorithm::HS256,
        None,
        &claims(json!({"exp": now() - 600, "iat": now() - 900})),
    );
    let res = refusal(
        addr,
        "/ws",
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await;
    assert_eq!(res.status(), 401);
    let challenge = www_authenticate(&res);
    assert!(
        challenge.starts_with("Bearer error=\"invalid_token\""),
        "{challenge}"
    );
    assert!(challenge.contains("expired"), "{challenge}");
    assert!(
        !challenge.contains(&token),
        "token leaked into the challenge"
    );
}

#[tokio::test]
async fn exp_within_leeway_is_accepted_and_beyond_is_refused() {
    let addr = serve(
        hs_builder()
            .leeway(Duration::from_secs(60))
            .build()
            .await
            .expect("layer"),
    )
    .await;
    let within = mint(Algorithm::HS256, None, &claims(json!({"exp": now() - 30})));
    assert_eq!(status_with(addr, &within).await, 101);
    let beyond = mint(Algorithm::HS256, None, &claims(json!({"exp": now() - 90})));
    assert_eq!(status_with(addr, &beyond).await, 401);
}

#[tokio::test]
async fn nbf_and_iat_in_the_future_are_refused() {
    let addr = hs_server().await;
    let nbf = mint(Algorithm::HS256, None, &claims(json!({"nbf": now() + 600})));
    assert_eq!(status_with(addr, &nbf).await, 401);
    let iat = mint(Algorithm::HS256, None, &claims(json!({"iat": now() + 600})));
    assert_eq!(status_with(addr, &iat).await, 401);
    let nbf_ok = mint(Algorithm::HS256, None, &claims(json!({"nbf": now() + 10})));
    assert_eq!(status_with(addr, &nbf_ok).await, 101);
}

#[tokio::test]
async fn wrong_issuer_audience_and_missing_exp_are_refused() {
    let addr = hs_server().await;
    for (what, c) in [
        ("iss", claims(json!({"iss": "https://evil.test"}))),
        ("aud", claims(json!({"aud": "other"}))),
        ("aud list", claims(json!({"aud": ["a", "b"]}))),
        ("no exp", claims(json!({"exp": null}))),
        ("no iss", claims(json!({"iss": null}))),
        ("no aud", claims(json!({"aud": null}))),
        ("string exp", claims(json!({"exp": "tomorrow"}))),
    ] {
        let token = mint(Algorithm::HS256, None, &c);
        assert_eq!(status_with(addr, &token).await, 401, "{what}");
    }
    let ok = mint(Algorithm::HS256, None, &claims(json!({"aud": ["x", AUD]})));
    assert_eq!(status_with(addr, &ok).await, 101);
}

#[tokio::test]
async fn unsigned_tokens_are_refused_in_every_casing() {
    let addr = hs_server().await;
    let payload = b64(claims(json!({})).to_string().as_bytes());
    for alg in ["none", "None", "NONE", "nOnE"] {
        let header = b64(json!({"alg": alg, "typ": "JWT"}).to_string().as_bytes());
        for token in [
            format!("{header}.{payload}."),
            format!("{header}.{payload}.c2ln"),
        ] {
            let res = refusal(
                addr,
                "/ws",
                &[("authorization", &format!("Bearer {token}"))],
            )
            .await;
            assert_eq!(res.status(), 401, "{alg}");
            assert!(
                www_authenticate(&res).contains("alg none"),
                "{}",
                www_authenticate(&res)
            );
        }
    }
}

#[tokio::test]
async fn hs256_signed_with_the_rsa_public_key_is_refused() {
    let rsa_pub = fixture("rsa_public.pem");
    let layer = JwtAuthLayer::builder()
        .public_key_pem(rsa_pub.clone())
        .build()
        .await
        .expect("layer");
    let addr = serve(layer).await;
    let forged_key = EncodingKey::from_secret(&rsa_pub);
    for kid in [None, Some("rsa")] {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = kid.map(str::to_owned);
        let token = mint_with(&h, &forged_key, &claims(json!({})));
        let res = refusal(
            addr,
            "/ws",
            &[("authorization", &format!("Bearer {token}"))],
        )
        .await;
        assert_eq!(res.status(), 401);
        // Without kid: no key allows HS256. With a kid: no key has that id (and the
        // only key without an id is pinned to RSA).
        let challenge = www_authenticate(&res);
        assert!(
            challenge.contains("no key may verify") || challenge.contains("no known key"),
            "{challenge}"
        );
    }
    // The genuine RS256 token passes, so the refusal above is the pinning at work.
    let ok = mint(Algorithm::RS256, None, &claims(json!({})));
    assert_eq!(status_with(addr, &ok).await, 101);
}

#[tokio::test]
async fn unknown_and_path_traversal_kids_are_refused() {
    let jwks = json!({"keys": [jwk(Algorithm::ES256, "ec-1")]}).to_string();
    let addr = serve(
        JwtAuthLayer::builder()
            .jwks_json(jwks)
            .build()
            .await
            .expect("layer"),
    )
    .await;
    for kid in ["nope", "../../etc/passwd", "/dev/zero", "ec-1\u{0}", ""] {
        let token = mint(Algorithm::ES256, Some(kid), &claims(json!({})));
        assert_eq!(status_with(addr, &token).await, 401, "{kid:?}");
    }
    let ok = mint(Algorithm::ES256, Some("ec-1"), &claims(json!({})));
    assert_eq!(status_with(addr, &ok).await, 101);
}

#[tokio::test]
async fn keys_named_in_the_token_header_are_never_trusted() {
    let addr = serve(
        JwtAuthLayer::builder()
            .public_keys([fixture_path("ec256_public.pem")])
            .build()
            .await
            .expect("layer"),
    )
    .await;
    let attacker_jwk: jsonwebtoken::jwk::Jwk =
        serde_json::from_value(jwk_ec256b("evil")).expect("jwk");
    let key = EncodingKey::from_ec_pem(&fixture("ec256b_private.pem")).expect("key");
    let mut jku = Header::new(Algorithm::ES256);
    jku.jku = Some("http://127.0.0.1:1/evil-jwks.json".to_owned());
    let mut embedded = Header::new(Algorithm::ES256);
    embedded.jwk = Some(attacker_jwk);
    let mut x5u = Header::new(Algorithm::ES256);
    x5u.x5u = Some("http://127.0.0.1:1/cert.pem".to_owned());
    let mut x5c = Header::new(Algorithm::ES256);
    x5c.x5c = Some(vec!["MIIB".to_owned()]);
    for h in [jku, embedded, x5u, x5c] {
        let token = mint_with(&h, &key, &claims(json!({})));
        let res = refusal(
            addr,
            "/ws",
            &[("authorization", &format!("Bearer {token}"))],
        )
        .await;
        assert_eq!(res.status(), 401);
        assert!(
            www_authenticate(&res).contains("is not accepted"),
            "{}",
            www_authenticate(&res)
        );
    }
    // Even a jku next to a genuine signature is refused (documented choice).
    let mut h = Header::new(Algorithm::ES256);
    h.jku = Some("https://issuer.test/jwks".to_owned());
    let token = mint_with(&h, &encoding_key(Algorithm::ES256), &claims(json!({})));
    assert_eq!(status_with(addr, &token).await, 401);
}

#[tokio::test]
async fn unknown_crit_extensions_are_refused() {
    let addr = hs_server().await;
    let mut h = Header::new(Algorithm::HS256);
    h.crit = Some(vec!["exp".to_owned()]);
    let token = mint_with(&h, &hs_key(), &claims(json!({})));
    assert_eq!(status_with(addr, &token).await, 401);
}

#[tokio::test]
async fn damaged_tokens_are_refused() {
    let addr = hs_server().await;
    let good = good_token();
    let parts: Vec<&str> = good.split('.').collect();
    let (h, p, s) = (parts[0], parts[1], parts[2]);
    let evil_payload = b64(claims(json!({"sub": "admin"})).to_string().as_bytes());
    // Flip a character in the middle (the last one may only carry padding bits).
    let mut sig = s.to_owned();
    let mid = sig.len() / 2;
    let flipped = if &sig[mid..=mid] == "A" { "B" } else { "A" };
    sig.replace_range(mid..=mid, flipped);
    let cases = [
        ("tampered payload", format!("{h}.{evil_payload}.{s}")),
        ("tampered signature", format!("{h}.{p}.{sig}")),
        ("signature stripped", format!("{h}.{p}.")),
        ("two segments", format!("{h}.{p}")),
        ("four segments", format!("{h}.{p}.{s}.{s}")),
        ("bad base64 header", format!("%%%.{p}.{s}")),
        ("bad base64 payload", format!("{h}.!!!.{s}")),
        ("bad base64 signature", format!("{h}.{p}.***")),
        ("not json", format!("{}.{p}.{s}", b64(b"nope"))),
        ("garbage", "garbage".to_owned()),
    ];
    for (what, token) in cases {
        assert_eq!(status_with(addr, &token).await, 401, "{what}");
    }
    // The signature checks fail as signature failures, not as parse errors.
    for token in [format!("{h}.{evil_payload}.{s}"), format!("{h}.{p}.{sig}")] {
        let res = refusal(
            addr,
            "/ws",
            &[("authorization", &format!("Bearer {token}"))],
        )
        .await;
        assert!(
            www_authenticate(&res).contains("signature is invalid"),
            "{}",
            www_authenticate(&res)
        );
    }
    assert_eq!(status_with(addr, &good).await, 101);
}

#[tokio::test]
async fn a_100_kb_token_is_refused_quickly() {
    let addr = hs_server().await;
    let huge = format!(
        "{}.{}.{}",
        "a".repeat(50_000),
        "b".repeat(50_000),
        "c".repeat(2_000)
    );
    let started = Instant::now();
    let res = refusal(addr, "/ws", &[("authorization", &format!("Bearer {huge}"))]).await;
    assert_eq!(res.status(), 401);
    assert!(www_authenticate(&res).contains("larger than 8192"));
    assert!(started.elapsed() < Duration::from_secs(2));
}

/// A named request: what, path, headers.
type Case = (&'static str, String, Vec<(&'static str, String)>);

#[tokio::test]
async fn the_token_is_read_from_every_enabled_source() {
    let layer = hs_builder()
        .sources([
            TokenSource::Header,
            TokenSource::Protocol,
            TokenSource::Cookie,
            TokenSource::Query,
        ])
        .origin_allow_list(true)
        .build()
        .await
        .expect("layer");
    let addr = serve(layer).await;
    let t = good_token();
    let cases: Vec<Case> = vec![
        (
            "header",
            "/ws".into(),
            vec![("authorization", format!("Bearer {t}"))],
        ),
        (
            "protocol pair",
            "/ws".into(),
            vec![("sec-websocket-protocol", format!("bearer, {t}"))],
        ),
        (
            "protocol prefix",
            "/ws".into(),
            vec![(
                "sec-websocket-protocol",
                format!("wsgate.bearer.{t}, wsgate.bearer"),
            )],
        ),
        (
            "cookie",
            "/ws".into(),
            vec![("cookie", format!("access_token={t}"))],
        ),
        ("query", format!("/ws?access_token={t}"), vec![]),
    ];
    for (what, path, headers) in cases {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = report(addr, &path, &headers).await;
        assert_eq!(r["sub"], "alice", "{what}");
    }
}

#[tokio::test]
async fn query_and_cookie_sources_are_opt_in() {
    let addr = hs_server().await;
    let t = good_token();
    assert_eq!(
        status(addr, &format!("/ws?access_token={t}"), &[]).await,
        401
    );
    assert_eq!(
        status(addr, "/ws", &[("cookie", &format!("access_token={t}"))]).await,
        401
    );
}

#[tokio::test]
async fn custom_cookie_and_query_names_are_honoured() {
    let layer = hs_builder()
        .sources([TokenSource::Cookie, TokenSource::Query])
        .origin_allow_list(true)
        .cookie_name("jwt")
        .query_param("t")
        .build()
        .await
        .expect("layer");
    let addr = serve(layer).await;
    let t = good_token();
    let r = report(addr, &format!("/ws?t={t}&access_token=keep"), &[]).await;
    assert_eq!(r["query"], "access_token=keep");
    let r = report(
        addr,
        "/ws",
        &[("cookie", &format!("access_token=keep; jwt={t}"))],
    )
    .await;
    assert_eq!(r["cookie"], "access_token=keep");
}

#[tokio::test]
async fn the_authorization_header_wins_over_other_sources() {
    let layer = hs_builder()
        .sources([
            TokenSource::Protocol,
            TokenSource::Query,
            TokenSource::Header,
        ])
        .build()
        .await
        .expect("layer");
    let addr = serve(layer).await;
    let good = good_token();
    let bad = mint(
        Algorithm::HS256,
        None,
        &claims(json!({"exp": now() - 3600})),
    );
    // Valid header, expired token elsewhere: the header decides.
    let st = status(
        addr,
        &format!("/ws?access_token={bad}"),
        &[
            ("authorization", &format!("Bearer {good}")),
            ("sec-websocket-protocol", &format!("bearer, {bad}")),
        ],
    )
    .await;
    assert_eq!(st, 101);
    // Expired header, valid token elsewhere: still the header decides.
    let st = status(
        addr,
        &format!("/ws?access_token={good}"),
        &[
            ("authorization", &format!("Bearer {bad}")),
            ("sec-websocket-protocol", &format!("bearer, {good}")),
        ],
    )
    .await;
    assert_eq!(st, 401);
}

#[tokio::test]
async fn cookie_source_without_origin_allow_list_is_refused_at_build() {
    let b = hs_builder().sources([TokenSource::Header, TokenSource::Cookie]);
    assert!(matches!(
        b.validate(),
        Err(JwtConfigError::CookieWithoutOriginAllowList)
    ));
    assert!(matches!(
        b.clone().build().await,
        Err(JwtConfigError::CookieWithoutOriginAllowList)
    ));
    assert!(b.origin_allow_list(true).validate().is_ok());
}

#[tokio::test]
async fn bad_configurations_are_refused_with_the_key_named() {
    let e = JwtAuthLayer::builder().build().await.expect_err("no keys");
    assert!(matches!(e, JwtConfigError::NoKeys));
    let e = JwtAuthLayer::builder()
        .public_keys([fixture_path("rsa_private.pem")])
        .build()
        .await
        .expect_err("private key");
    assert!(e.to_string().contains("private key"), "{e}");
    let dir = tempfile::tempdir().expect("tempdir");
    let pem_secret = dir.path().join("hs.secret");
    std::fs::write(&pem_secret, fixture("rsa_public.pem")).expect("write");
    let e = JwtAuthLayer::builder()
        .secret_file(&pem_secret)
        .build()
        .await
        .expect_err("pem secret");
    assert!(matches!(e, JwtConfigError::SecretIsPem { .. }), "{e}");
    let e = JwtAuthLayer::builder()
        .secret_env("WSGATE_TEST_SURELY_UNSET_VARIABLE")
        .build()
        .await
        .expect_err("unset env");
    assert!(
        e.to_string().contains("WSGATE_TEST_SURELY_UNSET_VARIABLE"),
        "{e}"
    );
    let e = hs_builder()
        .forward_claim("sub", "Authorization")
        .build()
        .await
        .expect_err("reserved header");
    assert!(matches!(e, JwtConfigError::ForwardHeader { .. }), "{e}");
    let e = hs_builder()
        .jwks_url("ftp://idp/jwks")
        .validate()
        .expect_err("scheme");
    assert!(matches!(e, JwtConfigError::JwksUrl { .. }), "{e}");
    assert!(matches!(
        hs_builder().sources([]).validate(),
        Err(JwtConfigError::NoSources)
    ));
    assert!("cookies".parse::<TokenSource>().is_err());
}

#[tokio::test]
async fn secrets_load_from_a_file_and_from_the_environment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("hs.secret");
    let mut content = SECRET.to_vec();
    content.extend_from_slice(b"\n");
    std::fs::write(&path, content).expect("write");
    let addr = serve(
        JwtAuthLayer::builder()
            .secret_file(&path)
            .build()
            .await
            .expect("layer"),
    )
    .await;
    assert_eq!(status_with(addr, &good_token()).await, 101);

    // The only test that touches the environment, with a name no other test uses.
    std::env::set_var(
        "WSGATE_JWT_TEST_SECRET",
        std::str::from_utf8(SECRET).expect("utf8"),
    );
    let layer = JwtAuthLayer::from_secret_env("WSGATE_JWT_TEST_SECRET")
        .await
        .expect("layer");
    let addr = serve(layer).await;
    assert_eq!(status_with(addr, &good_token()).await, 101);
}

#[tokio::test]
async fn the_token_is_stripped_before_the_handler() {
    let layer = hs_builder()
        .sources([
            TokenSource::Header,
            TokenSource::Protocol,
            TokenSource::Cookie,
            TokenSource::Query,
        ])
        .origin_allow_list(true)
        .build()
        .await
        .expect("layer");
    let addr = serve(layer).await;
    let t = good_token();
    let r = report(
        addr,
        &format!("/ws?x=1&access_token={t}&y=2"),
        &[
            ("authorization", &format!("Bearer {t}")),
            ("cookie", &format!("a=1; access_token={t}; b=2")),
            ("sec-websocket-protocol", &format!("bearer, {t}, chat.v1")),
        ],
    )
    .await;
    assert_eq!(r["sub"], "alice");
    assert_eq!(r["authorization"], serde_json::Value::Null);
    assert_eq!(r["cookie"], "a=1; b=2");
    assert_eq!(r["query"], "x=1&y=2");
    assert_eq!(r["protocol"], "chat.v1");
    assert!(
        !r.to_string().contains(&t),
        "token reached the handler: {r}"
    );
}

#[tokio::test]
async fn the_protocol_marker_is_echoed_when_no_subprotocol_is_chosen() {
    let addr = hs_server().await;
    let t = good_token();
    // Pair form, nothing else offered: the 101 must name `bearer` (tungstenite, like a
    // browser, fails a handshake that offered protocols and got none back).
    let (mut ws, res) = connect(
        addr,
        "/ws",
        &[("sec-websocket-protocol", &format!("bearer, {t}"))],
    )
    .await
    .expect("handshake");
    assert_eq!(res.headers()["sec-websocket-protocol"], "bearer");
    let r = first_text(&mut ws).await;
    assert_eq!(r["marker"], "bearer");
    assert_eq!(r["protocol"], serde_json::Value::Null);

    // Prefix form with the bare marker.
    let (_, res) = connect(
        addr,
        "/ws",
        &[(
            "sec-websocket-protocol",
            &format!("wsgate.bearer.{t}, wsgate.bearer"),
        )],
    )
    .await
    .expect("handshake");
    assert_eq!(res.headers()["sec-websocket-protocol"], "wsgate.bearer");

    // A real subprotocol chosen by the handler is left alone.
    let (_, res) = connect(
        addr,
        "/ws",
        &[("sec-websocket-protocol", &format!("bearer, {t}, chat.v1"))],
    )
    .await
    .expect("handshake");
    assert_eq!(res.headers()["sec-websocket-protocol"], "chat.v1");
}

#[tokio::test]
async fn missing_scope_or_required_claim_gets_403() {
    let layer = hs_builder()
        .require_scopes(["chat:read"])
        .require_claims(["tenant"])
        .build()
        .await
        .expect("layer");
    let addr = serve(layer).await;
    let no_scope = mint(
        Algorithm::HS256,
        None,
        &claims(json!({"scope": "chat:write", "tenant": "t1"})),
    );
    let res = refusal(
        addr,
        "/ws",
        &[("authorization", &format!("Bearer {no_scope}"))],
    )
    .await;
    assert_eq!(res.status(), 403);
    assert!(www_authenticate(&res).contains("insufficient_scope"));
    let no_claim = mint(
        Algorithm::HS256,
        None,
        &claims(json!({"scope": "chat:read"})),
    );
    assert_eq!(status_with(addr, &no_claim).await, 403);
    for ok in [
        claims(json!({"scope": "profile chat:read", "tenant": "t1"})),
        claims(json!({"scp": ["chat:read"], "tenant": "t1"})),
        claims(json!({"scopes": ["x", "chat:read"], "tenant": "t1"})),
    ] {
        let token = mint(Algorithm::HS256, None, &ok);
        assert_eq!(status_with(addr, &token).await, 101, "{ok}");
    }
}

#[tokio::test]
async fn forwarded_claim_headers_replace_client_copies() {
    let layer = hs_builder()
        .forward_claims([
            ("sub", "X-Auth-Subject"),
            ("level", "X-Auth-Level"),
            ("roles", "X-Auth-Roles"),
        ])
        .build()
        .await
        .expect("layer");
    let addr = serve(layer).await;
    let token = mint(
        Algorithm::HS256,
        None,
        &claims(json!({"level": 3, "roles": ["a", "b"]})),
    );
    let r = report(
        addr,
        "/ws",
        &[
            ("authorization", &format!("Bearer {token}")),
            ("x-auth-subject", "mallory"),
            ("x-auth-subject", "eve"),
        ],
    )
    .await;
    assert_eq!(r["x_auth_subject"], "alice");
    assert_eq!(r["x_auth_level"], "3");
    assert_eq!(r["x_auth_roles"], r#"["a","b"]"#);

    // A token without the claim still removes the client's copy.
    let no_sub = mint(Algorithm::HS256, None, &claims(json!({"sub": null})));
    let r = report(
        addr,
        "/ws",
        &[
            ("authorization", &format!("Bearer {no_sub}")),
            ("x-auth-subject", "mallory"),
        ],
    )
    .await;
    assert_eq!(r["x_auth_subject"], serde_json::Value::Null);
}

#[tokio::test]
async fn the_claims_extractor_reads_verified_claims() {
    let addr = hs_server().await;
    let t = good_token();
    let (mut ws, _) = connect(addr, "/typed", &[("authorization", &format!("Bearer {t}"))])
        .await
        .expect("handshake");
    assert_eq!(first_text(&mut ws).await, "hello alice");
    // Without the layer in front, the extractor reports the wiring bug.
    let res = refusal(addr, "/open/typed", &[]).await;
    assert_eq!(res.status(), 500);
    let body = String::from_utf8(res.body().clone().unwrap_or_default()).unwrap_or_default();
    assert!(body.contains("JwtAuthLayer missing"), "{body}");
    // Claims that do not fit the handler's type: 401.
    let no_sub = mint(Algorithm::HS256, None, &claims(json!({"sub": null})));
    assert_eq!(
        status(
            addr,
            "/typed",
            &[("authorization", &format!("Bearer {no_sub}"))]
        )
        .await,
        401
    );
}

#[tokio::test]
async fn token_expiry_is_handed_to_the_handler() {
    let exp = now() + 120;
    let token = mint(Algorithm::HS256, None, &claims(json!({"exp": exp})));
    let addr = hs_server().await;
    let r = report(
        addr,
        "/ws",
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await;
    assert_eq!(r["expiry_at"], exp);
    assert_eq!(r["expiry_close"], true);

    let addr = serve(
        hs_builder()
            .on_expiry(OnExpiry::Keep)
            .build()
            .await
            .expect("layer"),
    )
    .await;
    let r = report(
        addr,
        "/ws",
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await;
    assert_eq!(r["expiry_close"], false);
}

#[tokio::test]
async fn kidless_tokens_try_the_keys_of_their_algorithm() {
    // Two HMAC secrets and no kid: the token signed with the second one is found.
    let layer = JwtAuthLayer::builder()
        .secret(b"another-secret-another-secret-0000".to_vec())
        .secret(SECRET)
        .build()
        .await
        .expect("layer");
    let addr = serve(layer).await;
    assert_eq!(status_with(addr, &good_token()).await, 101);
}
