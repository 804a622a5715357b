//! The response future of [`Sticky`](super::Sticky): adds `Set-Cookie` to the 101.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use axum::body::Body;
use http::{header, HeaderValue, Response, StatusCode};

pin_project_lite::pin_project! {
    /// Polls the inner service, then sets the minted session cookie on a 101 answer.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        set_cookie: Option<HeaderValue>,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(inner: F, set_cookie: Option<HeaderValue>) -> Self {
        Self { inner, set_cookie }
    }
}

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
{
    type Output = Result<Response<Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut resp = match this.inner.poll(cx) {
            Poll::Ready(Ok(r)) => r,
            other => return other,
        };
        // Only a socket that was actually established is worth a session: a refused
        // handshake may be retried with a fresh id at no cost.
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(c) = this.set_cookie.take() {
                resp.headers_mut().append(header::SET_COOKIE, c);
            }
        }
        Poll::Ready(Ok(resp))
    }
}
