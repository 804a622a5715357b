//! [`UpstreamLayer`]: choose the backend before the handler runs.

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use axum::body::Body;
use http::{Request, Response, StatusCode};
use tower_layer::Layer;
use tower_service::Service;

use super::{backend::Backend, policy::Upstream};
use crate::response_future::{text_response, ResponseFuture};

/// The key a sticky policy hashes (a cookie value, a claim, a header, the client IP).
///
/// Whatever layer derives it inserts it before [`UpstreamLayer`] runs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StickyKey(pub Vec<u8>);

/// The upstream decision, read by the handler that opens the backend socket.
#[derive(Debug, Clone)]
pub struct SelectedUpstream {
    /// The group the route uses.
    pub upstream: Arc<Upstream>,
    /// Available backends in the order to try them (never empty).
    pub candidates: Vec<Arc<Backend>>,
}

/// Chooses the backend for each request and inserts [`SelectedUpstream`].
///
/// When no backend of the group is available it answers `503 Service Unavailable` with
/// the reason, without calling the inner service.
#[derive(Debug, Clone)]
pub struct UpstreamLayer {
    upstream: Arc<Upstream>,
}

impl UpstreamLayer {
    /// Chooses among `upstream`'s backends.
    pub fn new(upstream: Arc<Upstream>) -> Self {
        Self { upstream }
    }
}

impl<S> Layer<S> for UpstreamLayer {
    type Service = UpstreamService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        UpstreamService {
            inner,
            upstream: self.upstream.clone(),
        }
    }
}

/// The service made by [`UpstreamLayer`].
#[derive(Debug, Clone)]
pub struct UpstreamService<S> {
    inner: S,
    upstream: Arc<Upstream>,
}

impl<S, B> Service<Request<B>> for UpstreamService<S>
where
    S: Service<Request<B>, Response = Response<Body>>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let key = req.extensions().get::<StickyKey>().map(|k| k.0.as_slice());
        let candidates = self.upstream.candidates(key);
        if candidates.is_empty() {
            return ResponseFuture::early(text_response(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "no healthy backend in upstream `{}`\n",
                    self.upstream.name()
                ),
            ));
        }
        req.extensions_mut().insert(SelectedUpstream {
            upstream: self.upstream.clone(),
            candidates,
        });
        ResponseFuture::inner(self.inner.call(req))
    }
}
