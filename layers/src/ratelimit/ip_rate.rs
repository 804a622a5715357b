//! Handshake rate per client network: [`IpRateLimitLayer`].

use std::{
    fmt,
    net::IpAddr,
    num::NonZeroU32,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::{body::Body, response::IntoResponse};
use governor::{clock::Clock, clock::DefaultClock, RateLimiter};
use http::{Request, Response};
use ipnet::IpNet;
use tower_layer::Layer;
use tower_service::Service;

use super::{
    client_addr,
    future::LimitFuture,
    key::{IpKey, KeyPrefix, NetList},
    rejection::{LimitRejection, QuotaPolicy},
    spec::RateSpec,
    store::{CappedStore, StoreStats},
};
use crate::response_future::ResponseFuture;

/// Default hard cap on tracked client networks (about 66 MiB at full table, measured by the
/// `ratelimit_memory` example).
pub const DEFAULT_MAX_KEYS: usize = 1_000_000;
/// Default time between two prunes of stale keys.
pub const DEFAULT_PRUNE_INTERVAL: Duration = Duration::from_secs(10);

/// What a rate check decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateDecision {
    /// Admitted (counted against the client's quota).
    Admitted,
    /// On the allow-list: admitted without counting.
    Exempt,
}

/// A keyed GCRA handshake limiter: the state behind [`IpRateLimitLayer`].
///
/// Usable on its own (for example by a listener that rate-limits before HTTP), and
/// shared by every clone of the layer that made it.
pub struct IpRateLimiter {
    limiter: RateLimiter<IpKey, CappedStore, DefaultClock>,
    rate: RateSpec,
    burst: NonZeroU32,
    prefix: KeyPrefix,
    allow: NetList,
    deny: NetList,
    stats: Arc<StoreStats>,
    origin: Instant,
    prune_interval: Duration,
    last_prune_ms: AtomicU64,
    pruning: AtomicBool,
}

impl fmt::Debug for IpRateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IpRateLimiter")
            .field("rate", &self.rate)
            .field("burst", &self.burst)
            .field("prefix", &self.prefix)
            .field("keys", &self.limiter.len())
            .finish_non_exhaustive()
    }
}

impl IpRateLimiter {
    fn new(cfg: &Config) -> Self {
        let burst = cfg.burst.unwrap_or(cfg.rate.count());
        let (store, stats) = CappedStore::new(cfg.max_keys);
        Self {
            limiter: RateLimiter::new(cfg.rate.quota(Some(burst)), store, DefaultClock::default()),
            stats,
            rate: cfg.rate,
            burst,
            prefix: cfg.prefix,
            allow: cfg.allow.clone(),
            deny: cfg.deny.clone(),
            origin: Instant::now(),
            prune_interval: cfg.prune_interval,
            last_prune_ms: AtomicU64::new(0),
            pruning: AtomicBool::new(false),
        }
    }

    /// Count one handshake from `ip`.
    pub fn check(&self, ip: IpAddr) -> Result<RateDecision, LimitRejection> {
        if self.deny.contains(ip) {
            return Err(LimitRejection::Denied);
        }
        if self.allow.contains(ip) {
            return Ok(RateDecision::Exempt);
        }
        self.maybe_prune();
        let key = self.prefix.key(ip);
        match self.limiter.check_key(&key) {
            Ok(()) => Ok(RateDecision::Admitted),
            Err(not_until) => {
                let retry_after = not_until.wait_time_from(self.limiter.clock().now());
                tracing::debug!(client = %key, ?retry_after, "handshake rate limited");
                Err(LimitRejection::RateLimited {
                    retry_after,
                    policy: self.policy(),
                })
            }
        }
    }

    /// The quota as advertised in `RateLimit-Policy`.
    pub fn policy(&self) -> QuotaPolicy {
        let window = self.rate.interval().saturating_mul(self.burst.get());
        QuotaPolicy {
            quota: self.burst.get(),
            window_secs: super::rejection::ceil_secs(window),
        }
    }

