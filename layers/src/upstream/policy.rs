//! Upstream groups and how they choose.

use std::{
    str::FromStr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
};

use arc_swap::ArcSwap;

use super::{
    backend::{Backend, BackendUrl, BackendUrlError},
    hash::{mix, stable_hash},
    memory::FailoverMemory,
};

/// How an [`Upstream`] picks a backend for a new socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// Each backend in turn; with weights, the same order as `WeightedRoundRobin`.
    #[default]
    RoundRobin,
    /// In turn, in proportion to the weights, interleaved (nginx's smooth weighted order).
    WeightedRoundRobin,
    /// The backend with the fewest open sockets (ties: the first in order).
    LeastConnections,
    /// Power of two choices: the less loaded of two random backends.
    P2c,
    /// Uniformly at random.
    Random,
    /// Rendezvous hashing of the request's [`StickyKey`](super::StickyKey): the same key
    /// goes to the same backend in every wsgate instance, and adding or removing one of N
    /// backends moves about 1/N of the keys. Without a key it behaves as `Random`.
    ConsistentHash,
}

impl FromStr for Policy {
    type Err = UpstreamError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "round_robin" => Self::RoundRobin,
            "weighted_round_robin" => Self::WeightedRoundRobin,
            "least_connections" => Self::LeastConnections,
            "p2c" => Self::P2c,
            "random" => Self::Random,
            "consistent_hash" => Self::ConsistentHash,
            other => return Err(UpstreamError::UnknownPolicy(other.to_string())),
        })
    }
}

/// Why an upstream could not be built.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// A backend address did not parse.
    #[error(transparent)]
    Url(#[from] BackendUrlError),
    /// The group has no backends.
    #[error("an upstream needs at least one backend")]
    Empty,
    /// `weights` does not match `backends`.
    #[error("{weights} weights given for {backends} backends")]
    Weights {
        /// how many weights
        weights: usize,
        /// how many backends
        backends: usize,
    },
    /// Not one of the policy names.
    #[error("unknown policy `{0}` (round_robin, weighted_round_robin, least_connections, p2c, random, consistent_hash)")]
    UnknownPolicy(String),
}

/// The backends of a group at one moment, swapped whole on reload.
#[derive(Debug)]
struct BackendSet {
    backends: Vec<Arc<Backend>>,
    /// Smooth weighted round-robin order, computed once per set so choosing is one
    /// atomic increment and an index.
    weighted_order: Vec<u32>,
}

impl BackendSet {
    fn new(backends: Vec<Arc<Backend>>) -> Self {
        let weighted_order = smooth_weighted_order(&backends);
        Self {
            backends,
            weighted_order,
        }
    }
}

