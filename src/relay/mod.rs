//! Everything after the `101 Switching Protocols`: moving frames both ways.
//!
//! # Design
//!
//! nginx and HAProxy copy raw bytes after the upgrade: fast, but blind to frames, so they
//! cannot close a socket with a code, count messages or cap their size. Decoding and
//! re-encoding every frame (a WebSocket library on both sides) sees everything but pays
//! for unmasking, re-masking, validation and copies. wsgate's relay does neither: a
//! [`FrameScanner`](frame) reads only frame headers and forwards payload bytes as they
//! are (client frames stay masked: the backend unmasks them). It therefore knows every
//! frame boundary, which is all it needs to
//!
//! * count messages and bytes each way,
//! * refuse what RFC 6455 forbids (unmasked client frames, reserved opcodes and RSV bits,
//!   fragmented or oversized control frames) with close 1002, and messages over the
//!   route's `max_message` with 1009,
//! * read the close code each side sends, and
//! * inject its own close frame *between* frames (shutdown 1001, idle timeout, backend
//!   gone 1012, token expiry 4401) without corrupting a frame in flight,
//!
//! at nearly the cost of a raw copy: one read and one write per chunk, no per-message
//! allocation, no locks. Both directions run in one task; an idle socket holds no buffer
//! (see [`buffer`]). Backpressure is structural: a direction does not read again until
//! what it read is written, so a slow reader stalls its writer instead of growing memory.
//!
//! What it deliberately does not do: validate UTF-8 of text frames or decompress
//! `permessage-deflate`. Both are end-to-end properties that the backend checks (and
//! answers with 1007 through the relay); re-checking them would cost a pass over every
//! payload byte.

mod buffer;
pub(crate) mod frame;
mod pump;
mod stream;

use std::{
    future::{poll_fn, Future},
    pin::pin,
    task::Poll,
    time::{Duration, Instant},
};

use tokio::time::{sleep_until, Instant as TokioInstant};

pub use stream::Stream;
use wsgate_layers::ratelimit::MessageLimits;

use frame::ScanRules;
use pump::{Event, Pump};

/// Limits and timers of one relayed socket.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// Largest message accepted from either side; larger ones close the socket with 1009.
    pub max_message: u64,
    /// Read buffer per direction while data flows.
    pub buffer_size: usize,
    /// Close both sides with 1001 after this long without a byte either way.
    pub idle_timeout: Option<Duration>,
    /// Once a close is under way, how long the peers get to finish it.
    pub close_timeout: Duration,
    /// RSV bits the negotiated extensions allow (RSV1 for permessage-deflate).
    pub rsv_allowed: u8,
    /// Close the client with 4401 "token expired" at this moment.
    pub expires_at: Option<Instant>,
    /// Close both sides with 1001 "max lifetime" this long after the upgrade.
    pub max_lifetime: Option<Duration>,
    /// Message and byte rate limits on what the client sends.
    pub message_limits: Option<MessageLimits>,
    /// Ping the client after this long without a byte from it; close if it stays silent
    /// for another `ping_interval`.
    pub ping_interval: Option<Duration>,
}

impl Default for RelaySettings {
    fn default() -> Self {
        Self {
            max_message: 16 << 20,
            buffer_size: 64 << 10,
            idle_timeout: None,
            close_timeout: Duration::from_secs(5),
            rsv_allowed: 0,
            expires_at: None,
            max_lifetime: None,
            message_limits: None,
            ping_interval: None,
        }
    }
}

/// Who ended a relayed socket and how, with its traffic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayReport {
    /// Bytes from client to backend.
    pub bytes_up: u64,
    /// Bytes from backend to client.
    pub bytes_down: u64,
    /// Messages from client to backend.
    pub messages_up: u64,
    /// Messages from backend to client.
    pub messages_down: u64,
    /// Who closed first: "client", "backend" or "proxy".
    pub closed_by: &'static str,
    /// The close code of whoever closed first (None: no close frame, the socket dropped).
    pub close_code: Option<u16>,
    /// Why the proxy closed, when it did.
    pub proxy_reason: Option<&'static str>,
    /// Client messages dropped by the message-rate limit (`on_excess = "drop"`).
    pub messages_dropped: u64,
}

/// Why the relay itself closes a socket.
#[derive(Debug, Clone, Copy)]
enum ProxyClose {
    Shutdown,
    Idle,
    Expired,
    Lifetime,
    PingTimeout,
}

