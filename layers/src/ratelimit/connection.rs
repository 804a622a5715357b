//! Caps on open WebSockets: per client network, per verified subject, per route.

use std::{
    fmt,
    net::IpAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    task::{Context, Poll},
};

use axum::body::Body;
#[cfg(feature = "redis")]
use axum::response::IntoResponse;
use dashmap::{mapref::entry::Entry, DashMap};
use http::{Request, Response};
use ipnet::IpNet;
use tower_layer::Layer;
use tower_service::Service;

use super::{
    client_addr,
    future::LimitFuture,
    ip_rate::refuse,
    key::{IpKey, KeyPrefix, NetList},
    rejection::{ConnectionScope, LimitRejection},
};
use crate::{lease::Leases, response_future::ResponseFuture};

/// The verified identity a per-subject connection cap counts against.
///
/// Inserted into the request extensions by the JWT layer (or your own auth) with the
/// verified subject (`sub` claim, user id, API key id …). [`ConnectionLimitLayer`] must
/// run *after* (inside) the layer that inserts it; a request without one is not counted
/// per subject.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SubjectKey(pub String);

/// Open-connection counts and caps: the state behind [`ConnectionLimitLayer`].
///
/// Counts live in concurrent maps whose entries are removed when they drop back to zero,
/// so memory follows the number of *open* connections, not the number of clients ever
/// seen.
pub struct ConnectionLimits {
    per_ip: Option<usize>,
    per_subject: Option<usize>,
    global: Option<usize>,
    prefix: KeyPrefix,
    allow: NetList,
    ips: DashMap<IpKey, usize>,
    subjects: DashMap<String, usize>,
    open: AtomicUsize,
}

impl fmt::Debug for ConnectionLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionLimits")
            .field("per_ip", &self.per_ip)
            .field("per_subject", &self.per_subject)
            .field("global", &self.global)
            .field("open", &self.open())
            .finish_non_exhaustive()
    }
}

impl ConnectionLimits {
    fn new(cfg: &Config) -> Self {
        Self {
            per_ip: cfg.per_ip,
            per_subject: cfg.per_subject,
            global: cfg.global,
            prefix: cfg.prefix,
            allow: cfg.allow.clone(),
            ips: DashMap::new(),
            subjects: DashMap::new(),
            open: AtomicUsize::new(0),
        }
    }

    /// Take a slot for one connection from `ip` (and `subject`, if verified).
    ///
    /// The slot is held by the returned guard and released when it drops. Allow-listed
    /// clients skip the per-IP cap but still count against the subject and global caps.
    pub fn try_acquire(
        self: &Arc<Self>,
        ip: IpAddr,
        subject: Option<&str>,
    ) -> Result<ConnectionGuard, LimitRejection> {
        // The guard is built up step by step: a refusal half-way drops it, releasing
        // whatever it already held.
        let mut guard = ConnectionGuard {
            limits: self.clone(),
            ip: None,
            subject: None,
            global: false,
        };
        if let Some(cap) = self.per_ip.filter(|_| !self.allow.contains(ip)) {
            let key = self.prefix.key(ip);
            if !increment_below(&self.ips, key, cap) {
                return Err(LimitRejection::TooManyConnections(ConnectionScope::PerIp));
            }
            guard.ip = Some(key);
        }
        if let (Some(cap), Some(subject)) = (self.per_subject, subject) {
            if !increment_subject_below(&self.subjects, subject, cap) {
                return Err(LimitRejection::TooManyConnections(
                    ConnectionScope::PerSubject,
                ));
            }
            guard.subject = Some(subject.to_owned());
        }
        let cap = self.global.unwrap_or(usize::MAX);
        if self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < cap).then_some(n + 1)
            })
            .is_err()
        {
            return Err(LimitRejection::TooManyConnections(ConnectionScope::Global));
        }
        guard.global = true;
        Ok(guard)
    }

    /// Connections open through these limits.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Connections open from `ip`'s client network (0 when no per-IP cap is set).
    pub fn open_for_ip(&self, ip: IpAddr) -> usize {
        self.ips.get(&self.prefix.key(ip)).map_or(0, |n| *n)
    }

    /// Connections open for `subject` (0 when no per-subject cap is set).
    pub fn open_for_subject(&self, subject: &str) -> usize {
        self.subjects.get(subject).map_or(0, |n| *n)
    }

    /// Client networks and subjects with at least one open connection (map entries).
    pub fn tracked_entries(&self) -> usize {
        self.ips.len() + self.subjects.len()
    }

    /// The per-IP cap.
    pub fn per_ip_cap(&self) -> Option<usize> {
        self.per_ip
    }

    /// The per-subject cap.
    pub fn per_subject_cap(&self) -> Option<usize> {
        self.per_subject
    }

    /// The global cap.
    pub fn global_cap(&self) -> Option<usize> {
        self.global
    }

    /// The key `ip` is counted under.
    pub fn key_for(&self, ip: IpAddr) -> IpKey {
        self.prefix.key(ip)
    }

    /// Whether `ip` skips the per-IP cap.
    pub fn is_exempt(&self, ip: IpAddr) -> bool {
        self.allow.contains(ip)
    }
}

