//! The cache of verified tokens: a token seen again skips the signature check.
//!
//! # Design
//!
//! * **Key**: the SHA-256 of the whole token. The token itself is never stored, so the
//!   cache holds no credential, and a lookup needs the exact bytes that were verified
//!   (a collision would need a SHA-256 second preimage).
//! * **Only full successes are cached**: signature, `exp`/`nbf`/`iat`, issuer, audience,
//!   required claims and scopes. Those checks depend on the token and on the layer's
//!   configuration only, so a verdict is valid for the layer instance that owns the
//!   cache (each [`JwtAuthLayer`](super::JwtAuthLayer) has its own).
//! * **Time**: of the time-dependent checks only `exp` can turn a pass into a failure
//!   (`nbf` and `iat` only become more valid). Every hit re-checks `exp` with the same
//!   rule and leeway as jsonwebtoken (`exp < now - leeway` is expired), so a cached token
//!   dies at exactly the second an uncached one would. Tokens without `exp`
//!   (`require_exp(false)`) are not cached.
//! * **Keys**: each entry records the key table's generation. A JWKS refresh that changes
//!   the document bumps the generation, so nothing verified by a key that may have been
//!   removed is served from the cache; the token is verified afresh against the new keys.
//! * **Concurrency**: up to [`MAX_SHARDS`] shards, chosen by the digest, each a
//!   `std::sync::Mutex` held for a map lookup or insert only (no I/O, no crypto inside).
//!   Hit and miss counters live inside the shards, so the hot path touches no global
//!   atomic.
//! * **Bound**: each shard holds at most its share of the capacity. A full shard evicts
//!   with a clock sweep over at most [`SWEEP`] slots: an expired or stale entry is taken
//!   first, else the first one not used since the hand last passed, else the slot under
//!   the hand. Work per insert is bounded whatever the capacity.

use std::{collections::HashMap, sync::Mutex};

use aws_lc_rs::digest;

use super::claims::VerifiedClaims;

/// Default number of cached verified tokens.
pub const DEFAULT_VERIFIED_CACHE: usize = 10_000;

/// Most shards a cache is split into.
const MAX_SHARDS: usize = 32;
/// Most slots one eviction looks at.
const SWEEP: usize = 16;

/// The SHA-256 of a token.
pub(crate) type TokenDigest = [u8; 32];

/// Hashes a token for the cache.
pub(crate) fn token_digest(token: &str) -> TokenDigest {
    sha256(token.as_bytes())
}

/// SHA-256 of `data`.
pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Hit and miss counts of a layer's verified-token cache; see
/// [`JwtAuthLayer::cache_stats`](super::JwtAuthLayer::cache_stats).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// Tokens admitted from the cache, without a signature check.
    pub hits: u64,
    /// Lookups that found no usable entry (new, expired or verified by an older key set).
    pub misses: u64,
    /// Entries held now.
    pub entries: usize,
    /// The most entries the cache holds (`0`: the cache is off).
    pub capacity: usize,
}

/// One verified token.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) claims: VerifiedClaims,
    /// The token's `exp` (seconds since the epoch).
    pub(crate) exp: u64,
    /// The key table generation that verified it.
    pub(crate) generation: u64,
}

impl Entry {
    /// Whether jsonwebtoken would still accept this `exp` at `now` (same rule, same
    /// leeway: expired when `exp < now - leeway`).
    fn live(&self, now: u64, leeway: u64) -> bool {
        self.exp >= now.saturating_sub(leeway)
    }

    fn usable(&self, now: u64, leeway: u64, generation: u64) -> bool {
        self.generation == generation && self.live(now, leeway)
    }
}

#[derive(Debug)]
struct Slot {
    key: TokenDigest,
    entry: Entry,
    /// Used since the clock hand last passed.
    referenced: bool,
}

#[derive(Debug, Default)]
struct Shard {
    index: HashMap<TokenDigest, usize>,
    slots: Vec<Slot>,
    hand: usize,
    cap: usize,
    hits: u64,
    misses: u64,
}

