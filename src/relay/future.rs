//! The relay of one socket, as a hand-written future.
//!
//! # Design
//!
//! Every open socket's task holds this future for the socket's whole life, and an idle
//! socket costs little more than its task (BENCHMARKS.md, "Memory per idle connection").
//! Written as an `async` block around `select!`, the relay kept, beside its real state,
//! the signal descriptors next to their futures, `select!`'s own state, a copy of every
//! local live across the `await`, and a timer that most sockets never arm. Here the
//! state is a struct, stored once:
//!
//! * the two sockets and the two [`Pump`]s (most of it),
//! * the shutdown signal inline (every socket has one); the rebalance and detach signals
//!   boxed, as most sockets have neither,
//! * the one timer and its deadlines boxed, allocated only for a socket that has a
//!   deadline: a route's `idle_timeout`, `ping_interval` or `max_lifetime`, a token
//!   expiry, or a close under way. With none configured (the default), an idle socket
//!   holds no timer at all,
//! * who closed first and a few flags.
//!
//! [`Relay::poll`] is the loop the `async` version had: wait for the first of the pumps,
//! the signals and the timer (in that order, as `select!` with `biased;` did), act on it,
//! and go round again until both sides are done.

use std::{
    future::Future,
    ops::Deref,
    pin::Pin,
    task::{ready, Context, Poll},
    time::Duration,
};

use pin_project_lite::pin_project;
use tokio::time::{sleep_until, Instant, Sleep};

use super::{
    frame,
    pump::{Event, Pump},
    signal::SignalWaker,
    stream::Stream,
    Detached, RelayEnd, RelayReport, RelaySettings,
};

/// The two sockets of a relay and the two directions between them.
#[derive(Debug)]
pub(super) struct Sockets {
    pub(super) client: Stream,
    pub(super) upstream: Stream,
    /// Client to backend.
    pub(super) up: Pump,
    /// Backend to client.
    pub(super) down: Pump,
}

/// Where a relay stands.
// The relaying state is inline on purpose: it is what every socket's task holds for its
// whole life, and boxing it would add an allocation per socket to save nothing.
#[allow(clippy::large_enum_variant)]
enum Phase {
    Relaying(Sockets),
    /// Resume mode, a planned switch: telling the old backend, then the detached client.
    /// Boxed: only a socket being moved needs the write's state.
    Farewell(Pin<Box<dyn Future<Output = RelayEnd> + Send>>),
    Done,
}

pin_project! {
    /// Relays frames between a client and a backend until both are closed (or, in resume
    /// mode, until the backend is gone and the client can move): see the module docs.
    ///
    /// `C` is how the relay holds its settings: a reference, or (in the proxy, where
    /// the relay must not borrow from its own task) the route's shared `Arc`.
    #[must_use = "futures do nothing unless polled"]
    pub(crate) struct Relay<C, S, R, D> {
        #[pin]
        shutdown: S,
        // Boxed: most sockets have neither, and an absent one would still reserve a
        // whole signal's space in every socket's task.
        rebalance: Option<Pin<Box<R>>>,
        detach: Option<Pin<Box<D>>>,
        phase: Phase,
        control: Control<C>,
    }
}

impl<C: Deref<Target = RelaySettings>, S, R, D> Relay<C, S, R, D> {
    /// A relay of `sockets` under `settings`; `rebalance` and `detach` (resume mode) are
    /// off when `None`.
    pub(super) fn new(
        sockets: Sockets,
        settings: C,
        shutdown: S,
        rebalance: Option<R>,
        detach: Option<D>,
    ) -> Self {
        let deadlines = Deadlines::new(&settings, Instant::now());
        Self {
            shutdown,
            rebalance: rebalance.map(Box::pin),
            detach: detach.map(Box::pin),
            phase: Phase::Relaying(sockets),
            control: Control {
                settings,
                timer: deadlines.any().then(|| Timer::new(deadlines)),
                signals: SignalWaker::new(),
                closer: Closer::default(),
                ping_outstanding: false,
                closing: false,
                shutting_down: false,
                rebalanced: false,
                detaching: false,
                detach_fired: false,
                lost_write: false,
            },
        }
    }
}

