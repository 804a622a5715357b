//! A cap on handshakes in progress: [`HandshakeLimitLayer`].

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use axum::response::IntoResponse;
use http::Request;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower_layer::Layer;
use tower_service::Service;

use super::rejection::LimitRejection;
use crate::response_future::ResponseFuture;

/// Caps the handshakes being processed at once; the excess is answered 503 at once.
///
/// A handshake holds a permit from the moment it reaches this layer until the inner
/// service has answered (the `101`, or a refusal); the socket's life afterwards is not
/// counted (that is [`ConnectionLimitLayer`](super::ConnectionLimitLayer)'s job). Nothing
/// waits for a permit: a full server refuses rather than queueing, so a flood cannot
/// build an unbounded backlog of half-done handshakes (JWT checks, JWKS fetches, backend
/// connects).
///
/// Put it outside the expensive layers and inside [`IpRateLimitLayer`](super::IpRateLimitLayer),
/// so a single noisy client is refused 429 before it can take permits from everyone.
///
/// tower's own `ConcurrencyLimitLayer` waits for a permit (it applies backpressure
/// through `poll_ready`), which under hyper means queueing requests: pair it with
/// `LoadShedLayer` to refuse instead, at the cost of an *error* (not a response) that
/// axum then needs a `HandleErrorLayer` for. This layer answers the 503 itself.
#[derive(Clone)]
pub struct HandshakeLimitLayer {
    permits: Arc<Semaphore>,
    max: usize,
}

impl fmt::Debug for HandshakeLimitLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandshakeLimitLayer")
            .field("max", &self.max)
            .field("available", &self.permits.available_permits())
            .finish()
    }
}

impl HandshakeLimitLayer {
    /// At most `max` handshakes in progress at once (clamped to tokio's semaphore limit).
    pub fn new(max: usize) -> Self {
        let max = max.min(Semaphore::MAX_PERMITS);
        Self {
            permits: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// Handshakes in progress now.
    pub fn in_progress(&self) -> usize {
        self.max - self.permits.available_permits()
    }
}

impl<S> Layer<S> for HandshakeLimitLayer {
    type Service = HandshakeLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HandshakeLimit {
            inner,
            permits: self.permits.clone(),
        }
    }
}

/// The service made by [`HandshakeLimitLayer`].
#[derive(Clone)]
pub struct HandshakeLimit<S> {
    inner: S,
    permits: Arc<Semaphore>,
}

impl<S: fmt::Debug> fmt::Debug for HandshakeLimit<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandshakeLimit")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, B> Service<Request<B>> for HandshakeLimit<S>
where
    S: Service<Request<B>, Response = http::Response<axum::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<PermitFuture<S::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => ResponseFuture::inner(PermitFuture {
                future: self.inner.call(req),
                _permit: permit,
            }),
            Err(_) => {
                tracing::debug!("handshake refused: too many in progress");
                ResponseFuture::early(LimitRejection::Overloaded.into_response())
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// The inner service's future, holding a handshake permit until it completes (or is
    /// dropped because the client went away).
    pub struct PermitFuture<F> {
        #[pin]
        future: F,
        _permit: OwnedSemaphorePermit,
    }
}

impl<F: Future> Future for PermitFuture<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().future.poll(cx)
    }
}
