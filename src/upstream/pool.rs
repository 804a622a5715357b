//! Warm upstream connections, so a client's handshake does not pay for the connect.
//!
//! Per backend the pool keeps up to `min_idle` connected (TCP, and TLS for `wss://`)
//! but not yet upgraded sockets. A handshake takes one if it has one and the filler task
//! opens a replacement in the background. An upgraded HTTP/1.1 connection belongs to its
//! WebSocket and never comes back; only warm sockets are shared, by every route and
//! layer of the upstream.
//!
//! Before use a warm socket is checked without blocking: the peer must not have closed
//! it or sent anything (a backend's idle timeout shows up as EOF), and it must be younger
//! than `idle_timeout`. The filler stops warming a backend that is unavailable (down,
//! ejected or draining) or that already holds `max` sockets, open and warm together.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use futures_util::FutureExt;
use tokio::{net::TcpStream, sync::Notify, time::Instant};
use tokio_util::sync::CancellationToken;
use tracing::debug;
use wsgate_layers::upstream::Backend;

use super::Connector;
use crate::relay::Stream;

/// Pool settings of one upstream.
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    /// Warm sockets kept per backend.
    pub min_idle: usize,
    /// Most sockets per backend (open and warm) the pool warms up to.
    pub max: Option<usize>,
    /// A warm socket older than this is closed instead of used.
    pub idle_timeout: Duration,
}

/// The warm sockets of one upstream's backends.
#[derive(Debug)]
pub struct Pool {
    settings: PoolSettings,
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    hits: AtomicU64,
    misses: AtomicU64,
}

#[derive(Debug, Default)]
struct Slot {
    idle: Mutex<VecDeque<(Stream, Instant)>>,
    taken: Notify,
}

impl Pool {
    /// An empty pool.
    pub fn new(settings: PoolSettings) -> Self {
        Self {
            settings,
            slots: Mutex::new(HashMap::new()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// Handshakes that found a warm socket.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }
    /// Handshakes that had to connect.
    pub fn misses(&self) -> u64 {
        self.misses.load(Ordering::Relaxed)
    }
    /// Warm sockets held now for `backend`.
    pub fn idle(&self, backend: &Backend) -> usize {
        self.slot(backend)
            .and_then(|s| s.idle.lock().ok().map(|q| q.len()))
            .unwrap_or(0)
    }

    fn slot(&self, backend: &Backend) -> Option<Arc<Slot>> {
        self.slots.lock().ok()?.get(&backend.id()).cloned()
    }

    /// A warm, live socket to `backend`, if the pool has one.
    pub(crate) fn take(&self, backend: &Backend) -> Option<Stream> {
        let slot = self.slot(backend);
        let found = slot.as_ref().and_then(|slot| {
            let mut q = slot.idle.lock().ok()?;
            while let Some((s, since)) = q.pop_front() {
                if since.elapsed() < self.settings.idle_timeout && is_live(&s) {
                    return Some(s);
                }
            }
            None
        });
        if let Some(slot) = &slot {
            slot.taken.notify_one();
        }
        match found {
            Some(s) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                Some(s)
            }
            None => {
                self.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Keeps `backend` warm until `stop` is cancelled (the backend left the group or
    /// wsgate is shutting down); its warm sockets are closed then.
    pub(crate) async fn fill(
        self: Arc<Self>,
        backend: Arc<Backend>,
        connector: Connector,
        stop: CancellationToken,
    ) {
        let slot = Arc::new(Slot::default());
        if let Ok(mut m) = self.slots.lock() {
            m.insert(backend.id(), slot.clone());
        }
        let mut failures = 0u32;
        loop {
            let wanted = self.wanted(&backend, &slot);
            if wanted > 0 {
                match connector.connect_timed(&backend).await {
                    Ok(s) => {
                        failures = 0;
                        if let Ok(mut q) = slot.idle.lock() {
                            q.push_back((s, Instant::now()));
                        }
                        continue;
                    }
                    Err(e) => {
                        debug!(backend = %backend.url(), error = %e, "pool: warm connect failed");
                        failures = (failures + 1).min(6);
                    }
                }
            }
            // Wake when a socket was taken, or periodically to drop stale ones and
            // notice a recovered backend; back off while connects fail.
            let wait = Duration::from_millis(250 << failures);
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = slot.taken.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
        if let Ok(mut m) = self.slots.lock() {
            if m.get(&backend.id()).is_some_and(|s| Arc::ptr_eq(s, &slot)) {
                m.remove(&backend.id());
            }
        }
    }

    /// How many more warm sockets `backend` should get now (after dropping stale ones).
    fn wanted(&self, backend: &Backend, slot: &Slot) -> usize {
        let Ok(mut q) = slot.idle.lock() else {
            return 0;
        };
        if !backend.is_available() {
            q.clear();
            return 0;
        }
        q.retain(|(s, since)| since.elapsed() < self.settings.idle_timeout && is_live(s));
        let held = backend.active() + q.len();
        let room = self
            .settings
            .max
            .map_or(usize::MAX, |m| m.saturating_sub(held));
        self.settings.min_idle.saturating_sub(q.len()).min(room)
    }
}

/// The socket is open and silent: a non-blocking peek finds neither EOF nor data.
fn is_live(s: &Stream) -> bool {
    let tcp: &TcpStream = match s {
        Stream::Tcp(t) => t,
        Stream::ClientTls(t) => t.get_ref().0,
        _ => return false,
    };
    let mut b = [0u8; 1];
    // Pending means nothing to read: alive. EOF, stray bytes or an error: not usable.
    tcp.peek(&mut b).now_or_never().is_none()
}

impl Connector {
    /// The same connector taking warm sockets from `pool` first.
    pub fn with_pool(mut self, pool: Arc<Pool>) -> Self {
        self.pool = Some(pool);
        self
    }

    /// Its pool, if it has one.
    pub fn pool(&self) -> Option<&Arc<Pool>> {
        self.pool.as_ref()
    }

    /// A copy that always connects afresh (what the pool's filler uses).
    pub(crate) fn without_pool(&self) -> Connector {
        let mut c = self.clone();
        c.pool = None;
        c
    }
}
