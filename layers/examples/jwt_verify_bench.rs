//! Per-handshake cost of JWT verification in [`JwtAuthLayer`], for RS256, ES256, EdDSA and
//! HS256: a fresh token every time (signature verified; the verified-token cache only
//! adds an insert), the same with the cache off, and one reused token (a cache hit).
//!
//! Each operation is one `tower::ServiceExt::oneshot` of a `GET` with
//! `Authorization: Bearer <token>` through the layer to a service that answers `200`, so
//! it includes token extraction and stripping, the claims hand-off and the response.
//!
//! ```text
//! cargo run --release -p wsgate-layers --example jwt_verify_bench
//! ```

use std::{
    convert::Infallible,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use axum::body::Body;
use http::{Request, Response, StatusCode};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use tower::{Layer, ServiceExt};
use wsgate_layers::jwt::JwtAuthLayer;

const SECRET: &[u8] = b"bench-secret-0123456789abcdef0123456789";
/// Distinct tokens per algorithm for the "fresh" runs (RSA signing makes minting slow).
const FRESH: usize = 2_000;
/// Iterations of the reused token.
const REUSED: usize = 200_000;

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {path}: {e}"))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn layer(alg: Algorithm, cache: usize) -> JwtAuthLayer {
    let b = JwtAuthLayer::builder()
        .issuer("https://issuer.test")
        .audience("wsgate")
        .verified_cache(cache);
    let b = match alg {
        Algorithm::HS256 => b.secret(SECRET),
        Algorithm::RS256 => b.public_key_pem(fixture("rsa_public.pem")),
        Algorithm::ES256 => b.public_key_pem(fixture("ec256_public.pem")),
        Algorithm::EdDSA => b.public_key_pem(fixture("ed25519_public.pem")),
        other => panic!("{other:?} is not benchmarked"),
    };
    b.build().await.expect("layer")
}

fn key(alg: Algorithm) -> EncodingKey {
    match alg {
        Algorithm::HS256 => EncodingKey::from_secret(SECRET),
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&fixture("rsa_private.pem")).expect("rsa"),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&fixture("ec256_private.pem")).expect("ec"),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&fixture("ed25519_private.pem")).expect("ed"),
        other => panic!("{other:?} is not benchmarked"),
    }
}

fn tokens(alg: Algorithm, n: usize) -> Vec<String> {
    let key = key(alg);
    let header = Header::new(alg);
    (0..n)
        .map(|i| {
            let claims = serde_json::json!({
                "sub": format!("user-{i}"),
                "iss": "https://issuer.test",
                "aud": "wsgate",
                "iat": now(),
                "exp": now() + 3600,
                "jti": i,
            });
            jsonwebtoken::encode(&header, &claims, &key).expect("encode")
        })
        .collect()
}

async fn handshake(layer: &JwtAuthLayer, token: &str) {
    let inner = tower::service_fn(|_req: Request<Body>| async {
        Ok::<_, Infallible>(Response::new(Body::empty()))
    });
    let req = Request::get("/ws")
        .header("authorization", format!("Bearer {token}"))
        .body(Body::empty())
        .expect("request");
    let res = match layer.layer(inner).oneshot(req).await {
        Ok(res) => res,
        Err(never) => match never {},
    };
    assert_eq!(res.status(), StatusCode::OK, "token refused");
}

async fn time_tokens<'a>(layer: &JwtAuthLayer, tokens: impl Iterator<Item = &'a str>) -> f64 {
    let mut n = 0u32;
    let start = Instant::now();
    for t in tokens {
        handshake(layer, t).await;
        n += 1;
    }
    per_op(start.elapsed(), n)
}

fn per_op(d: Duration, n: u32) -> f64 {
    d.as_secs_f64() * 1e6 / f64::from(n.max(1))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    println!(
        "{:<6} {:>18} {:>18} {:>18} {:>9}",
        "alg", "fresh, cache on", "fresh, cache off", "reused (hit)", "speedup"
    );
    for alg in [
        Algorithm::RS256,
        Algorithm::ES256,
        Algorithm::EdDSA,
        Algorithm::HS256,
    ] {
        let fresh = tokens(alg, FRESH);
        let on = layer(alg, 10_000).await;
        let off = layer(alg, 0).await;
        // Warm up both paths (allocations, lazy init).
        for t in fresh.iter().take(50) {
            handshake(&off, t).await;
        }
        let fresh_on = time_tokens(&on, fresh.iter().map(String::as_str)).await;
        let fresh_off = time_tokens(&off, fresh.iter().map(String::as_str)).await;
        let reused = &fresh[0];
        let hit = time_tokens(&on, std::iter::repeat_n(reused.as_str(), REUSED)).await;
        let stats = on.cache_stats();
        assert!(stats.hits >= REUSED as u64, "reused token missed the cache");
        println!(
            "{:<6} {:>15.2} µs {:>15.2} µs {:>15.2} µs {:>8.0}x",
            format!("{alg:?}"),
            fresh_on,
            fresh_off,
            hit,
            fresh_off / hit
        );
    }
    println!(
        "(µs per handshake through the layer; {FRESH} fresh tokens, {REUSED} reuses; one thread)"
    );
}
