//! The descriptor budget: how many client connections wsgate holds at once.
//!
//! A proxied socket costs two descriptors (the client's and the backend's). A proxy that
//! runs out fails in the worst way: `accept` keeps taking clients while their backends'
//! `connect` fails with `EMFILE`, so nearly every client gets 502 (measured before this
//! module existed: 37 of 40 clients got 502 from a wsgate with 48 descriptors, and 3
//! waited without an answer). So wsgate sizes a connection limit from its open-file
//! limit when it starts, as HAProxy derives `maxconn` from `ulimit -n`
//! ([`derived_limit`]), or takes `server.max_connections`, and then:
//!
//! * below the limit, connections are served as usual;
//! * at the limit, [`LANE`] more connections are accepted and each request on them is
//!   answered `503` with `Retry-After` and `Connection: close` ([`CapacityLayer`]), so a
//!   client learns at once instead of waiting;
//! * beyond that, the listeners stop accepting until a connection or socket closes
//!   ([`Capacity::room`]): new clients wait in the kernel's backlog, holding no
//!   descriptor in wsgate.
//!
//! A "connection" here is an accepted client connection (counted from `accept` to the
//! end of its HTTP handling) plus an open proxied socket (counted by its task): the two
//! overlap for the moment a socket is handed from one to the other, which only errs on
//! the safe side. The admin listener is not counted, so `/metrics` answers at the limit.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering::SeqCst},
        Arc,
    },
    task::{Context, Poll},
};

use axum::body::Body;
use http::{header, HeaderValue, Request, Response, StatusCode};
use tokio::sync::Notify;
use tower::{Layer, Service};
use wsgate_layers::{ratelimit::LimitRejection, response_future::ResponseFuture};

use crate::metrics::Metrics;

/// Connections accepted beyond the limit only to be answered 503. Each holds one
/// descriptor (it never gets a backend), taken from [`RESERVED`].
pub const LANE: usize = 16;

/// Descriptors kept for everything but client connections: standard streams, the
/// runtime's epoll and wake-up descriptors, log and certificate files, JWKS fetches,
/// Redis, and the [`LANE`]. Listeners, health checks and warm pool sockets are added per
/// config ([`reserved`]).
pub const RESERVED: u64 = 24 + LANE as u64;

/// The limit that fits `open_files` descriptors, `reserved` of them kept aside: two
/// per connection, at least one connection.
///
/// ```
/// use wsgate::capacity::derived_limit;
/// assert_eq!(derived_limit(20_000, 100), 9_950);
/// assert_eq!(derived_limit(64, 100), 1);
/// ```
pub fn derived_limit(open_files: u64, reserved: u64) -> usize {
    let pairs = open_files.saturating_sub(reserved) / 2;
    usize::try_from(pairs).unwrap_or(usize::MAX).max(1)
}

/// Descriptors `cfg` needs besides client connections: [`RESERVED`], one per listener,
/// and per configured backend one health check plus its warm pool's `min_idle`.
pub fn reserved(cfg: &crate::config::Config) -> u64 {
    let listeners = cfg.server.listen.to_vec().len() + usize::from(cfg.server.admin.is_some());
    let backends: usize = cfg
        .upstream
        .iter()
        .map(|u| u.backends.len() * (1 + u.pool.as_ref().map_or(0, |p| p.min_idle)))
        .sum();
    RESERVED + (listeners + backends) as u64
}

/// The process's open-file limit (soft), if the platform has one.
pub fn open_file_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        rlimit::getrlimit(rlimit::Resource::NOFILE)
            .ok()
            .map(|(soft, _)| soft)
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// Raises the soft open-file limit to the hard one, as Go's runtime and HAProxy do:
/// distributions default the soft limit to 1024, which would cap a proxy at about 500
/// sockets while the hard limit allows far more. Returns the soft limit now in force.
pub fn raise_open_file_limit() -> std::io::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
}

/// The connection count and limit, shared by the listeners, the sockets and
/// [`CapacityLayer`]. Lives in [`Metrics`], which every socket already reaches.
#[derive(Debug)]
pub struct Capacity {
    limit: AtomicUsize,
    connections: AtomicUsize,
    sockets: AtomicUsize,
    /// Listeners waiting for room; a close wakes them only when there are some.
    waiting: AtomicUsize,
    room: Notify,
}

impl Default for Capacity {
    fn default() -> Self {
        Self {
            limit: AtomicUsize::new(usize::MAX),
            connections: AtomicUsize::new(0),
            sockets: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            room: Notify::new(),
        }
    }
}

impl Capacity {
    /// Sets the limit (unlimited until set).
    pub fn set_limit(&self, limit: usize) {
        self.limit.store(limit.max(1), SeqCst);
    }

    /// The limit, `None` when unlimited.
    pub fn limit(&self) -> Option<usize> {
        Some(self.limit.load(SeqCst)).filter(|l| *l != usize::MAX)
    }

    /// Client connections being served plus open proxied sockets.
    pub fn in_use(&self) -> usize {
        self.connections.load(SeqCst) + self.sockets.load(SeqCst)
    }

    /// Client connections being served (accepted, HTTP not yet over).
    pub fn connections(&self) -> usize {
        self.connections.load(SeqCst)
    }

    /// Whether a request now is beyond the limit (the request's own connection counts).
    pub fn over(&self) -> bool {
        self.in_use() > self.limit.load(SeqCst)
    }