impl Shard {
    fn remove_at(&mut self, i: usize) {
        let slot = self.slots.swap_remove(i);
        self.index.remove(&slot.key);
        if let Some(moved) = self.slots.get(i) {
            self.index.insert(moved.key, i);
        }
        if self.hand >= self.slots.len() {
            self.hand = 0;
        }
    }

    fn get(&mut self, key: &TokenDigest, now: u64, leeway: u64, generation: u64) -> Option<Entry> {
        let Some(&i) = self.index.get(key) else {
            self.misses += 1;
            return None;
        };
        let slot = &mut self.slots[i];
        if slot.entry.usable(now, leeway, generation) {
            slot.referenced = true;
            self.hits += 1;
            Some(slot.entry.clone())
        } else {
            // Expired or verified by an older key set: it can never be used again.
            self.remove_at(i);
            self.misses += 1;
            None
        }
    }

    fn insert(&mut self, key: TokenDigest, entry: Entry, now: u64, leeway: u64) {
        if self.cap == 0 {
            return;
        }
        if let Some(&i) = self.index.get(&key) {
            self.slots[i].entry = entry;
            return;
        }
        if self.slots.len() < self.cap {
            self.index.insert(key, self.slots.len());
            self.slots.push(Slot {
                key,
                entry,
                referenced: false,
            });
            return;
        }
        let victim = self.victim(now, leeway, entry.generation);
        let old = std::mem::replace(
            &mut self.slots[victim],
            Slot {
                key,
                entry,
                referenced: false,
            },
        );
        self.index.remove(&old.key);
        self.index.insert(key, victim);
    }

    /// The slot to overwrite in a full shard (bounded clock sweep).
    fn victim(&mut self, now: u64, leeway: u64, generation: u64) -> usize {
        let n = self.slots.len();
        let start = self.hand % n;
        let mut unreferenced = None;
        for step in 0..SWEEP.min(n) {
            let i = (start + step) % n;
            let slot = &mut self.slots[i];
            if !slot.entry.usable(now, leeway, generation) {
                self.hand = (i + 1) % n;
                return i;
            }
            if slot.referenced {
                slot.referenced = false;
            } else if unreferenced.is_none() {
                unreferenced = Some(i);
            }
        }
        let i = unreferenced.unwrap_or(start);
        self.hand = (start + SWEEP.min(n)) % n;
        i
    }
}

/// A bounded, sharded map from token digest to verified claims.
#[derive(Debug)]
pub(crate) struct VerifiedCache {
    shards: Box<[Mutex<Shard>]>,
    capacity: usize,
}

impl VerifiedCache {
    /// A cache of at most `capacity` entries (`0`: off).
    pub(crate) fn new(capacity: usize) -> Self {
        let n = capacity.clamp(1, MAX_SHARDS);
        // Shares add up to exactly `capacity`.
        let shards = (0..n)
            .map(|i| {
                Mutex::new(Shard {
                    cap: capacity / n + usize::from(i < capacity % n),
                    ..Shard::default()
                })
            })
            .collect();
        Self { shards, capacity }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.capacity > 0
    }

    fn shard(&self, key: &TokenDigest) -> &Mutex<Shard> {
        let mut b = [0u8; 8];
        b.copy_from_slice(&key[..8]);
        let i = (u64::from_le_bytes(b) % self.shards.len() as u64) as usize;
        &self.shards[i]
    }

    /// The entry for `key` if it is still usable at `now` with this key generation.
    pub(crate) fn get(
        &self,
        key: &TokenDigest,
        now: u64,
        leeway: u64,
        generation: u64,
    ) -> Option<Entry> {
        if !self.enabled() {
            return None;
        }
        // A poisoned shard only means another thread panicked mid-update of plain data;
        // the map is still consistent enough to use.
        let mut shard = self
            .shard(key)
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        shard.get(key, now, leeway, generation)
    }

    pub(crate) fn insert(&self, key: TokenDigest, entry: Entry, now: u64, leeway: u64) {
        if !self.enabled() || !entry.live(now, leeway) {
            return;
        }
        let mut shard = self
            .shard(&key)
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        shard.insert(key, entry, now, leeway);
    }

