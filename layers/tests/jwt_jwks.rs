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
                "/moved",
                get(|| async {
                    (
                        axum::http::StatusCode::FOUND,
                        [("location", "/.well-known/jwks.json")],
                    )
                }),
            )
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

#[tokio::test]
async fn a_key_rotated_out_invalidates_its_cached_tokens() {
    let idp = Idp::start(json!({"keys": [jwk(Algorithm::ES256, "ec-1")]})).await;
    let layer = JwtAuthLayer::builder()
        .jwks_url(idp.url())
        .jwks_refetch_min_interval(Duration::from_secs(3600))
        .build()
        .await
        .expect("layer");
    let token = token_ec1();
    assert_eq!(oneshot_status(&layer, &token).await, 200);
    assert_eq!(oneshot_status(&layer, &token).await, 200);
    assert_eq!(layer.cache_stats().hits, 1);

    // An unchanged document keeps the cached verdicts.
    assert_eq!(layer.refresh_keys().await, Ok(1));
    assert_eq!(oneshot_status(&layer, &token).await, 200);
    assert_eq!(layer.cache_stats().hits, 2);

    // ec-1 is rotated out: its cached tokens must not pass any more.
    idp.set(json!({"keys": [jwk_ec256b("ec-2")]}));
    assert_eq!(layer.refresh_keys().await, Ok(1));
    assert_eq!(oneshot_status(&layer, &token).await, 401);
    assert_eq!(layer.cache_stats().hits, 2);
    assert_eq!(oneshot_status(&layer, &token_ec2()).await, 200);
}

#[tokio::test]
async fn a_redirecting_jwks_url_fails_with_a_clear_reason() {
    let idp = Idp::start(json!({"keys": [jwk(Algorithm::ES256, "ec-1")]})).await;
    let err = JwtAuthLayer::builder()
        .jwks_url(format!("http://{}/moved", idp.addr))
        .build()
        .await
        .expect_err("redirect");
    let msg = err.to_string();
    assert!(matches!(err, JwtConfigError::JwksFetch { .. }), "{msg}");
    assert!(
        msg.contains("302") && msg.contains("redirects are not followed"),
        "{msg}"
    );
}

/// A CA, and a JWKS server on 127.0.0.1 with a certificate it signed (hand-written
/// HTTP/1.1 over tokio-rustls: one request per connection, then close).
struct TlsIdp {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    ca_pem: String,
    _tasks: tokio::task::JoinSet<()>,
}

fn new_ca() -> (rcgen::CertificateParams, rcgen::KeyPair, String) {
    let key = rcgen::KeyPair::generate().expect("ca key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let pem = params.self_signed(&key).expect("ca cert").pem();
    (params, key, pem)
}

impl TlsIdp {
    async fn start(doc: Value) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (ca_params, ca_key, ca_pem) = new_ca();
        let key = rcgen::KeyPair::generate().expect("key");
        let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).expect("params");
        let issuer = rcgen::Issuer::new(ca_params, &ca_key);
        let cert = params.signed_by(&key, &issuer).expect("cert");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls_pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
            )
            .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let hits = Arc::new(AtomicUsize::new(0));
        let body = doc.to_string();
        let mut tasks = tokio::task::JoinSet::new();
        let counter = hits.clone();
        tasks.spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let body = body.clone();
                let counter = counter.clone();
                conns.spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut req = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 16 * 1024 {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                    }
                    counter.fetch_add(1, Ordering::SeqCst);
                    let res = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = tls.write_all(res.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        Self {
            addr,
            hits,
            ca_pem,
            _tasks: tasks,
        }
    }

    fn url(&self) -> String {
        format!("https://{}/.well-known/jwks.json", self.addr)
    }
}

#[tokio::test]
async fn jwks_over_https_is_trusted_through_jwks_ca_file() {
    let idp = TlsIdp::start(json!({"keys": [jwk(Algorithm::ES256, "ec-1")]})).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &idp.ca_pem).expect("write ca");
    let layer = JwtAuthLayer::builder()
        .jwks_url(idp.url())
        .jwks_ca_file(&ca)
        .build()
        .await
        .expect("layer");
    assert_eq!(idp.hits.load(Ordering::SeqCst), 1);
    assert_eq!(layer.key_count(), 1);
    assert_eq!(oneshot_status(&layer, &token_ec1()).await, 200);
    // The background/unknown-kid path uses the same client.
    assert_eq!(layer.refresh_keys().await, Ok(1));
    assert_eq!(idp.hits.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn jwks_over_https_signed_by_another_ca_fails_the_build() {
    let idp = TlsIdp::start(json!({"keys": [jwk(Algorithm::ES256, "ec-1")]})).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let other = dir.path().join("other-ca.pem");
    std::fs::write(&other, new_ca().2).expect("write ca");
    let err = JwtAuthLayer::builder()
        .jwks_url(idp.url())
        .jwks_ca_file(&other)
        .jwks_timeout(Duration::from_secs(5))
        .build()
        .await
        .expect_err("untrusted server certificate");
    let msg = err.to_string();
    assert!(matches!(err, JwtConfigError::JwksFetch { .. }), "{msg}");
    assert!(msg.contains("TLS"), "{msg}");
    assert_eq!(idp.hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn jwks_ca_file_needs_an_https_jwks_url_and_a_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, new_ca().2).expect("write ca");
    let err = JwtAuthLayer::builder()
        .jwks_url("http://127.0.0.1:1/jwks.json")
        .jwks_ca_file(&ca)
        .validate()
        .expect_err("http with a CA file");
    assert!(err.to_string().contains("jwks_ca_file"), "{err}");
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").expect("write");
    let err = JwtAuthLayer::builder()
        .jwks_url("https://127.0.0.1:1/jwks.json")
        .jwks_ca_file(&empty)
        .build()
        .await
        .expect_err("no certificate");
    assert!(err.to_string().contains("jwks_ca_file"), "{err}");
}
