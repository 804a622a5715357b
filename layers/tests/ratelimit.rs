//! Rate and connection limits over real sockets on loopback.
//!
//! Different clients are different source addresses in 127.0.0.0/8 (bound before
//! connecting). Slot releases are observed through a guard pushed into the request's
//! `Leases` *after* the connection limit's own guard: leases drop in order, so when the
//! test's guard reports its drop, the slot is already free.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use axum::{
    body::Body,
    extract::ws::{Message as AxMessage, WebSocketUpgrade},
    http::{Request, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Extension, Router,
};
use futures_util::{SinkExt, StreamExt};
use tokio::{
    net::{TcpListener, TcpSocket, TcpStream},
    sync::{mpsc, Notify},
    task::JoinHandle,
};
use tokio_tungstenite::{
    tungstenite::{self, client::IntoClientRequest, Message},
    WebSocketStream,
};
use tower::ServiceExt;
use wsgate_layers::{
    client_ip::ClientIpLayer,
    ratelimit::{ConnectionLimitLayer, HandshakeLimitLayer, IpRateLimitLayer, SubjectKey},
    Leases,
};

// ---------------------------------------------------------------------------------------
// harness

/// An axum server on 127.0.0.1:0, aborted when dropped.
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

async fn tcp_from(src: &str, to: SocketAddr) -> TcpStream {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(format!("{src}:0").parse().unwrap()).unwrap();
    sock.connect(to).await.unwrap()
}

type Refusal = tungstenite::http::Response<Option<Vec<u8>>>;

/// A WebSocket handshake from `src`: the socket, or the refusal response.
async fn ws_from(
    src: &str,
    to: SocketAddr,
    subject: Option<&str>,
) -> Result<WebSocketStream<TcpStream>, Refusal> {
    let stream = tcp_from(src, to).await;
    let mut req = format!("ws://{to}/ws").into_client_request().unwrap();
    if let Some(s) = subject {
        req.headers_mut()
            .insert("x-test-subject", s.parse().unwrap());
    }
    match tokio_tungstenite::client_async(req, stream).await {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::Error::Http(resp)) => Err(*resp),
        Err(e) => panic!("handshake from {src} failed without a response: {e}"),
    }
}

/// Echo handler that keeps the leases for the socket's life (as the wsgate relay does).
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

/// Reports on a channel when dropped.
struct DropSignal(mpsc::UnboundedSender<()>);

impl Drop for DropSignal {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

/// Pushes a [`DropSignal`] into the leases and turns `x-test-subject` into a
/// [`SubjectKey`] (a stand-in for the JWT layer).
fn test_layers(
    tx: mpsc::UnboundedSender<()>,
) -> tower::util::MapRequestLayer<impl Fn(Request<Body>) -> Request<Body> + Clone> {
    tower::util::MapRequestLayer::new(move |mut req: Request<Body>| {
        req.extensions_mut()
            .get_or_insert_default::<Leases>()
            .push(DropSignal(tx.clone()));
        req
    })
}

fn subject_from_header() -> tower::util::MapRequestLayer<fn(Request<Body>) -> Request<Body>> {
    tower::util::MapRequestLayer::new(|mut req: Request<Body>| {
        if let Some(s) = req
            .headers()
            .get("x-test-subject")
            .and_then(|v| v.to_str().ok())
        {
            let s = s.to_owned();
            req.extensions_mut().insert(SubjectKey(s));
        }
        req
    })
}

async fn released(rx: &mut mpsc::UnboundedReceiver<()>) {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("the leases were not dropped within 10 s")
        .expect("signal channel closed");
}

async fn roundtrip(ws: &mut WebSocketStream<TcpStream>) {
    ws.send(Message::text("ping")).await.unwrap();
    let got = ws.next().await.unwrap().unwrap();
    assert_eq!(got, Message::text("ping"));
}

// ---------------------------------------------------------------------------------------
// handshake rate

#[tokio::test]
async fn handshake_over_the_per_ip_rate_is_refused_429_with_retry_after_before_upgrade() {
    let app = Router::new()
        .route("/ws", get(echo))
        .layer(IpRateLimitLayer::new("1/h".parse().unwrap()).burst(2))
        .layer(ClientIpLayer::new());
    let srv = serve(app).await;

    let mut a = ws_from("127.0.0.2", srv.addr, None).await.unwrap();
    roundtrip(&mut a).await;
    let _b = ws_from("127.0.0.2", srv.addr, None).await.unwrap();
    let refused = ws_from("127.0.0.2", srv.addr, None).await.unwrap_err();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let h = refused.headers();
    // 1/h: the next handshake is admitted in 30 min (one interval) at most 3600 s.
    let retry: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1700..=3600).contains(&retry), "retry-after {retry}");
    assert_eq!(h["ratelimit-policy"], "\"per-ip\";q=2;w=7200");
    assert_eq!(h["ratelimit"], format!("\"per-ip\";r=0;t={retry}"));

    // Another client is not affected.
    let mut c = ws_from("127.0.0.3", srv.addr, None).await.unwrap();
    roundtrip(&mut c).await;
}

