//! [`Sticky`], the service made by [`StickyLayer`](super::StickyLayer).

use std::{
    net::IpAddr,
    sync::Arc,
    task::{Context, Poll},
};

use axum::body::Body;
use http::{HeaderValue, Request, Response};
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
    pub(crate) source: Arc<Source>,
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
        let key = match &*self.source {
            Source::Cookie {
                name,
                signer,
                secure,
            } => {
                let found = take_cookie(req.headers_mut(), name);
                match found.as_deref().and_then(|v| signer.verify(v)) {
                    Some(id) => Some(StickyKey(id)),
                    None => {
                        let (id, cookie) = signer.mint_cookie(name, *secure);
                        // From the `String` itself (the header value takes its buffer);
                        // ASCII only, as `HeaderValue::from_str` would insist.
                        set_cookie = cookie
                            .is_ascii()
                            .then(|| HeaderValue::try_from(cookie).ok())
                            .flatten();
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
                .map(|ip| StickyKey(ip_text(ip))),
            Source::Custom(f) => f.make_key(req.headers(), req.extensions()),
        };
        if let Some(k) = key {
            req.extensions_mut().insert(k);
        }
        ResponseFuture::new(self.inner.call(req), set_cookie)
    }
}

/// The client IP as text (the key every instance hashes, so its form is fixed), written
/// into one buffer of the longest size rather than grown piece by piece.
fn ip_text(ip: IpAddr) -> Vec<u8> {
    use std::io::Write;
    // "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255" is the longest form.
    let mut text = Vec::with_capacity(45);
    // Writing into a Vec cannot fail.
    let _ = write!(text, "{ip}");
    text
}

/// Removes cookie `name` from the request (the backend has no use for it) and returns
/// its value, if it is text (a signed value always is).
fn take_cookie(headers: &mut http::HeaderMap, name: &str) -> Option<String> {
    crate::cookie_header::take_cookie(headers, name).and_then(|v| String::from_utf8(v).ok())
}

#[cfg(test)]
mod tests {
    use http::header;

    use super::*;

    #[test]
    fn client_ip_keys_are_the_addresses_display_form() {
        for ip in ["192.0.2.7", "2001:db8::1", "::ffff:192.0.2.7", "::"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_text(ip), ip.to_string().into_bytes());
        }
    }

    #[test]
    fn sticky_cookie_next_to_a_non_ascii_cookie_is_still_taken_out() {
        let mut h = http::HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_bytes("wsgate_sticky=abc; name=caf\u{e9}".as_bytes()).unwrap(),
        );
        assert_eq!(take_cookie(&mut h, "wsgate_sticky").as_deref(), Some("abc"));
        let left = h.get(header::COOKIE).unwrap().as_bytes();
        assert_eq!(left, "name=caf\u{e9}".as_bytes());
    }

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
