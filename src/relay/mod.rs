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
//! It also validates UTF-8, as RFC 6455 §8.1 requires of an endpoint, so that a backend
//! never gets a malformed text message and a client gets the right code (1007) rather
//! than whatever the backend does with one (many drop TCP, which the relay could only
//! report as 1012). Text payloads and close reasons are checked as they pass, in both
//! directions, without copying what is forwarded (`utf8.rs` has the design); a message
//! is refused at its first impossible byte. That is the one pass over payload bytes the
//! relay makes (SIMD, several GB/s); `relay.validate_utf8 = false` turns it off and
//! leaves the check to the backend. Compressed (`permessage-deflate`) messages are not
//! inflated, so neither validated nor decompressed: that stays end to end.

mod buffer;
pub(crate) mod frame;
mod pump;
mod signal;
mod stream;
mod utf8;

use std::{
    future::{poll_fn, Future, IntoFuture},
    pin::{pin, Pin},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use futures_util::FutureExt;
use tokio::time::{sleep_until, Instant as TokioInstant};

pub(crate) use signal::Signal;
pub use stream::Stream;
pub use utf8::{InvalidUtf8, MaskedText, Utf8Validator};
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
    /// Validate UTF-8 of text messages and close reasons both ways (1007 otherwise).
    pub validate_utf8: bool,
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
            validate_utf8: true,
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

/// The part of a [`RelayReport`] the relay loop decides: who closed first and how.
#[derive(Debug, Default)]
struct Closer {
    closed_by: &'static str,
    close_code: Option<u16>,
    proxy_reason: Option<&'static str>,
}

/// Why the relay itself closes a socket.
#[derive(Debug, Clone, Copy)]
enum ProxyClose {
    Shutdown,
    Idle,
    Expired,
    Lifetime,
    PingTimeout,
    Rebalance,
}

/// How a relay ended: closed, or (resume mode) its backend went away while the client's
/// socket sits at a clean boundary and can be re-attached to another backend.
#[derive(Debug)]
pub(crate) enum RelayEnd {
    /// Both sides are closed (or gone); the socket is over.
    Closed(RelayReport),
    /// The backend is gone and the client is intact: see [`Detached`].
    BackendGone(Box<Detached>),
}

/// A client socket whose backend went away at a boundary in both directions: the client
/// has seen whole messages only, and the client-to-backend state (its unforwarded bytes,
/// where it stands in its frames) is kept so a new backend gets whole messages only.
#[derive(Debug)]
pub(crate) struct Detached {
    client: Stream,
    up: Pump,
    /// Traffic so far (client-to-backend counters live in `up`).
    report: RelayReport,
    /// Why: the backend vanished, or wsgate moved the socket (drain, rebalance).
    pub(crate) planned: bool,
}

impl Detached {
    /// The client's socket, to write a notice on before the next relay starts.
    pub(crate) fn client_mut(&mut self) -> &mut Stream {
        &mut self.client
    }

    /// No backend took the socket: close the client with `code`, wait (at most
    /// `timeout`) for its close frame, and report.
    pub(crate) async fn close(
        mut self,
        code: u16,
        reason: &'static str,
        timeout: Duration,
    ) -> RelayReport {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let frame = frame::ControlFrame::close(code, reason, false);
        let wrote = tokio::time::timeout(timeout, async {
            self.client.write_all(frame.as_bytes()).await?;
            self.client.flush().await
        })
        .await;
        if matches!(wrote, Ok(Ok(()))) {
            // Read until the client's close frame (or EOF), so it closes cleanly.
            let mut scanner = frame::FrameScanner::new(ScanRules {
                masked: true,
                max_message: u64::MAX >> 1,
                rsv_allowed: 0x70,
                validate_utf8: false,
            });
            let _ = tokio::time::timeout(timeout, async {
                let mut buf = [0u8; 1024];
                let mut held = 0usize;
                loop {
                    let n = self.client.read(&mut buf[held..]).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    held += n;
                    let scan = scanner.scan(&buf[..held]);
                    match scan.stop {
                        frame::Stop::More => {
                            buf.copy_within(scan.forward..held, 0);
                            held -= scan.forward;
                        }
                        frame::Stop::Skip(k) => {
                            let from = (scan.forward + k).min(held);
                            buf.copy_within(from..held, 0);
                            held -= from;
                        }
                        _ => return,
                    }
                }
            })
            .await;
            let _ = self.client.shutdown().await;
        }
        let mut report = self.report;
        report.bytes_up = self.up.bytes;
        report.messages_up = self.up.messages();
        report.messages_dropped = self.up.dropped();
        report.closed_by = "proxy";
        report.close_code = Some(code);
        report.proxy_reason = Some(reason);
        report
    }
}

/// Relays frames between an upgraded client socket and its backend socket until both
/// are closed, then reports what happened.
///
/// `client_initial` and `upstream_initial` are bytes already read past the handshakes.
/// When `shutdown` resolves the socket is closed gracefully (1001 "going away").
pub fn relay<'a>(
    client: Stream,
    upstream: Stream,
    client_initial: &[u8],
    upstream_initial: &[u8],
    settings: &'a RelaySettings,
    shutdown: impl Future<Output = ()> + 'a,
) -> impl Future<Output = RelayReport> + 'a {
    relay_closing(
        client,
        upstream,
        client_initial,
        upstream_initial,
        settings,
        shutdown,
        None::<std::future::Pending<()>>,
    )
}

