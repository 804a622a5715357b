//! Counters for the admin listener, in Prometheus text format.
//!
//! Plain atomics: the relay adds its per-socket totals once, when the socket closes, so
//! the message path touches no shared cache line.

use std::{
    collections::VecDeque,
    fmt::Write as _,
    sync::{
        atomic::{AtomicI64, AtomicU64, Ordering::Relaxed},
        Arc, Mutex,
    },
    time::Duration,
};

use crate::relay::RelayReport;

/// Outcomes of a client handshake, as the `outcome` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Upgraded and relaying.
    Ok,
    /// Refused by the JWT check (401).
    AuthFailed,
    /// Refused: origin, scope or deny-list (403).
    Forbidden,
    /// Refused by a rate limit (429).
    RateLimited,
    /// Refused by a connection cap.
    TooManyConnections,
    /// No healthy backend (503).
    NoBackend,
    /// The backend could not be reached or broke the handshake (502).
    UpstreamFailed,
    /// The backend refused the upgrade with its own status.
    UpstreamRefused,
    /// Not a valid WebSocket handshake (400, 405, 426).
    BadRequest,
    /// Refused because wsgate itself is full: its connection limit, `max_handshakes`,
    /// or an unreachable limit store (503).
    Overloaded,
}

impl Outcome {
    /// The `outcome` label value.
    pub fn label(self) -> &'static str {
        OUTCOMES
            .iter()
            .find(|(o, _)| *o == self)
            .map_or("unknown", |(_, l)| l)
    }
}

const OUTCOMES: [(Outcome, &str); 10] = [
    (Outcome::Ok, "ok"),
    (Outcome::AuthFailed, "auth_failed"),
    (Outcome::Forbidden, "forbidden"),
    (Outcome::RateLimited, "rate_limited"),
    (Outcome::TooManyConnections, "too_many_connections"),
    (Outcome::NoBackend, "no_backend"),
    (Outcome::UpstreamFailed, "upstream_failed"),
    (Outcome::UpstreamRefused, "upstream_refused"),
    (Outcome::BadRequest, "bad_request"),
    (Outcome::Overloaded, "overloaded"),
];

/// Upper bounds of the handshake latency histogram, in seconds.
const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Close codes counted by name; others fall into "other".
const CLOSE_CODES: [u16; 12] = [
    1000, 1001, 1002, 1003, 1005, 1007, 1008, 1009, 1011, 1012, 1014, 4401,
];

/// A refused handshake, for the status page.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Rejection {
    /// Seconds since the Unix epoch.
    pub at: u64,
    /// The route's path.
    pub route: String,
    /// The HTTP status answered.
    pub status: u16,
    /// The outcome label.
    pub outcome: &'static str,
}

/// How many recent rejections the status page keeps.
const RECENT: usize = 50;

/// Process-wide counters.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Open sockets per route, registered when the routes are built.
    routes: Mutex<Vec<(String, Arc<AtomicI64>)>>,
    /// The latest refused handshakes (only refusals take this lock).
    recent: Mutex<VecDeque<Rejection>>,
    active: AtomicI64,
    sockets_total: AtomicU64,
    handshakes: [AtomicU64; 10],
    latency: [AtomicU64; 13],
    latency_sum_us: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    messages_up: AtomicU64,
    messages_down: AtomicU64,
    closes: [AtomicU64; 13],
    /// Client connections and open sockets against the connection limit.
    pub capacity: crate::capacity::Capacity,
}

/// Counts one open proxied socket until dropped.
#[derive(Debug)]
pub struct ActiveSocket(Arc<Metrics>);

impl Drop for ActiveSocket {
    fn drop(&mut self) {
        self.0.socket_closed();
    }
}

impl Metrics {
    /// Registers a route's open-socket gauge.
    pub fn register_route(&self, path: &str, active: Arc<AtomicI64>) {
        if let Ok(mut r) = self.routes.lock() {
            r.push((path.to_string(), active));
        }
    }

