//! The response future of [`CountRefusals`](super::CountRefusals).

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
    time::Instant,
};

use axum::{body::Body, response::Response};
use http::StatusCode;

use super::{layer::RouteCounter, Counted};
use crate::metrics::Outcome;
use wsgate_layers::ratelimit::LimitRejection;

pin_project_lite::pin_project! {
    /// Polls the inner service, then counts an answer the handler did not mark
    /// [`Counted`](super::Counted).
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        counter: Arc<RouteCounter>,
        started: Instant,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(inner: F, counter: Arc<RouteCounter>, started: Instant) -> Self {
        Self {
            inner,
            counter,
            started,
        }
    }
}

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
{
    type Output = Result<Response<Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let resp = ready!(this.inner.poll(cx))?;
        if resp.extensions().get::<Counted>().is_none() {
            let status = resp.status();
            let outcome = resp
                .extensions()
                .get::<LimitRejection>()
                .map_or_else(|| refusal_outcome(status), limit_outcome);
            let metrics = &this.counter.metrics;
            metrics.handshake(outcome, this.started.elapsed());
            metrics.rejected(&this.counter.route, status.as_u16(), outcome);
        }
        Poll::Ready(Ok(resp))
    }
}

/// The outcome of a rate-limit layer's refusal, which says what it is: a connection
/// cap's 429 is not a rate limit's, nor an overload's 503 a missing backend's.
fn limit_outcome(why: &LimitRejection) -> Outcome {
    match why {
        LimitRejection::RateLimited { .. } => Outcome::RateLimited,
        LimitRejection::Denied => Outcome::Forbidden,
        LimitRejection::TooManyConnections(_) => Outcome::TooManyConnections,
        LimitRejection::Overloaded | LimitRejection::StoreUnavailable => Outcome::Overloaded,
        _ => refusal_outcome(why.status()),
    }
}

/// The outcome any other layer's refusal stands for, by its status.
fn refusal_outcome(status: StatusCode) -> Outcome {
    match status {
        StatusCode::UNAUTHORIZED => Outcome::AuthFailed,
        StatusCode::FORBIDDEN => Outcome::Forbidden,
        StatusCode::TOO_MANY_REQUESTS => Outcome::RateLimited,
        StatusCode::SERVICE_UNAVAILABLE => Outcome::NoBackend,
        _ => Outcome::BadRequest,
    }
}