/// What a relay waits on to close or move a socket (a drain, a removal, a rebalance):
/// anything that becomes a `Future<Output = ()>`, for as long as the relay runs.
pub(crate) trait Waitable<'a>: IntoFuture<Output = (), IntoFuture: 'a> + 'a {}

impl<'a, T: IntoFuture<Output = (), IntoFuture: 'a> + 'a> Waitable<'a> for T {}

/// [`relay`], closing both sides with 1012 "rebalance" when `rebalance` (if any) resolves.
///
/// This and the other entry points are plain functions that build the pumps and return
/// [`run`]'s future as it is (mapped at most): an `async fn` wrapper would keep its own
/// copy of the pumps beside the one inside `run` for the socket's whole life. Signals
/// are taken as [`IntoFuture`] so that a [`Signal`] (a few words) is turned into its
/// future only inside the relay, and stored once.
pub(crate) fn relay_closing<'a, S, R>(
    client: Stream,
    upstream: Stream,
    client_initial: &[u8],
    upstream_initial: &[u8],
    settings: &'a RelaySettings,
    shutdown: S,
    rebalance: Option<R>,
) -> impl Future<Output = RelayReport> + 'a
where
    S: Waitable<'a>,
    R: Waitable<'a>,
{
    let up = up_pump(settings, client_initial);
    let down = down_pump(settings, upstream_initial);
    run(
        client,
        upstream,
        up,
        down,
        settings,
        shutdown,
        rebalance,
        None::<std::future::Pending<()>>,
        (0, 0),
    )
    .map(|end| match end {
        RelayEnd::Closed(r) => r,
        // Pumps built without resume never park.
        RelayEnd::BackendGone(d) => d.report.clone(),
    })
}

/// Resume mode: like [`relay`], but a backend that vanishes at a clean boundary, or a
/// `detach` (drain, rebalance) gives the client back as [`RelayEnd::BackendGone`]
/// instead of closing it.
pub(crate) fn relay_resumable<'a, S, D>(
    client: Stream,
    upstream: Stream,
    client_initial: &[u8],
    upstream_initial: &[u8],
    settings: &'a RelaySettings,
    shutdown: S,
    detach: D,
) -> impl Future<Output = RelayEnd> + 'a
where
    S: Waitable<'a>,
    D: Waitable<'a>,
{
    let up = up_pump(settings, client_initial).resumable();
    let down = down_pump(settings, upstream_initial).resumable();
    run(
        client,
        upstream,
        up,
        down,
        settings,
        shutdown,
        None::<std::future::Pending<()>>,
        Some(detach),
        (0, 0),
    )
}

/// Re-attaches a [`Detached`] client to a new backend socket.
pub(crate) fn relay_resumed<'a, S, D>(
    detached: Box<Detached>,
    upstream: Stream,
    upstream_initial: &[u8],
    settings: &'a RelaySettings,
    shutdown: S,
    detach: D,
) -> impl Future<Output = RelayEnd> + 'a
where
    S: Waitable<'a>,
    D: Waitable<'a>,
{
    let Detached {
        client,
        mut up,
        report,
        ..
    } = *detached;
    up.reattach();
    let down = down_pump(settings, upstream_initial).resumable();
    run(
        client,
        upstream,
        up,
        down,
        settings,
        shutdown,
        None::<std::future::Pending<()>>,
        Some(detach),
        (report.bytes_down, report.messages_down),
    )
}

fn rules(settings: &RelaySettings, masked: bool) -> ScanRules {
    ScanRules {
        masked,
        max_message: settings.max_message,
        rsv_allowed: settings.rsv_allowed,
        validate_utf8: settings.validate_utf8,
    }
}