    /// Open sockets per route.
    pub fn routes(&self) -> Vec<(String, i64)> {
        self.routes
            .lock()
            .map(|r| {
                r.iter()
                    .map(|(p, a)| (p.clone(), a.load(Relaxed)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Remembers a refused handshake for the status page.
    pub fn rejected(&self, route: &str, status: u16, outcome: Outcome) {
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if let Ok(mut r) = self.recent.lock() {
            if r.len() == RECENT {
                r.pop_front();
            }
            r.push_back(Rejection {
                at,
                route: route.to_string(),
                status,
                outcome: outcome.label(),
            });
        }
    }

    /// The latest refused handshakes, newest last.
    pub fn recent_rejections(&self) -> Vec<Rejection> {
        self.recent
            .lock()
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Records a handshake's outcome and how long wsgate took to decide it.
    pub fn handshake(&self, outcome: Outcome, took: Duration) {
        let i = OUTCOMES
            .iter()
            .position(|(o, _)| *o == outcome)
            .unwrap_or(0);
        self.handshakes[i].fetch_add(1, Relaxed);
        let secs = took.as_secs_f64();
        let b = LATENCY_BUCKETS
            .iter()
            .position(|le| secs <= *le)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.latency[b].fetch_add(1, Relaxed);
        self.latency_sum_us
            .fetch_add(took.as_micros().min(u128::from(u64::MAX)) as u64, Relaxed);
    }

    /// Counts an open socket; the count drops with the guard.
    pub fn open_socket(self: &Arc<Self>) -> ActiveSocket {
        self.socket_opened();
        ActiveSocket(self.clone())
    }

    /// Counts an open socket for a guard that reaches these metrics another way and
    /// calls [`socket_closed`](Self::socket_closed) when dropped: the proxy's per-socket
    /// guard goes through its route, one pointer fewer in every socket's task.
    pub(crate) fn socket_opened(&self) {
        self.active.fetch_add(1, Relaxed);
        self.sockets_total.fetch_add(1, Relaxed);
        self.capacity.socket_opened();
    }

    /// The socket counted by [`socket_opened`](Self::socket_opened) is over.
    pub(crate) fn socket_closed(&self) {
        self.active.fetch_sub(1, Relaxed);
        self.capacity.socket_closed();
    }

    /// Open proxied sockets now.
    pub fn active(&self) -> i64 {
        self.active.load(Relaxed)
    }

    /// Handshakes so far with this outcome.
    pub fn handshakes(&self, outcome: Outcome) -> u64 {
        let i = OUTCOMES
            .iter()
            .position(|(o, _)| *o == outcome)
            .unwrap_or(0);
        self.handshakes[i].load(Relaxed)
    }

    /// Adds a closed socket's traffic.
    pub fn closed(&self, r: &RelayReport) {
        self.bytes_up.fetch_add(r.bytes_up, Relaxed);
        self.bytes_down.fetch_add(r.bytes_down, Relaxed);
        self.messages_up.fetch_add(r.messages_up, Relaxed);
        self.messages_down.fetch_add(r.messages_down, Relaxed);
        let i = r
            .close_code
            .and_then(|c| CLOSE_CODES.iter().position(|k| *k == c))
            .unwrap_or(CLOSE_CODES.len());
        self.closes[i].fetch_add(1, Relaxed);
    }

    /// Renders everything in Prometheus text format; `extra` appends per-backend lines.
    pub fn render(&self, extra: &str) -> String {
        let mut s = String::with_capacity(4096);
        let _ = writeln!(s, "# HELP wsgate_connections_active Open proxied WebSockets.\n# TYPE wsgate_connections_active gauge\nwsgate_connections_active {}", self.active());
        let _ = writeln!(s, "# HELP wsgate_connections_total Proxied WebSockets opened.\n# TYPE wsgate_connections_total counter\nwsgate_connections_total {}", self.sockets_total.load(Relaxed));
        let _ = writeln!(s, "# HELP wsgate_client_connections Accepted client connections still in their HTTP phase (before the upgrade, or refused).\n# TYPE wsgate_client_connections gauge\nwsgate_client_connections {}", self.capacity.connections());
        if let Some(limit) = self.capacity.limit() {
            let _ = writeln!(s, "# HELP wsgate_connection_limit Most client connections and open sockets at once (server.max_connections, or derived from the open-file limit).\n# TYPE wsgate_connection_limit gauge\nwsgate_connection_limit {limit}");
        }
        let _ = writeln!(s, "# HELP wsgate_handshakes_total Client handshakes by outcome.\n# TYPE wsgate_handshakes_total counter");
        for (i, (_, name)) in OUTCOMES.iter().enumerate() {
            let _ = writeln!(
                s,
                "wsgate_handshakes_total{{outcome=\"{name}\"}} {}",
                self.handshakes[i].load(Relaxed)
            );
        }
        let _ = writeln!(s, "# HELP wsgate_handshake_duration_seconds Time from request to answer.\n# TYPE wsgate_handshake_duration_seconds histogram");
        let mut cum = 0;
        for (i, le) in LATENCY_BUCKETS.iter().enumerate() {
            cum += self.latency[i].load(Relaxed);
            let _ = writeln!(
                s,
                "wsgate_handshake_duration_seconds_bucket{{le=\"{le}\"}} {cum}"
            );
        }
        cum += self.latency[LATENCY_BUCKETS.len()].load(Relaxed);
        let _ = writeln!(
            s,
            "wsgate_handshake_duration_seconds_bucket{{le=\"+Inf\"}} {cum}"
        );
        let _ = writeln!(
            s,
            "wsgate_handshake_duration_seconds_sum {}",
            self.latency_sum_us.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(s, "wsgate_handshake_duration_seconds_count {cum}");
        let _ = writeln!(s, "# HELP wsgate_bytes_total Bytes relayed (counted when a socket closes).\n# TYPE wsgate_bytes_total counter");
        let _ = writeln!(
            s,
            "wsgate_bytes_total{{direction=\"up\"}} {}",
            self.bytes_up.load(Relaxed)
        );
        let _ = writeln!(
            s,
            "wsgate_bytes_total{{direction=\"down\"}} {}",
            self.bytes_down.load(Relaxed)
        );
        let _ = writeln!(s, "# HELP wsgate_messages_total Messages relayed (counted when a socket closes).\n# TYPE wsgate_messages_total counter");
        let _ = writeln!(
            s,
            "wsgate_messages_total{{direction=\"up\"}} {}",
            self.messages_up.load(Relaxed)
        );
        let _ = writeln!(
            s,
            "wsgate_messages_total{{direction=\"down\"}} {}",
            self.messages_down.load(Relaxed)
        );
        let _ = writeln!(s, "# HELP wsgate_closes_total Closed sockets by the first close code.\n# TYPE wsgate_closes_total counter");
        for (i, code) in CLOSE_CODES.iter().enumerate() {
            let _ = writeln!(
                s,
                "wsgate_closes_total{{code=\"{code}\"}} {}",
                self.closes[i].load(Relaxed)
            );
        }
        let _ = writeln!(
            s,
            "wsgate_closes_total{{code=\"other\"}} {}",
            self.closes[CLOSE_CODES.len()].load(Relaxed)
        );
        let _ = writeln!(s, "# HELP wsgate_route_connections_active Open proxied WebSockets per route.\n# TYPE wsgate_route_connections_active gauge");
        for (route, active) in self.routes() {
            let _ = writeln!(
                s,
                "wsgate_route_connections_active{{route=\"{route}\"}} {active}"
            );
        }
        s.push_str(extra);
        s
    }
}
