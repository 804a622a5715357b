//! governor's keyed state, with a hard cap on the number of keys.
//!
//! # Design note
//!
//! governor's own `DashMapStateStore` grows by one entry per distinct key until
//! `retain_recent` drops the ones that are back to a fresh state. A client spraying
//! source addresses (easy with IPv6, even masked to /64 when it holds a /48) can create
//! keys faster than they go stale, so pruning alone does not bound memory.
//!
//! [`CappedStore`] is governor's store with one change: once it holds `max_keys` keys, a
//! key it has not seen is not inserted but measured against a single shared *overflow*
//! bucket with the same quota. Clients already tracked keep their own state; new
//! addresses that arrive while the table is full share one budget until a prune makes
//! room. Under a spraying attack that means new clients are throttled together (rather
//! than memory growing without bound, or every client's history being thrown away).

use std::{
    num::NonZeroU64,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
};

use dashmap::DashMap;
use governor::{
    nanos::Nanos,
    state::{keyed::ShrinkableKeyedStateStore, StateStore},
};

use super::key::IpKey;

/// A concurrent keyed GCRA state with at most `max_keys` keys.
#[derive(Debug)]
pub(crate) struct CappedStore {
    map: DashMap<IpKey, AtomicU64>,
    overflow: AtomicU64,
    stats: Arc<StoreStats>,
}

/// Counters of a [`CappedStore`], readable while governor owns the store.
#[derive(Debug)]
pub(crate) struct StoreStats {
    max_keys: usize,
    /// `map.len()` as of the last insert or prune: reading the real length locks every
    /// shard, too slow for every request.
    approx_len: AtomicUsize,
    overflow_hits: AtomicU64,
}

impl StoreStats {
    pub(crate) fn is_full(&self) -> bool {
        self.approx_len.load(Ordering::Relaxed) >= self.max_keys
    }

    /// How many decisions were made on the shared overflow bucket.
    pub(crate) fn overflow_hits(&self) -> u64 {
        self.overflow_hits.load(Ordering::Relaxed)
    }
}

impl CappedStore {
    pub(crate) fn new(max_keys: usize) -> (Self, Arc<StoreStats>) {
        let stats = Arc::new(StoreStats {
            max_keys: max_keys.max(1),
            approx_len: AtomicUsize::new(0),
            overflow_hits: AtomicU64::new(0),
        });
        let store = Self {
            map: DashMap::new(),
            overflow: AtomicU64::new(0),
            stats: stats.clone(),
        };
        (store, stats)
    }
}

/// governor's compare-and-swap loop over one state (0 = never seen).
fn measure_and_replace_one<T, F, E>(state: &AtomicU64, f: F) -> Result<T, E>
where
    F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
{
    let mut prev = state.load(Ordering::Acquire);
    loop {
        let (result, new) = f(NonZeroU64::new(prev).map(|n| Nanos::from(n.get())))?;
        match state.compare_exchange_weak(prev, new.into(), Ordering::Release, Ordering::Relaxed) {
            Ok(_) => return Ok(result),
            Err(actual) => prev = actual,
        }
    }
}

impl StateStore for CappedStore {
    type Key = IpKey;

    fn measure_and_replace<T, F, E>(&self, key: &IpKey, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        if let Some(state) = self.map.get(key) {
            return measure_and_replace_one(&state, f);
        }
        if self.stats.is_full() {
            self.stats.overflow_hits.fetch_add(1, Ordering::Relaxed);
            return measure_and_replace_one(&self.overflow, f);
        }
        let state = self.map.entry(*key).or_insert_with(|| {
            self.stats.approx_len.fetch_add(1, Ordering::Relaxed);
            AtomicU64::new(0)
        });
        measure_and_replace_one(&state, f)
    }
}

impl ShrinkableKeyedStateStore<IpKey> for CappedStore {
    fn retain_recent(&self, drop_below: Nanos) {
        let below = u64::from(drop_below);
        self.map.retain(|_, v| v.load(Ordering::Relaxed) > below);
        self.stats
            .approx_len
            .store(self.map.len(), Ordering::Relaxed);
    }

    fn shrink_to_fit(&self) {
        self.map.shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.map.len()
    }

    fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}
