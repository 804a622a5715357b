//! The response future of the rate-limit layers.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use axum::body::Body;
use http::Response;

use crate::response_future::ResponseFuture;

type BoxFuture<E> = Pin<Box<dyn Future<Output = Result<Response<Body>, E>> + Send>>;

pin_project_lite::pin_project! {
    /// Response future of [`IpRateLimit`](super::IpRateLimit) and
    /// [`ConnectionLimit`](super::ConnectionLimit).
    ///
    /// A local decision is the shared [`ResponseFuture`] (an early refusal or the inner
    /// service's future, no allocation); a decision that needs a round trip to a shared
    /// store (Redis) is boxed.
    pub struct LimitFuture<F, E> {
        #[pin]
        kind: Kind<F, E>,
    }
}

pin_project_lite::pin_project! {
    #[project = KindProj]
    enum Kind<F, E> {
        Local { #[pin] future: ResponseFuture<F> },
        Remote { future: BoxFuture<E> },
    }
}

impl<F, E> LimitFuture<F, E> {
    pub(crate) fn local(future: ResponseFuture<F>) -> Self {
        Self {
            kind: Kind::Local { future },
        }
    }

    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn remote(future: BoxFuture<E>) -> Self {
        Self {
            kind: Kind::Remote { future },
        }
    }
}

impl<F, E> Future for LimitFuture<F, E>
where
    F: Future<Output = Result<Response<Body>, E>>,
{
    type Output = Result<Response<Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Local { future } => future.poll(cx),
            KindProj::Remote { future } => future.as_mut().poll(cx),
        }
    }
}
