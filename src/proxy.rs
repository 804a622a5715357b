//! The WebSocket route handler: upstream first, then the client's 101, then the relay.
//!
//! The backend socket is opened and upgraded *before* the client is answered, so a dead
//! or refusing backend gives the client an HTTP status (502, or the backend's own 403 /
//! 404 …), never a 101 followed by an instant close. A failed connect is retried on the
//! next candidate the [`UpstreamLayer`](wsgate_layers::UpstreamLayer) chose.

use std::{
    borrow::Cow,
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{atomic::AtomicI64, Arc},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::{
    body::Body,
    extract::{Request, State},
    response::{IntoResponse, Response},
};
use http::{header, HeaderValue, StatusCode};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{debug, info_span, Instrument};
use wsgate_layers::{
    client_ip::{PeerAddr, TrustedPeer},
    jwt::TokenExpiry,
    upstream::StickyKey,
    ClientIp, Leases, SelectedUpstream,
};

mod socket;

use socket::{Held, Prepared, SocketTask};

use crate::{
    error::{text, HandshakeRejection, UpstreamError},
    handshake::{
        check_client, remove_reserved, rsv_bits, upstream_head, upstream_headers, Forwarding,
        UpstreamAnswer,
    },
    metrics::{Metrics, Outcome},
    relay::{frame::text_frame, RelaySettings, Signal, Stream},
    upgrade::PendingUpgrade,
    upstream::{
        resume::{resumed_handshake, resumed_headers, ResumeRequest},
        Connector, Opened,
    },
};

/// How a client connection reached wsgate; inserted by the listener.
#[derive(Debug, Clone, Copy)]
pub struct ConnMeta {
    /// The client connection is TLS.
    pub tls: bool,
}

/// What every proxied socket shares: its owner, its drain signal, its counters.
#[derive(Debug, Clone)]
pub struct Shared {
    /// Owns every relay task, so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// Cancelled when relays must close (1001 "going away").
    pub drain: CancellationToken,
    /// Spread of the drain closes: each socket waits a random part of this.
    pub drain_jitter: Duration,
    /// Counters.
    pub metrics: Arc<Metrics>,
}

/// One WebSocket route's settings.
#[derive(Debug)]
pub struct RouteProxy {
    /// The route's path as configured, for logs.
    pub name: String,
    /// Opens backend sockets.
    pub connector: Connector,
    /// Relay limits, shared by the route's sockets (one that needs its own, for a token
    /// expiry or an extension's RSV bit, gets a copy).
    pub relay: Arc<RelaySettings>,
    /// `Origin` allow-list (`None`: any).
    pub origins: Option<Vec<String>>,
    /// `Host` allow-list (`None`: any).
    pub hosts: Option<Vec<String>>,
    /// Query-parameter rules.
    pub query: Option<crate::hygiene::QueryRules>,
    /// Shared state.
    pub shared: Shared,
    /// Open sockets on this route.
    pub active: Arc<AtomicI64>,
    /// Identity headers other routes' `forward_claims` set and this route does not: a
    /// client's copy is removed here too, so no route passes a forged identity to a
    /// backend that trusts the header (see `handshake::remove_reserved`).
    pub reserved_headers: Vec<http::HeaderName>,
}

/// The axum handler for a WebSocket route.
pub async fn handle(State(route): State<Arc<RouteProxy>>, req: Request) -> Response {
    let started = Instant::now();
    let (outcome, mut resp) = proxy(&route, req).await;
    route.shared.metrics.handshake(outcome, started.elapsed());
    if outcome != Outcome::Ok {
        route
            .shared
            .metrics
            .rejected(&route.name, resp.status().as_u16(), outcome);
    }
    resp.extensions_mut().insert(crate::refusals::Counted);
    resp
}

/// A route's [`handle`] as a Tower service: the innermost service of the route's stack
/// (`server::route_service`), so the layers around it compose into one concrete type.
#[derive(Debug, Clone)]
pub struct ProxyService {
    route: Arc<RouteProxy>,
}

impl ProxyService {
    /// The handler of `route`.
    pub fn new(route: Arc<RouteProxy>) -> Self {
        Self { route }
    }
}

impl tower::Service<Request> for ProxyService {
    type Response = Response;
    type Error = Infallible;
    // Boxed: the handler's future has no name to put here. The only box of a route's
    // stack besides axum's own for the route.
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let route = self.route.clone();
        Box::pin(async move { Ok(handle(State(route), req).await) })
    }
}

