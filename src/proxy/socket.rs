//! The task of one proxied socket, from the client's 101 to the `closed` log line.
//!
//! # Design
//!
//! Every open socket's task holds this future for the socket's whole life, and an idle
//! socket costs little more than its task (BENCHMARKS.md, "Memory per idle
//! connection"). Written as an `async move` block around the relay, the task kept every
//! captured value for the block's whole life, also those the relay had moved out of
//! (the backend's socket and leftover bytes, the upgrade handle, the resume option:
//! ~90 B of every idle socket). Here it is an enum, so each phase holds only its own
//! state:
//!
//! * [`SocketTask::Upgrading`]: waiting for the client's side of the upgrade, with the
//!   backend's socket and everything the relay will be built from;
//! * [`SocketTask::Relaying`]: the relay (which owns the sockets and a share of the
//!   route's settings, so it borrows nothing from the task) and the socket's guards;
//! * [`SocketTask::Resuming`]: resume mode, where the reconnect loop and its second relay
//!   are boxed, so that plain sockets do not reserve their space.

use std::{
    future::{Future, Pending},
    pin::Pin,
    sync::{atomic::Ordering, Arc},
    task::{ready, Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use pin_project_lite::pin_project;
use tracing::{debug, info};
use wsgate_layers::{
    upstream::{ActiveConnection, MovableSocket, Upstream},
    Leases,
};

use super::{drain_or_removed, drain_signal, move_signal, write_notice, RouteProxy};
use crate::{
    relay::{
        relay_closing, relay_resumable, relay_resumed, Relay, RelayEnd, RelayReport, RelaySettings,
        Signal, SignalFuture, Stream,
    },
    upgrade::ClientSide,
    upstream::resume::{ResumeRequest, ResumeSettings},
};

/// A resumable socket's extra state: its resume settings, the request to repeat on
/// another backend, its sticky key and its upstream. Boxed: every socket's task holds
/// this option until the relay starts.
pub(super) type Resume = Box<(
    Arc<ResumeSettings>,
    ResumeRequest,
    Option<Vec<u8>>,
    Arc<Upstream>,
)>;

/// The relay of a socket without resume: drain or removal, and an optional rebalance.
type ClosingRelay = Relay<Arc<RelaySettings>, SignalFuture, SignalFuture, Pending<()>>;

/// What a proxied socket holds from its 101 to its end besides the relay: counts and
/// leases, each released by its own `Drop` on every path.
#[derive(Debug)]
pub(super) struct Held {
    /// The route, whose open-socket count this socket is in.
    route: RouteSocket,
    /// The socket's count on its backend (and so the backend itself).
    on_backend: ActiveConnection,
    /// Registered for rebalancing (routes with `rebalance` on).
    movable: Option<MovableSocket>,
    /// Whatever the layers hold while the socket is open (connection-limit slots).
    _leases: Option<Leases>,
    started: Instant,
}

impl Held {
    /// Counts a new socket on `route` and on `backend`, holding `leases`.
    pub(super) fn open(
        route: Arc<RouteProxy>,
        backend: &Arc<wsgate_layers::Backend>,
        leases: Option<Leases>,
    ) -> Self {
        let movable = route
            .connector
            .rebalance()
            .then(|| backend.register_movable());
        Self {
            route: RouteSocket::open(route),
            on_backend: backend.track(),
            movable,
            _leases: leases,
            started: Instant::now(),
        }
    }

    fn backend(&self) -> &Arc<wsgate_layers::Backend> {
        self.on_backend.backend()
    }

    /// The socket is over: counts it and logs its `closed` line. The backend's count
    /// and the rebalance registration go first, the route's and the leases last.
    fn closed(self, report: &RelayReport) {
        let Self {
            route,
            on_backend,
            movable,
            _leases,
            started,
        } = self;
        drop((on_backend, movable));
        route.0.shared.metrics.closed(report);
        info!(
            duration_ms = started.elapsed().as_millis() as u64,
            bytes_up = report.bytes_up,
            bytes_down = report.bytes_down,
            messages_up = report.messages_up,
            messages_down = report.messages_down,
            closed_by = report.closed_by,
            close_code = report.close_code,
            reason = report.proxy_reason,
            messages_dropped = report.messages_dropped,
            "closed"
        );
    }
}

/// One open socket in its route's count and in the open-socket metrics; both drop with
/// the guard. One guard for both, reaching the metrics through the route: a pointer
/// fewer in every socket's task than `Metrics::open_socket`'s own guard.
#[derive(Debug)]
struct RouteSocket(Arc<RouteProxy>);

impl RouteSocket {
    fn open(route: Arc<RouteProxy>) -> Self {
        route.shared.metrics.socket_opened();
        route.active.fetch_add(1, Ordering::Relaxed);
        Self(route)
    }
}

impl Drop for RouteSocket {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
        self.0.shared.metrics.socket_closed();
    }
}

/// What the relay is built from once the client's side of the upgrade arrives.
#[derive(Debug)]
pub(super) struct Prepared {
    /// The backend's socket, upgraded.
    pub(super) upstream: Stream,
    /// Bytes the backend sent after its 101.
    pub(super) leftover: Vec<u8>,
    pub(super) settings: Arc<RelaySettings>,
    pub(super) resume: Option<Resume>,
    pub(super) held: Held,
}

pin_project! {
    /// The task of one proxied socket: see the module docs.
    #[project = Phase]
    #[project_replace = PhaseOwned]
    #[must_use = "futures do nothing unless polled"]
    pub(super) enum SocketTask<W> {
        Upgrading {
            #[pin]
            client: W,
            next: Prepared,
        },
        Relaying {
            #[pin]
            relay: ClosingRelay,
            held: Held,
        },
        Resuming {
            task: Pin<Box<dyn Future<Output = ()> + Send>>,
        },
        Done,
    }
}

impl<W> SocketTask<W> {
    /// A socket that relays `next` once `client` (the client's side of the upgrade)
    /// resolves.
    pub(super) fn new(client: W, next: Prepared) -> Self {
        Self::Upgrading { client, next }
    }
}

impl<W> Future for SocketTask<W>
where
    W: Future<Output = Result<ClientSide, String>>,
{
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            match self.as_mut().project() {
                Phase::Upgrading { client, .. } => {
                    let client = ready!(client.poll(cx));
                    // Takes the phase's state out, dropping the finished upgrade handle.
                    let PhaseOwned::Upgrading { next, .. } =
                        self.as_mut().project_replace(Self::Done)
                    else {
                        return Poll::Ready(());
                    };
                    match client {
                        Ok((client, initial)) => self.set(start(next, client, initial)),
                        Err(e) => {
                            debug!(error = %e, "client left before the upgrade completed");
                            return Poll::Ready(());
                        }
                    }
                }
                Phase::Relaying { relay, .. } => {
                    let end = ready!(relay.poll(cx));
                    if let PhaseOwned::Relaying { held, .. } =
                        self.as_mut().project_replace(Self::Done)
                    {
                        held.closed(&end.into_report());
                    }
                    return Poll::Ready(());
                }
                Phase::Resuming { task } => {
                    ready!(task.as_mut().poll(cx));
                    self.set(Self::Done);
                    return Poll::Ready(());
                }
                Phase::Done => return Poll::Ready(()),
            }
        }
    }
}

