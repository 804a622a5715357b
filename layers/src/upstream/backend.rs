//! One backend: its address and live state.

use std::{
    collections::HashMap,
    fmt,
    net::IpAddr,
    sync::{
        atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex, OnceLock,
    },
    time::{Duration, Instant},
};

use tokio_util::sync::CancellationToken;

use super::hash::stable_hash;

/// A parsed `ws://` or `wss://` backend address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendUrl {
    secure: bool,
    host: String,
    port: u16,
    path_prefix: String,
    /// The `Host` value, computed once: every upstream handshake sends it.
    authority: String,
    text: String,
}

/// Why a backend address was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BackendUrlError {
    /// Not a URL at all.
    #[error("`{0}` is not a URL (expected ws://host:port or wss://host:port)")]
    Invalid(String),
    /// A scheme other than `ws`/`wss`.
    #[error("`{0}`: scheme must be ws:// or wss://")]
    Scheme(String),
    /// Query strings and user info have no meaning for a backend address.
    #[error("`{0}`: a backend address takes no query or user info")]
    Extra(String),
}

impl BackendUrl {
    /// Parses `ws://host[:port][/prefix]` or `wss://…`.
    pub fn parse(s: &str) -> Result<Self, BackendUrlError> {
        let uri: http::Uri = s.parse().map_err(|_| BackendUrlError::Invalid(s.into()))?;
        let secure = match uri.scheme_str() {
            Some("ws") => false,
            Some("wss") => true,
            _ => return Err(BackendUrlError::Scheme(s.into())),
        };
        let auth = uri
            .authority()
            .ok_or_else(|| BackendUrlError::Invalid(s.into()))?;
        if auth.as_str().contains('@') || uri.query().is_some() {
            return Err(BackendUrlError::Extra(s.into()));
        }
        let host = auth.host().trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(BackendUrlError::Invalid(s.into()));
        }
        let port = auth.port_u16().unwrap_or(if secure { 443 } else { 80 });
        let path_prefix = uri.path().trim_end_matches('/').to_string();
        Ok(Self {
            secure,
            host: host.to_string(),
            port,
            path_prefix,
            authority: authority(host, port, secure),
            text: s.to_string(),
        })
    }

    /// `true` for `wss://`.
    pub fn is_secure(&self) -> bool {
        self.secure
    }
    /// Host name or IP literal (IPv6 without brackets).
    pub fn host(&self) -> &str {
        &self.host
    }
    /// Port (80/443 when the URL names none).
    pub fn port(&self) -> u16 {
        self.port
    }
    /// Path prepended to the client's path ("" when the URL has none).
    pub fn path_prefix(&self) -> &str {
        &self.path_prefix
    }
    /// The value for the upstream `Host` header.
    pub fn authority(&self) -> &str {
        &self.authority
    }
}

/// The `Host` value for a backend: IPv6 literals in brackets, the port only when it is
/// not the scheme's default.
fn authority(host: &str, port: u16, secure: bool) -> String {
    let default = if secure { 443 } else { 80 };
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    if port == default {
        host
    } else {
        format!("{host}:{port}")
    }
}

impl fmt::Display for BackendUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A backend and its live state, shared by every route that uses it.
///
/// Besides its open-socket count it carries what the health machinery decides: the
/// active checks' verdict ([`set_healthy`](Self::set_healthy)), a passive ejection after
/// failed connects ([`record_failure`](Self::record_failure)), the drain flag set when a
/// reload removes it, and the signal that closes its open sockets
/// ([`closing`](Self::closing)).
#[derive(Debug)]
pub struct Backend {
    url: BackendUrl,
    /// Address this backend is pinned to when its host name was resolved into several
    /// backends (one per A/AAAA record).
    addr: Option<IpAddr>,
    /// [`stable_hash`] of [`id`](Backend::id), computed once: consistent hashing scores
    /// it for every keyed handshake.
    id_hash: u64,
    weight: AtomicU32,
    active: AtomicUsize,
    healthy: AtomicBool,
    draining: AtomicBool,
    transitions: AtomicU64,
    failures: AtomicU32,
    ejections: AtomicU64,
    /// Milliseconds since [`epoch`] until which the backend is ejected (0: not ejected).
    ejected_until: AtomicU64,
    closing: CancellationToken,
    /// Sockets that can be told to move (rebalancing), by registration id. Touched only
    /// when such a socket opens or closes, never per message.
    movable: Mutex<HashMap<u64, CancellationToken>>,
    next_movable: AtomicU64,
}

