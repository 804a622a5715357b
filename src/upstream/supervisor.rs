//! The live side of the upstream groups: per-backend tasks and backend-set changes.
//!
//! Design note. A group's backends change for two reasons, a reload and a DNS answer
//! that moved. Both become one operation, [`Supervisor`]'s sync: the wanted list of
//! backends (URL, pinned address, weight) is matched against the current set **by id**;
//! a backend that stays keeps its `Arc<Backend>` (so its open-socket count, health and
//! ejection state and its sockets are untouched, only its weight may change), new ones
//! are created, and the set is swapped atomically with `Upstream::replace_backends`.
//! A removed backend is marked draining (no new sockets); its open sockets stay until
//! they close or `drain_timeout` passes, then [`Backend::closing`] fires and their relays
//! close them with 1001. Each backend's health-check and pool-filler tasks hang off one
//! child token, cancelled when it leaves the group; everything hangs off the
//! supervisor's token and tracker, stopped at shutdown.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    sync::Arc,
    time::Duration,
};

use tokio::sync::Mutex;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{info, warn};
use wsgate_layers::{
    sticky::StickyLayer,
    upstream::{
        memory::{DEFAULT_FAILOVER_MEMORY, DEFAULT_FAILOVER_TTL},
        Backend, BackendUrl, FailoverMemory, Upstream,
    },
};

use super::{health, pool::Pool, Connector, HealthCheck};
use crate::config::{Config, RebalanceConfig, StickyConfig, UpstreamConfig};

/// Checks `upstream.sticky` and builds its layer; the error names the key.
pub fn check_sticky(s: &StickyConfig) -> Result<StickyLayer, (String, String)> {
    let e = |k: &str, m: String| (format!("sticky.{k}"), m);
    if let Some(f) = s.bounded_load {
        if !(f.is_finite() && f >= 1.0) {
            return Err(e(
                "bounded_load",
                "must be a number of at least 1.0 (e.g. 1.25)".into(),
            ));
        }
    }
    failover_memory(s).map_err(|(k, m)| e(k, m))?;
    let by = s.by.as_str();
    if by != "cookie" && (s.secret_env.is_some() || s.secret_file.is_some()) {
        return Err(e("secret_env", "only used with by = \"cookie\"".into()));
    }
    match by {
        "cookie" => {
            let secret = match (&s.secret_env, &s.secret_file) {
                (Some(var), None) => std::env::var(var)
                    .map_err(|_| {
                        e(
                            "secret_env",
                            format!("environment variable `{var}` is not set"),
                        )
                    })?
                    .into_bytes(),
                (None, Some(path)) => {
                    let mut b = std::fs::read(path)
                        .map_err(|err| e("secret_file", format!("{}: {err}", path.display())))?;
                    while b.last().is_some_and(|c| c.is_ascii_whitespace()) {
                        b.pop();
                    }
                    b
                }
                (Some(_), Some(_)) => {
                    return Err(e(
                        "secret_env",
                        "give secret_env or secret_file, not both".into(),
                    ))
                }
                // `sticky = { by = "cookie" }` as the contract writes it works: signed
                // with a secret of this process, so its cookies hold until a restart
                // and on this instance only (start logs a warning saying so).
                (None, None) => process_secret().map_err(|m| e("secret_env", m))?,
            };
            if s.cookie_name.is_empty()
                || !s
                    .cookie_name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
            {
                return Err(e(
                    "cookie_name",
                    "use letters, digits, `_`, `-`, `.`".into(),
                ));
            }
            let key = if s.secret_env.is_some() {
                "secret_env"
            } else {
                "secret_file"
            };
            StickyLayer::cookie(s.cookie_name.clone(), &secret)
                .map_err(|err| e(key, err.to_string()))
        }
        "ip" => Ok(StickyLayer::client_ip()),
        other => match other.split_once(':') {
            Some(("claim", c)) if !c.is_empty() => Ok(StickyLayer::claim(c)),
            Some(("header", h)) => {
                StickyLayer::header(h).map_err(|_| e("by", format!("`{h}` is not a header name")))
            }
            _ => Err(e(
                "by",
                format!("`{other}`: expected cookie, \"claim:NAME\", \"header:NAME\" or ip"),
            )),
        },
    }
}

