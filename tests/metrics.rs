//! Handshake outcomes: every refused handshake is counted once, under the outcome its
//! status stands for, whichever part of a route's stack answered it.

mod support;

use support::*;
use wsgate::{metrics::Outcome, server::Running};

fn token(sub: &str) -> String {
    hs256_token(HS256_SECRET, sub)
}

/// The status page's list of refusals: (route, status, outcome), oldest first.
fn rejections(g: &Running) -> Vec<(String, u16, &'static str)> {
    g.metrics
        .recent_rejections()
        .into_iter()
        .map(|r| (r.route, r.status, r.outcome))
        .collect()
}

#[tokio::test]
async fn a_refusal_by_the_handler_is_counted_once() {
    let b = Backend::start(BackendOpts::named("a")).await;
    let g = gate(&one_route(&[&b.url], "origins = [\"https://app.test\"]\n")).await;
    let url = ws_url(&g, "/ws");
    assert_eq!(
        refused_status(&url, &[("origin", "https://evil.test")]).await,
        403
    );
    // The handler counted it; the outcome counter around the layers must not again.
    assert_eq!(g.metrics.handshakes(Outcome::Forbidden), 1);
    assert_eq!(rejections(&g), [("/ws".to_string(), 403, "forbidden")]);
    let _ws = connect_with(&url, &[("origin", "https://app.test")])
        .await
        .unwrap();
    assert_eq!(g.metrics.handshakes(Outcome::Ok), 1);
    assert_eq!(rejections(&g).len(), 1);
}

#[tokio::test]
async fn layer_refusals_are_counted_by_status_and_the_rate_limit_comes_before_jwt() {
    let (_dir, secret) = hs256_secret_file();
    let b = Backend::start(BackendOpts::named("a")).await;
    let route = format!(
        "[route.jwt]\nsecret_file = \"{}\"\n\n[route.rate_limit]\nper_ip = \"1/h\"\nburst = 2\n",
        secret.display()
    );
    let g = gate(&one_route(&[&b.url], &route)).await;
    let url = ws_url(&g, "/ws");
    let bad = [("authorization", "Bearer not.a.token")];
    assert_eq!(refused_status(&url, &bad).await, 401);
    assert_eq!(refused_status(&url, &bad).await, 401);
    // The two bad tokens spent the burst: the rate limit runs in front of the JWT check
    // (behind it, a valid token would now be let through).
    let good = format!("Bearer {}", token("alice"));
    assert_eq!(refused_status(&url, &[("authorization", &good)]).await, 429);
    assert_eq!(g.metrics.handshakes(Outcome::AuthFailed), 2);
    assert_eq!(g.metrics.handshakes(Outcome::RateLimited), 1);
    assert_eq!(g.metrics.handshakes(Outcome::Ok), 0);
    assert_eq!(
        rejections(&g),
        [
            ("/ws".to_string(), 401, "auth_failed"),
            ("/ws".to_string(), 401, "auth_failed"),
            ("/ws".to_string(), 429, "rate_limited"),
        ]
    );
}

#[tokio::test]
async fn bad_request_lines_and_unknown_paths_are_answered_before_any_count() {
    let b = Backend::start(BackendOpts::named("a")).await;
    let g = gate(&one_route(&[&b.url], "")).await;
    // Refused by the request checks in front of the route's stack, and by the
    // not-found answer: no handshake of a route, so nothing is counted.
    assert_eq!(refused_status(&ws_url(&g, "/ws?x=%zz"), &[]).await, 400);
    assert_eq!(refused_status(&ws_url(&g, "/app/%2e%2e/x"), &[]).await, 400);
    assert_eq!(refused_status(&ws_url(&g, "/nowhere"), &[]).await, 404);
    assert_eq!(
        refused_status(&ws_url(&g, "/nowhere/../ws"), &[]).await,
        400
    );
    assert_eq!(g.metrics.handshakes(Outcome::BadRequest), 0);
    assert!(rejections(&g).is_empty(), "{:?}", rejections(&g));
    // The same checks sit in front of the prefix route's handler, which then counts.
    let _ws = connect(&ws_url(&g, "/app/room")).await;
    assert_eq!(g.metrics.handshakes(Outcome::Ok), 1);
}

/// A connection cap's refusal is counted as `too_many_connections` whatever its status
/// (429 per IP, 503 for the route), not as the rate limit or missing backend its
/// status alone would suggest.
#[tokio::test]
async fn connection_cap_refusals_are_counted_as_too_many_connections() {
    let b = Backend::start(BackendOpts::named("a")).await;
    let g = gate(&one_route(
        &[&b.url],
        "[route.rate_limit]\nmax_connections_per_ip = 1\n",
    ))
    .await;
    let _held = connect(&ws_url(&g, "/ws")).await;
    assert_eq!(refused_status(&ws_url(&g, "/ws"), &[]).await, 429);
    assert_eq!(g.metrics.handshakes(Outcome::TooManyConnections), 1);
    assert_eq!(g.metrics.handshakes(Outcome::RateLimited), 0);
    assert_eq!(
        rejections(&g),
        [("/ws".to_string(), 429, "too_many_connections")]
    );

    let g = gate(&one_route(
        &[&b.url],
        "[route.rate_limit]\nmax_connections = 1\n",
    ))
    .await;
    let _held = connect(&ws_url(&g, "/ws")).await;
    assert_eq!(refused_status(&ws_url(&g, "/ws"), &[]).await, 503);
    assert_eq!(g.metrics.handshakes(Outcome::TooManyConnections), 1);
    assert_eq!(g.metrics.handshakes(Outcome::NoBackend), 0);
}
