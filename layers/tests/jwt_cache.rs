//! The verified-token cache: reuse skips the signature check, expiry is enforced on every
//! use at the same second as without the cache, and the cache stays bounded.

mod jwt_common;

use std::time::{Duration, Instant};

use jsonwebtoken::Algorithm;
use jwt_common::*;
use serde_json::json;
use wsgate_layers::jwt::DEFAULT_VERIFIED_CACHE;

#[tokio::test]
async fn a_reused_token_is_served_from_the_cache() {
    let layer = hs_builder()
        .forward_claim("sub", "x-auth-subject")
        .build()
        .await
        .expect("layer");
    let stats = layer.clone();
    assert_eq!(stats.cache_stats().capacity, DEFAULT_VERIFIED_CACHE);
    let addr = serve(layer).await;
    let token = good_token();
    let auth = format!("Bearer {token}");
    let first = report(addr, "/ws", &[("authorization", &auth)]).await;
    let s = stats.cache_stats();
    assert_eq!((s.hits, s.misses, s.entries), (0, 1, 1));
    // Served from the cache, with everything the handler gets from a verified token.
    let second = report(addr, "/ws", &[("authorization", &auth)]).await;
    let s = stats.cache_stats();
    assert_eq!((s.hits, s.misses, s.entries), (1, 1, 1));
    for field in ["sub", "x_auth_subject", "expiry_at", "authorization"] {
        assert_eq!(
            first[field], second[field],
            "{field} differs on a cache hit"
        );
    }
    assert_eq!(second["sub"], "alice");
    assert_eq!(second["x_auth_subject"], "alice");
    assert!(
        second["authorization"].is_null(),
        "token not stripped on a hit"
    );
    // A different token is a miss, however similar.
    assert_eq!(status_with(addr, &good_token_with_jti("other")).await, 101);
    assert_eq!(stats.cache_stats().misses, 2);
}

fn good_token_with_jti(jti: &str) -> String {
    mint(Algorithm::HS256, None, &claims(json!({ "jti": jti })))
}

#[tokio::test]
async fn a_damaged_copy_of_a_cached_token_is_refused() {
    let layer = hs_builder().build().await.expect("layer");
    let token = good_token();
    assert_eq!(oneshot_status(&layer, &token).await, 200);
    assert_eq!(oneshot_status(&layer, &token).await, 200);
    assert_eq!(layer.cache_stats().hits, 1);
    // Change one signature character: different bytes, so no hit, and a bad signature.
    let i = token.len() - 5;
    let c = if &token[i..=i] == "A" { "B" } else { "A" };
    let bad = format!("{}{c}{}", &token[..i], &token[i + 1..]);
    assert_eq!(oneshot_status(&layer, &bad).await, 401);
    assert_eq!(layer.cache_stats().hits, 1);
}

#[tokio::test]
async fn verified_cache_zero_turns_the_cache_off() {
    let layer = hs_builder().verified_cache(0).build().await.expect("layer");
    let token = good_token();
    for _ in 0..3 {
        assert_eq!(oneshot_status(&layer, &token).await, 200);
    }
    let s = layer.cache_stats();
    assert_eq!((s.hits, s.entries, s.capacity), (0, 0, 0));
}

#[tokio::test]
async fn tokens_refused_for_claims_are_not_cached() {
    let layer = hs_builder()
        .require_scopes(["chat"])
        .build()
        .await
        .expect("layer");
    let token = good_token();
    assert_eq!(oneshot_status(&layer, &token).await, 403);
    assert_eq!(oneshot_status(&layer, &token).await, 403);
    let s = layer.cache_stats();
    assert_eq!((s.hits, s.entries), (0, 0));
}

