//! Request hygiene: what a request line must look like before any route sees it.
//!
//! Paths are checked, not rewritten: a request whose path only means something after
//! normalisation (dot segments, encoded slashes or dots, doubled slashes) is refused
//! with 400, so the path wsgate routes on is byte for byte the path the backend gets and
//! no decoding difference between wsgate and a backend can reach a route it should not.

use std::task::{Context, Poll};

use axum::body::Body;
use http::{Request, Response, StatusCode};
use tower::{Layer, Service};
use wsgate_layers::response_future::ResponseFuture;

use crate::error::text;

/// Why a request line was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// `..` or `.` segments, raw or percent-encoded.
    #[error("path has dot segments")]
    DotSegment,
    /// `%2f`, `%5c` (encoded slashes) or a raw backslash.
    #[error("path has an encoded slash or a backslash")]
    EncodedSlash,
    /// `//`: an empty segment that some servers collapse and others do not.
    #[error("path has an empty segment")]
    EmptySegment,
    /// A `%` not followed by two hex digits.
    #[error("invalid percent-encoding")]
    BadPercent,
    /// Percent-decoded bytes that are not UTF-8.
    #[error("path is not UTF-8 once decoded")]
    NotUtf8,
    /// A control character (CR, LF, NUL …), raw or encoded.
    #[error("path has a control character")]
    Control,
}

/// Checks a path (without the query).
pub fn check_path(path: &str) -> Result<(), PathError> {
    if path.contains("//") {
        return Err(PathError::EmptySegment);
    }
    if path.contains('\\') {
        return Err(PathError::EncodedSlash);
    }
    if !path.contains('%') {
        // Nothing encoded (the usual case): the raw path is the decoded path, already
        // UTF-8, with no encoded slash; checked in place, without a decoded copy.
        return check_decoded(path);
    }
    let decoded = percent_decode(path.as_bytes())?;
    if has_control(&decoded) {
        return Err(PathError::Control);
    }
    let decoded = std::str::from_utf8(&decoded).map_err(|_| PathError::NotUtf8)?;
    let encoded_slash = path
        .as_bytes()
        .windows(3)
        .any(|w| w.eq_ignore_ascii_case(b"%2f") || w.eq_ignore_ascii_case(b"%5c"));
    if encoded_slash {
        return Err(PathError::EncodedSlash);
    }
    check_decoded(decoded)
}

/// The checks on a decoded path: no control characters, no dot segments.
fn check_decoded(decoded: &str) -> Result<(), PathError> {
    if has_control(decoded.as_bytes()) {
        return Err(PathError::Control);
    }
    if decoded.split('/').any(|seg| seg == "." || seg == "..") {
        return Err(PathError::DotSegment);
    }
    Ok(())
}

fn has_control(bytes: &[u8]) -> bool {
    bytes.iter().any(|b| *b < 0x20 || *b == 0x7f)
}

/// Checks a query string: valid percent-encoding, no control characters.
pub fn check_query(query: &str) -> Result<(), PathError> {
    // `+` means a space in a query; neither is a control character, so it needs no
    // translating for this check.
    if !query.contains('%') {
        return if has_control(query.as_bytes()) {
            Err(PathError::Control)
        } else {
            Ok(())
        };
    }
    if has_control(&percent_decode(query.as_bytes())?) {
        return Err(PathError::Control);
    }
    Ok(())
}

fn percent_decode(s: &[u8]) -> Result<Vec<u8>, PathError> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' {
            let hex = |b: u8| (b as char).to_digit(16);
            match (
                s.get(i + 1).copied().and_then(hex),
                s.get(i + 2).copied().and_then(hex),
            ) {
                (Some(h), Some(l)) => out.push((h * 16 + l) as u8),
                _ => return Err(PathError::BadPercent),
            }
            i += 3;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// Request shapes used to smuggle a second request past a proxy: a body framed two ways,
/// or two lengths. hyper tolerates some of them (RFC 9112 lets a server pick chunked);
/// a proxy must not, because the next hop may pick the other framing.
pub fn check_framing(headers: &http::HeaderMap) -> Result<(), &'static str> {
    let lengths = headers.get_all(http::header::CONTENT_LENGTH).iter().count();
    let chunked = headers.contains_key(http::header::TRANSFER_ENCODING);
    if lengths > 0 && chunked {
        return Err("both Content-Length and Transfer-Encoding");
    }
    if lengths > 1 {
        return Err("more than one Content-Length");
    }
    Ok(())
}

/// Refuses bad request lines and smuggling shapes with `400` (and `Connection: close`)
/// before the rest of a route's stack runs; every route and the not-found answer sit
/// behind it.
///
/// ```
/// use std::convert::Infallible;
/// use axum::{body::Body, extract::Request, response::Response};
/// use tower::{service_fn, ServiceBuilder};
/// use wsgate::hygiene::CheckRequestLayer;
///
/// let route = ServiceBuilder::new()
///     .layer(CheckRequestLayer)
///     .service(service_fn(|_: Request| async {
///         Ok::<_, Infallible>(Response::new(Body::empty()))
///     }));
/// # let _ = route;
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct CheckRequestLayer;