    /// Whether a new connection would be refused now (`/readyz` says so).
    pub fn full(&self) -> bool {
        self.in_use() >= self.limit.load(SeqCst)
    }

    fn has_room(&self) -> bool {
        self.in_use() < self.limit.load(SeqCst).saturating_add(LANE)
    }

    /// Resolves once a listener may accept: while the limit and the refusal lane are
    /// full it waits for a connection or a socket to close.
    pub async fn room(&self) {
        loop {
            if self.has_room() {
                return;
            }
            let notified = self.room.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before `waiting` is raised and the count read again, so a close
            // between the two checks cannot be missed.
            notified.as_mut().enable();
            self.waiting.fetch_add(1, SeqCst);
            if !self.has_room() {
                notified.await;
            }
            self.waiting.fetch_sub(1, SeqCst);
        }
    }

    pub(crate) fn socket_opened(&self) {
        self.sockets.fetch_add(1, SeqCst);
    }

    pub(crate) fn socket_closed(&self) {
        self.sockets.fetch_sub(1, SeqCst);
        self.freed();
    }

    fn freed(&self) {
        if self.waiting.load(SeqCst) > 0 {
            self.room.notify_waiters();
        }
    }
}

/// One accepted client connection in [`Capacity`]'s count, until dropped.
#[derive(Debug)]
pub struct ClientConnection(Arc<Metrics>);

impl ClientConnection {
    /// Counts a connection just accepted.
    pub fn open(metrics: &Arc<Metrics>) -> Self {
        metrics.capacity.connections.fetch_add(1, SeqCst);
        Self(metrics.clone())
    }
}

impl Drop for ClientConnection {
    fn drop(&mut self) {
        let c = &self.0.capacity;
        c.connections.fetch_sub(1, SeqCst);
        c.freed();
    }
}

/// Answers 503 (`Retry-After: 1`, `Connection: close`) to every request while wsgate
/// is beyond its connection limit. In every route's stack it sits just inside the
/// refusal counter (so these refusals are counted, as `overloaded`) and before the
/// rate limit and JWT check (so a full wsgate spends nothing on them).
#[derive(Debug, Clone)]
pub struct CapacityLayer {
    metrics: Arc<Metrics>,
}

impl CapacityLayer {
    /// Checks against `metrics`' [`Capacity`].
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for CapacityLayer {
    type Service = CapacityCheck<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CapacityCheck {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service of [`CapacityLayer`].
#[derive(Debug, Clone)]
pub struct CapacityCheck<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, B> Service<Request<B>> for CapacityCheck<S>
where
    S: Service<Request<B>, Response = Response<Body>>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if self.metrics.capacity.over() {
            return ResponseFuture::early(at_capacity());
        }
        ResponseFuture::inner(self.inner.call(req))
    }
}

/// The answer beyond the limit. It carries [`LimitRejection::Overloaded`] so the
/// refusal is counted as `overloaded`, and closes the connection so the client's
/// descriptor comes back at once.
fn at_capacity() -> Response<Body> {
    use axum::response::IntoResponse;
    let mut r = LimitRejection::Overloaded.into_response();
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    debug_assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    r
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    use super::*;

    fn poll_once(f: std::pin::Pin<&mut impl Future<Output = ()>>) -> bool {
        let waker = std::task::Waker::noop();
        f.poll(&mut Context::from_waker(waker)).is_ready()
    }

    /// At the limit plus the refusal lane the listeners wait; the first close lets them
    /// go, whether it is a connection's or a socket's.
    #[tokio::test]
    async fn room_waits_at_the_limit_and_the_lane_and_wakes_on_a_close() {
        let metrics = Arc::new(Metrics::default());
        let cap = &metrics.capacity;
        cap.set_limit(2);
        metrics.socket_opened();
        let mut held: Vec<_> = (0..1 + LANE)
            .map(|_| ClientConnection::open(&metrics))
            .collect();
        assert_eq!(cap.in_use(), 2 + LANE);
        assert!(cap.over());
        let room = cap.room();
        let mut room = std::pin::pin!(room);
        assert!(!poll_once(room.as_mut()), "room at the limit plus the lane");
        // A socket closing wakes the waiting listener.
        metrics.socket_closed();
        tokio::time::timeout(std::time::Duration::from_secs(5), room)
            .await
            .expect("woken by the socket's close");
        // And a connection's end does too.
        metrics.socket_opened();
        let room = cap.room();
        let mut room = std::pin::pin!(room);
        assert!(!poll_once(room.as_mut()));
        held.pop();
        tokio::time::timeout(std::time::Duration::from_secs(5), room)
            .await
            .expect("woken by the connection's end");
        drop(held);
        metrics.socket_closed();
        assert_eq!(cap.in_use(), 0);
        assert!(!cap.over());
    }

    #[test]
    fn the_limit_fits_the_descriptors_and_is_unlimited_until_set() {
        assert_eq!(
            derived_limit(20_000, RESERVED),
            (20_000 - RESERVED as usize) / 2
        );
        assert_eq!(derived_limit(1024, RESERVED), 492);
        assert_eq!(derived_limit(10, RESERVED), 1);
        let cap = Capacity::default();
        assert_eq!(cap.limit(), None);
        cap.set_limit(0);
        assert_eq!(cap.limit(), Some(1));
    }
}