/// A fixed process-wide origin, so an ejection deadline fits in an atomic.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    // +1 so that "now" is never 0, which means "not ejected".
    u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1
}

impl Backend {
    /// A healthy backend with weight 1.
    pub fn new(url: BackendUrl) -> Self {
        Self::with_weight(url, 1)
    }

    /// A healthy backend with the given weight (0 is taken as 1).
    pub fn with_weight(url: BackendUrl, weight: u32) -> Self {
        Self {
            id_hash: stable_hash(url.to_string().as_bytes()),
            url,
            addr: None,
            weight: AtomicU32::new(weight.max(1)),
            active: AtomicUsize::new(0),
            healthy: AtomicBool::new(true),
            draining: AtomicBool::new(false),
            transitions: AtomicU64::new(0),
            failures: AtomicU32::new(0),
            ejections: AtomicU64::new(0),
            ejected_until: AtomicU64::new(0),
            closing: CancellationToken::new(),
            movable: Mutex::new(HashMap::new()),
            next_movable: AtomicU64::new(0),
        }
    }

    /// A backend for one resolved address of `url`'s host name: sockets go to `addr`,
    /// while the `Host` header and TLS server name stay `url`'s.
    pub fn resolved(url: BackendUrl, addr: IpAddr, weight: u32) -> Self {
        Self {
            id_hash: stable_hash(format!("{url}@{addr}").as_bytes()),
            addr: Some(addr),
            ..Self::with_weight(url, weight)
        }
    }