    pub(crate) fn stats(&self) -> CacheStats {
        let mut s = CacheStats {
            capacity: self.capacity,
            ..CacheStats::default()
        };
        for shard in self.shards.iter() {
            let shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            s.hits += shard.hits;
            s.misses += shard.misses;
            s.entries += shard.slots.len();
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::Algorithm;

    fn entry(exp: u64, generation: u64) -> Entry {
        Entry {
            claims: VerifiedClaims::new(serde_json::Map::new(), Algorithm::HS256, None),
            exp,
            generation,
        }
    }

    fn key(i: u64) -> TokenDigest {
        token_digest(&format!("token-{i}"))
    }

    #[test]
    fn expiry_boundary_matches_jsonwebtoken_with_leeway() {
        let c = VerifiedCache::new(10);
        c.insert(key(1), entry(1_000, 0), 1_000, 60);
        // jsonwebtoken: expired iff exp < now - leeway.
        assert!(
            c.get(&key(1), 1_060, 60, 0).is_some(),
            "exp == now - leeway"
        );
        assert!(c.get(&key(1), 1_061, 60, 0).is_none(), "exp < now - leeway");
        // And the expired entry is gone, not just skipped.
        assert_eq!(c.stats().entries, 0);
        c.insert(key(2), entry(1_000, 0), 1_000, 0);
        assert!(c.get(&key(2), 1_000, 0, 0).is_some());
        assert!(c.get(&key(2), 1_001, 0, 0).is_none());
    }

    #[test]
    fn a_new_key_generation_is_a_miss() {
        let c = VerifiedCache::new(10);
        c.insert(key(1), entry(u64::MAX, 3), 0, 0);
        assert!(c.get(&key(1), 0, 0, 3).is_some());
        assert!(c.get(&key(1), 0, 0, 4).is_none());
        assert!(c.get(&key(1), 0, 0, 3).is_none(), "stale entry was dropped");
        let s = c.stats();
        assert_eq!((s.hits, s.misses, s.entries), (1, 2, 0));
    }

    #[test]
    fn capacity_holds_and_expired_entries_are_evicted_first() {
        for cap in [1, 5, 31, 32, 33, 1_000] {
            let c = VerifiedCache::new(cap);
            for i in 0..(cap as u64 * 10 + 100) {
                c.insert(key(i), entry(u64::MAX, 0), 0, 0);
                assert!(c.stats().entries <= cap);
            }
            assert_eq!(c.stats().entries, cap);
        }
        // A full shard replaces an expired entry before live ones.
        let c = VerifiedCache::new(1);
        c.insert(key(0), entry(100, 0), 50, 0);
        c.insert(key(1), entry(u64::MAX, 0), 150, 0);
        assert!(c.get(&key(1), 150, 0, 0).is_some());
        let mut sh = Shard {
            cap: 4,
            ..Shard::default()
        };
        for i in 0..4 {
            sh.insert(key(i), entry(if i == 2 { 100 } else { u64::MAX }, 0), 50, 0);
            sh.slots[i as usize].referenced = true;
        }
        sh.insert(key(9), entry(u64::MAX, 0), 200, 0);
        assert!(sh.index.contains_key(&key(9)));
        assert!(
            !sh.index.contains_key(&key(2)),
            "the expired entry was evicted"
        );
        assert_eq!(sh.slots.len(), 4);
    }

    #[test]
    fn zero_capacity_is_off() {
        let c = VerifiedCache::new(0);
        c.insert(key(1), entry(u64::MAX, 0), 0, 0);
        assert!(c.get(&key(1), 0, 0, 0).is_none());
        assert_eq!(c.stats(), CacheStats::default());
    }

    #[test]
    fn digest_is_sha256() {
        // SHA-256("abc"), FIPS 180-2 test vector.
        assert_eq!(token_digest("abc")[..4], [0xba, 0x78, 0x16, 0xbf],);
    }
}
