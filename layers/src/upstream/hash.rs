//! A hash that is the same in every wsgate process and every Rust release.
//!
//! Sticky routing must agree across instances with no shared state, so it cannot use
//! `std`'s randomly keyed `SipHash`. FNV-1a followed by the SplitMix64 finaliser is tiny,
//! fixed forever, and mixes well enough for rendezvous scores.

/// A 64-bit hash of `bytes` that never changes between processes, hosts or versions.
///
/// ```
/// assert_eq!(wsgate_layers::upstream::stable_hash(b"abc"), wsgate_layers::upstream::stable_hash(b"abc"));
/// ```
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

/// SplitMix64's finaliser: spreads FNV's weak low bits over the whole word.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