    /// The configured rate.
    pub fn rate(&self) -> RateSpec {
        self.rate
    }

    /// The burst (handshakes admitted at once from a fresh client).
    pub fn burst(&self) -> NonZeroU32 {
        self.burst
    }

    /// The prefix lengths client addresses are keyed by.
    pub fn key_prefix(&self) -> KeyPrefix {
        self.prefix
    }

    /// Whether `ip` is on the allow-list.
    pub fn is_exempt(&self, ip: IpAddr) -> bool {
        self.allow.contains(ip)
    }

    /// Whether `ip` is on the deny-list.
    pub fn is_denied(&self, ip: IpAddr) -> bool {
        self.deny.contains(ip)
    }

    /// Client networks currently tracked.
    pub fn tracked_keys(&self) -> usize {
        self.limiter.len()
    }

    /// Decisions made on the shared overflow bucket because the key table was full.
    pub fn overflow_hits(&self) -> u64 {
        self.stats.overflow_hits()
    }

    /// Drop client networks whose state is back to fresh, and give the memory back.
    ///
    /// Runs by itself every `prune_interval` (checked on each handshake: the handshake
    /// that finds the interval elapsed does the work) and, while the key table is full,
    /// at most once a second. Call it from your own timer if the server can sit idle
    /// after an address-spraying burst and you want the memory back sooner.
    pub fn prune(&self) {
        if self
            .pruning
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return; // another thread is pruning
        }
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
        self.last_prune_ms
            .store(self.elapsed_ms(), Ordering::Relaxed);
        self.pruning.store(false, Ordering::Release);
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn maybe_prune(&self) {
        let now = self.elapsed_ms();
        let since = now.saturating_sub(self.last_prune_ms.load(Ordering::Relaxed));
        let interval = u64::try_from(self.prune_interval.as_millis()).unwrap_or(u64::MAX);
        if since >= interval || (since >= 1000 && self.stats.is_full()) {
            self.prune();
        }
    }
}

#[derive(Debug, Clone)]
struct Config {
    rate: RateSpec,
    burst: Option<NonZeroU32>,
    prefix: KeyPrefix,
    max_keys: usize,
    prune_interval: Duration,
    allow: NetList,
    deny: NetList,
}

/// Limits the WebSocket handshake rate per client network (GCRA, answered 429).
///
/// The client is the [`ClientIp`](crate::ClientIp) set by
/// [`ClientIpLayer`](crate::ClientIpLayer) (put that layer outside this one), or else the
/// socket peer ([`PeerAddr`](crate::client_ip::PeerAddr) or axum's `ConnectInfo`); with
/// neither the request is answered 500, a deployment bug.
///
/// A refused handshake gets `429 Too Many Requests` with `Retry-After` (seconds, rounded
/// up) and the draft `RateLimit-Policy` / `RateLimit` headers, before any upgrade. A
/// deny-listed client gets 403; an allow-listed one is never counted.
///
/// Every clone of the layer, and every service it makes, shares one limiter: apply one
/// layer per route for per-route quotas.
///
/// ```
/// use wsgate_layers::ratelimit::{IpRateLimitLayer, RateSpec};
/// let layer = IpRateLimitLayer::new("20/s".parse::<RateSpec>()?)
///     .burst(40)
///     .ipv6_prefix(64)
///     .allow(["10.0.0.0/8".parse()?]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct IpRateLimitLayer {
    cfg: Config,
    limiter: Arc<IpRateLimiter>,
    #[cfg(feature = "redis")]
    redis: Option<super::redis::RedisLimits>,
}

impl fmt::Debug for IpRateLimitLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IpRateLimitLayer")
            .field("limiter", &self.limiter)
            .finish_non_exhaustive()
    }
}