impl<S> Layer<S> for CheckRequestLayer {
    type Service = CheckRequest<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CheckRequest { inner }
    }
}

/// The service made by [`CheckRequestLayer`].
#[derive(Debug, Clone)]
pub struct CheckRequest<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for CheckRequest<S>
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
        match check_request(&req) {
            Ok(()) => ResponseFuture::inner(self.inner.call(req)),
            Err(why) => ResponseFuture::early(bad_request(&why)),
        }
    }
}

/// The request line and framing checks; the error says what is wrong.
fn check_request<B>(req: &Request<B>) -> Result<(), String> {
    let uri = req.uri();
    check_path(uri.path())
        .and_then(|()| uri.query().map_or(Ok(()), check_query))
        .map_err(|e| e.to_string())
        .and_then(|()| check_framing(req.headers()).map_err(str::to_string))
}

/// The `400` for a request that failed [`check_request`].
fn bad_request(why: &str) -> Response<Body> {
    let mut resp = text(StatusCode::BAD_REQUEST, format!("bad request: {why}\n"));
    // The connection's framing is in doubt: do not read another request from it.
    resp.headers_mut().insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
    resp
}

/// Per-route query rules (`[route.query]`).
#[derive(Debug, Clone, Default)]
pub struct QueryRules {
    /// Only these parameters may appear (empty: any).
    pub allow: Vec<String>,
    /// These parameters are refused.
    pub deny: Vec<String>,
    /// These parameters are removed before the request goes to the backend.
    pub strip: Vec<String>,
    /// Longest value (bytes, as sent) accepted.
    pub max_value_len: Option<usize>,
}

impl QueryRules {
    /// Checks `query` and returns it with the stripped parameters removed (`None`: empty).
    pub fn apply(&self, query: &str) -> Result<Option<String>, String> {
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (raw_name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let name = percent_decode(raw_name.as_bytes())
                .ok()
                .and_then(|n| String::from_utf8(n).ok())
                .ok_or_else(|| "bad query parameter name".to_string())?;
            if self.deny.contains(&name) {
                return Err(format!("query parameter `{name}` is not allowed"));
            }
            if !self.allow.is_empty() && !self.allow.contains(&name) {
                return Err(format!("query parameter `{name}` is not allowed"));
            }
            if self.max_value_len.is_some_and(|m| value.len() > m) {
                return Err(format!("query parameter `{name}` is too long"));
            }
            if !self.strip.contains(&name) {
                kept.push(pair);
            }
        }
        Ok((!kept.is_empty()).then(|| kept.join("&")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_paths_pass() {
        for p in [
            "/",
            "/ws",
            "/chat/room-1",
            "/a/b%20c",
            "/caf%C3%A9",
            "/a.b/c..d",
        ] {
            assert_eq!(check_path(p), Ok(()), "{p}");
        }
    }

    #[test]
    fn traversal_and_encodings_are_refused() {
        let cases = [
            ("/ws/../admin", PathError::DotSegment),
            ("/ws/%2e%2e/admin", PathError::DotSegment),
            ("/ws/%2E./admin", PathError::DotSegment),
            ("/ws/./x", PathError::DotSegment),
            ("/ws/..", PathError::DotSegment),
            ("/ws%2fadmin", PathError::EncodedSlash),
            ("/ws%5Cadmin", PathError::EncodedSlash),
            ("/ws\\admin", PathError::EncodedSlash),
            ("//ws", PathError::EmptySegment),
            ("/ws%zz", PathError::BadPercent),
            ("/ws%4", PathError::BadPercent),
            ("/ws%0d%0aSet-Cookie:x", PathError::Control),
            ("/ws%00", PathError::Control),
            ("/ws%ff", PathError::NotUtf8),
            // Nothing percent-encoded: checked in place, same verdicts.
            ("/ws/\u{1}x", PathError::Control),
            ("/ws/\u{7f}", PathError::Control),
            ("/a/./b", PathError::DotSegment),
            ("/a/%2F", PathError::EncodedSlash),
        ];
        for (p, e) in cases {
            assert_eq!(check_path(p), Err(e), "{p}");
        }
    }

    #[test]
    fn query_rules_filter_and_strip() {
        let rules = QueryRules {
            allow: vec![],
            deny: vec!["debug".into()],
            strip: vec!["access_token".into()],
            max_value_len: Some(8),
        };
        assert_eq!(
            rules.apply("a=1&access_token=x&b=2"),
            Ok(Some("a=1&b=2".into()))
        );
        assert_eq!(rules.apply("access_token=x"), Ok(None));
        assert!(rules.apply("debug=1").is_err());
        assert!(rules.apply("a=123456789").is_err());
        let only = QueryRules {
            allow: vec!["room".into()],
            ..QueryRules::default()
        };
        assert!(only.apply("room=1").is_ok());
        assert!(only.apply("room=1&x=2").is_err());
        assert!(check_query("a=%zz").is_err());
        assert!(check_query("a=%0a").is_err());
        assert!(check_query("a=b+c&d=%20").is_ok());
        assert_eq!(check_query("a=\u{1}"), Err(PathError::Control));
    }
}
