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
mod future;
mod pump;
mod signal;
mod stream;
mod utf8;

use std::{
    future::{Future, IntoFuture, Pending},
    ops::Deref,
    time::{Duration, Instant},
};

use futures_util::FutureExt;

pub(crate) use signal::{Signal, SignalFuture};
pub use stream::Stream;
pub use utf8::{InvalidUtf8, MaskedText, Utf8Validator};
use wsgate_layers::ratelimit::MessageLimits;

use frame::ScanRules;
pub(crate) use future::Relay;
use future::Sockets;
use pump::Pump;

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

/// How a relay ended: closed, or (resume mode) its backend went away while the client's
/// socket sits at a clean boundary and can be re-attached to another backend.
#[derive(Debug)]
pub(crate) enum RelayEnd {
    /// Both sides are closed (or gone); the socket is over.
    Closed(RelayReport),
    /// The backend is gone and the client is intact: see [`Detached`].
    BackendGone(Box<Detached>),
}

impl RelayEnd {
    /// The report, for a relay that ends [`Closed`](Self::Closed) (one built without
    /// resume never parks; a parked one reports its traffic so far).
    pub(crate) fn into_report(self) -> RelayReport {
        match self {
            Self::Closed(report) => report,
            Self::BackendGone(d) => d.report,
        }
    }
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
        None::<Pending<()>>,
    )
    .map(RelayEnd::into_report)
}

/// [`relay`], closing both sides with 1012 "rebalance" when `rebalance` (if any) resolves.
/// Its output is a [`RelayEnd::Closed`]: [`RelayEnd::into_report`] takes the report.
///
/// This and the other entry points are plain functions that build the pumps and return
/// the [`Relay`] future: an `async fn` wrapper would keep its own copy of the pumps
/// beside the one inside the relay for the socket's whole life. Signals are taken as
/// [`IntoFuture`] so that a [`Signal`] (a few words) is turned into its future only
/// inside the relay, and stored once. `settings` is a reference or the route's shared
/// `Arc` (see [`Relay`]).
pub(crate) fn relay_closing<C, S, R>(
    client: Stream,
    upstream: Stream,
    client_initial: &[u8],
    upstream_initial: &[u8],
    settings: C,
    shutdown: S,
    rebalance: Option<R>,
) -> Relay<C, S::IntoFuture, R::IntoFuture, Pending<()>>
where
    C: Deref<Target = RelaySettings>,
    S: IntoFuture<Output = ()>,
    R: IntoFuture<Output = ()>,
{
    let up = up_pump(&settings, client_initial);
    let down = down_pump(&settings, upstream_initial);
    run(
        Sockets {
            client,
            upstream,
            up,
            down,
        },
        settings,
        shutdown,
        rebalance,
        None::<Pending<()>>,
    )
}

/// Resume mode: like [`relay`], but a backend that vanishes at a clean boundary, or a
/// `detach` (drain, rebalance) gives the client back as [`RelayEnd::BackendGone`]
/// instead of closing it.
pub(crate) fn relay_resumable<C, S, D>(
    client: Stream,
    upstream: Stream,
    client_initial: &[u8],
    upstream_initial: &[u8],
    settings: C,
    shutdown: S,
    detach: D,
) -> Relay<C, S::IntoFuture, Pending<()>, D::IntoFuture>
where
    C: Deref<Target = RelaySettings>,
    S: IntoFuture<Output = ()>,
    D: IntoFuture<Output = ()>,
{
    let up = up_pump(&settings, client_initial).resumable();
    let down = down_pump(&settings, upstream_initial).resumable();
    run(
        Sockets {
            client,
            upstream,
            up,
            down,
        },
        settings,
        shutdown,
        None::<Pending<()>>,
        Some(detach),
    )
}