impl IpRateLimitLayer {
    /// Admit `rate` handshakes per client network, with a burst of the rate's count.
    pub fn new(rate: RateSpec) -> Self {
        Self::from_config(Config {
            rate,
            burst: None,
            prefix: KeyPrefix::default(),
            max_keys: DEFAULT_MAX_KEYS,
            prune_interval: DEFAULT_PRUNE_INTERVAL,
            allow: NetList::default(),
            deny: NetList::default(),
        })
    }

    fn from_config(cfg: Config) -> Self {
        let limiter = Arc::new(IpRateLimiter::new(&cfg));
        Self {
            cfg,
            limiter,
            #[cfg(feature = "redis")]
            redis: None,
        }
    }

    fn rebuild(self, f: impl FnOnce(&mut Config)) -> Self {
        let mut cfg = self.cfg;
        f(&mut cfg);
        Self {
            limiter: Arc::new(IpRateLimiter::new(&cfg)),
            cfg,
            #[cfg(feature = "redis")]
            redis: self.redis,
        }
    }

    /// Handshakes a fresh client may make at once (`burst` in the config; at least 1).
    pub fn burst(self, burst: u32) -> Self {
        self.rebuild(|c| c.burst = Some(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN)))
    }

    /// Key IPv4 clients by this prefix length (default 32; clamped to 32).
    pub fn ipv4_prefix(self, len: u8) -> Self {
        self.rebuild(|c| c.prefix = KeyPrefix::new(len, c.prefix.v6()))
    }

    /// Key IPv6 clients by this prefix length (default 64; clamped to 128).
    pub fn ipv6_prefix(self, len: u8) -> Self {
        self.rebuild(|c| c.prefix = KeyPrefix::new(c.prefix.v4(), len))
    }

    /// Track at most this many client networks (default [`DEFAULT_MAX_KEYS`]).
    ///
    /// When the table is full, networks not yet in it share one overflow bucket until a
    /// prune makes room: memory stays bounded under address spraying.
    pub fn max_keys(self, max: usize) -> Self {
        self.rebuild(|c| c.max_keys = max)
    }

    /// How often stale client networks are dropped (default 10 s).
    pub fn prune_interval(self, every: Duration) -> Self {
        self.rebuild(|c| c.prune_interval = every)
    }

    /// Never limit clients inside these networks.
    pub fn allow(self, nets: impl IntoIterator<Item = IpNet>) -> Self {
        let nets = NetList::new(nets);
        self.rebuild(|c| c.allow = nets)
    }

    /// Refuse clients inside these networks with 403.
    pub fn deny(self, nets: impl IntoIterator<Item = IpNet>) -> Self {
        let nets = NetList::new(nets);
        self.rebuild(|c| c.deny = nets)
    }

    /// Count handshakes in Redis, shared by every wsgate instance using the same store.
    ///
    /// The local limiter stays configured: it is what a fail-open store falls back to.
    #[cfg(feature = "redis")]
    pub fn redis(mut self, store: super::redis::RedisLimits) -> Self {
        self.redis = Some(store);
        self
    }

    /// The limiter shared by this layer's services.
    pub fn limiter(&self) -> &Arc<IpRateLimiter> {
        &self.limiter
    }
}

impl<S> Layer<S> for IpRateLimitLayer {
    type Service = IpRateLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        IpRateLimit {
            inner,
            limiter: self.limiter.clone(),
            #[cfg(feature = "redis")]
            redis: self.redis.clone(),
        }
    }
}

/// The service made by [`IpRateLimitLayer`].
#[derive(Clone)]
pub struct IpRateLimit<S> {
    inner: S,
    limiter: Arc<IpRateLimiter>,
    #[cfg(feature = "redis")]
    redis: Option<super::redis::RedisLimits>,
}

impl<S: fmt::Debug> fmt::Debug for IpRateLimit<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IpRateLimit")
            .field("inner", &self.inner)
            .field("limiter", &self.limiter)
            .finish_non_exhaustive()
    }
}