/// A cached token and fresh (uncached) tokens with the same `exp` are tried side by side
/// while the wall clock crosses `exp + leeway`. Whenever the fresh tokens before and after
/// agree, the cached one must give the same answer: the boundary is the same second.
#[tokio::test]
async fn a_cached_token_expires_at_the_same_second_as_an_uncached_one() {
    let layer = hs_builder()
        .leeway(Duration::from_secs(1))
        .build()
        .await
        .expect("layer");
    let exp = now();
    let mint_exp = |jti: u64| {
        mint(
            Algorithm::HS256,
            None,
            &claims(json!({ "exp": exp, "iat": exp - 10, "jti": jti })),
        )
    };
    let cached = mint_exp(0);
    assert_eq!(oneshot_status(&layer, &cached).await, 200, "valid at first");
    let mut jti = 1;
    let mut compared_valid = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let before = oneshot_status(&layer, &mint_exp(jti)).await;
        let hits = layer.cache_stats().hits;
        let from_cache = oneshot_status(&layer, &cached).await;
        let after = oneshot_status(&layer, &mint_exp(jti + 1)).await;
        jti += 2;
        if before == after {
            assert_eq!(
                from_cache,
                before,
                "cached verdict differs from uncached at now={}",
                now()
            );
            if before == 200 {
                assert_eq!(layer.cache_stats().hits, hits + 1, "not served from cache");
                compared_valid += 1;
            } else {
                assert_eq!(before, 401);
                break;
            }
        }
        assert!(Instant::now() < deadline, "exp + leeway never passed");
        // Polling the wall clock: the event is a second boundary, not another task.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(compared_valid > 0, "never compared while still valid");
    // Expired for good: refused again, not served.
    let hits = layer.cache_stats().hits;
    assert_eq!(oneshot_status(&layer, &cached).await, 401);
    assert_eq!(layer.cache_stats().hits, hits);
}

#[tokio::test]
async fn exp_within_leeway_is_served_from_the_cache_and_beyond_is_refused() {
    let layer = hs_builder()
        .leeway(Duration::from_secs(60))
        .build()
        .await
        .expect("layer");
    let within = mint(Algorithm::HS256, None, &claims(json!({"exp": now() - 30})));
    assert_eq!(oneshot_status(&layer, &within).await, 200);
    assert_eq!(oneshot_status(&layer, &within).await, 200);
    assert_eq!(layer.cache_stats().hits, 1);
    let beyond = mint(Algorithm::HS256, None, &claims(json!({"exp": now() - 90})));
    assert_eq!(oneshot_status(&layer, &beyond).await, 401);
    assert_eq!(oneshot_status(&layer, &beyond).await, 401);
    assert_eq!(layer.cache_stats().entries, 1);
}

#[tokio::test]
async fn the_cache_stays_bounded_under_50k_distinct_tokens() {
    let layer = hs_builder().build().await.expect("layer");
    let hot = good_token_with_jti("hot");
    assert_eq!(oneshot_status(&layer, &hot).await, 200);
    let n = 50_000;
    for i in 0..n {
        let token = good_token_with_jti(&i.to_string());
        assert_eq!(oneshot_status(&layer, &token).await, 200);
        if i % 100 == 0 {
            // A token in steady use survives the flood (clock eviction spares it).
            assert_eq!(oneshot_status(&layer, &hot).await, 200);
        }
        if i % 5_000 == 0 {
            assert!(layer.cache_stats().entries <= DEFAULT_VERIFIED_CACHE);
        }
    }
    let s = layer.cache_stats();
    assert_eq!(s.entries, DEFAULT_VERIFIED_CACHE, "{s:?}");
    assert_eq!(s.misses, n as u64 + 1);
    assert_eq!(s.hits, n as u64 / 100, "the hot token was evicted: {s:?}");
    // A small cap holds too.
    let small = hs_builder()
        .verified_cache(100)
        .build()
        .await
        .expect("layer");
    for i in 0..2_000 {
        assert_eq!(
            oneshot_status(&small, &good_token_with_jti(&i.to_string())).await,
            200
        );
    }
    assert_eq!(small.cache_stats().entries, 100);
}
