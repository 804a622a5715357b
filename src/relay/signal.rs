//! What tells a relay to close or move a socket, at the least memory per socket.
//!
//! Every open socket waits, for its whole life, on the proxy's drain and on its backend's
//! removal (and, with rebalancing, on being picked to move). Written as `async` blocks
//! joined with `select!`, those waits took ~1 KiB of every socket's task: each block
//! keeps its captured futures beside the copies `select!` and `pin!` move them into, and
//! the drain's jitter timer (a `Sleep`) was reserved from the start. A [`Signal`] is
//! only its tokens (a few words) until the relay turns it into a [`SignalFuture`]
//! inside its own task, where it is stored once: one `WaitForCancellationFutureOwned`
//! per token, and a jitter timer allocated only once the drain has started.

use std::{
    future::{Future, IntoFuture},
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    task::{ready, Context, Poll, Waker},
    time::Duration,
};

use futures_util::task::{waker_ref, ArcWake, AtomicWaker, WakerRef};
use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// Resolves when either of its tokens is cancelled; after the first one, only once a
/// random part of `jitter` has passed too (a drain spread over time, so thousands of
/// clients do not reconnect at once).
#[derive(Debug, Clone)]
pub(crate) struct Signal {
    first: CancellationToken,
    jitter: Duration,
    second: Option<CancellationToken>,
}

impl Signal {
    /// Resolves when `token` is cancelled, after a random part of `jitter`.
    pub(crate) fn new(token: CancellationToken, jitter: Duration) -> Self {
        Self {
            first: token,
            jitter,
            second: None,
        }
    }

    /// Also resolves (at once) when `token` is cancelled.
    pub(crate) fn or(mut self, token: Option<CancellationToken>) -> Self {
        self.second = token;
        self
    }
}

impl IntoFuture for Signal {
    type Output = ();
    type IntoFuture = SignalFuture;

    fn into_future(self) -> SignalFuture {
        SignalFuture {
            first: self.first.cancelled_owned(),
            second: self.second.map(CancellationToken::cancelled_owned),
            jitter: self.jitter,
            delay: None,
        }
    }
}

pin_project! {
    /// The waiting side of a [`Signal`].
    #[derive(Debug)]
    pub(crate) struct SignalFuture {
        #[pin]
        first: WaitForCancellationFutureOwned,
        #[pin]
        second: Option<WaitForCancellationFutureOwned>,
        jitter: Duration,
        // Boxed: a timer is ~100 bytes that only a draining socket needs.
        delay: Option<Pin<Box<Sleep>>>,
    }
}

impl Future for SignalFuture {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        if let Some(second) = this.second.as_mut().as_pin_mut() {
            if second.poll(cx).is_ready() {
                return Poll::Ready(());
            }
        }
        if this.delay.is_none() {
            ready!(this.first.poll(cx));
            if this.jitter.is_zero() {
                return Poll::Ready(());
            }
            let wait = this.jitter.mul_f64(fastrand::f64());
            *this.delay = Some(Box::pin(tokio::time::sleep(wait)));
        }
        match this.delay.as_mut() {
            Some(delay) => delay.as_mut().poll(cx),
            None => Poll::Ready(()),
        }
    }
}

/// Lets a relay look at its signals only when one of them woke its task.
///
/// A waiting [`CancellationToken`] takes two mutexes each time it is polled (the token's
/// own state and its `Notify`'s list of waiters), and the drain token is one for the whole
/// process: polled on every wake-up of every socket, it put a lock shared by all worker
/// threads on the relay's hot path. The relay polls its signals with this waker instead,
/// which records that a signal fired before it wakes the task, so a wake-up for I/O costs
/// an atomic swap and no lock. One small allocation per socket.
#[derive(Clone)]
pub(crate) struct SignalWaker(Arc<Fired>);

struct Fired {
    fired: AtomicBool,
    task: AtomicWaker,
}

impl ArcWake for Fired {
    fn wake_by_ref(arc_self: &Arc<Self>) {
        // Set before the wake: the task that wakes must see it.
        arc_self.fired.store(true, Ordering::Release);
        arc_self.task.wake();
    }
}

impl SignalWaker {
    /// Starts fired, so that the first look polls (and so registers) every signal.
    pub(crate) fn new() -> Self {
        Self(Arc::new(Fired {
            fired: AtomicBool::new(true),
            task: AtomicWaker::new(),
        }))
    }

    /// Whether a signal fired since the last look. `task` is woken by the next one.
    pub(crate) fn take(&self, task: &Waker) -> bool {
        // Registered first: a signal firing after the swap then wakes this task.
        self.0.task.register(task);
        self.0.fired.swap(false, Ordering::AcqRel)
    }

    /// Looks again at the next round: a signal resolved before the others were polled,
    /// and they may have fired too.
    pub(crate) fn again(&self) {
        self.0.fired.store(true, Ordering::Relaxed);
    }

    /// The waker to poll the signals with.
    pub(crate) fn waker(&self) -> WakerRef<'_> {
        waker_ref(&self.0)
    }
}

impl std::fmt::Debug for SignalWaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignalWaker")
            .field("fired", &self.0.fired.load(Ordering::Relaxed))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;

    use super::*;

    #[tokio::test]
    async fn resolves_on_either_token() {
        let (a, b) = (CancellationToken::new(), CancellationToken::new());
        let mut f = std::pin::pin!(Signal::new(a.clone(), Duration::ZERO)
            .or(Some(b.clone()))
            .into_future());
        assert!(f.as_mut().now_or_never().is_none());
        b.cancel();
        assert!(f.as_mut().now_or_never().is_some());

        let mut f = std::pin::pin!(Signal::new(a.clone(), Duration::ZERO).into_future());
        a.cancel();
        assert!(f.as_mut().now_or_never().is_some());
    }

    #[tokio::test]
    async fn drain_waits_for_its_jitter_and_removal_ends_the_wait() {
        let (drain, removed) = (CancellationToken::new(), CancellationToken::new());
        let signal =
            Signal::new(drain.clone(), Duration::from_secs(3600)).or(Some(removed.clone()));
        let mut f = std::pin::pin!(signal.into_future());
        drain.cancel();
        // A random part of an hour: still waiting (the timer rounds up to 1 ms at least).
        assert!(f.as_mut().now_or_never().is_none());
        assert!(
            f.delay.is_some(),
            "the jitter timer exists once the drain started"
        );
        removed.cancel();
        assert!(f.as_mut().now_or_never().is_some());
    }

    #[tokio::test]
    async fn no_timer_before_the_drain() {
        let drain = CancellationToken::new();
        let mut f = std::pin::pin!(Signal::new(drain, Duration::from_secs(1)).into_future());
        assert!(f.as_mut().now_or_never().is_none());
        assert!(f.delay.is_none());
    }

    #[test]
    fn a_signal_is_a_few_words_until_it_waits() {
        assert!(std::mem::size_of::<Signal>() <= 32);
    }
}
