//! [`CountRefusals`], the service made by [`CountRefusalsLayer`](super::CountRefusalsLayer).

use std::{
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use axum::{body::Body, extract::Request, response::Response};
use tower::Service;

use super::{future::ResponseFuture, layer::RouteCounter};

/// Calls the inner service and counts its answer unless the handler already did.
#[derive(Debug, Clone)]
pub struct CountRefusals<S> {
    inner: S,
    counter: Arc<RouteCounter>,
}

impl<S> CountRefusals<S> {
    pub(crate) fn new(inner: S, counter: Arc<RouteCounter>) -> Self {
        Self { inner, counter }
    }
}

impl<S, B> Service<Request<B>> for CountRefusals<S>
where
    S: Service<Request<B>, Response = Response<Body>>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // Started before the inner layers run: a refusal's latency includes their work.
        let started = Instant::now();
        ResponseFuture::new(self.inner.call(req), self.counter.clone(), started)
    }
}
