//! Limits shared between wsgate instances through Redis (feature `redis`).
//!
//! # Design note
//!
//! **Handshake rate.** GCRA in one Lua script, run with `EVALSHA` (loaded on first use):
//! one string key per client network, `{prefix}:{scope}:rate:{network}`, holding the
//! theoretical arrival time in microseconds of *Redis's* clock (`TIME`), so instances
//! with skewed clocks agree. The key expires when its state is back to fresh, so idle
//! clients cost nothing.
//!
//! **Open connections.** One sorted set per counted thing
//! (`{prefix}:{scope}:conn:ip:{network}`, `…:conn:sub:{subject}`, `…:conn:all`);
//! member = `{instance}:{connection id}`, score = the lease's expiry (Redis ms). Taking a
//! slot first drops expired members, then checks every cap and adds the member to every
//! set, atomically in one script. The instance's background task renews the leases of
//! its open sockets every `heartbeat` and removes a lease when its guard drops. A
//! crashed instance stops renewing: its leases expire after `lease_ttl` and the slots
//! come back by themselves. A renewal never re-adds a lease that already expired (an
//! instance cut off from Redis for longer than the TTL): other instances may have taken
//! the slot since, and re-adding it would push the key over its limit
//! ([`RedisStats::lost`] counts these).
//!
//! **Redis unreachable.** Every call is bounded by `timeout`. [`FailMode::Open`] falls
//! back to the layer's local limits (per instance); [`FailMode::Closed`] refuses with
//! 503. Either way a warning is logged and [`RedisStats`] counts it.
//!
//! The local connection counts are always taken as well (an instance's own sockets are a
//! subset of the shared count, so they never refuse what Redis would admit): they keep
//! local metrics right and are what fail-open falls back to.

use std::{
    fmt,
    net::IpAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use dashmap::DashMap;
use redis::{aio::ConnectionManager, aio::ConnectionManagerConfig, Script};
use tokio::{sync::mpsc, task::JoinHandle};

use super::{
    connection::ConnectionLimits,
    ip_rate::{IpRateLimiter, RateDecision},
    rejection::{ConnectionScope, LimitRejection},
};

const GCRA: &str = r#"
if redis.replicate_commands then redis.replicate_commands() end
local t = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local new_tat = tat + t
local diff = new_tat - now
if diff > t * burst then
  return {0, diff - t * burst}
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil(diff / 1000) + 1)
return {1, 0}
"#;

const ACQUIRE: &str = r#"
if redis.replicate_commands then redis.replicate_commands() end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local member = ARGV[1]
local ttl = tonumber(ARGV[2])
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  if redis.call('ZCARD', key) >= tonumber(ARGV[i + 2]) then return i end
end
for _, key in ipairs(KEYS) do
  redis.call('ZADD', key, now + ttl, member)
  redis.call('PEXPIRE', key, ttl)
end
return 0
"#;

const RENEW: &str = r#"
if redis.replicate_commands then redis.replicate_commands() end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local ttl = tonumber(ARGV[1])
local lost = 0
for i, key in ipairs(KEYS) do
  local until_ms = redis.call('ZSCORE', key, ARGV[i + 1])
  if until_ms and tonumber(until_ms) > now then
    redis.call('ZADD', key, 'XX', now + ttl, ARGV[i + 1])
    redis.call('PEXPIRE', key, ttl)
  else
    lost = lost + 1
  end
end
return lost
"#;

/// What to do when Redis cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailMode {
    /// Fall back to the layer's local (per-instance) limits.
    #[default]
    Open,
    /// Refuse with 503.
    Closed,
}

/// Counters of a [`RedisLimits`], shared by its clones.
#[derive(Debug, Default)]
pub struct RedisStats {
    errors: AtomicU64,
    fail_open: AtomicU64,
    fail_closed: AtomicU64,
    renewed: AtomicU64,
    lost: AtomicU64,
    released: AtomicU64,
}

impl RedisStats {
    /// Redis calls that failed or timed out.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Decisions taken by the local limits because Redis failed.
    pub fn fail_open(&self) -> u64 {
        self.fail_open.load(Ordering::Relaxed)
    }

    /// Handshakes refused because Redis failed.
    pub fn fail_closed(&self) -> u64 {
        self.fail_closed.load(Ordering::Relaxed)
    }

    /// Leases renewed by the heartbeat.
    pub fn renewed(&self) -> u64 {
        self.renewed.load(Ordering::Relaxed)
    }