fn up_pump(settings: &RelaySettings, client_initial: &[u8]) -> Pump {
    Pump::new(
        rules(settings, true),
        settings
            .message_limits
            .filter(MessageLimits::is_limited)
            .map(|l| l.limiter()),
        settings.buffer_size,
        client_initial,
        &(1001, "client went away"),
    )
}

fn down_pump(settings: &RelaySettings, upstream_initial: &[u8]) -> Pump {
    Pump::new(
        rules(settings, false),
        None,
        settings.buffer_size,
        upstream_initial,
        &(1012, "backend went away"),
    )
}

/// Polls an optional signal: one that is absent never resolves.
fn poll_signal<F: Future<Output = ()>>(
    f: &mut Option<Pin<Box<F>>>,
    cx: &mut Context<'_>,
) -> Poll<()> {
    match f {
        Some(f) => f.as_mut().poll(cx),
        None => Poll::Pending,
    }
}

impl Deadlines {
    /// The deadlines `settings` set for a socket opened at `start`.
    fn new(settings: &RelaySettings, start: TokioInstant) -> Self {
        Self {
            idle: settings.idle_timeout.map(|d| start + d),
            expiry: settings.expires_at.map(TokioInstant::from_std),
            lifetime: settings.max_lifetime.map(|d| start + d),
            ping: settings.ping_interval.map(|d| start + d),
            close: None,
        }
    }
}

/// The deadlines of one socket. They share one timer (the relay re-arms it for the
/// earliest that applies), because each tokio timer is 112 bytes in the socket's task for
/// its whole life, and an idle socket's task is most of what it costs.
#[derive(Debug, Clone, Copy)]
struct Deadlines {
    idle: Option<TokioInstant>,
    expiry: Option<TokioInstant>,
    lifetime: Option<TokioInstant>,
    ping: Option<TokioInstant>,
    /// The close handshake (or a planned switch, or a lost write) must end by then.
    close: Option<TokioInstant>,
}

/// Which deadline a timer wake-up is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Due {
    Idle,
    Expiry,
    Lifetime,
    Ping,
    Close,
}

impl Deadlines {
    /// The earliest deadline that applies: the open socket's while nothing is closing
    /// (`open`), the close deadline while one is armed (`close_armed`).
    fn next(&self, open: bool, close_armed: bool) -> Option<TokioInstant> {
        let open_ones = [self.idle, self.expiry, self.lifetime, self.ping];
        let close = self.close.filter(|_| close_armed);
        open_ones
            .into_iter()
            .filter(|_| open)
            .chain([close])
            .flatten()
            .min()
    }

    /// The first deadline due at `now`, in the order the relay handles them.
    fn due(&self, now: TokioInstant, open: bool, close_armed: bool) -> Option<Due> {
        let passed = |d: Option<TokioInstant>| d.is_some_and(|d| d <= now);
        if open {
            for (d, due) in [
                (self.idle, Due::Idle),
                (self.expiry, Due::Expiry),
                (self.lifetime, Due::Lifetime),
                (self.ping, Due::Ping),
            ] {
                if passed(d) {
                    return Some(due);
                }
            }
        }
        (close_armed && passed(self.close)).then_some(Due::Close)
    }
}