/// The relay phase for the client's socket `client` (with `initial`, bytes it sent past
/// its handshake).
fn start<W>(next: Prepared, client: Stream, initial: Bytes) -> SocketTask<W> {
    let Prepared {
        upstream,
        leftover,
        settings,
        resume,
        held,
    } = next;
    if let Some(resume) = resume {
        // Boxed: a resumable socket's state (the reconnect, a second relay) is allocated
        // only for such sockets, not in every socket's task.
        return SocketTask::Resuming {
            task: Box::pin(resumable(
                held, client, initial, upstream, leftover, settings, resume,
            )),
        };
    }
    let shared = &held.route.0.shared;
    let relay = relay_closing(
        client,
        upstream,
        &initial,
        &leftover,
        settings,
        drain_or_removed(shared, held.backend()),
        held.movable
            .as_ref()
            .map(|m| Signal::new(m.token().clone(), Duration::ZERO)),
    );
    SocketTask::Relaying { relay, held }
}

/// Resume mode: relays, and when the backend goes away (or wsgate moves the socket)
/// re-attaches the client to another backend, until the socket ends.
async fn resumable(
    mut held: Held,
    client: Stream,
    initial: Bytes,
    stream: Stream,
    leftover: Vec<u8>,
    mut settings: Arc<RelaySettings>,
    resume: Resume,
) {
    let (resume, req, key, upstream) = *resume;
    let route = Arc::clone(&held.route.0);
    let mut end = relay_resumable(
        client,
        stream,
        &initial,
        &leftover,
        &*settings,
        drain_signal(&route.shared),
        move_signal(held.backend(), held.movable.as_ref()),
    )
    .await;
    let report = loop {
        let mut detached = match end {
            RelayEnd::Closed(report) => break report,
            RelayEnd::BackendGone(d) => d,
        };
        drop(held.movable.take());
        if route.shared.drain.is_cancelled() {
            break detached
                .close(1001, "going away", settings.close_timeout)
                .await;
        }
        let gone = held.backend().clone();
        let Some((next, stream, leftover)) = route
            .connector
            .reopen(&upstream, key.as_deref(), &gone, &req)
            .await
        else {
            info!(
                planned = detached.planned,
                "resume failed: no backend took the session"
            );
            break detached
                .close(1012, "backend went away", settings.close_timeout)
                .await;
        };
        info!(from = %gone.url(), to = %next.url(), planned = detached.planned, "session resumed on another backend");
        held.on_backend = next.track();
        held.movable = route.connector.rebalance().then(|| next.register_movable());
        if let Some(text) = &resume.notice {
            if !write_notice(detached.client_mut(), text, settings.close_timeout).await {
                break RelayReport {
                    closed_by: "client",
                    ..RelayReport::default()
                };
            }
        }
        // Timers keep counting from the first upgrade.
        let s = Arc::make_mut(&mut settings);
        s.max_lifetime = s
            .max_lifetime
            .map(|l| l.saturating_sub(held.started.elapsed()));
        end = relay_resumed(
            detached,
            stream,
            &leftover,
            &*settings,
            drain_signal(&route.shared),
            move_signal(held.backend(), held.movable.as_ref()),
        )
        .await;
    };
    drop(route);
    held.closed(&report);
}