/// The relay's state beside its sockets and signals.
struct Control<C> {
    settings: C,
    /// `None` until the socket has a deadline.
    timer: Option<Pin<Box<Timer>>>,
    /// The signals are polled only when one of them woke the task.
    signals: SignalWaker,
    /// Who closed, while the relay runs; the counters are read from the pumps at the end
    /// (a whole report would hold them twice for the socket's life).
    closer: Closer,
    /// A keep-alive ping is unanswered.
    ping_outstanding: bool,
    /// A close is under way: only the close deadline still applies.
    closing: bool,
    shutting_down: bool,
    rebalanced: bool,
    /// Resume mode: a planned switch is under way, or the backend is gone.
    detaching: bool,
    detach_fired: bool,
    /// Resume mode: a write to the backend failed; waiting for its read side.
    lost_write: bool,
}

/// Who closed a socket first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum ClosedBy {
    #[default]
    Nobody,
    Client,
    Backend,
    Proxy,
}

impl ClosedBy {
    /// The side whose pump reported (`from_client`: the client-to-backend one).
    fn side(from_client: bool) -> Self {
        if from_client {
            Self::Client
        } else {
            Self::Backend
        }
    }

    /// As [`RelayReport::closed_by`] has it.
    fn as_str(self) -> &'static str {
        match self {
            Self::Nobody => "",
            Self::Client => "client",
            Self::Backend => "backend",
            Self::Proxy => "proxy",
        }
    }
}

/// The part of a [`RelayReport`] the relay loop decides: who closed first and how.
#[derive(Debug, Default)]
struct Closer {
    closed_by: ClosedBy,
    close_code: Option<u16>,
    proxy_reason: Option<&'static str>,
}

impl Closer {
    fn is_open(&self) -> bool {
        self.closed_by == ClosedBy::Nobody
    }

