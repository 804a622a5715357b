//! Giving memory back to the OS after many sockets close.
//!
//! What a burst of sockets used is freed when they close, but an allocator may keep it
//! resident for reuse. With glibc's malloc the soak (RELIABILITY.md, "Soak and faults")
//! measured 2.7 MB in use against 14.5 MB of anonymous RSS after 5,000 sockets closed:
//! the few chunks still live are scattered over the pages of its per-thread arenas, and
//! `malloc_trim` returns only whole free pages (and never the top of a thread's arena).
//! The binary therefore uses jemalloc (src/main.rs), whose background thread returns
//! unused pages by itself within its decay time.
//!
//! On top of that, when the open-socket count has fallen to half of its last peak (and
//! by at least [`MIN_DROP`] sockets), wsgate returns free memory at once: jemalloc's
//! `arena.<all>.purge`, or `malloc_trim(0)` when built without the `jemalloc` feature on
//! glibc. It runs on a blocking thread, at most once per [`CHECK_EVERY`], and never on
//! the relay path. Other allocators (musl) have nothing to trim.

use std::{sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// How often the open-socket count is looked at.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);
/// Fewer closed sockets than this are not worth a trim.
pub const MIN_DROP: i64 = 256;

/// Whether a fall from `peak` to `open` open sockets calls for a trim.
fn worth_trimming(peak: i64, open: i64) -> bool {
    peak - open >= MIN_DROP && open <= peak / 2
}

/// Watches the open-socket count and trims the allocator after a large fall, until
/// `stop` is cancelled.
pub(crate) async fn trim_after_closes(metrics: Arc<Metrics>, stop: CancellationToken) {
    let mut peak = 0i64;
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let open = metrics.active();
        peak = peak.max(open);
        if worth_trimming(peak, open) {
            peak = open;
            let _ = tokio::task::spawn_blocking(trim).await;
        }
    }
}

/// With jemalloc (the binary's default allocator) its own background thread returns
/// unused pages within `dirty_decay_ms`; a purge of every arena makes it immediate.
#[cfg(feature = "jemalloc")]
#[allow(unsafe_code)]
fn trim() {
    // "arena.<MALLCTL_ARENAS_ALL>.purge": every arena at once.
    const PURGE_ALL: &[u8] = b"arena.4096.purge\0";
    // SAFETY: the name is NUL-terminated and this control reads and writes nothing
    // (null old/new pointers with zero lengths); jemalloc locks its arenas itself.
    unsafe {
        tikv_jemalloc_sys::mallctl(
            PURGE_ALL.as_ptr().cast(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        );
    }
}

#[cfg(all(not(feature = "jemalloc"), target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim() {
    // SAFETY: malloc_trim takes no pointers and only walks glibc's own arenas under their
    // locks; it is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(all(
    not(feature = "jemalloc"),
    not(all(target_os = "linux", target_env = "gnu"))
))]
fn trim() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_only_after_a_large_fall() {
        assert!(worth_trimming(5000, 0));
        assert!(worth_trimming(5000, 2500));
        assert!(!worth_trimming(5000, 2501), "less than half gone");
        assert!(!worth_trimming(300, 100), "fewer than MIN_DROP closed");
        assert!(!worth_trimming(0, 0));
    }
}
