//! JWKS URL: initial fetch, rotation without restart, the unknown-kid re-fetch limit and
//! the background refresh, against a real local HTTP server.

mod jwt_common;

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use axum::{extract::State, routing::get, Router};
use jsonwebtoken::Algorithm;
use jwt_common::*;
use serde_json::{json, Value};
use wsgate_layers::jwt::{JwtAuthLayer, JwtConfigError};

/// A JWKS endpoint whose document can be swapped, counting the fetches it serves.
#[derive(Clone)]
struct Idp {
    doc: Arc<Mutex<String>>,
    hits: Arc<AtomicUsize>,
    addr: SocketAddr,
}

impl Idp {
    async fn start(doc: Value) -> Self {
        let doc = Arc::new(Mutex::new(doc.to_string()));
        let hits = Arc::new(AtomicUsize::new(0));
        let state = (doc.clone(), hits.clone());
        let app = Router::new()
            .route(
                "/.well-known/jwks.json",
                get(
                    |State((doc, hits)): State<(Arc<Mutex<String>>, Arc<AtomicUsize>)>| async move {
                        hits.fetch_add(1, Ordering::SeqCst);
                        let body = doc.lock().map(|d| d.clone()).unwrap_or_default();
                        ([("content-type", "application/json")], body)
                    },
                ),
            )
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { doc, hits, addr }
    }

    fn url(&self) -> String {
        format!("http://{}/.well-known/jwks.json", self.addr)
    }

    fn set(&self, doc: Value) {
        if let Ok(mut d) = self.doc.lock() {
            *d = doc.to_string();
        }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

fn token_ec1() -> String {
    mint(Algorithm::ES256, Some("ec-1"), &claims(json!({})))
}

fn token_ec2() -> String {
    mint_ec256b(Some("ec-2"), &claims(json!({})))
}

#[tokio::test]
async fn jwks_url_is_fetched_at_build_and_its_keys_verify() {
    let idp = Idp::start(
        json!({"keys": [jwk(Algorithm::ES256, "ec-1"), jwk(Algorithm::RS256, "rsa-1")]}),
    )
    .await;
    let layer = JwtAuthLayer::builder()
        .jwks_url(idp.url())
        .issuer(ISS)
        .audience(AUD)
        .build()
        .await
        .expect("layer");
    assert_eq!(idp.hits(), 1);
    assert_eq!(layer.key_count(), 2);
    let addr = serve(layer).await;
    assert_eq!(status_with(addr, &token_ec1()).await, 101);
    let rsa = mint(Algorithm::RS256, Some("rsa-1"), &claims(json!({})));
    assert_eq!(status_with(addr, &rsa).await, 101);
}

#[tokio::test]
async fn a_rotated_key_is_accepted_without_restart() {
    let idp = Idp::start(json!({"keys": [jwk(Algorithm::ES256, "ec-1")]})).await;
    let layer = JwtAuthLayer::builder()
        .jwks_url(idp.url())
        .jwks_refetch_min_interval(Duration::ZERO)
        .build()
        .await
        .expect("layer");
    let addr = serve(layer).await;
    assert_eq!(status_with(addr, &token_ec1()).await, 101);
    assert_eq!(status_with(addr, &token_ec2()).await, 401);

    // The identity provider rotates: ec-2 in, ec-1 out.
    idp.set(json!({"keys": [jwk_ec256b("ec-2")]}));
    assert_eq!(status_with(addr, &token_ec2()).await, 101);
    // ec-1 is now unknown (a re-fetch confirms it is gone).
    assert_eq!(status_with(addr, &token_ec1()).await, 401);
}

#[tokio::test]
async fn a_flood_of_unknown_kids_fetches_the_jwks_at_most_once_per_interval() {
    let idp = Idp::start(json!({"keys": [jwk(Algorithm::ES256, "ec-1")]})).await;
    let layer = JwtAuthLayer::builder()
        .jwks_url(idp.url())
        .jwks_refetch_min_interval(Duration::from_secs(3600))
        .build()
        .await
        .expect("layer");
    assert_eq!(idp.hits(), 1);
    let addr = serve(layer).await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..40 {
        let token = mint(
            Algorithm::ES256,
            Some(&format!("bogus-{i}")),
            &claims(json!({})),
        );
        tasks.spawn(async move { status_with(addr, &token).await });
    }
    while let Some(st) = tasks.join_next().await {
        assert_eq!(st.expect("task"), 401);
    }
    // The initial fetch plus at most one re-fetch for the whole flood.
    assert!(idp.hits() <= 2, "JWKS fetched {} times", idp.hits());
    // Known keys keep working during and after the flood.
    assert_eq!(status_with(addr, &token_ec1()).await, 101);
}

#[tokio::test]
async fn the_background_refresh_picks_up_new_keys() {
    let idp = Idp::start(json!({"keys": [jwk(Algorithm::ES256, "ec-1")]})).await;
    let layer = JwtAuthLayer::builder()
        .jwks_url(idp.url())
        .jwks_refresh_interval(Duration::from_millis(50))
        .jwks_refetch_min_interval(Duration::from_secs(3600))
        .build()
        .await
        .expect("layer");
    assert_eq!(layer.key_count(), 1);
    idp.set(json!({"keys": [jwk(Algorithm::ES256, "ec-1"), jwk_ec256b("ec-2")]}));
    // Poll the observable condition, bounded.
    let mut seen = false;
    for _ in 0..200 {
        if layer.key_count() == 2 {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(seen, "refresh did not pick up the new key");
    let addr = serve(layer).await;
    assert_eq!(status_with(addr, &token_ec2()).await, 101);
}

#[tokio::test]
async fn a_failed_refresh_keeps_the_old_keys() {
    let idp = Idp::start(json!({"keys": [jwk(Algorithm::ES256, "ec-1")]})).await;
    let layer = JwtAuthLayer::builder()
        .jwks_url(idp.url())
        .build()
        .await
        .expect("layer");
    idp.set(json!({"not": "a jwks"}));
    assert!(layer.refresh_keys().await.is_err());
    idp.set(json!({"keys": []}));
    assert!(layer.refresh_keys().await.is_err());
    assert_eq!(layer.key_count(), 1);
    let addr = serve(layer).await;
    assert_eq!(status_with(addr, &token_ec1()).await, 101);
}

#[tokio::test]
async fn the_refresh_task_stops_with_the_layer() {
    let idp = Idp::start(json!({"keys": [jwk(Algorithm::ES256, "ec-1")]})).await;
    let layer = JwtAuthLayer::builder()
        .jwks_url(idp.url())
        .jwks_refresh_interval(Duration::from_millis(20))
        .build()
        .await
        .expect("layer");
    // Wait until the task has demonstrably run.
    for _ in 0..200 {
        if idp.hits() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(idp.hits() >= 3);
    drop(layer);
    // Let an in-flight fetch finish, then no more may come. (Absence cannot be awaited;
    // ten refresh intervals is the bound.)
    tokio::time::sleep(Duration::from_millis(50)).await;
    let after_drop = idp.hits();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(idp.hits(), after_drop);
}

#[tokio::test]
async fn an_unreachable_jwks_url_fails_the_build() {
    // Bind and drop a listener to get a port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let err = JwtAuthLayer::builder()
        .jwks_url(format!("http://127.0.0.1:{port}/jwks.json"))
        .jwks_timeout(Duration::from_secs(2))
        .build()
        .await
        .expect_err("unreachable");
    assert!(matches!(err, JwtConfigError::JwksFetch { .. }), "{err}");
}