impl<S, B> Service<Request<B>> for IpRateLimit<S>
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

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let Some(ip) = client_addr(&req) else {
            return refuse(LimitRejection::NoClientAddress);
        };
        #[cfg(feature = "redis")]
        if let Some(redis) = &self.redis {
            if self.limiter.is_denied(ip) {
                return refuse(LimitRejection::Denied);
            }
            if self.limiter.is_exempt(ip) {
                return LimitFuture::local(ResponseFuture::inner(self.inner.call(req)));
            }
            let clone = self.inner.clone();
            let mut inner = std::mem::replace(&mut self.inner, clone);
            let (redis, limiter) = (redis.clone(), self.limiter.clone());
            return LimitFuture::remote(Box::pin(async move {
                match redis.check_rate(&limiter, ip).await {
                    Ok(_) => inner.call(req).await,
                    Err(rejection) => Ok(rejection.into_response()),
                }
            }));
        }
        match self.limiter.check(ip) {
            Ok(_) => LimitFuture::local(ResponseFuture::inner(self.inner.call(req))),
            Err(rejection) => refuse(rejection),
        }
    }
}

pub(crate) fn refuse<F, E>(rejection: LimitRejection) -> LimitFuture<F, E> {
    LimitFuture::local(ResponseFuture::early(rejection.into_response()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(i: u32) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i))
    }

    #[test]
    fn burst_then_refusal_with_a_retry_time() {
        let l = IpRateLimitLayer::new("1/h".parse().unwrap()).burst(3);
        let l = l.limiter();
        for _ in 0..3 {
            assert_eq!(l.check(ip(1)), Ok(RateDecision::Admitted));
        }
        let Err(LimitRejection::RateLimited {
            retry_after,
            policy,
        }) = l.check(ip(1))
        else {
            panic!("expected a rate-limit refusal")
        };
        assert!(
            retry_after > Duration::from_secs(3500) && retry_after <= Duration::from_secs(3600)
        );
        assert_eq!((policy.quota, policy.window_secs), (3, 3 * 3600));
        assert_eq!(l.check(ip(2)), Ok(RateDecision::Admitted));
    }

    #[test]
    fn key_table_is_capped_and_overflow_shares_one_bucket() {
        let layer = IpRateLimitLayer::new("1/h".parse().unwrap())
            .burst(2)
            .max_keys(100);
        let l = layer.limiter();
        for i in 0..100 {
            assert!(l.check(ip(i)).is_ok());
        }
        assert_eq!(l.tracked_keys(), 100);
        // New addresses share the overflow bucket: burst 2, then refused.
        assert!(l.check(ip(1000)).is_ok());
        assert!(l.check(ip(1001)).is_ok());
        assert!(l.check(ip(1002)).is_err());
        assert_eq!(l.tracked_keys(), 100);
        assert_eq!(l.overflow_hits(), 3);
        // Tracked clients keep their own budget.
        assert!(l.check(ip(5)).is_ok());
        assert!(l.check(ip(5)).is_err());
    }

    #[test]
    fn prune_drops_keys_back_to_fresh_state() {
        // 1000/s with burst 1: a key is fresh again 1 ms after its last handshake.
        let layer = IpRateLimitLayer::new("1000/s".parse().unwrap()).burst(1);
        let l = layer.limiter();
        for i in 0..500 {
            assert!(l.check(ip(i)).is_ok());
        }
        assert_eq!(l.tracked_keys(), 500);
        std::thread::sleep(Duration::from_millis(5)); // state must age; no event to await
        l.prune();
        assert_eq!(l.tracked_keys(), 0);
    }

    #[test]
    fn allow_and_deny_lists() {
        let layer = IpRateLimitLayer::new("1/h".parse().unwrap())
            .allow(["10.0.0.0/24".parse().unwrap()])
            .deny(["10.0.1.0/24".parse().unwrap()]);
        let l = layer.limiter();
        for _ in 0..10 {
            assert_eq!(l.check(ip(7)), Ok(RateDecision::Exempt));
        }
        assert_eq!(l.check(ip(256 + 7)), Err(LimitRejection::Denied));
        assert_eq!(l.tracked_keys(), 0);
    }
}