/// nginx's smooth weighted round robin, unrolled once: weights 5,1,1 give
/// a a b a c a a rather than a a a a a b c.
fn smooth_weighted_order(backends: &[Arc<Backend>]) -> Vec<u32> {
    let total: i64 = backends.iter().map(|b| i64::from(b.weight())).sum();
    // Cap the unrolled cycle so absurd weights cannot allocate without bound.
    let len = total.clamp(1, 10_000) as usize;
    let mut current = vec![0i64; backends.len()];
    let mut order = Vec::with_capacity(len);
    for _ in 0..len {
        let mut best = 0;
        for (i, b) in backends.iter().enumerate() {
            current[i] += i64::from(b.weight());
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        order.push(best as u32);
    }
    order
}

/// A named group of backends and the policy that chooses among them.
#[derive(Debug)]
pub struct Upstream {
    name: String,
    policy: Policy,
    set: ArcSwap<BackendSet>,
    cursor: AtomicUsize,
    bounded_load: Option<f64>,
    memory: Option<FailoverMemory>,
}

impl Upstream {
    /// A group of equally weighted backends.
    pub fn new<I, S>(
        name: impl Into<String>,
        policy: Policy,
        urls: I,
    ) -> Result<Self, UpstreamError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let backends = urls
            .into_iter()
            .map(|u| Ok(Arc::new(Backend::new(BackendUrl::parse(u.as_ref())?))))
            .collect::<Result<Vec<_>, UpstreamError>>()?;
        Self::from_backends(name, policy, backends)
    }

    /// A group of already built backends (shared with other groups, or weighted).
    pub fn from_backends(
        name: impl Into<String>,
        policy: Policy,
        backends: Vec<Arc<Backend>>,
    ) -> Result<Self, UpstreamError> {
        if backends.is_empty() {
            return Err(UpstreamError::Empty);
        }
        Ok(Self {
            name: name.into(),
            policy,
            set: ArcSwap::from_pointee(BackendSet::new(backends)),
            cursor: AtomicUsize::new(0),
            bounded_load: None,
            memory: None,
        })
    }

    /// Consistent hashing with bounded loads: a keyed socket skips, in its hash order,
    /// every backend already holding more than `factor` times the average number of
    /// open sockets (rounded up), so one hot key cannot overload a backend. `1.25` is
    /// a common choice; values below 1 are taken as 1.
    pub fn with_bounded_load(mut self, factor: f64) -> Self {
        self.bounded_load = Some(if factor.is_finite() {
            factor.max(1.0)
        } else {
            1.0
        });
        self
    }

    /// Keys stay on the backend that took them during a fail-over, even after their own
    /// backend recovers (`return_on_recovery = false`), as long as that backend stays
    /// available: `memory` remembers where they went (bounded, expiring, per process;
    /// see [`FailoverMemory`]). The handler must report each keyed socket's backend
    /// with [`served`](Self::served). Without it (the default) a key goes back to its
    /// own backend as soon as it is available again.
    pub fn with_failover_memory(mut self, memory: FailoverMemory) -> Self {
        self.memory = Some(memory);
        self
    }

    /// The fail-over memory, if keys stay where a fail-over put them.
    pub fn failover_memory(&self) -> Option<&FailoverMemory> {
        self.memory.as_ref()
    }

    /// Records that a socket with sticky key `key` was opened on `backend`. With a
    /// [fail-over memory](Self::with_failover_memory): a key served away from its own
    /// backend *because that one was unavailable* is remembered there (an existing entry
    /// for that backend is refreshed); a key served by its own backend is forgotten. A
    /// key that only spilled over a [load bound](Self::with_bounded_load) is not
    /// remembered. Without a memory this does nothing.
    pub fn served(&self, key: &[u8], backend: &Backend) {
        self.record(key, backend, None);
    }

    /// [`served`](Self::served) for a socket moved to `backend` because `lost` went
    /// away under it (resume mode): `lost` counts as unavailable even if its health has
    /// not caught up yet, so a key whose own backend died is remembered on the new one.
    pub fn served_instead_of(&self, key: &[u8], backend: &Backend, lost: &Backend) {
        self.record(key, backend, Some(lost));
    }

    fn record(&self, key: &[u8], backend: &Backend, lost: Option<&Backend>) {
        let Some(memory) = &self.memory else {
            return;
        };
        let set = self.set.load();
        let kh = stable_hash(key);
        let Some(home) = rendezvous_first(&set.backends, kh) else {
            return;
        };
        let home = &set.backends[home];
        let home_away = !home.is_available() || lost.is_some_and(|l| l.id_hash() == home.id_hash());
        let remembered = memory.get(kh);
        if home.id_hash() == backend.id_hash() {
            memory.forget(kh);
        } else if home_away || remembered == Some(backend.id_hash()) {
            memory.remember(kh, backend.id_hash());
        } else if lost.is_some_and(|l| remembered == Some(l.id_hash())) {
            // The remembered backend died under the socket: the key follows its hash
            // order again, as it would once health takes that backend out.
            memory.forget(kh);
        }
    }

    /// The bounded-load factor, if any.
    pub fn bounded_load(&self) -> Option<f64> {
        self.bounded_load
    }

    /// The group's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The group's policy.
    pub fn policy(&self) -> Policy {
        self.policy
    }
    /// The current backends.
    pub fn backends(&self) -> Vec<Arc<Backend>> {
        self.set.load().backends.clone()
    }
    /// Replaces the backends atomically; sockets already open are not touched.
    pub fn replace_backends(&self, backends: Vec<Arc<Backend>>) -> Result<(), UpstreamError> {
        if backends.is_empty() {
            return Err(UpstreamError::Empty);
        }
        self.set.store(Arc::new(BackendSet::new(backends)));
        Ok(())
    }

    /// The available backends in the order to try them: the policy's choice first, then
    /// the fail-over order. When every healthy backend is passively ejected, the first of
    /// them in that order (a probe; see [`Backend::record_failure`]). Empty when none is
    /// healthy and not draining.
    ///
    /// `key` is the sticky key ([`StickyKey`](super::StickyKey)): whatever the policy, a
    /// keyed socket goes to the first available backend in the key's rendezvous order
    /// (skipping overloaded ones with [`with_bounded_load`](Self::with_bounded_load)),
    /// so when that backend is down the key moves to the next in its order and comes
    /// back when it recovers (with a [fail-over memory](Self::with_failover_memory) it
    /// stays on the backend remembered for it while that one is available). The policy
    /// chooses for sockets without a key.
    pub fn candidates(&self, key: Option<&[u8]>) -> Vec<Arc<Backend>> {
        let set = self.set.load();
        let all = &set.backends;
        let n = all.len();
        match (self.policy, key) {
            (_, Some(key)) => {
                let kh = stable_hash(key);
                let mut order = rendezvous_order(all, kh);
                if let Some(memory) = &self.memory {
                    remembered_first(memory, all, kh, &mut order);
                }
                let order = match self.bounded_load {
                    Some(factor) => bounded(all, order, factor),
                    None => order,
                };
                in_order(all, order.into_iter())
            }
            (Policy::LeastConnections, _) => {
                let start = self.cursor.fetch_add(1, Ordering::Relaxed);
                let mut idx: Vec<usize> = rotation(start % n, n).collect();
                // Stable sort on load keeps the rotation among equally loaded backends, so
                // a burst of new sockets spreads instead of all landing on backend 0.
                idx.sort_by_key(|i| all[*i].active());
                in_order(all, idx.into_iter())
            }
            (Policy::P2c, _) => {
                let mut idx: Vec<usize> = rotation(fastrand::usize(..n), n).collect();
                if n >= 2 {
                    let a = idx[0];
                    let b = idx[1 + fastrand::usize(..n - 1)];
                    if all[b].active() < all[a].active() {
                        idx.retain(|i| *i != b);
                        idx.insert(0, b);
                    }
                }
                in_order(all, idx.into_iter())
            }
            // The rotations need no list of their own: the candidates are the only
            // allocation of a handshake's choice.
            (Policy::Random, _) | (Policy::ConsistentHash, None) => {
                in_order(all, rotation(fastrand::usize(..n), n))
            }
            // Plain round robin honours weights too, as nginx's does: with equal weights
            // the smooth order is 0, 1, …, n-1, the plain rotation.
            (Policy::WeightedRoundRobin | Policy::RoundRobin, _) => {
                let k = self.cursor.fetch_add(1, Ordering::Relaxed);
                let first = set.weighted_order[k % set.weighted_order.len()] as usize;
                in_order(all, rotation(first, n))
            }
        }
    }
}

