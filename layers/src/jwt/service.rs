//! [`JwtAuth`]: the service made by [`JwtAuthLayer`](super::JwtAuthLayer).

use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
};

use axum::{body::Body, response::IntoResponse};
use http::{HeaderValue, Request, Response};
use tower_service::Service;

use super::{
    cache::token_digest,
    claims::TokenProtocolMarker,
    future::JwtFuture,
    layer::Shared,
    rejection::JwtRejection,
    verify::{inspect, verify, Outcome},
};
use crate::response_future::ResponseFuture;

/// Verifies the request's JWT, strips it, and calls the inner service only for a valid
/// token. Refusals are responses ([`JwtRejection`]); `Error = S::Error`.
#[derive(Clone)]
pub struct JwtAuth<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> JwtAuth<S> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>) -> Self {
        Self { inner, shared }
    }
}

impl<S: fmt::Debug> fmt::Debug for JwtAuth<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtAuth")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

fn refuse<F>(r: JwtRejection) -> ResponseFuture<F> {
    // Only the reason: never the token, never a client-chosen kid.
    tracing::debug!(reason = r.reason(), "jwt: handshake refused");
    ResponseFuture::early(r.into_response())
}

impl<S, B> Service<Request<B>> for JwtAuth<S>
where
    S: Service<Request<B>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = ResponseFuture<JwtFuture<S::Future, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let shared = self.shared.clone();
        let taken = match shared.sources.take(&mut req) {
            Ok(t) => t,
            Err(r) => return refuse(r),
        };
        let marker = taken
            .marker
            .as_deref()
            .and_then(|m| HeaderValue::from_str(m).ok());
        if let Some(m) = taken.marker {
            req.extensions_mut().insert(TokenProtocolMarker(m));
        }
        let Some(token) = taken.token else {
            return refuse(JwtRejection::Missing);
        };
        let table = shared.keys.table();
        // Oversized tokens are refused by `inspect` without being hashed.
        let digest = (shared.cache.enabled() && token.len() <= shared.policy.max_token_size)
            .then(|| token_digest(&token));
        if let Some(claims) = digest
            .as_ref()
            .and_then(|d| shared.cached(d, table.generation))
        {
            // Same bytes, same layer, same keys, `exp` re-checked: the verdict stands.
            shared.admit(&mut req, claims);
            return ResponseFuture::inner(JwtFuture::inner(self.inner.call(req), marker));
        }
        let header = match inspect(&token, shared.policy.max_token_size) {
            Ok(h) => h,
            Err(r) => return refuse(r),
        };
        let outcome = verify(&token, &header, &shared.policy, &table);
        match outcome {
            Outcome::Verified(v) => {
                let claims = shared.remember(digest, table.generation, v);
                shared.admit(&mut req, claims);
                ResponseFuture::inner(JwtFuture::inner(self.inner.call(req), marker))
            }
            Outcome::Rejected(r) => refuse(r),
            Outcome::UnknownKid if !shared.keys.has_remote() => refuse(JwtRejection::UnknownKey),
            Outcome::UnknownKid => {
                // The key may have rotated: re-fetch (rate-limited) and look again. The
                // inner service that was polled ready goes into the future; a clone takes
                // its place (tower's usual pattern).
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                let deferred = async move {
                    shared.keys.refetch_for_unknown_kid().await;
                    let table = shared.keys.table();
                    let outcome = verify(&token, &header, &shared.policy, &table);
                    let r = match outcome {
                        Outcome::Verified(v) => {
                            let claims = shared.remember(digest, table.generation, v);
                            drop(table);
                            shared.admit(&mut req, claims);
                            return inner.call(req).await;
                        }
                        Outcome::Rejected(r) => r,
                        Outcome::UnknownKid => JwtRejection::UnknownKey,
                    };
                    tracing::debug!(reason = r.reason(), "jwt: handshake refused");
                    Ok(r.into_response())
                };
                ResponseFuture::inner(JwtFuture::deferred(Box::pin(deferred), marker))
            }
        }
    }
}