/// A random cookie-signing secret for this process: 32 bytes from aws-lc's CSPRNG (the
/// one rustls draws its keys from).
fn process_secret() -> Result<Vec<u8>, String> {
    let mut secret = vec![0u8; 32];
    rustls::crypto::aws_lc_rs::default_provider()
        .secure_random
        .fill(&mut secret)
        .map_err(|_| {
            "cannot draw a random cookie secret; set secret_env or secret_file".to_string()
        })?;
    Ok(secret)
}

/// `true` when `sticky` signs cookies with a per-process secret (none configured).
pub fn has_process_secret(s: &StickyConfig) -> bool {
    s.by == "cookie" && s.secret_env.is_none() && s.secret_file.is_none()
}

/// The fail-over memory `sticky` asks for (`return_on_recovery = false`), or `None`
/// (keys go back to their own backend when it recovers). The error names the key.
pub fn failover_memory(s: &StickyConfig) -> Result<Option<FailoverMemory>, (&'static str, String)> {
    if s.return_on_recovery {
        return match (s.failover_memory, &s.failover_ttl) {
            (Some(_), _) => Err((
                "failover_memory",
                "only used with return_on_recovery = false".into(),
            )),
            (_, Some(_)) => Err((
                "failover_ttl",
                "only used with return_on_recovery = false".into(),
            )),
            (None, None) => Ok(None),
        };
    }
    let capacity = s.failover_memory.unwrap_or(DEFAULT_FAILOVER_MEMORY);
    if capacity == 0 {
        return Err((
            "failover_memory",
            "must be at least 1 (it bounds the keys remembered; e.g. 100000)".into(),
        ));
    }
    let ttl = s.failover_ttl.map_or(DEFAULT_FAILOVER_TTL, |d| d.0);
    if ttl < Duration::from_secs(1) {
        return Err(("failover_ttl", "must be at least 1s (e.g. \"1h\")".into()));
    }
    Ok(Some(FailoverMemory::new(capacity, ttl)))
}

/// A backend as the configuration (and DNS) want it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Wanted {
    url: BackendUrl,
    addr: Option<IpAddr>,
    weight: u32,
}

impl Wanted {
    fn id(&self) -> String {
        match self.addr {
            None => self.url.to_string(),
            Some(a) => format!("{}@{a}", self.url),
        }
    }
}

/// A backend as written in `backends`, with its weight.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Spec {
    url: BackendUrl,
    weight: u32,
}

/// What a sync changed, for the log and for tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Backends added.
    pub added: Vec<String>,
    /// Backends removed (now draining).
    pub removed: Vec<String>,
    /// Backends whose weight changed.
    pub reweighted: Vec<String>,
}

impl Changes {
    /// Nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.reweighted.is_empty()
    }
}

struct Group {
    upstream: Arc<Upstream>,
    connector: Connector,
    health: Option<HealthCheck>,
    drain_timeout: Duration,
    specs: Vec<Spec>,
    tasks: HashMap<String, CancellationToken>,
    rebalance: Option<RebalanceConfig>,
}

/// Owns every background task of the upstream groups and applies backend changes.
pub struct Supervisor {
    tracker: TaskTracker,
    stop: CancellationToken,
    groups: Mutex<Vec<Group>>,
    /// The groups' pools, readable without waiting for a reload in progress.
    pools: std::sync::Mutex<Vec<(String, Arc<Pool>)>>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor").finish_non_exhaustive()
    }
}

impl Default for Supervisor {
    fn default() -> Self {
        Self::new()
    }
}