fn increment_below<K: std::hash::Hash + Eq>(map: &DashMap<K, usize>, key: K, cap: usize) -> bool {
    match map.entry(key) {
        Entry::Occupied(mut e) => {
            if *e.get() >= cap {
                return false;
            }
            *e.get_mut() += 1;
        }
        Entry::Vacant(v) => {
            if cap == 0 {
                return false;
            }
            v.insert(1);
        }
    }
    true
}

/// [`increment_below`] for a subject: a subject that already has sockets open (the
/// usual case for a cap) is counted without copying its name for the map.
fn increment_subject_below(map: &DashMap<String, usize>, subject: &str, cap: usize) -> bool {
    if let Some(mut n) = map.get_mut(subject) {
        if *n >= cap {
            return false;
        }
        *n += 1;
        return true;
    }
    // Absent a moment ago; `entry` settles a race with another first socket.
    increment_below(map, subject.to_owned(), cap)
}

fn decrement<K: std::hash::Hash + Eq>(map: &DashMap<K, usize>, key: K) {
    if let Entry::Occupied(mut e) = map.entry(key) {
        if *e.get() <= 1 {
            e.remove();
        } else {
            *e.get_mut() -= 1;
        }
    }
}

/// One connection's slots; dropping it releases them.
///
/// [`ConnectionLimit`] pushes it into the request's [`Leases`].
pub struct ConnectionGuard {
    limits: Arc<ConnectionLimits>,
    ip: Option<IpKey>,
    subject: Option<String>,
    global: bool,
}