    /// Its address.
    pub fn url(&self) -> &BackendUrl {
        &self.url
    }
    /// The IP address it is pinned to, when it came from resolving a host name.
    pub fn addr(&self) -> Option<IpAddr> {
        self.addr
    }
    /// A name unique within a group and the same in every process: the URL, plus the
    /// pinned address for a resolved backend (`ws://svc:9001@10.0.0.7`). Consistent
    /// hashing scores this, so every instance with the same list agrees.
    pub fn id(&self) -> String {
        match self.addr {
            None => self.url.to_string(),
            Some(a) => format!("{}@{a}", self.url),
        }
    }
    /// [`stable_hash`] of [`id`](Self::id), without building the string.
    pub fn id_hash(&self) -> u64 {
        self.id_hash
    }
    /// Its weight for weighted policies.
    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }
    /// Changes its weight (0 is taken as 1). The group's weighted order is recomputed
    /// on the next [`Upstream::replace_backends`](super::Upstream::replace_backends).
    pub fn set_weight(&self, weight: u32) {
        self.weight.store(weight.max(1), Ordering::Relaxed)
    }
    /// Open WebSockets proxied to it now.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }
    /// Whether health checks currently pass.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }
    /// Marks it healthy or not; returns the previous state. A change is counted in
    /// [`health_transitions`](Self::health_transitions).
    pub fn set_healthy(&self, healthy: bool) -> bool {
        let was = self.healthy.swap(healthy, Ordering::Relaxed);
        if was != healthy {
            self.transitions.fetch_add(1, Ordering::Relaxed);
        }
        was
    }
    /// How many times it went from healthy to unhealthy or back.
    pub fn health_transitions(&self) -> u64 {
        self.transitions.load(Ordering::Relaxed)
    }
    /// Whether it is being drained (no new sockets).
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
    /// Stops new sockets going to it.
    pub fn set_draining(&self, draining: bool) {
        self.draining.store(draining, Ordering::Relaxed)
    }
    /// Whether a recent connect failure keeps it out of choice for now.
    pub fn is_ejected(&self) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && now_ms() < until
    }
    /// Healthy, not draining and not ejected.
    pub fn is_available(&self) -> bool {
        self.is_healthy() && !self.is_draining() && !self.is_ejected()
    }

    /// Records a failed connect or handshake (a passive health check): the backend is
    /// ejected for `base`, doubled for each further failure in a row, at most `max`.
    /// Returns the ejection time.
    ///
    /// Failures while it is already ejected (connects that were under way together, or
    /// probes in panic mode) do not grow the backoff: a burst of 500 concurrent connects
    /// timing out is one failure of the backend, not 500, and must not eject a briefly
    /// overloaded backend for the maximum at once. The streak grows only with failures
    /// after an ejection ended.
    pub fn record_failure(&self, base: Duration, max: Duration) -> Duration {
        self.record_failure_at(now_ms(), base, max)
    }

    fn record_failure_at(&self, now: u64, base: Duration, max: Duration) -> Duration {
        let until = self.ejected_until.load(Ordering::Relaxed);
        if until != 0 && now < until {
            return Duration::from_millis(until - now);
        }
        let n = self.failures.fetch_add(1, Ordering::Relaxed).min(20);
        let backoff = base.saturating_mul(1u32 << n).min(max);
        if !backoff.is_zero() {
            let ms = u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX / 2);
            self.ejected_until
                .store(now.saturating_add(ms), Ordering::Relaxed);
            self.ejections.fetch_add(1, Ordering::Relaxed);
        }
        backoff
    }
    /// Records a successful connect: the failure streak and any ejection end.
    pub fn record_success(&self) {
        if self.failures.swap(0, Ordering::Relaxed) != 0 {
            self.ejected_until.store(0, Ordering::Relaxed);
        }
    }
    /// How many times passive checks ejected it.
    pub fn ejections(&self) -> u64 {
        self.ejections.load(Ordering::Relaxed)
    }

    /// Cancelled when this backend's open sockets must close (1001): a removed
    /// backend's drain timeout passed. Relays select on it.
    pub fn closing(&self) -> &CancellationToken {
        &self.closing
    }

    /// Registers an open socket that may be asked to move to another backend
    /// (rebalancing); the guard's [`token`](MovableSocket::token) is cancelled then.
    /// Unregistered when the guard drops.
    pub fn register_movable(self: &Arc<Self>) -> MovableSocket {
        let id = self.next_movable.fetch_add(1, Ordering::Relaxed);
        let token = CancellationToken::new();
        if let Ok(mut m) = self.movable.lock() {
            m.insert(id, token.clone());
        }
        MovableSocket {
            backend: self.clone(),
            id,
            token,
        }
    }

    /// Sockets registered with [`register_movable`](Self::register_movable) and not yet
    /// asked to move.
    pub fn movable(&self) -> usize {
        self.movable
            .lock()
            .map(|m| m.values().filter(|t| !t.is_cancelled()).count())
            .unwrap_or(0)
    }

    /// Up to `n` registered sockets not yet asked to move, chosen at random: cancel a
    /// token to move its socket.
    pub fn pick_movable(&self, n: usize) -> Vec<CancellationToken> {
        let Ok(m) = self.movable.lock() else {
            return Vec::new();
        };
        let mut all: Vec<CancellationToken> =
            m.values().filter(|t| !t.is_cancelled()).cloned().collect();
        drop(m);
        fastrand::shuffle(&mut all);
        all.truncate(n);
        all
    }

    /// Counts one open socket until the returned guard drops.
    pub fn track(self: &Arc<Self>) -> ActiveConnection {
        self.active.fetch_add(1, Ordering::Relaxed);
        ActiveConnection(self.clone())
    }
}

/// One open socket on a backend; dropping it releases the count on every path.
#[derive(Debug)]
pub struct ActiveConnection(Arc<Backend>);

impl ActiveConnection {
    /// The backend this socket is counted on.
    pub fn backend(&self) -> &Arc<Backend> {
        &self.0
    }
}

/// A socket registered as movable on a backend (see [`Backend::register_movable`]).
#[derive(Debug)]
pub struct MovableSocket {
    backend: Arc<Backend>,
    id: u64,
    token: CancellationToken,
}

impl MovableSocket {
    /// Cancelled when the socket should move to another backend.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }
}

