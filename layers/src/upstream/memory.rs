//! Where sticky keys went while their own backend was away (`return_on_recovery = false`).
//!
//! # Design
//!
//! By default a sticky key always goes to the first *available* backend in its
//! rendezvous order, so when its own backend recovers the key's new sockets go back to
//! it. Some applications would rather keep a key where its state now lives. For them an
//! [`Upstream`](super::Upstream) can carry a [`FailoverMemory`]: when a keyed socket is
//! served by another backend because the key's own one was unavailable, the memory
//! records *key hash → that backend*; later sockets of the key go there first for as
//! long as it stays available, even after the own backend is back.
//!
//! * **Key**: the 64-bit [`stable_hash`](super::stable_hash) of the sticky key, never the
//!   key itself (a cookie id or a header value stays out of memory). Two keys with the
//!   same hash would share an entry: harmless, both go to a healthy backend.
//! * **Value**: the backend's id hash, so an entry never keeps a removed backend alive.
//!   A remembered backend that is down, draining, ejected or no longer in the group
//!   makes the lookup fail; the entry is dropped and the key follows its hash order again.
//! * **Bound**: at most `capacity` entries, split over up to [`MAX_SHARDS`] shards (of at
//!   least [`MIN_SHARD`] entries each) by the key hash. A full shard evicts with a clock sweep over at most [`SWEEP`] slots: an
//!   expired entry first, else one not used since the hand last passed, else the slot
//!   under the hand. A spray of distinct keys therefore costs bounded work per insert and
//!   never more than `capacity` entries (32 bytes each plus the index: under about 100
//!   bytes a key with the growth slack of both).
//! * **Time**: an entry expires `ttl` after it was last used; every use refreshes it.
//! * **Concurrency**: each shard is a `std::sync::Mutex` held for one map operation only,
//!   never across an await (choosing a backend is synchronous).
//! * **Per instance**: nothing is shared between wsgate instances (shared-nothing). Two
//!   instances that saw different failures may keep the same key on different backends
//!   until the entries expire or their backends go away; with `return_on_recovery =
//!   true` (no memory) instances always agree.

use std::{
    collections::HashMap,
    sync::{Mutex, OnceLock},
    time::{Duration, Instant},
};

/// Default most remembered keys per upstream.
pub const DEFAULT_FAILOVER_MEMORY: usize = 100_000;
/// Default time an unused entry is kept.
pub const DEFAULT_FAILOVER_TTL: Duration = Duration::from_secs(3600);

/// Most shards a memory is split into.
const MAX_SHARDS: usize = 32;
/// Fewest entries per shard when there are several.
const MIN_SHARD: usize = 256;
/// Most slots one eviction looks at.
const SWEEP: usize = 16;

#[derive(Debug, Clone, Copy)]
struct Slot {
    key: u64,
    backend: u64,
    /// Milliseconds since [`epoch`] of the last use.
    used: u64,
    /// Used since the clock hand last passed.
    referenced: bool,
}

#[derive(Debug, Default)]
struct Shard {
    index: HashMap<u64, usize>,
    slots: Vec<Slot>,
    hand: usize,
    cap: usize,
}

impl Shard {
    fn remove(&mut self, key: u64) {
        let Some(i) = self.index.remove(&key) else {
            return;
        };
        self.slots.swap_remove(i);
        if let Some(moved) = self.slots.get(i) {
            self.index.insert(moved.key, i);
        }
        if self.hand >= self.slots.len() {
            self.hand = 0;
        }
    }

    fn get(&mut self, key: u64, now: u64, ttl: u64) -> Option<u64> {
        let &i = self.index.get(&key)?;
        let slot = &mut self.slots[i];
        if now.saturating_sub(slot.used) > ttl {
            self.remove(key);
            return None;
        }
        slot.used = now;
        slot.referenced = true;
        Some(slot.backend)
    }

    fn insert(&mut self, key: u64, backend: u64, now: u64, ttl: u64) {
        if self.cap == 0 {
            return;
        }
        let slot = Slot {
            key,
            backend,
            used: now,
            referenced: false,
        };
        if let Some(&i) = self.index.get(&key) {
            self.slots[i] = Slot {
                referenced: true,
                ..slot
            };
            return;
        }
        if self.slots.len() < self.cap {
            if self.slots.len() == self.slots.capacity() {
                // Grow by doubling, but never past the shard's share.
                let room = self.cap - self.slots.len();
                self.slots.reserve_exact(self.slots.len().max(4).min(room));
            }
            self.index.insert(key, self.slots.len());
            self.slots.push(slot);
            return;
        }
        let victim = self.victim(now, ttl);
        let old = std::mem::replace(&mut self.slots[victim], slot);
        self.index.remove(&old.key);
        self.index.insert(key, victim);
    }

    /// The slot to overwrite in a full shard (bounded clock sweep).
    fn victim(&mut self, now: u64, ttl: u64) -> usize {
        let n = self.slots.len();
        let start = self.hand % n;
        let mut unreferenced = None;
        for step in 0..SWEEP.min(n) {
            let i = (start + step) % n;
            let slot = &mut self.slots[i];
            if now.saturating_sub(slot.used) > ttl {
                self.hand = (i + 1) % n;
                return i;
            }
            if slot.referenced {
                slot.referenced = false;
            } else if unreferenced.is_none() {
                unreferenced = Some(i);
            }
        }
        self.hand = (start + SWEEP.min(n)) % n;
        unreferenced.unwrap_or(start)
    }
}