impl fmt::Debug for ConnectionGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionGuard")
            .field("ip", &self.ip)
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        if let Some(key) = self.ip.take() {
            decrement(&self.limits.ips, key);
        }
        if let Some(subject) = self.subject.take() {
            decrement(&self.limits.subjects, subject);
        }
        if self.global {
            self.limits.open.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

#[derive(Debug, Clone, Default)]
struct Config {
    per_ip: Option<usize>,
    per_subject: Option<usize>,
    global: Option<usize>,
    prefix: KeyPrefix,
    allow: NetList,
}

/// Caps the WebSockets open at once: per client network (429), per verified subject
/// (429) and for everything behind this layer (503).
///
/// A handshake that passes gets a [`ConnectionGuard`] in its [`Leases`]; the slot is
/// taken for as long as the leases live. The wsgate relay keeps them for the life of
/// the socket; in your own handler move them into the upgrade task (see [`Leases`]).
/// Every path releases the slot: normal close, error, a handler that fails or panics,
/// a client that vanishes, a request that never upgrades.
///
/// Every clone of the layer shares one set of counts: build one layer per route for a
/// per-route global cap. Per-subject counting needs a [`SubjectKey`] extension, so put
/// this layer inside the auth layer.
///
/// ```
/// use wsgate_layers::ratelimit::ConnectionLimitLayer;
/// let layer = ConnectionLimitLayer::new()
///     .per_ip(100)          // max_connections_per_ip
///     .global(10_000)       // max_connections
///     .per_subject(5);
/// ```
#[derive(Clone)]
pub struct ConnectionLimitLayer {
    cfg: Config,
    limits: Arc<ConnectionLimits>,
    #[cfg(feature = "redis")]
    redis: Option<super::redis::RedisLimits>,
}

impl fmt::Debug for ConnectionLimitLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionLimitLayer")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Default for ConnectionLimitLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl ConnectionLimitLayer {
    /// A layer with no cap yet (it still counts open connections).
    pub fn new() -> Self {
        let cfg = Config::default();
        Self {
            limits: Arc::new(ConnectionLimits::new(&cfg)),
            cfg,
            #[cfg(feature = "redis")]
            redis: None,
        }
    }

    fn rebuild(self, f: impl FnOnce(&mut Config)) -> Self {
        let mut cfg = self.cfg;
        f(&mut cfg);
        Self {
            limits: Arc::new(ConnectionLimits::new(&cfg)),
            cfg,
            #[cfg(feature = "redis")]
            redis: self.redis,
        }
    }

    /// At most `max` open sockets per client network (`max_connections_per_ip`).
    pub fn per_ip(self, max: usize) -> Self {
        self.rebuild(|c| c.per_ip = Some(max))
    }

    /// At most `max` open sockets per [`SubjectKey`].
    pub fn per_subject(self, max: usize) -> Self {
        self.rebuild(|c| c.per_subject = Some(max))
    }

    /// At most `max` open sockets through this layer (`max_connections`).
    pub fn global(self, max: usize) -> Self {
        self.rebuild(|c| c.global = Some(max))
    }

    /// Key IPv4 clients by this prefix length (default 32).
    pub fn ipv4_prefix(self, len: u8) -> Self {
        self.rebuild(|c| c.prefix = KeyPrefix::new(len, c.prefix.v6()))
    }

    /// Key IPv6 clients by this prefix length (default 64).
    pub fn ipv6_prefix(self, len: u8) -> Self {
        self.rebuild(|c| c.prefix = KeyPrefix::new(c.prefix.v4(), len))
    }

    /// Clients inside these networks skip the per-IP cap.
    pub fn allow(self, nets: impl IntoIterator<Item = IpNet>) -> Self {
        let nets = NetList::new(nets);
        self.rebuild(|c| c.allow = nets)
    }

    /// Count connections in Redis, shared by every wsgate instance using the same store.
    ///
    /// Each open socket holds an expiring lease renewed by the store's heartbeat, so the
    /// slots of a crashed instance free themselves. The local counts stay configured:
    /// they are what a fail-open store falls back to.
    #[cfg(feature = "redis")]
    pub fn redis(mut self, store: super::redis::RedisLimits) -> Self {
        self.redis = Some(store);
        self
    }

    /// The counts shared by this layer's services.
    pub fn limits(&self) -> &Arc<ConnectionLimits> {
        &self.limits
    }
}

impl<S> Layer<S> for ConnectionLimitLayer {
    type Service = ConnectionLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ConnectionLimit {
            inner,
            limits: self.limits.clone(),
            #[cfg(feature = "redis")]
            redis: self.redis.clone(),
        }
    }
}

/// The service made by [`ConnectionLimitLayer`].
#[derive(Clone)]
pub struct ConnectionLimit<S> {
    inner: S,
    limits: Arc<ConnectionLimits>,
    #[cfg(feature = "redis")]
    redis: Option<super::redis::RedisLimits>,
}

impl<S: fmt::Debug> fmt::Debug for ConnectionLimit<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionLimit")
            .field("inner", &self.inner)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl<S, B> Service<Request<B>> for ConnectionLimit<S>