/// Re-attaches a [`Detached`] client to a new backend socket.
pub(crate) fn relay_resumed<C, S, D>(
    detached: Box<Detached>,
    upstream: Stream,
    upstream_initial: &[u8],
    settings: C,
    shutdown: S,
    detach: D,
) -> Relay<C, S::IntoFuture, Pending<()>, D::IntoFuture>
where
    C: Deref<Target = RelaySettings>,
    S: IntoFuture<Output = ()>,
    D: IntoFuture<Output = ()>,
{
    let Detached {
        client,
        mut up,
        report,
        ..
    } = *detached;
    up.reattach();
    // The backend-to-client counters go on from the earlier backends' figures.
    let down = down_pump(&settings, upstream_initial)
        .resumable()
        .counted_from(report.bytes_down, report.messages_down);
    run(
        Sockets {
            client,
            upstream,
            up,
            down,
        },
        settings,
        shutdown,
        None::<Pending<()>>,
        Some(detach),
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

/// The relay of `io`. `rebalance` and `detach` (resume mode) are off when `None`.
///
/// The signals arrive as [`IntoFuture`] values and become futures here, inside the
/// relay: a future built outside and moved in would be stored twice in the task.
fn run<C, S, R, D>(
    io: Sockets,
    settings: C,
    shutdown: S,
    rebalance: Option<R>,
    detach: Option<D>,
) -> Relay<C, S::IntoFuture, R::IntoFuture, D::IntoFuture>
where
    C: Deref<Target = RelaySettings>,
    S: IntoFuture<Output = ()>,
    R: IntoFuture<Output = ()>,
    D: IntoFuture<Output = ()>,
{
    Relay::new(
        io,
        settings,
        shutdown.into_future(),
        rebalance.map(IntoFuture::into_future),
        detach.map(IntoFuture::into_future),
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use std::{
        mem::size_of,
        pin::Pin,
        task::{Context, Poll},
    };

    use tokio::net::{TcpListener, TcpStream};
    use tokio_util::sync::CancellationToken;

    use super::*;

    /// Two ends of one loopback TCP connection.
    pub(crate) async fn pair() -> (TcpStream, TcpStream) {
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
        // 824 B in session 4 (1,272 as an `async` block), 768 in session 5 (760, plus the
        // 8 B pointer to the signals' waker that keeps their locks off the hot path). With the
        // proxy's guards around it the task cell is 1,024 B (debug), jemalloc's 1,024
        // size class (`proxy::socket::tests` bounds the whole task); past that it takes
        // the 1,280 class, 256 B more per socket.
        let sizes = [
            ("relay future", std::mem::size_of_val(&relay), 768),
            ("Pump", size_of::<Pump>(), 224),
            ("FrameScanner", size_of::<frame::FrameScanner>(), 96),
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

    /// A signal that counts its polls, and resolves when `rx` gets a value.
    struct CountedSignal {
        rx: tokio::sync::oneshot::Receiver<()>,
        polls: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    }

    impl Future for CountedSignal {
        type Output = ();

        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Pin::new(&mut self.rx).poll(cx).map(|_| ())
        }
    }

    /// Polling a waiting drain or removal token takes locks (and the drain token is one
    /// for the whole process), so the relay polls its signals only when one of them woke
    /// it: a stream of messages does not poll them, and a signal that fires later is
    /// still acted on at once.
    #[tokio::test]
    async fn io_wakeups_do_not_poll_the_signals() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (c, mut client) = pair().await;
        let (u, mut backend) = pair().await;
        let settings = RelaySettings::default();
        let polls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (fire, rx) = tokio::sync::oneshot::channel();
        let signal = CountedSignal {
            rx,
            polls: polls.clone(),
        };
        let relay = relay(Stream::Tcp(c), Stream::Tcp(u), &[], &[], &settings, signal);
        let drive = async {
            // A masked binary "ping" each way in turn: every message wakes the relay.
            let up = [
                0x82,
                0x84,
                1,
                2,
                3,
                4,
                b'p' ^ 1,
                b'i' ^ 2,
                b'n' ^ 3,
                b'g' ^ 4,
            ];
            let down = [0x82, 4, b'p', b'o', b'n', b'g'];
            for _ in 0..50 {
                client.write_all(&up).await.unwrap();
                let mut got = [0u8; 10];
                backend.read_exact(&mut got).await.unwrap();
                assert_eq!(got, up);
                backend.write_all(&down).await.unwrap();
                let mut got = [0u8; 6];
                client.read_exact(&mut got).await.unwrap();
                assert_eq!(got, down);
            }
            let n = polls.load(std::sync::atomic::Ordering::Relaxed);
            assert!(n <= 2, "the signal was polled {n} times for 100 messages");
            fire.send(()).unwrap();
            // The drain closes the client with 1001 "going away".
            let mut head = [0u8; 4];
            client.read_exact(&mut head).await.unwrap();
            assert_eq!((head[0], &head[2..]), (0x88, &1001u16.to_be_bytes()[..]));
            drop((client, backend));
        };
        let (report, ()) = tokio::join!(relay, drive);
        assert_eq!(report.close_code, Some(1001));
        assert_eq!(report.messages_up, 50);
    }
}
