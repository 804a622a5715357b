//! Limits shared between instances through a real `redis-server` (feature `redis`).
//!
//! Each test starts its own `redis-server` on a free loopback port (no persistence) and
//! kills it at the end. Without `redis-server` installed the tests fail, they do not skip:
//! `apt-get install -y redis-server`.
#![cfg(feature = "redis")]

use std::{net::SocketAddr, process::Stdio, time::Duration};

use axum::{
    extract::ws::{Message as AxMessage, WebSocketUpgrade},
    http::StatusCode,
    response::Response,
    routing::get,
    Extension, Router,
};
use futures_util::SinkExt;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    net::{TcpListener, TcpSocket, TcpStream},
    process::{Child, Command},
    task::JoinHandle,
};
use tokio_tungstenite::{tungstenite, WebSocketStream};
use wsgate_layers::{
    client_ip::ClientIpLayer,
    ratelimit::{
        redis::{FailMode, RedisLimits},
        ConnectionLimitLayer, IpRateLimitLayer,
    },
    Leases,
};

struct RedisServer {
    child: Child,
    port: u16,
}

impl RedisServer {
    async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut child = match Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
        {
            Ok(c) => c,
            Err(e) => panic!(
                "cannot start redis-server ({e}): these tests need it installed \
                 (apt-get install -y redis-server)"
            ),
        };
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(Duration::from_secs(10), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("Ready to accept connections") {
                    return true;
                }
            }
            false
        })
        .await;
        assert_eq!(ready, Ok(true), "redis-server did not become ready");
        Self { child, port }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn stop(&mut self) {
        let _ = self.child.kill().await;
    }

    async fn del(&self, key: &str) {
        let client = redis::Client::open(self.url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        redis::cmd("DEL")
            .arg(key)
            .query_async::<()>(&mut conn)
            .await
            .unwrap()
    }

    async fn members(&self, key: &str) -> Vec<String> {
        let client = redis::Client::open(self.url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        redis::cmd("ZRANGE")
            .arg(key)
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await
            .unwrap()
    }

    async fn zcard(&self, key: &str) -> u64 {
        let client = redis::Client::open(self.url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        redis::cmd("ZCARD")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap()
    }
}

struct Server {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(app: Router) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let _ = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await;
    });
    Server { addr, task }
}

async fn echo(ws: WebSocketUpgrade, leases: Option<Extension<Leases>>) -> Response {
    ws.on_upgrade(move |mut socket| async move {
        let _leases = leases;
        while let Some(Ok(msg)) = socket.recv().await {
            if matches!(msg, AxMessage::Close(_)) || socket.send(msg).await.is_err() {
                break;
            }
        }
    })
}

async fn ws_from(src: &str, to: SocketAddr) -> Result<WebSocketStream<TcpStream>, StatusCode> {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(format!("{src}:0").parse().unwrap()).unwrap();
    let stream = sock.connect(to).await.unwrap();
    match tokio_tungstenite::client_async(format!("ws://{to}/ws"), stream).await {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::Error::Http(resp)) => Err(resp.status()),
        Err(e) => panic!("handshake failed without a response: {e}"),
    }
}

fn rate_app(store: RedisLimits) -> Router {
    Router::new()
        .route("/ws", get(echo))
        .layer(
            IpRateLimitLayer::new("1/h".parse().unwrap())
                .burst(3)
                .redis(store),
        )
        .layer(ClientIpLayer::new())
}

fn conn_app(layer: ConnectionLimitLayer) -> Router {
    Router::new()
        .route("/ws", get(echo))
        .layer(layer)
        .layer(ClientIpLayer::new())
}

#[tokio::test]
async fn two_instances_sharing_redis_admit_no_more_handshakes_than_the_limit_together() {
    let mut redis = RedisServer::start().await;
    let a = serve(rate_app(RedisLimits::builder(redis.url()).build().unwrap())).await;
    let b = serve(rate_app(RedisLimits::builder(redis.url()).build().unwrap())).await;
    let mut admitted = 0;
    for i in 0..8 {
        let srv = if i % 2 == 0 { &a } else { &b };
        match ws_from("127.0.0.2", srv.addr).await {
            Ok(_) => admitted += 1,
            Err(s) => assert_eq!(s, StatusCode::TOO_MANY_REQUESTS),
        }
    }
    // Each instance alone would have admitted 3 (6 in all).
    assert_eq!(admitted, 3);
    // Another client has its own budget.
    assert!(ws_from("127.0.0.3", b.addr).await.is_ok());
    redis.stop().await;
}

#[tokio::test]
async fn two_instances_sharing_redis_enforce_one_per_ip_connection_cap() {
    let mut redis = RedisServer::start().await;
    let store_a = RedisLimits::builder(redis.url()).build().unwrap();
    let store_b = RedisLimits::builder(redis.url()).build().unwrap();
    let layer_a = ConnectionLimitLayer::new().per_ip(2).redis(store_a.clone());
    let limits_a = layer_a.limits().clone();
    let a = serve(conn_app(layer_a)).await;
    let b = serve(conn_app(
        ConnectionLimitLayer::new().per_ip(2).redis(store_b),
    ))
    .await;

    let mut first = ws_from("127.0.0.2", a.addr).await.unwrap();
    let _second = ws_from("127.0.0.2", b.addr).await.unwrap();
    // Instance A holds one socket locally, under its own cap: the refusal is Redis's.
    assert_eq!(
        ws_from("127.0.0.2", a.addr).await.unwrap_err(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(limits_a.open(), 1);
    let key = store_a.connection_key_for_ip(&limits_a, "127.0.0.2".parse().unwrap());
    assert_eq!(redis.zcard(&key).await, 2);

    first.close(None).await.unwrap();
    until_eq("the lease to be released", || redis.zcard(&key))
        .await_eq(1)
        .await;
    assert!(ws_from("127.0.0.2", b.addr).await.is_ok());
    redis.stop().await;
}

/// Waits for a value read from Redis to reach `want` (no event to await there).
struct Until<'a, F> {
    what: &'a str,
    f: F,
}

fn until_eq<F>(what: &str, f: F) -> Until<'_, F> {
    Until { what, f }
}