/// The available backends of `all` in `order`; when none is, the probe of panic mode.
fn in_order(all: &[Arc<Backend>], order: impl Iterator<Item = usize> + Clone) -> Vec<Arc<Backend>> {
    let mut chosen = Vec::with_capacity(all.len());
    chosen.extend(
        order
            .clone()
            .filter(|i| all[*i].is_available())
            .map(|i| all[i].clone()),
    );
    if !chosen.is_empty() {
        return chosen;
    }
    // Panic mode: every backend that is up by its health checks is passively ejected.
    // An ejection is a guess made from a few failed connects (often a reconnect storm
    // that briefly overloaded healthy backends); refusing every client is certain
    // failure. So one ejected backend is tried per handshake, as a probe: its success
    // ends the ejection (Envoy's panic threshold does the same). Backends down by
    // active checks or draining are never chosen.
    chosen.extend(
        order
            .filter(|i| all[*i].is_healthy() && !all[*i].is_draining())
            .take(1)
            .map(|i| all[i].clone()),
    );
    chosen
}

/// Moves backends over the load bound to the end of `order`, keeping hash order within
/// both parts: the key's first backend under the bound takes it.
fn bounded(all: &[Arc<Backend>], order: Vec<usize>, factor: f64) -> Vec<usize> {
    let live: Vec<usize> = order
        .iter()
        .copied()
        .filter(|i| all[*i].is_available())
        .collect();
    if live.is_empty() {
        return order;
    }
    let total: usize = live.iter().map(|i| all[*i].active()).sum();
    // The socket being placed counts too, so an idle group always has room.
    let cap = (factor * (total + 1) as f64 / live.len() as f64).ceil() as usize;
    let (under, over): (Vec<usize>, Vec<usize>) =
        order.into_iter().partition(|i| all[*i].active() < cap);
    under.into_iter().chain(over).collect()
}