/// A fixed process-wide origin, so a timestamp fits in a `u64`.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// A bounded map from sticky-key hash to the backend that took the key while its own
/// backend was unavailable. See the [module docs](self).
#[derive(Debug)]
pub struct FailoverMemory {
    shards: Box<[Mutex<Shard>]>,
    capacity: usize,
    ttl: u64,
}

impl FailoverMemory {
    /// At most `capacity` entries, each kept `ttl` after its last use.
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        // Shards of at least MIN_SHARD entries: with tiny shards, two busy keys landing
        // in one would evict each other long before the memory is full.
        let n = (capacity / MIN_SHARD).clamp(1, MAX_SHARDS);
        // Shares add up to exactly `capacity`.
        let shards = (0..n)
            .map(|i| {
                Mutex::new(Shard {
                    cap: capacity / n + usize::from(i < capacity % n),
                    ..Shard::default()
                })
            })
            .collect();
        Self {
            shards,
            capacity,
            ttl: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// The most entries it holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Entries held now (expired ones not yet evicted included).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).slots.len()).sum()
    }

    /// Holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn shard(&self, key: u64) -> &Mutex<Shard> {
        // The key is already a well-mixed hash; its high bits pick the shard so the
        // shard's own HashMap (low bits) stays evenly spread.
        &self.shards[((key >> 32) % self.shards.len() as u64) as usize]
    }

    /// The backend (id hash) remembered for `key`, refreshing the entry.
    pub(crate) fn get(&self, key: u64) -> Option<u64> {
        self.get_at(key, now_ms())
    }

    /// Remembers (or refreshes) that `key` is served by `backend` (an id hash).
    pub(crate) fn remember(&self, key: u64, backend: u64) {
        self.remember_at(key, backend, now_ms());
    }

    /// Forgets `key`: it follows its hash order again.
    pub(crate) fn forget(&self, key: u64) {
        lock(self.shard(key)).remove(key);
    }

    fn get_at(&self, key: u64, now: u64) -> Option<u64> {
        lock(self.shard(key)).get(key, now, self.ttl)
    }

    fn remember_at(&self, key: u64, backend: u64, now: u64) {
        lock(self.shard(key)).insert(key, backend, now, self.ttl);
    }
}

fn lock(m: &Mutex<Shard>) -> std::sync::MutexGuard<'_, Shard> {
    // A poisoned shard only means another thread panicked mid-update of plain data; the
    // map is still consistent enough to use.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::stable_hash;

    fn key(i: u64) -> u64 {
        stable_hash(&i.to_be_bytes())
    }

    #[test]
    fn a_spray_of_distinct_keys_never_exceeds_the_capacity() {
        for cap in [1, 5, 255, 256, 513, 10_000] {
            let m = FailoverMemory::new(cap, Duration::from_secs(3600));
            for i in 0..(cap as u64 * 5 + 100) {
                m.remember_at(key(i), 7, i);
                assert!(m.len() <= cap, "cap {cap}: {} entries", m.len());
            }
            assert_eq!(m.len(), cap);
            // Each shard's index and slots agree after all the evictions.
            for s in m.shards.iter() {
                let s = lock(s);
                assert_eq!(s.index.len(), s.slots.len());
                for (k, i) in &s.index {
                    assert_eq!(s.slots[*i].key, *k);
                }
            }
        }
    }

    #[test]
    fn entries_expire_after_the_ttl_unless_used() {
        let m = FailoverMemory::new(10, Duration::from_millis(1_000));
        m.remember_at(key(1), 11, 0);
        m.remember_at(key(2), 22, 0);
        // Used at 900: refreshed until 1900.
        assert_eq!(m.get_at(key(1), 900), Some(11));
        assert_eq!(m.get_at(key(1), 1_900), Some(11), "refreshed by its use");
        // Key 2 was not used: gone after 1000 ms, and removed, not just skipped.
        assert_eq!(m.get_at(key(2), 1_001), None);
        assert_eq!(m.len(), 1);
        assert_eq!(m.get_at(key(1), 2_901), None);
        assert!(m.is_empty());
    }

    #[test]
    fn a_full_shard_evicts_expired_then_unused_entries_first() {
        let mut sh = Shard {
            cap: 4,
            ..Shard::default()
        };
        let ttl = 1_000;
        for i in 0..4 {
            sh.insert(key(i), i, if i == 2 { 0 } else { 5_000 }, ttl);
            sh.slots[i as usize].referenced = true;
        }
        // Key 2 was last used at 0: expired at 5_500, evicted before the used ones.
        sh.insert(key(9), 9, 5_500, ttl);
        assert!(sh.index.contains_key(&key(9)));
        assert!(!sh.index.contains_key(&key(2)));
        assert_eq!(sh.slots.len(), 4);
        // None expired: one not referenced since the hand passed goes, a used one stays.
        assert_eq!(sh.get(key(0), 5_600, ttl), Some(0));
        sh.insert(key(10), 10, 5_600, ttl);
        assert!(sh.index.contains_key(&key(10)));
        assert!(sh.index.contains_key(&key(0)), "the entry just used stays");
        assert_eq!(sh.slots.len(), 4);
    }

    #[test]
    fn forget_and_replace() {
        let m = FailoverMemory::new(100, Duration::from_secs(60));
        m.remember_at(key(1), 1, 0);
        m.remember_at(key(1), 2, 10);
        assert_eq!(m.get_at(key(1), 20), Some(2), "replaced, not duplicated");
        assert_eq!(m.len(), 1);
        m.forget(key(1));
        assert_eq!(m.get_at(key(1), 20), None);
        m.forget(key(1));
        assert!(m.is_empty());
    }
}
