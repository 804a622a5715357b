//! The future every wsgate layer returns: an early answer, or the inner service's.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use axum::body::Body;
use http::Response;

pin_project_lite::pin_project! {
    /// Response future of the wsgate layers.
    ///
    /// A layer that refuses a request answers at once (`401`, `429`, `503` …) without
    /// calling the inner service; otherwise it polls the inner service's future.
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project_lite::pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Early { response: Option<Response<Body>> },
        Inner { #[pin] future: F },
    }
}

impl<F> ResponseFuture<F> {
    /// Answer with `response` without calling the inner service.
    pub fn early(response: Response<Body>) -> Self {
        Self {
            kind: Kind::Early {
                response: Some(response),
            },
        }
    }

    /// Wait for the inner service.
    pub fn inner(future: F) -> Self {
        Self {
            kind: Kind::Inner { future },
        }
    }
}

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
{
    type Output = Result<Response<Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Early { response } => {
                // Polled again after Ready is a caller bug; answer an empty 500 rather than panic.
                Poll::Ready(Ok(response.take().unwrap_or_else(|| {
                    let mut r = Response::new(Body::empty());
                    *r.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
                    r
                })))
            }
            KindProj::Inner { future } => future.poll(cx),
        }
    }
}

/// A plain-text response with `status`, as every layer's refusal is written.
pub(crate) fn text_response(status: http::StatusCode, msg: impl Into<String>) -> Response<Body> {
    let mut r = Response::new(Body::from(msg.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