/// `start`, `start + 1` … wrapping around `n`.
fn rotation(start: usize, n: usize) -> impl Iterator<Item = usize> + Clone {
    (0..n).map(move |i| (start + i) % n)
}

/// Moves the backend remembered for key hash `kh` to the front of `order` when it is
/// still in the group and available; otherwise forgets the entry (the key follows its
/// hash order again).
fn remembered_first(
    memory: &FailoverMemory,
    all: &[Arc<Backend>],
    kh: u64,
    order: &mut Vec<usize>,
) {
    let Some(remembered) = memory.get(kh) else {
        return;
    };
    match order.iter().position(|i| all[*i].id_hash() == remembered) {
        Some(pos) if all[order[pos]].is_available() => {
            let i = order.remove(pos);
            order.insert(0, i);
        }
        _ => memory.forget(kh),
    }
}

/// The weighted rendezvous score of backend `b` for key hash `kh`.
fn score(b: &Backend, kh: u64) -> f64 {
    let h = mix(kh ^ b.id_hash());
    // Map to (0,1], then the weighted rendezvous score -w / ln(u).
    let u = ((h >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
    -f64::from(b.weight()) / u.ln()
}

/// Backends ordered by weighted rendezvous score for key hash `kh` (highest first).
fn rendezvous_order(all: &[Arc<Backend>], kh: u64) -> Vec<usize> {
    let mut scored: Vec<(f64, usize)> = all
        .iter()
        .enumerate()
        .map(|(i, b)| (score(b, kh), i))
        .collect();
    // Stable: equal scores keep list order, as in `rendezvous_first`.
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    scored.into_iter().map(|(_, i)| i).collect()
}

/// The key's own backend: the first of [`rendezvous_order`], whatever its health.
fn rendezvous_first(all: &[Arc<Backend>], kh: u64) -> Option<usize> {
    let mut best: Option<(f64, usize)> = None;
    for (i, b) in all.iter().enumerate() {
        let s = score(b, kh);
        if best.is_none_or(|(top, _)| s > top) {
            best = Some((s, i));
        }
    }
    best.map(|(_, i)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(policy: Policy, n: usize) -> Upstream {
        Upstream::new(
            "t",
            policy,
            (0..n).map(|i| format!("ws://127.0.0.1:{}", 9000 + i)),
        )
        .unwrap()
    }

    #[test]
    fn round_robin_spreads_evenly_and_skips_unhealthy() {
        let up = group(Policy::RoundRobin, 3);
        let mut counts = [0; 3];
        for _ in 0..300 {
            let c = up.candidates(None);
            counts[(c[0].url().port() - 9000) as usize] += 1;
        }
        assert_eq!(counts, [100, 100, 100]);
        up.backends()[1].set_healthy(false);
        for _ in 0..10 {
            let c = up.candidates(None);
            assert_eq!(c.len(), 2);
            assert!(c.iter().all(|b| b.url().port() != 9001));
        }
    }

    #[test]
    fn all_ejected_gives_one_probe_but_never_a_down_or_draining_backend() {
        let up = group(Policy::RoundRobin, 3);
        let bs = up.backends();
        for b in &bs {
            b.record_failure(
                std::time::Duration::from_secs(30),
                std::time::Duration::from_secs(30),
            );
        }
        bs[0].set_healthy(false);
        bs[1].set_draining(true);
        for _ in 0..6 {
            let c = up.candidates(Some(b"k"));
            assert_eq!(c.len(), 1);
            assert_eq!(c[0].url().port(), 9002);
            let c = up.candidates(None);
            assert_eq!(c.len(), 1);
            assert_eq!(c[0].url().port(), 9002);
        }
        // A probe that succeeds ends its ejection: back to normal choice.
        bs[2].record_success();
        assert!(bs[2].is_available());
        bs[2].set_healthy(false);
        assert!(
            up.candidates(None).is_empty(),
            "down and draining are never chosen"
        );
    }

    #[test]
    fn weighted_is_smooth_and_proportional() {
        let bs = (0..3)
            .map(|i| {
                Arc::new(Backend::with_weight(
                    BackendUrl::parse(&format!("ws://h:{}", 1 + i)).unwrap(),
                    [5, 1, 1][i],
                ))
            })
            .collect();
        let up = Upstream::from_backends("w", Policy::WeightedRoundRobin, bs).unwrap();
        let picks: Vec<u16> = (0..7)
            .map(|_| up.candidates(None)[0].url().port())
            .collect();
        assert_eq!(picks.iter().filter(|p| **p == 1).count(), 5);
        assert_ne!(picks[..5], [1, 1, 1, 1, 1], "not smooth: {picks:?}");
    }

    /// `round_robin` with weights follows them (as nginx's does); without, it is the
    /// plain rotation.
    #[test]
    fn round_robin_honours_weights_and_rotates_without_them() {
        let weighted = |w: [u32; 3]| {
            let bs = (0..3)
                .map(|i| {
                    Arc::new(Backend::with_weight(
                        BackendUrl::parse(&format!("ws://h:{}", 1 + i)).unwrap(),
                        w[i],
                    ))
                })
                .collect();
            Upstream::from_backends("rr", Policy::RoundRobin, bs).unwrap()
        };
        let picks = |up: &Upstream, n: usize| -> Vec<u16> {
            (0..n)
                .map(|_| up.candidates(None)[0].url().port())
                .collect()
        };
        let up = weighted([5, 1, 1]);
        assert_eq!(picks(&up, 7).iter().filter(|p| **p == 1).count(), 5);
        let up = weighted([1, 1, 1]);
        assert_eq!(picks(&up, 6), [1, 2, 3, 1, 2, 3]);
    }

    #[test]
    fn least_connections_prefers_idle_backend() {
        let up = group(Policy::LeastConnections, 3);
        let bs = up.backends();
        let _g = (bs[0].track(), bs[1].track());
        for _ in 0..5 {
            assert_eq!(up.candidates(None)[0].url().port(), 9002);
        }
    }

    #[test]
    fn consistent_hash_is_stable_and_moves_few_keys() {
        let a = group(Policy::ConsistentHash, 10);
        let b = group(Policy::ConsistentHash, 11);
        let mut moved = 0;
        for k in 0..10_000u32 {
            let key = k.to_be_bytes();
            let x = a.candidates(Some(&key))[0].url().port();
            assert_eq!(x, a.candidates(Some(&key))[0].url().port());
            if x != b.candidates(Some(&key))[0].url().port() {
                moved += 1;
            }
        }
        // Ideal is 1/11 of the keys (909); allow sampling noise.
        assert!((700..1150).contains(&moved), "moved {moved}");
    }

    #[test]
    fn bounded_load_spills_a_hot_key_to_the_next_backend() {
        let up = group(Policy::ConsistentHash, 4).with_bounded_load(1.25);
        let key = b"hot";
        let first = up.candidates(Some(key))[0].clone();
        let mut guards = Vec::new();
        for _ in 0..40 {
            let b = up.candidates(Some(key))[0].clone();
            guards.push(b.track());
        }
        // Without the bound all 40 would sit on `first`; with it, no backend holds more
        // than ceil(1.25 * 40 / 4) = 13.
        assert!(first.active() <= 13, "{}", first.active());
        assert!(up.backends().iter().all(|b| b.active() <= 13));
        drop(guards);
        assert_eq!(up.candidates(Some(key))[0].url(), first.url());
    }

    #[test]
    fn keyed_socket_fails_over_in_hash_order_and_returns() {
        let up = group(Policy::RoundRobin, 5);
        let order = up.candidates(Some(b"user-7"));
        order[0].set_healthy(false);
        let during = up.candidates(Some(b"user-7"));
        assert_eq!(during[0].url(), order[1].url());
        order[0].set_healthy(true);
        assert_eq!(up.candidates(Some(b"user-7"))[0].url(), order[0].url());
    }

    #[test]
    fn with_failover_memory_a_key_stays_on_its_fallback_after_recovery() {
        let up = group(Policy::RoundRobin, 5)
            .with_failover_memory(FailoverMemory::new(100, std::time::Duration::from_secs(60)));
        let key = b"user-7";
        let order = up.candidates(Some(key));
        let (home, fallback) = (order[0].clone(), order[1].clone());
        // Served at home: nothing to remember.
        up.served(key, &home);
        assert!(up.failover_memory().unwrap().is_empty());
        home.set_healthy(false);
        let during = up.candidates(Some(key));
        assert_eq!(during[0].url(), fallback.url());
        up.served(key, &during[0]);
        assert_eq!(up.failover_memory().unwrap().len(), 1);
        home.set_healthy(true);
        let after = up.candidates(Some(key));
        assert_eq!(after[0].url(), fallback.url(), "stays on the fallback");
        assert_eq!(after[1].url(), home.url(), "then its own backend");
        up.served(key, &after[0]);
        // The fallback goes down: back to the hash order, entry forgotten.
        fallback.set_healthy(false);
        assert_eq!(up.candidates(Some(key))[0].url(), home.url());
        assert!(up.failover_memory().unwrap().is_empty());
        fallback.set_healthy(true);
        assert_eq!(up.candidates(Some(key))[0].url(), home.url());
        // A bounded-load spill while home is up is not a fail-over: not remembered.
        up.served(key, &fallback);
        assert!(up.failover_memory().unwrap().is_empty());
        // Resume: the socket's own backend died under it before its health check
        // noticed; the key is remembered on the backend that took the socket.
        up.served_instead_of(key, &fallback, &home);
        assert_eq!(up.failover_memory().unwrap().len(), 1);
        assert_eq!(up.candidates(Some(key))[0].url(), fallback.url());
        // And when that fallback dies under a socket resumed on a third backend, while
        // home is up, the key is forgotten (its hash order applies again).
        up.served_instead_of(key, &order[2], &fallback);
        assert!(up.failover_memory().unwrap().is_empty());
    }

    #[test]
    fn a_remembered_backend_removed_from_the_group_is_forgotten() {
        let up = group(Policy::ConsistentHash, 3)
            .with_failover_memory(FailoverMemory::new(10, std::time::Duration::from_secs(60)));
        let key = b"k";
        let order = up.candidates(Some(key));
        order[0].set_healthy(false);
        up.served(key, &order[1]);
        order[0].set_healthy(true);
        assert_eq!(up.candidates(Some(key))[0].url(), order[1].url());
        let kept: Vec<_> = up
            .backends()
            .into_iter()
            .filter(|b| b.url() != order[1].url())
            .collect();
        up.replace_backends(kept).unwrap();
        assert_eq!(up.candidates(Some(key))[0].url(), order[0].url());
        assert!(up.failover_memory().unwrap().is_empty());
    }

    #[test]
    fn no_healthy_backend_gives_no_candidate() {
        let up = group(Policy::RoundRobin, 2);
        for b in up.backends() {
            b.set_healthy(false);
        }
        assert!(up.candidates(None).is_empty());
    }
}