impl Supervisor {
    /// No groups yet.
    pub fn new() -> Self {
        Self {
            tracker: TaskTracker::new(),
            stop: CancellationToken::new(),
            groups: Mutex::new(Vec::new()),
            pools: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// The warm pool of group `name`, if it has one.
    pub fn pool(&self, name: &str) -> Option<Arc<Pool>> {
        let pools = self.pools.lock().ok()?;
        pools
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| p.clone())
    }

    /// Prometheus lines for the pools: hits, misses.
    pub fn pool_metrics(&self) -> String {
        let mut out = String::from(
            "# HELP wsgate_pool_hits_total Handshakes that used a warm upstream connection.\n# TYPE wsgate_pool_hits_total counter\n",
        );
        let mut misses = String::from(
            "# HELP wsgate_pool_misses_total Handshakes that had to connect (no warm connection).\n# TYPE wsgate_pool_misses_total counter\n",
        );
        if let Ok(pools) = self.pools.lock() {
            for (name, p) in pools.iter() {
                out.push_str(&format!(
                    "wsgate_pool_hits_total{{upstream=\"{name}\"}} {}\n",
                    p.hits()
                ));
                misses.push_str(&format!(
                    "wsgate_pool_misses_total{{upstream=\"{name}\"}} {}\n",
                    p.misses()
                ));
            }
        }
        out.push_str(&misses);
        out
    }

    /// The tracker its tasks run on (the config watcher joins it too).
    pub fn tracker(&self) -> &TaskTracker {
        &self.tracker
    }

    /// Cancelled at shutdown.
    pub fn stop_token(&self) -> &CancellationToken {
        &self.stop
    }

    /// Takes over `upstream` (built from `cfg`): resolves host names into backends,
    /// starts health checks and pool fillers, and re-resolves every `resolve_interval`.
    pub async fn add(
        self: &Arc<Self>,
        cfg: &UpstreamConfig,
        upstream: Arc<Upstream>,
        connector: Connector,
        health: Option<HealthCheck>,
    ) {
        if let (Some(p), Ok(mut pools)) = (connector.pool(), self.pools.lock()) {
            pools.push((upstream.name().to_string(), p.clone()));
        }
        let specs = specs(cfg);
        let has_names = specs
            .iter()
            .any(|s| s.url.host().parse::<IpAddr>().is_err());
        let mut g = Group {
            upstream,
            connector,
            health,
            drain_timeout: cfg.drain_timeout.0,
            specs,
            tasks: HashMap::new(),
            rebalance: cfg.rebalance.clone(),
        };
        let wanted = resolve(&g.specs, &g.upstream.backends()).await;
        self.sync(&mut g, wanted);
        // Backends kept from construction have no tasks yet.
        for b in g.upstream.backends() {
            if !g.tasks.contains_key(&b.id()) {
                self.start_tasks(&mut g, &b);
            }
        }
        let name = g.upstream.name().to_string();
        let rebalance_every = g.rebalance.as_ref().map(|r| r.window.0);
        self.groups.lock().await.push(g);
        if let Some(every) = rebalance_every {
            let me = Arc::downgrade(self);
            let stop = self.stop.clone();
            let name = name.clone();
            self.tracker.spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(every) => {}
                    }
                    let Some(sup) = me.upgrade() else { return };
                    sup.rebalance(&name).await;
                }
            });
        }
        if has_names {
            let me = Arc::downgrade(self);
            let every = cfg.resolve_interval.0;
            let stop = self.stop.clone();
            self.tracker.spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(every) => {}
                    }
                    let Some(sup) = me.upgrade() else { return };
                    sup.re_resolve(&name).await;
                }
            });
        }
    }

    /// Resolves `name`'s host names again and applies the answer.
    pub async fn re_resolve(&self, name: &str) -> Changes {
        let mut groups = self.groups.lock().await;
        let Some(g) = groups.iter_mut().find(|g| g.upstream.name() == name) else {
            return Changes::default();
        };
        let wanted = resolve(&g.specs, &g.upstream.backends()).await;
        let changes = self.sync(g, wanted);
        if !changes.is_empty() {
            info!(upstream = name, added = ?changes.added, removed = ?changes.removed, "DNS changed the backends");
        }
        changes
    }

    /// Applies a new configuration's backend lists and weights to the running groups.
    /// Groups are matched by name; other changes (new groups, routes, health or pool
    /// settings) need a restart and are reported as such.
    pub async fn apply(&self, cfg: &Config) -> Vec<(String, Changes)> {
        let mut groups = self.groups.lock().await;
        let mut out = Vec::new();
        for u in &cfg.upstream {
            let Some(g) = groups.iter_mut().find(|g| g.upstream.name() == u.name) else {
                warn!(upstream = %u.name, "reload: a new [[upstream]] needs a restart; ignored");
                continue;
            };
            g.specs = specs(u);
            g.drain_timeout = u.drain_timeout.0;
            match (&g.rebalance, &u.rebalance) {
                (Some(_), Some(r)) => g.rebalance = Some(r.clone()),
                (None, None) => {}
                _ => {
                    warn!(upstream = %u.name, "reload: turning rebalance on or off needs a restart; its settings are applied otherwise")
                }
            }
            let wanted = resolve(&g.specs, &g.upstream.backends()).await;
            out.push((u.name.clone(), self.sync(g, wanted)));
        }
        for g in groups.iter() {
            if !cfg.upstream.iter().any(|u| u.name == g.upstream.name()) {
                warn!(upstream = %g.upstream.name(), "reload: removing an [[upstream]] needs a restart; kept");
            }
        }
        out
    }

    fn sync(&self, g: &mut Group, wanted: Vec<Wanted>) -> Changes {
        let mut changes = Changes::default();
        if wanted.is_empty() {
            warn!(upstream = %g.upstream.name(), "no backend address resolved; keeping the current ones");
            return changes;
        }
        let current = g.upstream.backends();
        let by_id: HashMap<String, Arc<Backend>> =
            current.iter().map(|b| (b.id(), b.clone())).collect();
        let mut next = Vec::with_capacity(wanted.len());
        let mut seen = HashSet::new();
        for w in wanted {
            let id = w.id();
            if !seen.insert(id.clone()) {
                continue;
            }
            match by_id.get(&id) {
                Some(b) => {
                    if b.weight() != w.weight.max(1) {
                        b.set_weight(w.weight);
                        changes.reweighted.push(id);
                    }
                    next.push(b.clone());
                }
                None => {
                    let b = Arc::new(match w.addr {
                        Some(a) => Backend::resolved(w.url, a, w.weight),
                        None => Backend::with_weight(w.url, w.weight),
                    });
                    changes.added.push(id);
                    next.push(b);
                }
            }
        }
        let removed: Vec<Arc<Backend>> = current
            .into_iter()
            .filter(|b| !seen.contains(&b.id()))
            .collect();
        if g.upstream.replace_backends(next.clone()).is_err() {
            return Changes::default();
        }
        for b in &next {
            if !g.tasks.contains_key(&b.id()) {
                self.start_tasks(g, b);
            }
        }
        for b in removed {
            let id = b.id();
            if let Some(t) = g.tasks.remove(&id) {
                t.cancel();
            }
            self.drain(g.upstream.name(), b, g.drain_timeout);
            changes.removed.push(id);
        }
        if !changes.is_empty() {
            info!(
                upstream = %g.upstream.name(),
                added = ?changes.added,
                removed = ?changes.removed,
                reweighted = ?changes.reweighted,
                "backends changed"
            );
        }
        changes
    }

    fn start_tasks(&self, g: &mut Group, b: &Arc<Backend>) {
        let token = self.stop.child_token();
        if let Some(check) = &g.health {
            self.tracker.spawn(health::watch(
                g.upstream.name().to_string(),
                b.clone(),
                check.clone(),
                g.connector.without_pool(),
                token.clone(),
            ));
        }
        if let Some(pool) = g.connector.pool() {
            self.tracker.spawn(pool.clone().fill(
                b.clone(),
                g.connector.without_pool(),
                token.clone(),
            ));
        }
        g.tasks.insert(b.id(), token);
    }

    /// One rebalancing round for group `name`: every available backend holding more
    /// than `threshold` × the mean of movable sockets gets up to `max_fraction` of its
    /// sockets (never more than its excess over the mean) told to move, at random
    /// moments spread over `window`. Returns how many sockets each backend was asked to
    /// move.
    pub async fn rebalance(&self, name: &str) -> Vec<(String, usize)> {
        let groups = self.groups.lock().await;
        let Some(g) = groups.iter().find(|g| g.upstream.name() == name) else {
            return Vec::new();
        };
        let Some(r) = g.rebalance.clone() else {
            return Vec::new();
        };
        let backends: Vec<Arc<Backend>> = g
            .upstream
            .backends()
            .into_iter()
            .filter(|b| b.is_available())
            .collect();
        drop(groups);
        if backends.len() < 2 {
            return Vec::new();
        }
        // Sockets already told to move are not counted: they are on their way.
        let loads: Vec<usize> = backends.iter().map(|b| b.movable()).collect();
        let mean = loads.iter().sum::<usize>() as f64 / backends.len() as f64;
        let mut moves = Vec::new();
        let mut picked = Vec::new();
        for (b, load) in backends.iter().zip(loads) {
            if (load as f64) <= r.threshold * mean {
                continue;
            }
            let excess = load.saturating_sub(mean.ceil() as usize);
            let share = (r.max_fraction * load as f64).ceil() as usize;
            let tokens = b.pick_movable(excess.min(share));
            if tokens.is_empty() {
                continue;
            }
            info!(upstream = name, backend = %b.url(), open = load, mean, moving = tokens.len(), "rebalance: moving sockets off an overloaded backend");
            moves.push((b.id(), tokens.len()));
            picked.extend(tokens);
        }
        if picked.is_empty() {
            return moves;
        }
        // Spread over the window, so the clients do not all reconnect at once.
        let mut at: Vec<(Duration, CancellationToken)> = picked
            .into_iter()
            .map(|t| (r.window.0.mul_f64(fastrand::f64()), t))
            .collect();
        at.sort_by_key(|(d, _)| *d);
        let stop = self.stop.clone();
        self.tracker.spawn(async move {
            let start = tokio::time::Instant::now();
            for (d, t) in at {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep_until(start + d) => t.cancel(),
                }
            }
        });
        moves
    }

    /// No new sockets for `b`; its open ones get `timeout`, then close with 1001.
    fn drain(&self, upstream: &str, b: Arc<Backend>, timeout: Duration) {
        b.set_draining(true);
        let stop = self.stop.clone();
        let upstream = upstream.to_string();
        self.tracker.spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::time::sleep(timeout) => {
                    if b.active() > 0 {
                        info!(upstream, backend = %b.url(), open = b.active(), "drain timeout: closing the removed backend's sockets with 1001");
                    }
                    b.closing().cancel();
                }
            }
        });
    }

    /// Stops every task (health checks, pool fillers, resolvers, drains, the config
    /// watcher) and waits for them, at most `limit`.
    pub async fn shutdown(&self, limit: Duration) {
        self.stop.cancel();
        self.tracker.close();
        let _ = tokio::time::timeout(limit, self.tracker.wait()).await;
    }
}