where
    S: Service<Request<B>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = LimitFuture<S::Future, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let Some(ip) = client_addr(&req) else {
            return refuse(LimitRejection::NoClientAddress);
        };
        #[cfg(feature = "redis")]
        if let Some(redis) = &self.redis {
            // Owned: the subject travels into the future that waits for Redis.
            let subject = req.extensions().get::<SubjectKey>().map(|s| s.0.clone());
            let clone = self.inner.clone();
            let mut inner = std::mem::replace(&mut self.inner, clone);
            let (redis, limits) = (redis.clone(), self.limits.clone());
            return LimitFuture::remote(Box::pin(async move {
                match redis
                    .acquire_connection(&limits, ip, subject.as_deref())
                    .await
                {
                    Ok((guard, lease)) => {
                        let leases = req.extensions_mut().get_or_insert_default::<Leases>();
                        leases.push(guard);
                        if let Some(lease) = lease {
                            leases.push(lease);
                        }
                        inner.call(req).await
                    }
                    Err(rejection) => Ok(rejection.into_response()),
                }
            }));
        }
        // Borrowed from the request: the guard keeps its own copy only when it counts one.
        let subject = req.extensions().get::<SubjectKey>().map(|s| s.0.as_str());
        match self.limits.try_acquire(ip, subject) {
            Ok(guard) => {
                req.extensions_mut()
                    .get_or_insert_default::<Leases>()
                    .push(guard);
                LimitFuture::local(ResponseFuture::inner(self.inner.call(req)))
            }
            Err(rejection) => {
                tracing::debug!(%ip, %rejection, "connection refused");
                refuse(rejection)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(cfg: Config) -> Arc<ConnectionLimits> {
        Arc::new(ConnectionLimits::new(&cfg))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn per_ip_cap_refuses_then_frees_and_forgets_the_entry() {
        let l = limits(Config {
            per_ip: Some(2),
            ..Config::default()
        });
        let a = l.try_acquire(ip("192.0.2.1"), None).unwrap();
        let b = l.try_acquire(ip("192.0.2.1"), None).unwrap();
        assert_eq!(
            l.try_acquire(ip("192.0.2.1"), None).unwrap_err(),
            LimitRejection::TooManyConnections(ConnectionScope::PerIp)
        );
        let _other = l.try_acquire(ip("192.0.2.2"), None).unwrap();
        assert_eq!(l.open(), 3);
        drop(a);
        let c = l.try_acquire(ip("192.0.2.1"), None).unwrap();
        drop((b, c, _other));
        assert_eq!((l.open(), l.tracked_entries()), (0, 0));
    }

    #[test]
    fn refusal_half_way_releases_what_was_taken() {
        let l = limits(Config {
            per_ip: Some(10),
            per_subject: Some(1),
            global: Some(10),
            ..Config::default()
        });
        let _a = l.try_acquire(ip("192.0.2.1"), Some("alice")).unwrap();
        assert_eq!(
            l.try_acquire(ip("192.0.2.9"), Some("alice")).unwrap_err(),
            LimitRejection::TooManyConnections(ConnectionScope::PerSubject)
        );
        assert_eq!(l.open_for_ip(ip("192.0.2.9")), 0);
        assert_eq!(l.open(), 1);
        let _b = l.try_acquire(ip("192.0.2.9"), Some("bob")).unwrap();
        let _c = l.try_acquire(ip("192.0.2.9"), None).unwrap();
        assert_eq!(l.open_for_ip(ip("192.0.2.9")), 2);
    }

    #[test]
    fn global_cap_applies_to_allow_listed_clients_too() {
        let l = limits(Config {
            per_ip: Some(1),
            global: Some(2),
            allow: NetList::new(["10.0.0.0/8".parse().unwrap()]),
            ..Config::default()
        });
        let _a = l.try_acquire(ip("10.0.0.1"), None).unwrap();
        let _b = l.try_acquire(ip("10.0.0.1"), None).unwrap();
        assert_eq!(
            l.try_acquire(ip("10.0.0.1"), None).unwrap_err(),
            LimitRejection::TooManyConnections(ConnectionScope::Global)
        );
        assert_eq!(l.tracked_entries(), 0);
    }

    #[test]
    fn guards_released_from_many_threads_leave_no_entry() {
        let l = limits(Config {
            per_ip: Some(1000),
            per_subject: Some(1000),
            ..Config::default()
        });
        std::thread::scope(|s| {
            for t in 0..4 {
                let l = l.clone();
                s.spawn(move || {
                    for i in 0..500 {
                        let ip: IpAddr = format!("192.0.2.{}", (i + t) % 7).parse().unwrap();
                        let g = l.try_acquire(ip, Some(["a", "b"][i % 2])).unwrap();
                        drop(g);
                    }
                });
            }
        });
        assert_eq!((l.open(), l.tracked_entries()), (0, 0));
    }
}