/// The relay loop. `base_down` carries the backend-to-client bytes and messages of
/// earlier backends (resume mode). `rebalance` and `detach` (resume mode) are off when
/// `None`.
///
/// A plain function returning an `async move` block rather than an `async fn`: an
/// `async fn` copies its arguments into locals, so the two pumps would be stored twice
/// in every socket's task for its whole life (the task future is most of what an idle
/// socket costs). For the same reason the signals arrive as [`IntoFuture`] values and
/// become futures here: a captured future pinned into a local is stored twice.
#[allow(clippy::too_many_arguments)]
#[allow(clippy::manual_async_fn)]
fn run<'a, S, R, D>(
    mut client: Stream,
    mut upstream: Stream,
    mut up: Pump,
    mut down: Pump,
    settings: &'a RelaySettings,
    shutdown: S,
    rebalance: Option<R>,
    detach: Option<D>,
    base_down: (u64, u64),
) -> impl Future<Output = RelayEnd> + 'a
where
    S: Waitable<'a>,
    R: Waitable<'a>,
    D: Waitable<'a>,
{
    async move {
        // The loop's state lives in this block, so none of it is kept beside the final
        // write to an old backend below.
        let (report, gone) = {
            // Who closed, while the loop runs; the counters are read from the pumps at
            // the end (a whole report would hold them twice for the socket's life).
            let mut report = Closer::default();

            let listens_rebalance = rebalance.is_some();
            let resume = detach.is_some();
            let mut shutdown = pin!(shutdown.into_future());
            // Boxed: most sockets have neither, and an absent one would still reserve a
            // whole signal's space in every socket's task.
            let mut rebalance = rebalance.map(|r| Box::pin(r.into_future()));
            let mut detach = detach.map(|d| Box::pin(d.into_future()));
            let mut deadlines = Deadlines::new(settings, TokioInstant::now());
            // One timer for all of them, armed for the earliest that can fire.
            let mut timer = pin!(sleep_until(TokioInstant::now()));
            let mut armed: Option<TokioInstant> = None;
            let mut ping_outstanding = false;
            let mut closing = false;
            let mut shutting_down = false;
            let mut rebalanced = false;
            // Resume mode: a planned switch is under way, or the backend is gone.
            let mut detaching = false;
            let mut detach_fired = false;
            // Resume mode: a write to the backend failed; waiting for its read side.
            let mut lost_write = false;
            let mut gone: Option<bool> = None;

            loop {
                enum Wake {
                    Pump(bool, Event),
                    Proxy(ProxyClose),
                    Idle,
                    Ping,
                    CloseTimeout,
                    Detach,
                }
                let close_armed = closing || detaching || lost_write;
                let next = deadlines.next(!closing, close_armed);
                if next != armed {
                    if let Some(at) = next {
                        timer.as_mut().reset(at);
                    }
                    armed = next;
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
                    _ = poll_fn(|cx| poll_signal(&mut rebalance, cx)), if listens_rebalance && !rebalanced => Wake::Proxy(ProxyClose::Rebalance),
                    _ = poll_fn(|cx| poll_signal(&mut detach, cx)), if resume && !detach_fired && !closing => Wake::Detach,
                    _ = &mut timer, if armed.is_some() => {
                        match deadlines.due(TokioInstant::now(), !closing, close_armed) {
                            Some(Due::Idle) => Wake::Idle,
                            Some(Due::Expiry) => Wake::Proxy(ProxyClose::Expired),
                            Some(Due::Lifetime) => Wake::Proxy(ProxyClose::Lifetime),
                            Some(Due::Ping) => Wake::Ping,
                            Some(Due::Close) => Wake::CloseTimeout,
                            None => {
                                // Woken before any deadline (cannot happen with tokio's timer,
                                // which rounds up): arm it again.
                                armed = None;
                                continue;
                            }
                        }
                    }
                };
                let wake = match wake {
                    Wake::Idle if up.activity + down.activity > 0 => {
                        // Traffic since the timer was set: push it out instead of resetting the
                        // timer on every read, which would cost a timer-wheel update per chunk.
                        up.activity = 0;
                        down.activity = 0;
                        deadlines.idle = settings.idle_timeout.map(|d| TokioInstant::now() + d);
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
                            deadlines.ping =
                                settings.ping_interval.map(|d| TokioInstant::now() + d);
                            continue;
                        }
                        Wake::Proxy(ProxyClose::PingTimeout)
                    }
                    other => other,
                };
                // Anything but the switch itself cancels a planned switch under way.
                let switch_event = matches!(
                    wake,
                    Wake::Pump(_, Event::Parked | Event::SourceLost | Event::DstLost)
                        | Wake::Detach
                        | Wake::CloseTimeout
                );
                if detaching && !switch_event {
                    detaching = false;
                    up.undetach();
                    down.undetach();
                }
                match wake {
                    Wake::Pump(from_client, event) => match event {
                        Event::Closed(seen) => {
                            if from_client {
                                down.peer_closed = true;
                            } else {
                                up.peer_closed = true;
                            }
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
                            // The offender gets the code; its peer did nothing wrong and is told
                            // why the socket ends, except for invalid UTF-8, where both sides get
                            // 1007 so a backend learns its client sent a bad message.
                            let utf8 = v.code == frame::INVALID_PAYLOAD;
                            if from_client {
                                down.close_dst(v.code, v.reason);
                                if utf8 {
                                    up.close_dst(v.code, "client sent invalid UTF-8");
                                } else {
                                    up.close_dst(1001, "client protocol error");
                                }
                            } else {
                                up.close_dst(v.code, v.reason);
                                if utf8 {
                                    down.close_dst(v.code, "backend sent invalid UTF-8");
                                } else {
                                    down.close_dst(1014, "backend protocol error");
                                }
                            }
                        }
                        Event::Finished => {
                            if report.closed_by.is_empty() {
                                report.closed_by = if from_client { "client" } else { "backend" };
                            }
                            if (up.is_done() || up.is_parked())
                                && (down.is_done() || down.is_parked())
                            {
                                break;
                            }
                            // Both close frames have crossed and one side is gone: the close
                            // handshake is complete, so a peer that never sends its FIN must not
                            // hold the other socket for the whole close timeout.
                            if up.src_close.is_some() && down.src_close.is_some() {
                                break;
                            }
                        }
                        Event::SourceLost => {
                            // The backend vanished; the client has whole messages only.
                            if report.closed_by.is_empty() && up.park_client_side() {
                                gone = Some(false);
                                break;
                            }
                            down.give_up_parked();
                        }
                        Event::DstLost => {
                            // Writing to the backend failed: its read side tells how it ended
                            // (at a boundary or not). Bounded by the close timeout.
                            lost_write = true;
                            deadlines.close = Some(TokioInstant::now() + settings.close_timeout);
                        }
                        Event::Parked => {
                            if up.is_parked() && down.is_parked() {
                                gone = Some(true);
                                break;
                            }
                        }
                    },
                    Wake::Detach => {
                        detach_fired = true;
                        if report.closed_by.is_empty() {
                            detaching = true;
                            up.detach();
                            down.detach();
                            deadlines.close = Some(TokioInstant::now() + settings.close_timeout);
                        }
                    }
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
                            ProxyClose::Rebalance => {
                                rebalanced = true;
                                (1012, "rebalance")
                            }
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
                    Wake::CloseTimeout if (detaching || lost_write) && !closing => {
                        // No clean boundary in time: close as when a backend dies.
                        detaching = false;
                        lost_write = false;
                        up.undetach();
                        down.undetach();
                        down.give_up_parked();
                        report.closed_by = "proxy";
                        report.close_code = Some(1012);
                        report.proxy_reason = Some("backend went away");
                        down.close_dst(1012, "backend went away");
                        up.close_dst(1001, "backend went away");
                    }
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
                    deadlines.close = Some(TokioInstant::now() + settings.close_timeout);
                }
            }
            let report = RelayReport {
                bytes_up: up.bytes,
                bytes_down: base_down.0 + down.bytes,
                messages_up: up.messages(),
                messages_down: base_down.1 + down.messages(),
                closed_by: report.closed_by,
                close_code: report.close_code,
                proxy_reason: report.proxy_reason,
                messages_dropped: up.dropped(),
            };
            (report, gone)
        };
        match gone {
            None => RelayEnd::Closed(report),
            Some(planned) => {
                if planned {
                    // Parked at a client frame boundary: tell the old backend, best effort.
                    use tokio::io::AsyncWriteExt;
                    let bye = frame::ControlFrame::close(1012, "session moved", true);
                    let _ = tokio::time::timeout(
                        settings.close_timeout.min(Duration::from_secs(1)),
                        async {
                            upstream.write_all(bye.as_bytes()).await?;
                            upstream.shutdown().await
                        },
                    )
                    .await;
                }
                drop(upstream);
                drop(down);
                RelayEnd::BackendGone(Box::new(Detached {
                    client,
                    up,
                    report,
                    planned,
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::mem::size_of;

    use tokio::net::{TcpListener, TcpStream};
    use tokio_util::sync::CancellationToken;

    use super::*;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (a.unwrap(), b.unwrap().0)
    }

    /// An idle socket costs mostly its task, and the relay is most of the task: these
    /// sizes are held by every open socket for its whole life (BENCHMARKS.md, "Memory
    /// per idle connection"). Bounds are for debug builds, where futures are largest;
    /// raising one is a decision about memory per socket, not a test to silence.
    #[tokio::test]
    async fn idle_socket_relay_stays_small() {
        let (c, _c) = pair().await;
        let (u, _u) = pair().await;
        let settings = RelaySettings::default();
        let token = CancellationToken::new();
        // As the proxy builds it: drain or removal, and a rebalance signal.
        let relay = relay_closing(
            Stream::Tcp(c),
            Stream::Tcp(u),
            &[],
            &[],
            &settings,
            Signal::new(token.clone(), Duration::from_secs(1)).or(Some(token.clone())),
            Some(Signal::new(token.clone(), Duration::ZERO)),
        );
        let sizes = [
            ("relay future", std::mem::size_of_val(&relay), 1344),
            ("Pump", size_of::<Pump>(), 264),
            ("FrameScanner", size_of::<frame::FrameScanner>(), 112),
            ("Stream", size_of::<Stream>(), 40),
            ("Signal", size_of::<Signal>(), 32),
            ("SignalFuture", size_of::<signal::SignalFuture>(), 168),
        ];
        for (what, size, bound) in sizes {
            eprintln!("{what}: {size} B (bound {bound} B)");
        }
        for (what, size, bound) in sizes {
            assert!(size <= bound, "{what} is {size} B, over its {bound} B");
        }
    }
}