#[cfg(test)]
mod tests {
    use std::mem::size_of;

    use tokio_util::task::task_tracker::TrackedFuture;
    use tracing::instrument::Instrumented;

    use super::*;
    use crate::upgrade::PendingUpgrade;

    /// The future `proxy` spawns for a socket whose upgrade future is `W`.
    fn spawned_size<W>(_: &W) -> usize {
        size_of::<TrackedFuture<Instrumented<SocketTask<W>>>>()
    }

    /// An idle socket costs mostly its task (BENCHMARKS.md, "Memory per idle
    /// connection"), which jemalloc rounds to a size class: 1,024, 1,280, 1,536 B.
    /// tokio's task cell adds 104 B to this future (header 32, scheduler and id 16,
    /// trailer 48, the stage's tag 8) and is 128-byte aligned, so a future of at most
    /// 920 B keeps the cell at 1,024 B; at 921 it takes the 1,280 class, 256 B more per
    /// socket (244 MiB at a million). Debug build, where futures are largest; raising
    /// this is a decision about memory per socket, not a test to silence.
    #[test]
    fn idle_socket_task_fits_the_1024_byte_size_class() {
        let (_tx, rx) = tokio::sync::oneshot::channel();
        let upgrade = PendingUpgrade::Fast(rx).wait();
        let size = spawned_size(&upgrade);
        eprintln!(
            "spawned task future: {size} B (SocketTask {} B, Held {} B)",
            size_of::<SocketTask<()>>(),
            size_of::<Held>()
        );
        assert!(
            size <= 920,
            "the socket's task future is {size} B: its cell leaves the 1,024 B class"
        );
    }
}