    /// Leases the heartbeat found already expired or gone (this instance could not
    /// reach Redis for longer than the lease TTL, and other instances may have taken
    /// the slots since). They are not put back: that would push a key over its limit.
    /// The sockets stay open, uncounted in Redis, until they close.
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }

    /// Leases removed from Redis after their socket closed.
    pub fn released(&self) -> u64 {
        self.released.load(Ordering::Relaxed)
    }
}

/// Why [`RedisLimitsBuilder::build`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisSetupError {
    /// The URL is not a Redis URL.
    #[error("redis url: {0}")]
    Url(#[source] redis::RedisError),
    /// Not called inside a tokio runtime (the heartbeat task needs one).
    #[error("RedisLimits must be built inside a tokio runtime")]
    NoRuntime,
}

/// Configures a [`RedisLimits`].
#[derive(Debug, Clone)]
pub struct RedisLimitsBuilder {
    url: String,
    prefix: String,
    fail_mode: FailMode,
    timeout: Duration,
    lease_ttl: Duration,
    heartbeat: Duration,
}

impl RedisLimitsBuilder {
    /// Key prefix (default `wsgate`).
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Fail open (default) or closed when Redis is unreachable.
    pub fn fail_mode(mut self, mode: FailMode) -> Self {
        self.fail_mode = mode;
        self
    }

    /// Longest wait for one Redis call before it counts as a failure (default 250 ms).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long a connection lease lives without renewal (default 30 s): the time a
    /// crashed instance's slots stay taken.
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl.max(Duration::from_millis(10));
        self
    }

    /// How often open connections' leases are renewed (default 10 s; keep it well under
    /// the lease TTL).
    pub fn heartbeat(mut self, every: Duration) -> Self {
        self.heartbeat = every.max(Duration::from_millis(5));
        self
    }

    /// Connects lazily (a Redis that is down at start-up is handled like one that goes
    /// down later) and starts the heartbeat task, owned by the returned value: it stops
    /// when the last clone is dropped or [`RedisLimits::shutdown`] is called.
    pub fn build(self) -> Result<RedisLimits, RedisSetupError> {
        let handle =
            tokio::runtime::Handle::try_current().map_err(|_| RedisSetupError::NoRuntime)?;
        let client = redis::Client::open(self.url.as_str()).map_err(RedisSetupError::Url)?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(self.timeout))
            .set_connection_timeout(Some(self.timeout))
            .set_number_of_retries(1)
            .set_max_delay(self.timeout);
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(RedisSetupError::Url)?;
        let instance = format!("{:016x}", fastrand::u64(..));
        let live: Arc<DashMap<u64, (String, Vec<String>)>> = Arc::new(DashMap::new());
        let stats = Arc::new(RedisStats::default());
        let (release_tx, release_rx) = mpsc::unbounded_channel();
        let task = handle.spawn(heartbeat_task(
            conn.clone(),
            live.clone(),
            release_rx,
            stats.clone(),
            self.heartbeat,
            self.lease_ttl,
            self.timeout,
        ));
        Ok(RedisLimits {
            shared: Arc::new(Shared {
                conn,
                prefix: self.prefix,
                instance,
                fail_mode: self.fail_mode,
                timeout: self.timeout,
                lease_ttl: self.lease_ttl,
                live,
                next_id: AtomicU64::new(0),
                release_tx,
                stats,
                gcra: Script::new(GCRA),
                acquire: Script::new(ACQUIRE),
                task,
            }),
            scope: "default".into(),
        })
    }
}

struct Shared {
    conn: ConnectionManager,
    prefix: String,
    instance: String,
    fail_mode: FailMode,
    timeout: Duration,
    lease_ttl: Duration,
    live: Arc<DashMap<u64, (String, Vec<String>)>>,
    next_id: AtomicU64,
    release_tx: mpsc::UnboundedSender<(String, Vec<String>)>,
    stats: Arc<RedisStats>,
    gcra: Script,
    acquire: Script,
    task: JoinHandle<()>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A handle on the Redis store shared by every wsgate instance (cheap to clone).
///
/// Give it to [`IpRateLimitLayer::redis`](super::IpRateLimitLayer::redis) and
/// [`ConnectionLimitLayer::redis`](super::ConnectionLimitLayer::redis); use
/// [`scoped`](Self::scoped) to keep each route's counts apart.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use wsgate_layers::ratelimit::{redis::{FailMode, RedisLimits}, IpRateLimitLayer};
/// let store = RedisLimits::builder("redis://127.0.0.1:6379")
///     .fail_mode(FailMode::Open)
///     .build()?;
/// let layer = IpRateLimitLayer::new("20/s".parse()?).burst(40).redis(store.scoped("chat"));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisLimits {
    shared: Arc<Shared>,
    scope: Arc<str>,
}

