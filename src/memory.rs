//! Giving memory back to the OS after many sockets close.
//!
//! glibc's malloc keeps what is freed in its arenas for reuse and returns little of it on
//! its own: after a burst of 5,000 sockets closes, RSS stays near its peak (the soak run
//! in RELIABILITY.md measured 98 MiB after, 18 MiB before). That memory is reused by the
//! next sockets, so it is not a leak, but an operator watching RSS cannot tell, and a
//! proxy that shrank after a spike can be packed tighter. So when the open-socket count
//! has fallen to half of its last peak (and by at least [`MIN_DROP`] sockets), wsgate
//! calls `malloc_trim(0)`, which returns the free pages of every arena. It runs on a
//! blocking thread, at most once per [`CHECK_EVERY`], and never on the relay path.
//! Other allocators (musl, or a different `#[global_allocator]`) have nothing to trim.

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

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim() {
    // SAFETY: malloc_trim takes no pointers and only walks glibc's own arenas under their
    // locks; it is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
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
