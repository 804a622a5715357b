//! [`Sticky`], the service made by [`StickyLayer`](super::StickyLayer).

use std::task::{Context, Poll};

use axum::body::Body;
use http::{header, HeaderValue, Request, Response};
use serde_json::Value;
use tower_service::Service;

use super::{future::ResponseFuture, layer::Source};
use crate::{
    client_ip::{ClientIp, PeerAddr},
    upstream::StickyKey,
    VerifiedClaims,
};

/// Inserts the request's [`StickyKey`]; sets the session cookie on the 101 when the
/// cookie source minted a new one.
#[derive(Debug, Clone)]
pub struct Sticky<S> {
    pub(crate) inner: S,
    pub(crate) source: Source,
}

impl<S, B> Service<Request<B>> for Sticky<S>
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
        let mut set_cookie = None;
        let key = match &self.source {
            Source::Cookie {
                name,
                signer,
                secure,
            } => {
                let found = take_cookie(req.headers_mut(), name);
                match found.as_deref().and_then(|v| signer.verify(v)) {
                    Some(id) => Some(StickyKey(id)),
                    None => {
                        let (id, value) = signer.mint();
                        let attrs = if *secure {
                            "; Path=/; HttpOnly; SameSite=Lax; Secure"
                        } else {
                            "; Path=/; HttpOnly; SameSite=Lax"
                        };
                        set_cookie = HeaderValue::from_str(&format!("{name}={value}{attrs}")).ok();
                        Some(StickyKey(id))
                    }
                }
            }
            Source::Claim(c) => req
                .extensions()
                .get::<VerifiedClaims>()
                .and_then(|claims| match claims.get(c) {
                    Some(Value::String(s)) => Some(s.as_bytes().to_vec()),
                    Some(Value::Null) | None => None,
                    Some(other) => Some(other.to_string().into_bytes()),
                })
                .map(StickyKey),
            Source::Header(h) => req
                .headers()
                .get(h)
                .filter(|v| !v.is_empty())
                .map(|v| StickyKey(v.as_bytes().to_vec())),
            Source::ClientIp => req
                .extensions()
                .get::<ClientIp>()
                .map(|c| c.0)
                .or_else(|| req.extensions().get::<PeerAddr>().map(|p| p.0.ip()))
                .map(|ip| StickyKey(ip.to_string().into_bytes())),
            Source::Custom(f) => f.make_key(req.headers(), req.extensions()),
        };
        if let Some(k) = key {
            req.extensions_mut().insert(k);
        }
        ResponseFuture::new(self.inner.call(req), set_cookie)
    }
}

/// Removes cookie `name` from the request (the backend has no use for it) and returns
/// its value.
fn take_cookie(headers: &mut http::HeaderMap, name: &str) -> Option<String> {
    let mut found = None;
    let mut kept: Vec<HeaderValue> = Vec::new();
    let mut changed = false;
    for v in headers.get_all(header::COOKIE) {
        let Ok(s) = v.to_str() else {
            kept.push(v.clone());
            continue;
        };
        let mut rest = Vec::new();
        for pair in s.split(';') {
            match pair.trim().split_once('=') {
                Some((k, val)) if k.trim() == name => {
                    found.get_or_insert_with(|| val.trim().to_string());
                    changed = true;
                }
                _ if !pair.trim().is_empty() => rest.push(pair.trim()),
                _ => {}
            }
        }
        if !rest.is_empty() {
            if let Ok(v) = HeaderValue::from_str(&rest.join("; ")) {
                kept.push(v);
            }
        }
    }
    if changed {
        headers.remove(header::COOKIE);
        for v in kept {
            headers.append(header::COOKIE, v);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sticky_cookie_is_taken_out_and_others_stay() {
        let mut h = http::HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; wsgate_sticky=xyz; b=2"),
        );
        assert_eq!(take_cookie(&mut h, "wsgate_sticky").as_deref(), Some("xyz"));
        assert_eq!(h.get(header::COOKIE).unwrap(), "a=1; b=2");
        let mut h = http::HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("wsgate_sticky=xyz"),
        );
        take_cookie(&mut h, "wsgate_sticky");
        assert!(h.get(header::COOKIE).is_none());
    }
}