async fn proxy(route: &Arc<RouteProxy>, req: Request) -> (Outcome, Response) {
    // Parts only: the body of an upgrade request is empty, and its fields can then be
    // borrowed (headers, URI) while the extensions are taken apart, without copies.
    let (mut req, _) = req.into_parts();
    remove_reserved(&mut req.headers, &route.reserved_headers);
    let extended_connect = req
        .extensions
        .get::<hyper::ext::Protocol>()
        .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"));
    let h2 = req.version == http::Version::HTTP_2;
    let client_host = client_host(&req.headers, &req.uri);
    let hs = match check_client(&req.method, req.version, &req.headers, extended_connect) {
        Ok(hs) => hs,
        Err(r) => return (Outcome::BadRequest, r.into_response()),
    };
    if let Some(allowed) = &route.origins {
        let origin = req
            .headers
            .get(header::ORIGIN)
            .and_then(|o| o.to_str().ok());
        let ok = origin.is_some_and(|o| {
            allowed
                .iter()
                .any(|a| a == "*" || a.eq_ignore_ascii_case(o))
        });
        if !ok {
            return (
                Outcome::Forbidden,
                text(
                    StatusCode::FORBIDDEN,
                    "origin not allowed on this route\n".into(),
                ),
            );
        }
    }
    if let Some(hosts) = &route.hosts {
        if !host_allowed(client_host, hosts) {
            return (
                Outcome::BadRequest,
                text(
                    StatusCode::MISDIRECTED_REQUEST,
                    "host not served on this route\n".into(),
                ),
            );
        }
    }
    let Some(selected) = req.extensions.remove::<SelectedUpstream>() else {
        return (
            Outcome::NoBackend,
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "route has no UpstreamLayer\n".into(),
            ),
        );
    };
    let peer = req
        .extensions
        .get::<PeerAddr>()
        .map(|p| p.0)
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    let client_ip = req
        .extensions
        .get::<ClientIp>()
        .map(|c| c.0)
        .unwrap_or(peer.ip());
    let trusted_peer = req.extensions.get::<TrustedPeer>().is_some_and(|t| t.0);
    let tls = req.extensions.get::<ConnMeta>().is_some_and(|m| m.tls);
    let request_id = request_id(&req.headers, trusted_peer);
    let path_and_query: Cow<'_, str> = match (&route.query, req.uri.query()) {
        (Some(rules), Some(q)) => match rules.apply(q) {
            Ok(Some(q)) => Cow::Owned(format!("{}?{q}", req.uri.path())),
            Ok(None) => Cow::Borrowed(req.uri.path()),
            Err(why) => {
                return (
                    Outcome::BadRequest,
                    text(StatusCode::BAD_REQUEST, format!("bad request: {why}\n")),
                )
            }
        },
        _ => Cow::Borrowed(req.uri.path_and_query().map_or("/", |pq| pq.as_str())),
    };
    let fwd = Forwarding {
        client_ip,
        trusted_peer,
        peer,
        tls,
        request_id: &request_id,
        host: client_host,
    };

    // With resume on, the client's headers are kept for later handshakes (the resume
    // headers it sent are gone already); otherwise they are only borrowed.
    let resume_headers = route.connector.resume().map(|_| req.headers.clone());
    // Everything after `Host` is the same for every backend tried: built once, here.
    let rest = upstream_headers(&hs, resume_headers.as_ref().unwrap_or(&req.headers), &fwd);
    let request = |backend: &wsgate_layers::Backend| {
        let url = backend.url();
        upstream_head(url.path_prefix(), &path_and_query, url.authority(), &rest)
    };
    // Failover (bounded tries within a time budget) and passive ejection: upstream/failover.rs.
    let attempt = route
        .connector
        .open_any(&selected.candidates, request, &hs, &request_id)
        .await;
    let (backend, opened) = match attempt {
        Ok(o) => o,
        Err(last_err) => {
            let e = last_err.unwrap_or(UpstreamError::Protocol {
                backend: selected.upstream.name().to_string(),
                reason: "no backend tried",
            });
            return (Outcome::UpstreamFailed, e.into_response());
        }
    };
    let (stream, leftover, answer) = match opened {
        Opened::Upgraded {
            stream,
            leftover,
            answer,
        } => (stream, leftover, answer),
        Opened::Refused {
            status,
            headers,
            body,
        } => {
            debug!(request_id = %request_id, %status, "backend refused the upgrade");
            let mut resp = Response::new(Body::from(body));
            *resp.status_mut() = status;
            *resp.headers_mut() = headers;
            return (Outcome::UpstreamRefused, resp);
        }
    };
    let UpstreamAnswer::Switching {
        protocol,
        extensions,
        accept,
        extra,
        ..
    } = answer
    else {
        return (
            Outcome::UpstreamFailed,
            text(
                StatusCode::BAD_GATEWAY,
                "backend broke the handshake\n".into(),
            ),
        );
    };

    if let Some(k) = req.extensions.get::<StickyKey>() {
        // With `return_on_recovery = false`: remembers a key that failed over.
        selected.upstream.served(&k.0, &backend);
    }

    let Some(pending) = PendingUpgrade::take(&mut req.extensions) else {
        return (
            Outcome::BadRequest,
            HandshakeRejection::Bad("this connection cannot be upgraded").into_response(),
        );
    };
    let mut resp = Response::new(Body::empty());
    // RFC 8441 §5: over HTTP/2 a 2xx accepts the extended CONNECT; there is no accept key
    // and HTTP/2 forbids connection-specific headers.
    *resp.status_mut() = if h2 {
        StatusCode::OK
    } else {
        StatusCode::SWITCHING_PROTOCOLS
    };
    let h = resp.headers_mut();
    *h = extra;
    if !h2 {
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        // The backend's accept value, already checked against the client's key.
        if let Ok(accept) = HeaderValue::from_bytes(&accept) {
            h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        }
    }
    // Shared, not copied: every socket's task holds its settings for its whole life.
    let mut settings = Arc::clone(&route.relay);
    let rsv = rsv_bits(extensions.as_ref());
    if settings.rsv_allowed != rsv {
        Arc::make_mut(&mut settings).rsv_allowed = rsv;
    }
    if let Some(exp) = req.extensions.get::<TokenExpiry>().filter(|e| e.close) {
        Arc::make_mut(&mut settings).expires_at = Some(Instant::now() + exp.remaining());
    }
    // Resume needs the handshake again, with the negotiated subprotocol; never with an
    // extension (its compression context cannot move to another backend).
    // Boxed: every socket's task holds this option until its relay starts.
    let resume = match route.connector.resume() {
        Some(r) if extensions.is_none() => Some(Box::new((
            r.clone(),
            ResumeRequest {
                path_and_query: path_and_query.clone().into_owned(),
                headers: resumed_headers(
                    resume_headers.as_ref().unwrap_or(&req.headers),
                    &request_id,
                ),
                hs: resumed_handshake(&hs, protocol.as_ref()),
                protocol: protocol.clone(),
                client_ip,
                trusted_peer,
                peer,
                tls,
                session: request_id.clone(),
                host: client_host.map(str::to_owned),
            },
            req.extensions.get::<StickyKey>().map(|k| k.0.clone()),
            selected.upstream.clone(),
        ))),
        _ => None,
    };
    if let Some(p) = protocol {
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, p);
    }
    if let Some(e) = extensions {
        h.insert(header::SEC_WEBSOCKET_EXTENSIONS, e);
    }

    let leases = req.extensions.remove::<Leases>();
    let span = info_span!(
        "ws",
        id = %request_id,
        route = %route.name,
        client = %client_ip,
        backend = %backend.url(),
    );
    // Counted from here: a socket waiting for the client's side of the upgrade is open.
    let held = Held::open(route.clone(), &backend, leases);
    let task = SocketTask::new(
        pending.wait(),
        Prepared {
            upstream: stream,
            leftover,
            settings,
            resume,
            held,
        },
    );
    route.shared.tracker.spawn(task.instrument(span));
    (Outcome::Ok, resp)
}