#[tokio::test]
async fn deny_list_is_403_and_allow_list_is_never_limited() {
    let app = Router::new()
        .route("/ws", get(echo))
        .layer(
            IpRateLimitLayer::new("1/h".parse().unwrap())
                .allow(["127.0.0.4/32".parse().unwrap()])
                .deny(["127.0.0.5/32".parse().unwrap()]),
        )
        .layer(ClientIpLayer::new());
    let srv = serve(app).await;
    for _ in 0..5 {
        ws_from("127.0.0.4", srv.addr, None).await.unwrap();
    }
    let denied = ws_from("127.0.0.5", srv.addr, None).await.unwrap_err();
    assert_eq!(denied.status(), StatusCode::FORBIDDEN);
    ws_from("127.0.0.6", srv.addr, None).await.unwrap();
    assert_eq!(
        ws_from("127.0.0.6", srv.addr, None)
            .await
            .unwrap_err()
            .status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn spoofed_forwarded_for_from_an_untrusted_peer_does_not_dodge_the_limit() {
    // 127.0.0.1 is trusted (a local proxy); 127.0.0.7 is not.
    let app = Router::new()
        .route("/ws", get(echo))
        .layer(IpRateLimitLayer::new("1/h".parse().unwrap()))
        .layer(ClientIpLayer::new().trusted_proxies(["127.0.0.1/32".parse().unwrap()]));
    let srv = serve(app).await;
    for (i, expect) in [(1, true), (2, false)] {
        let stream = tcp_from("127.0.0.7", srv.addr).await;
        let mut req = format!("ws://{}/ws", srv.addr)
            .into_client_request()
            .unwrap();
        req.headers_mut().insert(
            "x-forwarded-for",
            format!("198.51.100.{i}").parse().unwrap(),
        );
        let ok = tokio_tungstenite::client_async(req, stream).await.is_ok();
        assert_eq!(ok, expect, "attempt {i}");
    }
    // Through the trusted proxy the header is believed: each forwarded client is its own key.
    for i in 1..=2 {
        let stream = tcp_from("127.0.0.1", srv.addr).await;
        let mut req = format!("ws://{}/ws", srv.addr)
            .into_client_request()
            .unwrap();
        req.headers_mut().insert(
            "x-forwarded-for",
            format!("6.6.6.6, 198.51.100.{i}").parse().unwrap(),
        );
        assert!(tokio_tungstenite::client_async(req, stream).await.is_ok());
    }
}

#[tokio::test]
async fn no_client_address_is_a_500_misconfiguration() {
    let app = Router::new()
        .route("/ws", get(|| async { "hi" }))
        .layer(IpRateLimitLayer::new("10/s".parse().unwrap()))
        .layer(ConnectionLimitLayer::new().per_ip(1));
    let resp = app
        .oneshot(Request::get("/ws").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
}

// ---------------------------------------------------------------------------------------
// connection caps and their release on every path

struct LimitedApp {
    srv: Server,
    limits: Arc<wsgate_layers::ratelimit::ConnectionLimits>,
    dropped: mpsc::UnboundedReceiver<()>,
}

async fn limited_app(layer: ConnectionLimitLayer) -> LimitedApp {
    let (tx, dropped) = mpsc::unbounded_channel();
    let limits = layer.limits().clone();
    let app = Router::new()
        .route("/ws", get(echo))
        .route(
            "/fails",
            get(|| async { (StatusCode::BAD_GATEWAY, "backend down") }),
        )
        .route("/panics", get(panicking_handler))
        .layer(test_layers(tx))
        .layer(layer)
        .layer(subject_from_header())
        .layer(ClientIpLayer::new());
    LimitedApp {
        srv: serve(app).await,
        limits,
        dropped,
    }
}

async fn panicking_handler() -> StatusCode {
    panic!("handler panics on purpose (test)");
}

#[tokio::test]
async fn per_ip_cap_is_429_while_sockets_are_open_and_frees_on_normal_close() {
    let mut t = limited_app(ConnectionLimitLayer::new().per_ip(2)).await;
    let mut a = ws_from("127.0.0.2", t.srv.addr, None).await.unwrap();
    let mut b = ws_from("127.0.0.2", t.srv.addr, None).await.unwrap();
    roundtrip(&mut a).await;
    roundtrip(&mut b).await;
    let refused = ws_from("127.0.0.2", t.srv.addr, None).await.unwrap_err();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    // (a refused handshake never reaches the inner layers: no leases to drop)
    assert_eq!(t.limits.open(), 2);
    // Another address is counted apart.
    let _c = ws_from("127.0.0.3", t.srv.addr, None).await.unwrap();
    assert_eq!(t.limits.open_for_ip("127.0.0.2".parse().unwrap()), 2);

    a.close(None).await.unwrap();
    released(&mut t.dropped).await;
    assert_eq!(t.limits.open_for_ip("127.0.0.2".parse().unwrap()), 1);
    let _d = ws_from("127.0.0.2", t.srv.addr, None).await.unwrap();
}

#[tokio::test]
async fn slot_is_released_when_the_client_vanishes_without_a_close() {
    let mut t = limited_app(ConnectionLimitLayer::new().per_ip(1)).await;
    let mut a = ws_from("127.0.0.2", t.srv.addr, None).await.unwrap();
    roundtrip(&mut a).await;
    assert_eq!(t.limits.open(), 1);
    drop(a); // TCP dropped, no close frame
    released(&mut t.dropped).await;
    assert_eq!((t.limits.open(), t.limits.tracked_entries()), (0, 0));
    ws_from("127.0.0.2", t.srv.addr, None).await.unwrap();
}

#[tokio::test]
async fn slot_is_released_when_the_handler_answers_an_error_status() {
    let mut t = limited_app(ConnectionLimitLayer::new().per_ip(1).global(1)).await;
    let mut stream = tcp_from("127.0.0.2", t.srv.addr).await;
    let status = raw_get(&mut stream, "/fails").await;
    assert_eq!(status, 502);
    released(&mut t.dropped).await;
    assert_eq!((t.limits.open(), t.limits.tracked_entries()), (0, 0));
    ws_from("127.0.0.2", t.srv.addr, None).await.unwrap();
}

#[tokio::test]
async fn slot_is_released_when_the_handler_panics() {
    let mut t = limited_app(ConnectionLimitLayer::new().per_ip(1).global(1)).await;
    let mut stream = tcp_from("127.0.0.2", t.srv.addr).await;
    let _ = raw_get(&mut stream, "/panics").await; // connection dies, no response
    released(&mut t.dropped).await;
    assert_eq!((t.limits.open(), t.limits.tracked_entries()), (0, 0));
    ws_from("127.0.0.2", t.srv.addr, None).await.unwrap();
}

#[tokio::test]
async fn global_cap_is_503_and_per_subject_cap_is_429() {
    let t = limited_app(
        ConnectionLimitLayer::new()
            .per_ip(10)
            .per_subject(1)
            .global(3),
    )
    .await;
    let _a = ws_from("127.0.0.2", t.srv.addr, Some("alice"))
        .await
        .unwrap();
    // alice again, from another address: per-subject cap.
    let r = ws_from("127.0.0.3", t.srv.addr, Some("alice"))
        .await
        .unwrap_err();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let _b = ws_from("127.0.0.3", t.srv.addr, Some("bob")).await.unwrap();
    let _c = ws_from("127.0.0.4", t.srv.addr, None).await.unwrap();
    let r = ws_from("127.0.0.5", t.srv.addr, None).await.unwrap_err();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(t.limits.open(), 3);
    assert_eq!(t.limits.open_for_subject("alice"), 1);
}

/// A plain HTTP/1.1 GET; the status code, or 0 if the connection closed first.
async fn raw_get(stream: &mut TcpStream, path: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let _ = stream.read_to_end(&mut buf).await;
    let text = String::from_utf8_lossy(&buf);
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------
// handshakes in progress

#[tokio::test]
async fn handshakes_over_the_in_progress_cap_are_refused_503_without_queueing() {
    let gate = Arc::new(Notify::new());
    let entered = Arc::new(Notify::new());
    let calls = Arc::new(AtomicUsize::new(0));
    let (g, e, c) = (gate.clone(), entered.clone(), calls.clone());
    let layer = HandshakeLimitLayer::new(1);
    let app = Router::new()
        .route(
            "/slow",
            get(move || {
                let (g, e, c) = (g.clone(), e.clone(), c.clone());
                async move {
                    c.fetch_add(1, Ordering::SeqCst);
                    e.notify_one();
                    g.notified().await;
                    "done".into_response()
                }
            }),
        )
        .layer(layer.clone());
    let srv = serve(app).await;

    let addr = srv.addr;
    let first = tokio::spawn(async move {
        let mut s = tcp_from("127.0.0.2", addr).await;
        raw_get(&mut s, "/slow").await
    });
    entered.notified().await;
    assert_eq!(layer.in_progress(), 1);
    let mut s = tcp_from("127.0.0.3", addr).await;
    assert_eq!(raw_get(&mut s, "/slow").await, 503);
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the refused one never ran");
    gate.notify_one();
    assert_eq!(first.await.unwrap(), 200);
    let mut s = tcp_from("127.0.0.3", addr).await;
    let again = tokio::spawn(async move { raw_get(&mut s, "/slow").await });
    entered.notified().await;
    gate.notify_one();
    assert_eq!(again.await.unwrap(), 200);
}