impl<'a, F, Fut> Until<'a, F>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = u64>,
{
    async fn await_at_least(self, want: u64) {
        self.await_that(|got| got >= want, &format!("at least {want}"))
            .await
    }

    async fn await_eq(self, want: u64) {
        self.await_that(|got| got == want, &want.to_string()).await
    }

    async fn await_that(mut self, ok: impl Fn(u64) -> bool, want: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let got = (self.f)().await;
            if ok(got) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {}: {got}, want {want}",
                self.what
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test]
async fn leases_are_renewed_while_open_and_a_crashed_instance_s_leases_expire() {
    let mut redis = RedisServer::start().await;
    let ttl = Duration::from_millis(600);
    let store_a = RedisLimits::builder(redis.url())
        .lease_ttl(ttl)
        .heartbeat(Duration::from_millis(100))
        .build()
        .unwrap();
    let store_b = RedisLimits::builder(redis.url()).build().unwrap();
    let a = serve(conn_app(
        ConnectionLimitLayer::new().per_ip(1).redis(store_a.clone()),
    ))
    .await;
    let b = serve(conn_app(
        ConnectionLimitLayer::new().per_ip(1).redis(store_b),
    ))
    .await;

    let mut held = ws_from("127.0.0.2", a.addr).await.unwrap();
    // Longer than the TTL: only the heartbeat keeps the lease (time is what is tested).
    tokio::time::sleep(ttl * 2).await;
    assert!(store_a.stats().renewed() >= 2);
    assert_eq!(
        ws_from("127.0.0.2", b.addr).await.unwrap_err(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // Instance A "crashes": no more renewals, no release.
    store_a.shutdown();
    tokio::time::sleep(ttl + Duration::from_millis(200)).await;
    assert!(ws_from("127.0.0.2", b.addr).await.is_ok());
    held.send(tungstenite::Message::text("still here"))
        .await
        .unwrap();
    redis.stop().await;
}

/// An instance whose lease expired while it could not renew (here: removed behind its
/// back, as another instance's admission prunes an expired lease) must not put it back
/// when it renews again: the slot belongs to whoever took it since.
#[tokio::test]
async fn an_expired_lease_is_not_resurrected_by_a_later_renewal() {
    let mut redis = RedisServer::start().await;
    let store_a = RedisLimits::builder(redis.url())
        .lease_ttl(Duration::from_secs(5))
        .heartbeat(Duration::from_millis(50))
        .build()
        .unwrap();
    let store_b = RedisLimits::builder(redis.url()).build().unwrap();
    let layer_a = ConnectionLimitLayer::new().per_ip(1).redis(store_a.clone());
    let limits_a = layer_a.limits().clone();
    let a = serve(conn_app(layer_a)).await;
    let b = serve(conn_app(
        ConnectionLimitLayer::new().per_ip(1).redis(store_b.clone()),
    ))
    .await;
    let _held_a = ws_from("127.0.0.2", a.addr).await.unwrap();
    let key = store_a.connection_key_for_ip(&limits_a, "127.0.0.2".parse().unwrap());
    assert_eq!(redis.zcard(&key).await, 1);

    // A's lease is gone from Redis; B's client takes the slot.
    redis.del(&key).await;
    let _held_b = ws_from("127.0.0.2", b.addr).await.unwrap();
    let before = store_a.stats().lost();
    until_eq("A's heartbeat to find its lease gone", || async {
        store_a.stats().lost() - before
    })
    .await_at_least(1)
    .await;
    // Two more renewals after that: a resurrected lease would be back by now.
    let renewed = store_a.stats().renewed();
    until_eq("two more renewals", || async {
        store_a.stats().renewed() - renewed
    })
    .await_at_least(2)
    .await;
    let members = redis.members(&key).await;
    assert_eq!(members.len(), 1, "over the limit: {members:?}");
    assert!(
        members[0].starts_with(store_b.instance()),
        "the slot went back to A: {members:?}"
    );
    redis.stop().await;
}

#[tokio::test]
async fn redis_stopped_mid_test_fails_open_to_local_limits_or_closed_with_503() {
    let mut redis = RedisServer::start().await;
    let open_store = RedisLimits::builder(redis.url())
        .fail_mode(FailMode::Open)
        .build()
        .unwrap();
    let closed_store = RedisLimits::builder(redis.url())
        .fail_mode(FailMode::Closed)
        .build()
        .unwrap();
    let open = serve(rate_app(open_store.clone())).await;
    let closed = serve(rate_app(closed_store.clone())).await;
    assert!(ws_from("127.0.0.2", open.addr).await.is_ok());
    assert!(ws_from("127.0.0.2", closed.addr).await.is_ok());
    assert_eq!(open_store.stats().errors(), 0);

    redis.stop().await;

    // Fail open: the local limiter (burst 3, untouched so far) decides.
    for _ in 0..3 {
        assert!(ws_from("127.0.0.4", open.addr).await.is_ok());
    }
    assert_eq!(
        ws_from("127.0.0.4", open.addr).await.unwrap_err(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert!(open_store.stats().fail_open() >= 4);
    assert!(open_store.stats().errors() >= 4);
    // Fail closed: refused while Redis is away.
    assert_eq!(
        ws_from("127.0.0.4", closed.addr).await.unwrap_err(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert!(closed_store.stats().fail_closed() >= 1);
}