fn specs(cfg: &UpstreamConfig) -> Vec<Spec> {
    let weights = cfg.weights.clone().unwrap_or_default();
    cfg.backends
        .iter()
        .enumerate()
        .filter_map(|(i, b)| {
            Some(Spec {
                url: BackendUrl::parse(b).ok()?,
                weight: weights.get(i).copied().unwrap_or(1),
            })
        })
        .collect()
}

/// The wanted backends: IP literals as they are, each address of a host name its own
/// backend. A name that does not resolve keeps the backends it had (or, the first time,
/// stays one backend resolved on every connect).
async fn resolve(specs: &[Spec], current: &[Arc<Backend>]) -> Vec<Wanted> {
    let mut out = Vec::new();
    for s in specs {
        if s.url.host().parse::<IpAddr>().is_ok() {
            out.push(Wanted {
                url: s.url.clone(),
                addr: None,
                weight: s.weight,
            });
            continue;
        }
        let looked = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::net::lookup_host((s.url.host(), s.url.port())),
        )
        .await;
        let mut addrs: Vec<IpAddr> = match looked {
            Ok(Ok(it)) => it.map(|a| a.ip()).collect(),
            Ok(Err(e)) => {
                warn!(backend = %s.url, error = %e, "cannot resolve backend host");
                Vec::new()
            }
            Err(_) => {
                warn!(backend = %s.url, "backend host resolution timed out");
                Vec::new()
            }
        };
        addrs.sort();
        addrs.dedup();
        if addrs.is_empty() {
            let kept: Vec<Wanted> = current
                .iter()
                .filter(|b| b.url() == &s.url)
                .map(|b| Wanted {
                    url: s.url.clone(),
                    addr: b.addr(),
                    weight: s.weight,
                })
                .collect();
            if kept.is_empty() {
                out.push(Wanted {
                    url: s.url.clone(),
                    addr: None,
                    weight: s.weight,
                });
            } else {
                out.extend(kept);
            }
            continue;
        }
        out.extend(addrs.into_iter().map(|a| Wanted {
            url: s.url.clone(),
            addr: Some(a),
            weight: s.weight,
        }));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use wsgate_layers::upstream::Policy;

    fn wanted(url: &str, addr: Option<&str>, weight: u32) -> Wanted {
        Wanted {
            url: BackendUrl::parse(url).unwrap(),
            addr: addr.map(|a| a.parse().unwrap()),
            weight,
        }
    }

    #[tokio::test]
    async fn sync_keeps_remaining_backends_and_drains_removed_ones() {
        let sup = Supervisor::new();
        let up = Arc::new(Upstream::new("u", Policy::RoundRobin, ["ws://svc:1"]).unwrap());
        let tls = super::super::tls_client_config(None, None).unwrap();
        let mut g = Group {
            upstream: up.clone(),
            connector: Connector::new(tls, Duration::from_secs(1), Duration::from_secs(1)),
            health: None,
            drain_timeout: Duration::from_millis(50),
            specs: Vec::new(),
            tasks: HashMap::new(),
            rebalance: None,
        };
        // A DNS answer with two addresses: two backends.
        let c = sup.sync(
            &mut g,
            vec![
                wanted("ws://svc:1", Some("10.0.0.1"), 1),
                wanted("ws://svc:1", Some("10.0.0.2"), 1),
            ],
        );
        assert_eq!(c.added.len(), 2);
        assert_eq!(c.removed, vec!["ws://svc:1".to_string()]);
        let first = up.backends();
        let _open = first[0].track();
        // The answer changes: .2 goes, .3 comes, .1 stays with its open socket.
        let c = sup.sync(
            &mut g,
            vec![
                wanted("ws://svc:1", Some("10.0.0.1"), 3),
                wanted("ws://svc:1", Some("10.0.0.3"), 1),
            ],
        );
        assert_eq!(c.added, vec!["ws://svc:1@10.0.0.3".to_string()]);
        assert_eq!(c.removed, vec!["ws://svc:1@10.0.0.2".to_string()]);
        assert_eq!(c.reweighted, vec!["ws://svc:1@10.0.0.1".to_string()]);
        let now = up.backends();
        assert!(
            Arc::ptr_eq(&now[0], &first[0]),
            "kept backend is the same Arc"
        );
        assert_eq!(now[0].active(), 1);
        assert_eq!(now[0].weight(), 3);
        assert!(first[1].is_draining());
        tokio::time::timeout(Duration::from_secs(5), first[1].closing().cancelled())
            .await
            .expect("removed backend's sockets are told to close after the drain timeout");
        assert!(!now[0].closing().is_cancelled());
        // An empty answer never empties the group.
        assert!(sup.sync(&mut g, Vec::new()).is_empty());
        assert_eq!(up.backends().len(), 2);
        sup.shutdown(Duration::from_secs(1)).await;
    }
}