impl fmt::Debug for RedisLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLimits")
            .field("prefix", &self.shared.prefix)
            .field("scope", &self.scope)
            .field("instance", &self.shared.instance)
            .field("fail_mode", &self.shared.fail_mode)
            .finish_non_exhaustive()
    }
}

impl RedisLimits {
    /// Checks that `url` is a Redis URL this build can use, without connecting: what
    /// [`RedisLimitsBuilder::build`] would refuse, said before anything starts.
    pub fn check_url(url: &str) -> Result<(), String> {
        redis::Client::open(url)
            .map(drop)
            .map_err(|e| e.to_string())
    }

    /// Starts configuring a store at `url` (`redis://host:port/db`).
    pub fn builder(url: impl Into<String>) -> RedisLimitsBuilder {
        RedisLimitsBuilder {
            url: url.into(),
            prefix: "wsgate".into(),
            fail_mode: FailMode::Open,
            timeout: Duration::from_millis(250),
            lease_ttl: Duration::from_secs(30),
            heartbeat: Duration::from_secs(10),
        }
    }

    /// The same store, counting under another scope (a route name).
    pub fn scoped(&self, scope: &str) -> Self {
        Self {
            shared: self.shared.clone(),
            scope: scope.into(),
        }
    }

    /// Counters of failures and lease upkeep.
    pub fn stats(&self) -> &RedisStats {
        &self.shared.stats
    }

    /// This instance's id in lease members.
    pub fn instance(&self) -> &str {
        &self.shared.instance
    }

    /// The key of the sorted set counting `ip`'s open connections (for inspection).
    pub fn connection_key_for_ip(&self, limits: &ConnectionLimits, ip: IpAddr) -> String {
        format!("{}:ip:{}", self.conn_base(), limits.key_for(ip))
    }

    /// Stops the heartbeat task: leases are no longer renewed nor released (as if the
    /// instance had crashed; they expire after the lease TTL).
    pub fn shutdown(&self) {
        self.shared.task.abort();
    }

    fn conn_base(&self) -> String {
        format!("{}:{}:conn", self.shared.prefix, self.scope)
    }

    fn failed(&self, what: &str, err: &dyn fmt::Display) -> Result<(), LimitRejection> {
        self.shared.stats.errors.fetch_add(1, Ordering::Relaxed);
        match self.shared.fail_mode {
            FailMode::Open => {
                self.shared.stats.fail_open.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%err, what, "redis unreachable; failing open to local limits");
                Ok(())
            }
            FailMode::Closed => {
                self.shared
                    .stats
                    .fail_closed
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%err, what, "redis unreachable; failing closed");
                Err(LimitRejection::StoreUnavailable)
            }
        }
    }

    /// One handshake from `ip` against the shared GCRA (the local limiter's quota).
    pub(crate) async fn check_rate(
        &self,
        local: &IpRateLimiter,
        ip: IpAddr,
    ) -> Result<RateDecision, LimitRejection> {
        let key = format!(
            "{}:{}:rate:{}",
            self.shared.prefix,
            self.scope,
            local.key_prefix().key(ip)
        );
        let t_us = u64::try_from(local.rate().interval().as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        let mut conn = self.shared.conn.clone();
        let mut call = self.shared.gcra.key(&key);
        call.arg(t_us).arg(local.burst().get());
        let res: Result<(i64, i64), String> =
            match tokio::time::timeout(self.shared.timeout, call.invoke_async(&mut conn)).await {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("timed out".into()),
            };
        match res {
            Ok((1, _)) => Ok(RateDecision::Admitted),
            Ok((_, wait_us)) => Err(LimitRejection::RateLimited {
                retry_after: Duration::from_micros(u64::try_from(wait_us).unwrap_or(0)),
                policy: local.policy(),
            }),
            Err(e) => {
                self.failed("handshake rate", &e)?;
                local.check(ip)
            }
        }
    }

    /// Takes the local slots, then the shared ones.
    pub(crate) async fn acquire_connection(
        &self,
        local: &Arc<ConnectionLimits>,
        ip: IpAddr,
        subject: Option<&str>,
    ) -> Result<(super::ConnectionGuard, Option<RedisLease>), LimitRejection> {
        let guard = local.try_acquire(ip, subject)?;
        let base = self.conn_base();
        let mut keys = Vec::new();
        let mut caps = Vec::new();
        let mut scopes = Vec::new();
        if let Some(cap) = local.per_ip_cap().filter(|_| !local.is_exempt(ip)) {
            keys.push(format!("{base}:ip:{}", local.key_for(ip)));
            caps.push(cap);
            scopes.push(ConnectionScope::PerIp);
        }
        if let (Some(cap), Some(s)) = (local.per_subject_cap(), subject) {
            keys.push(format!("{base}:sub:{s}"));
            caps.push(cap);
            scopes.push(ConnectionScope::PerSubject);
        }
        if let Some(cap) = local.global_cap() {
            keys.push(format!("{base}:all"));
            caps.push(cap);
            scopes.push(ConnectionScope::Global);
        }
        if keys.is_empty() {
            return Ok((guard, None));
        }
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let member = format!("{}:{id}", self.shared.instance);
        let ttl_ms = u64::try_from(self.shared.lease_ttl.as_millis()).unwrap_or(u64::MAX);
        let mut conn = self.shared.conn.clone();
        let mut call = self.shared.acquire.prepare_invoke();
        for k in &keys {
            call.key(k);
        }
        call.arg(&member).arg(ttl_ms);
        for c in &caps {
            call.arg(*c);
        }
        // Registered before the call: if the call succeeds but its answer is lost (timeout),
        // the guard's release still removes the member.
        self.shared.live.insert(id, (member.clone(), keys.clone()));
        let lease = RedisLease {
            id,
            member,
            keys,
            live: self.shared.live.clone(),
            release_tx: self.shared.release_tx.clone(),
        };
        let res: Result<i64, String> =
            match tokio::time::timeout(self.shared.timeout, call.invoke_async(&mut conn)).await {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("timed out".into()),
            };
        match res {
            Ok(0) => Ok((guard, Some(lease))),
            Ok(i) => {
                let scope = usize::try_from(i - 1)
                    .ok()
                    .and_then(|i| scopes.get(i).copied())
                    .unwrap_or(ConnectionScope::Global);
                Err(LimitRejection::TooManyConnections(scope))
            }
            Err(e) => {
                self.failed("connection count", &e)?;
                Ok((guard, Some(lease)))
            }
        }
    }
}