    /// The proxy closes with `code` for `reason`, unless someone closed first.
    fn proxy(&mut self, code: u16, reason: &'static str) {
        if self.is_open() {
            self.closed_by = ClosedBy::Proxy;
            self.close_code = Some(code);
            self.proxy_reason = Some(reason);
        }
    }
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

/// What woke the relay.
enum Wake {
    Pump(bool, Event),
    Proxy(ProxyClose),
    Idle,
    Ping,
    CloseTimeout,
    Detach,
    /// The timer fired before any deadline: arm it again.
    Rearm,
}

/// What the relay does after a wake-up.
enum Flow {
    Next,
    /// The loop is over: `Some(planned)` when the backend is gone and the client can
    /// move (resume mode).
    End(Option<bool>),
}

impl<C, S, R, D> Future for Relay<C, S, R, D>
where
    C: Deref<Target = RelaySettings>,
    S: Future<Output = ()>,
    R: Future<Output = ()>,
    D: Future<Output = ()>,
{
    type Output = RelayEnd;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<RelayEnd> {
        let mut this = self.project();
        loop {
            let io = match this.phase {
                Phase::Relaying(io) => io,
                Phase::Farewell(f) => {
                    let end = ready!(f.as_mut().poll(cx));
                    *this.phase = Phase::Done;
                    return Poll::Ready(end);
                }
                Phase::Done => panic!("`Relay` polled after completion"),
            };
            this.control.arm_timer();
            let wake = ready!(poll_wake(
                io,
                this.shutdown.as_mut(),
                this.rebalance,
                this.detach,
                this.control,
                cx
            ));
            let Flow::End(gone) = this.control.on_wake(io, wake) else {
                continue;
            };
            if let Phase::Relaying(io) = std::mem::replace(this.phase, Phase::Done) {
                match this.control.finish(io, gone) {
                    Ok(end) => return Poll::Ready(end),
                    Err(farewell) => *this.phase = Phase::Farewell(farewell),
                }
            }
        }
    }
}

/// Waits for the first of the pumps, the signals and the timer, in that order.
fn poll_wake<C, S, R, D>(
    io: &mut Sockets,
    shutdown: Pin<&mut S>,
    rebalance: &mut Option<Pin<Box<R>>>,
    detach: &mut Option<Pin<Box<D>>>,
    control: &mut Control<C>,
    cx: &mut Context<'_>,
) -> Poll<Wake>
where
    C: Deref<Target = RelaySettings>,
    S: Future<Output = ()>,
    R: Future<Output = ()>,
    D: Future<Output = ()>,
{
    let Sockets {
        client,
        upstream,
        up,
        down,
    } = io;
    if !up.is_done() {
        if let Poll::Ready(e) = up.poll(cx, client, upstream) {
            return Poll::Ready(Wake::Pump(true, e));
        }
    }
    if !down.is_done() {
        if let Poll::Ready(e) = down.poll(cx, upstream, client) {
            return Poll::Ready(Wake::Pump(false, e));
        }
    }
    // A wake-up for I/O does not touch the signals (their polls take locks): they are
    // polled, with their own waker, only once one of them has fired.
    if control.signals.take(cx.waker()) {
        let signals = control.signals.clone();
        let waker = signals.waker();
        let mut signal_cx = Context::from_waker(&waker);
        if let Poll::Ready(wake) =
            poll_signals(shutdown, rebalance, detach, control, &mut signal_cx)
        {
            signals.again();
            return Poll::Ready(wake);
        }
    }
    control.poll_timer(cx)
}

/// Polls the signals still relevant, in their order of precedence. Each flag that turns a
/// signal off only ever goes from false to true, so a signal skipped here is never needed
/// again.
fn poll_signals<C, S, R, D>(
    shutdown: Pin<&mut S>,
    rebalance: &mut Option<Pin<Box<R>>>,
    detach: &mut Option<Pin<Box<D>>>,
    control: &Control<C>,
    cx: &mut Context<'_>,
) -> Poll<Wake>
where
    S: Future<Output = ()>,
    R: Future<Output = ()>,
    D: Future<Output = ()>,
{
    if !control.shutting_down && shutdown.poll(cx).is_ready() {
        return Poll::Ready(Wake::Proxy(ProxyClose::Shutdown));
    }
    if !control.rebalanced && poll_signal(rebalance, cx).is_ready() {
        return Poll::Ready(Wake::Proxy(ProxyClose::Rebalance));
    }
    if !control.detach_fired && !control.closing && poll_signal(detach, cx).is_ready() {
        return Poll::Ready(Wake::Detach);
    }
    Poll::Pending
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

impl<C: Deref<Target = RelaySettings>> Control<C> {
    /// Whether the close deadline applies.
    fn close_armed(&self) -> bool {
        self.closing || self.detaching || self.lost_write
    }

    /// The socket's deadlines, with a timer for them from now on.
    fn deadlines(&mut self) -> &mut Deadlines {
        let timer = self
            .timer
            .get_or_insert_with(|| Timer::new(Deadlines::default()));
        timer.as_mut().project().deadlines
    }

    /// The close (or planned switch, or lost write) must end `close_timeout` from now.
    fn close_by_timeout(&mut self) {
        let at = Instant::now() + self.settings.close_timeout;
        self.deadlines().close = Some(at);
    }

    /// Re-arms the timer for the earliest deadline that can fire, if that changed.
    fn arm_timer(&mut self) {
        let (open, close_armed) = (!self.closing, self.close_armed());
        if let Some(timer) = self.timer.as_mut() {
            let t = timer.as_mut().project();
            let next = t.deadlines.next(open, close_armed);
            if next != *t.armed {
                if let Some(at) = next {
                    t.sleep.reset(at);
                }
                *t.armed = next;
            }
        }
    }

    fn poll_timer(&mut self, cx: &mut Context<'_>) -> Poll<Wake> {
        let (open, close_armed) = (!self.closing, self.close_armed());
        let Some(timer) = self.timer.as_mut() else {
            return Poll::Pending;
        };
        let t = timer.as_mut().project();
        if t.armed.is_none() {
            return Poll::Pending;
        }
        ready!(t.sleep.poll(cx));
        Poll::Ready(match t.deadlines.due(Instant::now(), open, close_armed) {
            Some(Due::Idle) => Wake::Idle,
            Some(Due::Expiry) => Wake::Proxy(ProxyClose::Expired),
            Some(Due::Lifetime) => Wake::Proxy(ProxyClose::Lifetime),
            Some(Due::Ping) => Wake::Ping,
            Some(Due::Close) => Wake::CloseTimeout,
            None => {
                // Woken before any deadline (cannot happen with tokio's timer, which
                // rounds up): arm it again.
                *t.armed = None;
                Wake::Rearm
            }
        })
    }

    /// Acts on what woke the relay.
    fn on_wake(&mut self, io: &mut Sockets, wake: Wake) -> Flow {
        let Sockets { up, down, .. } = io;
        let wake = match wake {
            Wake::Rearm => return Flow::Next,
            Wake::Idle if up.activity || down.activity => {
                // Traffic since the timer was set: push it out instead of resetting the
                // timer on every read, which would cost a timer-wheel update per chunk.
                up.activity = false;
                down.activity = false;
                let idle = self.settings.idle_timeout.map(|d| Instant::now() + d);
                self.deadlines().idle = idle;
                return Flow::Next;
            }
            Wake::Idle => Wake::Proxy(ProxyClose::Idle),
            Wake::Ping => {
                // Anything from the client since the last check (a pong or data) proves
                // it alive; otherwise ping it, and if a ping is already unanswered, give up.
                let heard = std::mem::take(&mut up.heard);
                if heard || !self.ping_outstanding {
                    if !heard {
                        down.ping_dst();
                    }
                    self.ping_outstanding = !heard;
                    let ping = self.settings.ping_interval.map(|d| Instant::now() + d);
                    self.deadlines().ping = ping;
                    return Flow::Next;
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
        if self.detaching && !switch_event {
            self.detaching = false;
            up.undetach();
            down.undetach();
        }
        match wake {
            Wake::Pump(from_client, event) => {
                if let Some(end) = self.on_event(up, down, from_client, event) {
                    return Flow::End(end);
                }
            }
            Wake::Detach => {
                self.detach_fired = true;
                if self.closer.is_open() {
                    self.detaching = true;
                    up.detach();
                    down.detach();
                    self.close_by_timeout();
                }
            }
            Wake::Proxy(why) => {
                let (code, reason) = match why {
                    ProxyClose::Shutdown => {
                        self.shutting_down = true;
                        (1001, "going away")
                    }
                    ProxyClose::Idle => (1001, "idle timeout"),
                    ProxyClose::Expired => (4401, "token expired"),
                    ProxyClose::Lifetime => (1001, "max lifetime"),
                    ProxyClose::PingTimeout => (1001, "ping timeout"),
                    ProxyClose::Rebalance => {
                        self.rebalanced = true;
                        (1012, "rebalance")
                    }
                };
                self.closer.proxy(code, reason);
                down.close_dst(code, reason);
                up.close_dst(1001, reason);
            }
            Wake::Idle | Wake::Ping | Wake::Rearm => {}
            Wake::CloseTimeout if (self.detaching || self.lost_write) && !self.closing => {
                // No clean boundary in time: close as when a backend dies.
                self.detaching = false;
                self.lost_write = false;
                up.undetach();
                down.undetach();
                down.give_up_parked();
                self.closer = Closer {
                    closed_by: ClosedBy::Proxy,
                    close_code: Some(1012),
                    proxy_reason: Some("backend went away"),
                };
                down.close_dst(1012, "backend went away");
                up.close_dst(1001, "backend went away");
            }
            Wake::CloseTimeout => return Flow::End(None),
        }
        if !self.closing
            && (up.dst_closed
                || down.dst_closed
                || up.is_done()
                || down.is_done()
                || !self.closer.is_open())
        {
            self.closing = true;
            self.close_by_timeout();
        }
        Flow::Next
    }

    /// Acts on what a pump reported; `Some` ends the loop (see [`Flow::End`]).
    fn on_event(
        &mut self,
        up: &mut Pump,
        down: &mut Pump,
        from_client: bool,
        event: Event,
    ) -> Option<Option<bool>> {
        match event {
            Event::Closed(seen) => {
                if from_client {
                    down.peer_closed = true;
                } else {
                    up.peer_closed = true;
                }
                if self.closer.is_open() {
                    self.closer.closed_by = ClosedBy::side(from_client);
                    self.closer.close_code = seen.code.or(Some(1005));
                }
            }
            Event::Violation(v) => {
                self.closer.proxy(v.code, v.reason);
                // The offender gets the code; its peer did nothing wrong and is told why
                // the socket ends, except for invalid UTF-8, where both sides get 1007 so
                // a backend learns its client sent a bad message.
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
                if self.closer.is_open() {
                    self.closer.closed_by = ClosedBy::side(from_client);
                }
                if (up.is_done() || up.is_parked()) && (down.is_done() || down.is_parked()) {
                    return Some(None);
                }
                // Both close frames have crossed and one side is gone: the close
                // handshake is complete, so a peer that never sends its FIN must not hold
                // the other socket for the whole close timeout.
                if up.src_close.is_some() && down.src_close.is_some() {
                    return Some(None);
                }
            }
            Event::SourceLost => {
                // The backend vanished; the client has whole messages only.
                if self.closer.is_open() && up.park_client_side() {
                    return Some(Some(false));
                }
                down.give_up_parked();
            }
            Event::DstLost => {
                // Writing to the backend failed: its read side tells how it ended (at a
                // boundary or not). Bounded by the close timeout.
                self.lost_write = true;
                self.close_by_timeout();
            }
            Event::Parked => {
                if up.is_parked() && down.is_parked() {
                    return Some(Some(true));
                }
            }
        }
        None
    }

    /// The loop is over: the report, or (resume mode) the client to move, after a
    /// farewell to the old backend when the move was planned (the `Err` future).
    #[allow(clippy::type_complexity)]
    fn finish(
        &mut self,
        io: Sockets,
        gone: Option<bool>,
    ) -> Result<RelayEnd, Pin<Box<dyn Future<Output = RelayEnd> + Send>>> {
        let Sockets {
            client,
            mut upstream,
            up,
            down,
        } = io;
        let closer = std::mem::take(&mut self.closer);
        let report = RelayReport {
            bytes_up: up.bytes,
            bytes_down: down.bytes,
            messages_up: up.messages(),
            messages_down: down.messages(),
            closed_by: closer.closed_by.as_str(),
            close_code: closer.close_code,
            proxy_reason: closer.proxy_reason,
            messages_dropped: up.dropped(),
        };
        // The timer (if any) is done with; a farewell has its own.
        self.timer = None;
        drop(down);
        let Some(planned) = gone else {
            return Ok(RelayEnd::Closed(report));
        };
        let detached = Box::new(Detached {
            client,
            up,
            report,
            planned,
        });
        if !planned {
            return Ok(RelayEnd::BackendGone(detached));
        }
        // Parked at a client frame boundary: tell the old backend, best effort.
        let limit = self.settings.close_timeout.min(Duration::from_secs(1));
        Err(Box::pin(async move {
            use tokio::io::AsyncWriteExt;
            let bye = frame::ControlFrame::close(1012, "session moved", true);
            let _ = tokio::time::timeout(limit, async {
                upstream.write_all(bye.as_bytes()).await?;
                upstream.shutdown().await
            })
            .await;
            drop(upstream);
            RelayEnd::BackendGone(detached)
        }))
    }
}

pin_project! {
    /// The one timer of a socket, armed for the earliest of its deadlines.
    struct Timer {
        #[pin]
        sleep: Sleep,
        deadlines: Deadlines,
        armed: Option<Instant>,
    }
}

impl Timer {
    fn new(deadlines: Deadlines) -> Pin<Box<Self>> {
        Box::pin(Self {
            sleep: sleep_until(Instant::now()),
            deadlines,
            armed: None,
        })
    }
}

/// The deadlines of one socket. They share one timer (the relay re-arms it for the
/// earliest that applies), because each tokio timer is 112 bytes.
#[derive(Debug, Clone, Copy, Default)]
struct Deadlines {
    idle: Option<Instant>,
    expiry: Option<Instant>,
    lifetime: Option<Instant>,
    ping: Option<Instant>,
    /// The close handshake (or a planned switch, or a lost write) must end by then.
    close: Option<Instant>,
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
    /// The deadlines `settings` set for a socket opened at `start`.
    fn new(settings: &RelaySettings, start: Instant) -> Self {
        Self {
            idle: settings.idle_timeout.map(|d| start + d),
            expiry: settings.expires_at.map(Instant::from_std),
            lifetime: settings.max_lifetime.map(|d| start + d),
            ping: settings.ping_interval.map(|d| start + d),
            close: None,
        }
    }

    /// Whether any deadline is set.
    fn any(&self) -> bool {
        [self.idle, self.expiry, self.lifetime, self.ping, self.close]
            .iter()
            .any(Option::is_some)
    }

    /// The earliest deadline that applies: the open socket's while nothing is closing
    /// (`open`), the close deadline while one is armed (`close_armed`).
    fn next(&self, open: bool, close_armed: bool) -> Option<Instant> {
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
    fn due(&self, now: Instant, open: bool, close_armed: bool) -> Option<Due> {
        let passed = |d: Option<Instant>| d.is_some_and(|d| d <= now);
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

#[cfg(test)]
mod tests {
    use std::future::Pending;

    use futures_util::FutureExt;

    use tokio::net::TcpStream;

    use super::*;
    use crate::relay::{down_pump, tests::pair, up_pump};

    async fn new_relay(
        settings: &RelaySettings,
    ) -> (
        Relay<&RelaySettings, Pending<()>, Pending<()>, Pending<()>>,
        [TcpStream; 2],
    ) {
        let (c, c_peer) = pair().await;
        let (u, u_peer) = pair().await;
        let sockets = Sockets {
            client: Stream::Tcp(c),
            upstream: Stream::Tcp(u),
            up: up_pump(settings, &[]),
            down: down_pump(settings, &[]),
        };
        let relay = Relay::new(sockets, settings, std::future::pending(), None, None);
        (relay, [c_peer, u_peer])
    }

    /// The timer and its deadlines (~200 B) are allocated only for a socket that has a
    /// deadline: with the default settings an idle socket holds none.
    #[tokio::test]
    async fn a_socket_without_deadlines_holds_no_timer() {
        let settings = RelaySettings::default();
        let (relay, _peers) = new_relay(&settings).await;
        let mut relay = std::pin::pin!(relay);
        assert!(relay.as_mut().now_or_never().is_none());
        assert!(
            relay.control.timer.is_none(),
            "an idle socket holds no timer"
        );

        let settings = RelaySettings {
            idle_timeout: Some(Duration::from_secs(60)),
            ..RelaySettings::default()
        };
        let (relay, _peers) = new_relay(&settings).await;
        let mut relay = std::pin::pin!(relay);
        assert!(relay.as_mut().now_or_never().is_none());
        let timer = relay
            .control
            .timer
            .as_ref()
            .expect("a deadline has a timer");
        assert!(timer.armed.is_some(), "armed for the idle deadline");
    }

    /// A close under way arms the close deadline, on a timer made for it.
    #[tokio::test]
    async fn a_close_gets_a_timer_when_it_starts() {
        let settings = RelaySettings::default();
        let (relay, [mut client, _backend]) = new_relay(&settings).await;
        let mut relay = std::pin::pin!(relay);
        assert!(relay.as_mut().now_or_never().is_none());
        // The client's close frame (masked, code 1000): forwarded, and the close begins.
        use tokio::io::AsyncWriteExt;
        client
            .write_all(&[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8])
            .await
            .unwrap();
        // Polled as its task would be, woken by the socket, until the close starts.
        let started = std::future::poll_fn(|cx| {
            if relay.as_mut().poll(cx).is_ready() || relay.control.closing {
                return Poll::Ready(());
            }
            Poll::Pending
        });
        tokio::time::timeout(Duration::from_secs(5), started)
            .await
            .expect("the close never started");
        assert!(relay.control.closing);
        let timer = relay.control.timer.as_ref().expect("a close has a timer");
        assert!(timer.deadlines.close.is_some() && timer.armed.is_some());
    }
}