impl Drop for MovableSocket {
    fn drop(&mut self) {
        if let Ok(mut m) = self.backend.movable.lock() {
            m.remove(&self.id);
        }
    }
}

impl Drop for ActiveConnection {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ws_and_wss() {
        let u = BackendUrl::parse("ws://127.0.0.1:9001").unwrap();
        assert!(!u.is_secure());
        assert_eq!(
            (u.host(), u.port(), u.path_prefix()),
            ("127.0.0.1", 9001, "")
        );
        let u = BackendUrl::parse("wss://[::1]/base/").unwrap();
        assert!(u.is_secure());
        assert_eq!((u.host(), u.port(), u.path_prefix()), ("::1", 443, "/base"));
        assert_eq!(u.authority(), "[::1]");
    }

    #[test]
    fn refuses_other_schemes_and_garbage() {
        assert!(matches!(
            BackendUrl::parse("http://x"),
            Err(BackendUrlError::Scheme(_))
        ));
        assert!(BackendUrl::parse("not a url").is_err());
        assert!(matches!(
            BackendUrl::parse("ws://u@h:1"),
            Err(BackendUrlError::Extra(_))
        ));
    }

    #[test]
    fn guard_releases_count() {
        let b = Arc::new(Backend::new(BackendUrl::parse("ws://h:1").unwrap()));
        let g = b.track();
        assert_eq!(b.active(), 1);
        drop(g);
        assert_eq!(b.active(), 0);
    }

    #[test]
    fn failures_eject_with_growing_backoff_and_success_clears() {
        let b = Backend::new(BackendUrl::parse("ws://h:1").unwrap());
        let (base, max) = (Duration::from_secs(1), Duration::from_secs(5));
        assert_eq!(b.record_failure(base, max), Duration::from_secs(1));
        assert!(b.is_ejected() && !b.is_available());
        // Each later failure comes after the previous ejection ended: the backoff doubles.
        let mut now = now_ms();
        for want in [2, 4, 5, 5] {
            now += 10_000;
            assert_eq!(
                b.record_failure_at(now, base, max),
                Duration::from_secs(want)
            );
        }
        assert_eq!(b.ejections(), 5);
        b.record_success();
        assert!(b.is_available());
        assert_eq!(b.record_failure(base, max), Duration::from_secs(1));
    }

    #[test]
    fn failures_during_an_ejection_do_not_grow_it() {
        let b = Backend::new(BackendUrl::parse("ws://h:1").unwrap());
        let (base, max) = (Duration::from_secs(1), Duration::from_secs(30));
        let now = now_ms();
        assert_eq!(b.record_failure_at(now, base, max), Duration::from_secs(1));
        // 500 connects that were in flight together fail within the ejection.
        for i in 0..500 {
            let left = b.record_failure_at(now + i, base, max);
            assert!(left <= Duration::from_secs(1), "{left:?}");
        }
        assert_eq!(b.ejections(), 1);
        // The first failure after it ended doubles it, once.
        assert_eq!(
            b.record_failure_at(now + 1_000, base, max),
            Duration::from_secs(2)
        );
        assert_eq!(b.ejections(), 2);
    }

    #[test]
    fn movable_sockets_register_pick_and_release() {
        let b = Arc::new(Backend::new(BackendUrl::parse("ws://h:1").unwrap()));
        let socks: Vec<_> = (0..5).map(|_| b.register_movable()).collect();
        assert_eq!(b.movable(), 5);
        let picked = b.pick_movable(2);
        assert_eq!(picked.len(), 2);
        picked.iter().for_each(|t| t.cancel());
        assert_eq!(
            b.movable(),
            3,
            "sockets already asked to move are not picked again"
        );
        assert_eq!(socks.iter().filter(|s| s.token().is_cancelled()).count(), 2);
        drop(socks);
        assert_eq!(b.movable(), 0);
    }

    #[test]
    fn health_changes_are_counted() {
        let b = Backend::new(BackendUrl::parse("ws://h:1").unwrap());
        b.set_healthy(true);
        assert_eq!(b.health_transitions(), 0);
        b.set_healthy(false);
        b.set_healthy(false);
        b.set_healthy(true);
        assert_eq!(b.health_transitions(), 2);
    }
}