/// A connection's leases in Redis; dropping it removes them (through the heartbeat task).
pub(crate) struct RedisLease {
    id: u64,
    member: String,
    keys: Vec<String>,
    live: Arc<DashMap<u64, (String, Vec<String>)>>,
    release_tx: mpsc::UnboundedSender<(String, Vec<String>)>,
}

impl Drop for RedisLease {
    fn drop(&mut self) {
        self.live.remove(&self.id);
        let keys = std::mem::take(&mut self.keys);
        // If the task is gone the lease simply expires.
        let _ = self
            .release_tx
            .send((std::mem::take(&mut self.member), keys));
    }
}

async fn heartbeat_task(
    mut conn: ConnectionManager,
    live: Arc<DashMap<u64, (String, Vec<String>)>>,
    mut releases: mpsc::UnboundedReceiver<(String, Vec<String>)>,
    stats: Arc<RedisStats>,
    every: Duration,
    ttl: Duration,
    timeout: Duration,
) {
    let renew = Script::new(RENEW);
    let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                // Renewals and releases run on this one task, in order: a release queued
                // after a renewal is applied after it, so no lease is resurrected.
                let snapshot: Vec<(String, Vec<String>)> =
                    live.iter().map(|e| e.value().clone()).collect();
                for chunk in snapshot.chunks(256) {
                    let mut call = renew.prepare_invoke();
                    call.arg(ttl_ms);
                    let mut n = 0u64;
                    for (member, keys) in chunk {
                        for k in keys {
                            call.key(k).arg(member);
                        }
                        n += 1;
                    }
                    match tokio::time::timeout(timeout, call.invoke_async::<i64>(&mut conn)).await {
                        Ok(Ok(lost)) => {
                            let lost = u64::try_from(lost).unwrap_or(0);
                            stats.renewed.fetch_add(n, Ordering::Relaxed);
                            if lost > 0 {
                                stats.lost.fetch_add(lost, Ordering::Relaxed);
                                tracing::warn!(lost, "redis leases expired before renewal; not re-added");
                            }
                        }
                        Ok(Err(e)) => {
                            stats.errors.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(err = %e, "redis lease renewal failed");
                        }
                        Err(_) => {
                            stats.errors.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!("redis lease renewal timed out");
                        }
                    }
                }
            }
            msg = releases.recv() => {
                let Some((member, keys)) = msg else { return };
                let mut pipe = redis::pipe();
                for k in &keys {
                    pipe.zrem(k, &member).ignore();
                }
                match tokio::time::timeout(timeout, pipe.query_async::<()>(&mut conn)).await {
                    Ok(Ok(())) => { stats.released.fetch_add(1, Ordering::Relaxed); }
                    _ => {
                        stats.errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(%member, "redis lease release failed; it will expire");
                    }
                }
            }
        }
    }
}
