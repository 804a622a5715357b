//! The future of [`JwtAuth`](super::JwtAuth) once a request is admitted (or must wait for
//! a JWKS re-fetch).

use std::{
    future::Future,
    pin::Pin,
    task::{ready, Context, Poll},
};

use axum::body::Body;
use http::{header::SEC_WEBSOCKET_PROTOCOL, HeaderValue, Response, StatusCode};

/// A boxed, sendable response future.
pub(crate) type BoxResponseFuture<E> =
    Pin<Box<dyn Future<Output = Result<Response<Body>, E>> + Send + 'static>>;

pin_project_lite::pin_project! {
    /// Polls the inner service (directly, or after a JWKS re-fetch for an unknown `kid`)
    /// and echoes the [`TokenProtocolMarker`](super::TokenProtocolMarker) in a `101` that
    /// chose no subprotocol.
    pub struct JwtFuture<F, E> {
        #[pin]
        kind: Kind<F, E>,
        marker: Option<HeaderValue>,
    }
}

pin_project_lite::pin_project! {
    #[project = KindProj]
    enum Kind<F, E> {
        Inner { #[pin] future: F },
        Deferred { future: BoxResponseFuture<E> },
    }
}

impl<F, E> JwtFuture<F, E> {
    pub(crate) fn inner(future: F, marker: Option<HeaderValue>) -> Self {
        Self {
            kind: Kind::Inner { future },
            marker,
        }
    }

    pub(crate) fn deferred(future: BoxResponseFuture<E>, marker: Option<HeaderValue>) -> Self {
        Self {
            kind: Kind::Deferred { future },
            marker,
        }
    }
}

impl<F, E> Future for JwtFuture<F, E>
where
    F: Future<Output = Result<Response<Body>, E>>,
{
    type Output = Result<Response<Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = match this.kind.project() {
            KindProj::Inner { future } => ready!(future.poll(cx)),
            KindProj::Deferred { future } => ready!(future.as_mut().poll(cx)),
        };
        Poll::Ready(out.map(|mut res| {
            if res.status() == StatusCode::SWITCHING_PROTOCOLS
                && !res.headers().contains_key(SEC_WEBSOCKET_PROTOCOL)
            {
                if let Some(m) = this.marker.take() {
                    res.headers_mut().insert(SEC_WEBSOCKET_PROTOCOL, m);
                }
            }
            res
        }))
    }
}