/// Resolves when wsgate shuts down, or when `backend` was removed by a reload and its
/// drain timeout passed (its sockets then close with 1001).
fn drain_or_removed(shared: &Shared, backend: &Arc<wsgate_layers::Backend>) -> Signal {
    drain_signal(shared).or(Some(backend.closing().clone()))
}

/// Resolves when wsgate moves this socket off `backend`: the backend was removed and its
/// drain timeout passed, or rebalancing picked the socket.
fn move_signal(
    backend: &Arc<wsgate_layers::Backend>,
    movable: Option<&wsgate_layers::upstream::MovableSocket>,
) -> Signal {
    Signal::new(backend.closing().clone(), Duration::ZERO).or(movable.map(|m| m.token().clone()))
}

/// Sends the resume notice (a text message) to a re-attached client.
async fn write_notice(client: &mut Stream, text: &str, limit: Duration) -> bool {
    use tokio::io::AsyncWriteExt;
    let frame = text_frame(text);
    let sent = tokio::time::timeout(limit, async {
        client.write_all(&frame).await?;
        client.flush().await
    })
    .await;
    matches!(sent, Ok(Ok(())))
}

/// Whether the requested host names one of `hosts` (with or without its port).
fn host_allowed(host: Option<&str>, hosts: &[String]) -> bool {
    let Some(host) = host else {
        return false;
    };
    let bare = host
        .rsplit_once(':')
        .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
        .map_or(host, |(name, _)| name);
    hosts
        .iter()
        .any(|a| a.eq_ignore_ascii_case(host) || a.eq_ignore_ascii_case(bare))
}

/// Resolves when this socket should close for shutdown: after the drain starts, plus a
/// random part of the jitter window, so thousands of clients do not reconnect at once.
fn drain_signal(shared: &Shared) -> Signal {
    Signal::new(shared.drain.clone(), shared.drain_jitter)
}

/// The host the client asked for: `Host`, or HTTP/2's `:authority`.
fn client_host<'a>(headers: &'a http::HeaderMap, uri: &'a http::Uri) -> Option<&'a str> {
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
}

/// The request id sent to the backend as `X-Request-Id`: a trusted peer's, or a new one.
fn request_id(headers: &http::HeaderMap, trusted_peer: bool) -> String {
    if trusted_peer {
        if let Some(id) = headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        {
            return id.to_string();
        }
    }
    format!("{:016x}", fastrand::u64(..))
}