/// Relays frames between an upgraded client socket and its backend socket until both
/// are closed, then reports what happened.
///
/// `client_initial` and `upstream_initial` are bytes already read past the handshakes.
/// When `shutdown` resolves the socket is closed gracefully (1001 "going away").
pub async fn relay(
    mut client: Stream,
    mut upstream: Stream,
    client_initial: &[u8],
    upstream_initial: &[u8],
    settings: &RelaySettings,
    shutdown: impl Future<Output = ()>,
) -> RelayReport {
    let rules = |masked| ScanRules {
        masked,
        max_message: settings.max_message,
        rsv_allowed: settings.rsv_allowed,
    };
    let mut up = Pump::new(
        rules(true),
        settings
            .message_limits
            .filter(MessageLimits::is_limited)
            .map(|l| l.limiter()),
        settings.buffer_size,
        client_initial,
        (1001, "client went away"),
    );
    let mut down = Pump::new(
        rules(false),
        None,
        settings.buffer_size,
        upstream_initial,
        (1012, "backend went away"),
    );
    let mut report = RelayReport::default();

    let mut shutdown = pin!(shutdown);
    let far = TokioInstant::now() + Duration::from_secs(86400 * 365);
    let idle_every = settings.idle_timeout;
    let mut idle = pin!(sleep_until(
        idle_every.map_or(far, |d| TokioInstant::now() + d)
    ));
    let mut expiry = pin!(sleep_until(
        settings.expires_at.map_or(far, TokioInstant::from_std)
    ));
    let mut close_deadline = pin!(sleep_until(far));
    let mut lifetime = pin!(sleep_until(
        settings
            .max_lifetime
            .map_or(far, |d| TokioInstant::now() + d)
    ));
    let ping_every = settings.ping_interval;
    let mut ping = pin!(sleep_until(
        ping_every.map_or(far, |d| TokioInstant::now() + d)
    ));
    let mut ping_outstanding = false;
    let mut closing = false;
    let mut shutting_down = false;

    loop {
        enum Wake {
            Pump(bool, Event),
            Proxy(ProxyClose),
            Idle,
            Ping,
            CloseTimeout,
        }
        let wake = tokio::select! {
            biased;
            (from_client, event) = poll_fn(|cx| {
                if !up.is_done() {
                    if let Poll::Ready(e) = up.poll(cx, &mut client, &mut upstream) {
                        return Poll::Ready((true, e));
                    }
                }
                if !down.is_done() {
                    if let Poll::Ready(e) = down.poll(cx, &mut upstream, &mut client) {
                        return Poll::Ready((false, e));
                    }
                }
                Poll::Pending
            }) => Wake::Pump(from_client, event),
            _ = &mut shutdown, if !shutting_down => Wake::Proxy(ProxyClose::Shutdown),
            _ = &mut idle, if idle_every.is_some() && !closing => Wake::Idle,
            _ = &mut expiry, if settings.expires_at.is_some() && !closing => Wake::Proxy(ProxyClose::Expired),
            _ = &mut lifetime, if settings.max_lifetime.is_some() && !closing => Wake::Proxy(ProxyClose::Lifetime),
            _ = &mut ping, if ping_every.is_some() && !closing => Wake::Ping,
            _ = &mut close_deadline, if closing => Wake::CloseTimeout,
        };
        let wake = match wake {
            Wake::Idle if up.activity + down.activity > 0 => {
                // Traffic since the timer was set: push it out instead of resetting the
                // timer on every read, which would cost a timer-wheel update per chunk.
                up.activity = 0;
                down.activity = 0;
                if let Some(d) = idle_every {
                    idle.as_mut().reset(TokioInstant::now() + d);
                }
                continue;
            }
            Wake::Idle => Wake::Proxy(ProxyClose::Idle),
            Wake::Ping => {
                // Anything from the client since the last check (a pong or data) proves
                // it alive; otherwise ping it, and if a ping is already unanswered, give up.
                let heard = std::mem::take(&mut up.heard) > 0;
                if heard || !ping_outstanding {
                    if !heard {
                        down.ping_dst();
                    }
                    ping_outstanding = !heard;
                    if let Some(d) = ping_every {
                        ping.as_mut().reset(TokioInstant::now() + d);
                    }
                    continue;
                }
                Wake::Proxy(ProxyClose::PingTimeout)
            }
            other => other,
        };
        match wake {
            Wake::Pump(from_client, event) => match event {
                Event::Closed(seen) => {
                    if report.closed_by.is_empty() {
                        report.closed_by = if from_client { "client" } else { "backend" };
                        report.close_code = seen.code.or(Some(1005));
                    }
                }
                Event::Violation(v) => {
                    if report.closed_by.is_empty() {
                        report.closed_by = "proxy";
                        report.close_code = Some(v.code);
                        report.proxy_reason = Some(v.reason);
                    }
                    if from_client {
                        down.close_dst(v.code, v.reason);
                        up.close_dst(1001, "client protocol error");
                    } else {
                        up.close_dst(v.code, v.reason);
                        down.close_dst(1014, "backend protocol error");
                    }
                }
                Event::Finished => {
                    if report.closed_by.is_empty() {
                        report.closed_by = if from_client { "client" } else { "backend" };
                    }
                    if up.is_done() && down.is_done() {
                        break;
                    }
                }
            },
            Wake::Proxy(why) => {
                let (code, reason) = match why {
                    ProxyClose::Shutdown => {
                        shutting_down = true;
                        (1001, "going away")
                    }
                    ProxyClose::Idle => (1001, "idle timeout"),
                    ProxyClose::Expired => (4401, "token expired"),
                    ProxyClose::Lifetime => (1001, "max lifetime"),
                    ProxyClose::PingTimeout => (1001, "ping timeout"),
                };
                if report.closed_by.is_empty() {
                    report.closed_by = "proxy";
                    report.close_code = Some(code);
                    report.proxy_reason = Some(reason);
                }
                down.close_dst(code, reason);
                up.close_dst(1001, reason);
            }
            Wake::Idle | Wake::Ping => {}
            Wake::CloseTimeout => break,
        }
        if !closing
            && (up.dst_closed
                || down.dst_closed
                || up.is_done()
                || down.is_done()
                || !report.closed_by.is_empty())
        {
            closing = true;
            close_deadline
                .as_mut()
                .reset(TokioInstant::now() + settings.close_timeout);
        }
    }
    report.bytes_up = up.bytes;
    report.bytes_down = down.bytes;
    report.messages_up = up.messages();
    report.messages_down = down.messages();
    report.messages_dropped = up.dropped();
    report
}
