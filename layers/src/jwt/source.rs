//! Where a token comes from, and removing it before the request travels on.
//!
//! Every enabled source is *stripped* whether or not it held the winning token, so a
//! token never reaches the backend (or its logs) through a place we did not look at
//! first. Sources that are not enabled are left alone: an `access_token` query parameter
//! on a route that does not read the query is the backend's business.

use std::str::FromStr;

use http::{
    header::{AUTHORIZATION, SEC_WEBSOCKET_PROTOCOL},
    HeaderMap, HeaderValue, Request, Uri,
};

use super::rejection::JwtRejection;

/// The subprotocol prefix of the single-element form: the client offers
/// `wsgate.bearer.<token>` (plus the bare [`PROTOCOL_PREFIX_MARKER`] to have it echoed).
pub const PROTOCOL_PREFIX: &str = "wsgate.bearer.";

/// The bare element a client offers next to `wsgate.bearer.<token>`; it is what the
/// server echoes in the `101` when no real subprotocol is chosen.
pub const PROTOCOL_PREFIX_MARKER: &str = "wsgate.bearer";

/// The marker element of the pair form: the client offers `["bearer", "<token>"]`.
pub const PROTOCOL_PAIR_MARKER: &str = "bearer";

/// A place a token may be read from (the `sources` key of `[route.jwt]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenSource {
    /// `Authorization: Bearer <token>`.
    Header,
    /// `Sec-WebSocket-Protocol`, in the `wsgate.bearer.<token>` or `bearer, <token>` form.
    Protocol,
    /// A cookie (default name `access_token`). Needs an Origin allow-list on the route.
    Cookie,
    /// A query parameter (default name `access_token`). Opt-in: URLs end up in logs.
    Query,
}

impl TokenSource {
    /// The config spelling: `header`, `protocol`, `cookie` or `query`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Header => "header",
            Self::Protocol => "protocol",
            Self::Cookie => "cookie",
            Self::Query => "query",
        }
    }
}

/// A `sources` entry that names no [`TokenSource`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown jwt token source {0:?} (expected header, protocol, cookie or query)")]
pub struct UnknownTokenSource(pub String);

impl FromStr for TokenSource {
    type Err = UnknownTokenSource;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "header" | "authorization" => Ok(Self::Header),
            "protocol" | "subprotocol" => Ok(Self::Protocol),
            "cookie" => Ok(Self::Cookie),
            "query" => Ok(Self::Query),
            _ => Err(UnknownTokenSource(s.to_owned())),
        }
    }
}

/// The token sources of one layer, with the header first when enabled.
#[derive(Debug, Clone)]
pub(crate) struct Sources {
    pub(crate) order: Vec<TokenSource>,
    pub(crate) cookie_name: String,
    pub(crate) query_param: String,
}

/// What [`Sources::take`] found.
#[derive(Debug, Default)]
pub(crate) struct Taken {
    pub(crate) token: Option<String>,
    /// The subprotocol element to echo in the `101` when no real one is chosen.
    pub(crate) marker: Option<String>,
}

impl Sources {
    /// Reads the token from the first source that has one and strips every enabled
    /// source.
    pub(crate) fn take<B>(&self, req: &mut Request<B>) -> Result<Taken, JwtRejection> {
        let mut taken = Taken::default();
        for source in &self.order {
            let found = match source {
                TokenSource::Header => take_authorization(req.headers_mut())?,
                TokenSource::Protocol => {
                    let split = take_protocol(req.headers_mut());
                    taken.marker = split.marker;
                    split.token
                }
                TokenSource::Cookie => take_cookie(req.headers_mut(), &self.cookie_name),
                TokenSource::Query => take_query(req, &self.query_param),
            };
            if taken.token.is_none() {
                taken.token = found.filter(|t| !t.is_empty());
            }
        }
        Ok(taken)
    }
}

/// `Authorization: Bearer <token>`; the header is removed when it carries a bearer token.
/// Other schemes (`Basic` …) are not ours and stay.
fn take_authorization(headers: &mut HeaderMap) -> Result<Option<String>, JwtRejection> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        headers.remove(AUTHORIZATION);
        return Err(JwtRejection::Malformed("several Authorization headers"));
    }
    let token = match first.to_str().ok().and_then(bearer_token) {
        Some(t) => t.to_owned(),
        None => return Ok(None),
    };
    headers.remove(AUTHORIZATION);
    Ok(Some(token))
}

fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, rest) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim_start_matches(' ').trim())
}

/// The subprotocol list with the token (and its markers) taken out.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct ProtocolSplit {
    pub(crate) token: Option<String>,
    pub(crate) marker: Option<String>,
    pub(crate) rest: Vec<String>,
}

/// Splits offered subprotocols into the token, the marker to echo, and the real ones.
///
/// * `bearer, <token>`: the element after the `bearer` marker is the token; the marker
///   to echo is `bearer` as the client spelled it.
/// * `wsgate.bearer.<token>`: the token is the suffix; the marker to echo is the bare
///   `wsgate.bearer` element, if the client offered one (echoing the token-carrying
///   element would put the token in the response).
pub(crate) fn split_protocols<'a>(elements: impl IntoIterator<Item = &'a str>) -> ProtocolSplit {
    let mut out = ProtocolSplit::default();
    let mut pair_marker = None;
    let mut prefix_marker = None;
    let mut token_from_pair = None;
    let mut it = elements
        .into_iter()
        .map(str::trim)
        .filter(|e| !e.is_empty());
    while let Some(e) = it.next() {
        if e.eq_ignore_ascii_case(PROTOCOL_PAIR_MARKER) {
            pair_marker.get_or_insert_with(|| e.to_owned());
            if let Some(tok) = it.next() {
                if out.token.is_none() {
                    out.token = Some(tok.to_owned());
                    token_from_pair = Some(true);
                }
            }
        } else if e.eq_ignore_ascii_case(PROTOCOL_PREFIX_MARKER) {
            prefix_marker.get_or_insert_with(|| e.to_owned());
        } else if e.len() > PROTOCOL_PREFIX.len()
            && e.is_char_boundary(PROTOCOL_PREFIX.len())
            && e[..PROTOCOL_PREFIX.len()].eq_ignore_ascii_case(PROTOCOL_PREFIX)
        {
            if out.token.is_none() {
                out.token = Some(e[PROTOCOL_PREFIX.len()..].to_owned());
                token_from_pair = Some(false);
            }
        } else {
            out.rest.push(e.to_owned());
        }
    }
    out.marker = match token_from_pair {
        Some(true) => pair_marker,
        Some(false) => prefix_marker,
        None => pair_marker.or(prefix_marker),
    };
    out
}

fn take_protocol(headers: &mut HeaderMap) -> ProtocolSplit {
    if !headers.contains_key(SEC_WEBSOCKET_PROTOCOL) {
        return ProtocolSplit::default();
    }
    let joined: Vec<String> = headers
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::to_owned)
        .collect();
    let split = split_protocols(joined.iter().flat_map(|v| v.split(',')));
    if split.token.is_none() && split.marker.is_none() {
        return split;
    }
    headers.remove(SEC_WEBSOCKET_PROTOCOL);
    if !split.rest.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&split.rest.join(", ")) {
            headers.insert(SEC_WEBSOCKET_PROTOCOL, v);
        }
    }
    split
}

/// Takes the named cookie out of every `Cookie` header, keeping the others byte for
/// byte (a non-ASCII cookie next to it must neither hide the token nor let it through).
fn take_cookie(headers: &mut HeaderMap, name: &str) -> Option<String> {
    let raw = crate::cookie_header::take_cookie(headers, name)?;
    // A token is ASCII; anything else is no token (but is still removed).
    let s = String::from_utf8(raw).ok()?;
    Some(s.trim_matches('"').to_owned())
}

/// Takes the named parameter out of the query string, keeping the others (raw) in order.
fn take_query<B>(req: &mut Request<B>, param: &str) -> Option<String> {
    let query = req.uri().query()?;
    let (token, rest) = split_query(query, param);
    if token.is_none() && rest.len() == query.len() {
        return None;
    }
    let path = req.uri().path();
    let pq = if rest.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{rest}")
    };
    let mut parts = req.uri().clone().into_parts();
    match pq.parse() {
        Ok(pq) => parts.path_and_query = Some(pq),
        Err(_) => return token,
    }
    if let Ok(uri) = Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
    token
}

/// The decoded value of `param` (first occurrence) and the query without any occurrence.
pub(crate) fn split_query(query: &str, param: &str) -> (Option<String>, String) {
    let mut token = None;
    let mut rest = String::with_capacity(query.len());
    for part in query.split('&') {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        if !part.is_empty() && percent_decode(k) == param {
            if token.is_none() {
                token = Some(percent_decode(v));
            }
            continue;
        }
        if part.is_empty() {
            continue;
        }
        if !rest.is_empty() {
            rest.push('&');
        }
        rest.push_str(part);
    }
    (token, rest)
}

/// `application/x-www-form-urlencoded` decoding; invalid escapes stay as they are.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use http::header::COOKIE;

    use super::*;

    #[test]
    fn pair_form_yields_token_and_bearer_marker() {
        let s = split_protocols(["bearer", "a.b.c", "chat.v1"]);
        assert_eq!(s.token.as_deref(), Some("a.b.c"));
        assert_eq!(s.marker.as_deref(), Some("bearer"));
        assert_eq!(s.rest, vec!["chat.v1".to_owned()]);
    }

    #[test]
    fn prefix_form_echoes_only_the_bare_marker() {
        let s = split_protocols(["wsgate.bearer.a.b.c", "wsgate.bearer", "chat.v1"]);
        assert_eq!(s.token.as_deref(), Some("a.b.c"));
        assert_eq!(s.marker.as_deref(), Some("wsgate.bearer"));
        assert_eq!(s.rest, vec!["chat.v1".to_owned()]);

        let s = split_protocols(["wsgate.bearer.a.b.c"]);
        assert_eq!(s.token.as_deref(), Some("a.b.c"));
        assert_eq!(s.marker, None);
        assert!(s.rest.is_empty());
    }

    #[test]
    fn plain_protocols_are_untouched() {
        let s = split_protocols(["chat.v1", "chat.v2"]);
        assert_eq!(s.token, None);
        assert_eq!(s.marker, None);
        assert_eq!(s.rest.len(), 2);
    }

    #[test]
    fn protocol_header_keeps_real_protocols_only() {
        let mut h = HeaderMap::new();
        h.insert(
            SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("bearer, x.y.z, chat.v1"),
        );
        let s = take_protocol(&mut h);
        assert_eq!(s.token.as_deref(), Some("x.y.z"));
        assert_eq!(h[SEC_WEBSOCKET_PROTOCOL], "chat.v1");

        let mut h = HeaderMap::new();
        h.insert(
            SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("bearer, x.y.z"),
        );
        take_protocol(&mut h);
        assert!(!h.contains_key(SEC_WEBSOCKET_PROTOCOL));
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer   abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer"), None);
    }

    #[test]
    fn several_authorization_headers_are_refused() {
        let mut h = HeaderMap::new();
        h.append(AUTHORIZATION, HeaderValue::from_static("Bearer a"));
        h.append(AUTHORIZATION, HeaderValue::from_static("Bearer b"));
        assert!(take_authorization(&mut h).is_err());
    }

    #[test]
    fn only_the_token_cookie_is_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            COOKIE,
            HeaderValue::from_static("a=1; access_token=t.o.k; b=2"),
        );
        assert_eq!(
            take_cookie(&mut h, "access_token").as_deref(),
            Some("t.o.k")
        );
        assert_eq!(h[COOKIE], "a=1; b=2");

        let mut h = HeaderMap::new();
        h.insert(COOKIE, HeaderValue::from_static("access_token=t.o.k"));
        take_cookie(&mut h, "access_token");
        assert!(!h.contains_key(COOKIE));
    }

    #[test]
    fn token_cookie_next_to_a_non_ascii_cookie_is_found_and_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            COOKIE,
            HeaderValue::from_bytes(b"name=caf\xc3\xa9; access_token=\"t.o.k\"; x=\xe9").unwrap(),
        );
        assert_eq!(
            take_cookie(&mut h, "access_token").as_deref(),
            Some("t.o.k")
        );
        assert_eq!(h[COOKIE].as_bytes(), b"name=caf\xc3\xa9; x=\xe9");
    }

    #[test]
    fn query_param_is_removed_and_others_kept_in_order() {
        assert_eq!(
            split_query("a=1&access_token=t.o.k&b=2", "access_token"),
            (Some("t.o.k".to_owned()), "a=1&b=2".to_owned())
        );
        assert_eq!(
            split_query("access_token=x&access_token=y", "access_token"),
            (Some("x".to_owned()), String::new())
        );
        assert_eq!(
            split_query("a=1&b=2", "access_token"),
            (None, "a=1&b=2".to_owned())
        );
        assert_eq!(
            split_query("access%5Ftoken=a%2Eb", "access_token"),
            (Some("a.b".to_owned()), String::new())
        );
    }

    #[test]
    fn query_is_rewritten_on_the_request() {
        let mut req = Request::builder()
            .uri("/ws?x=1&access_token=abc&y=2")
            .body(())
            .unwrap_or_default();
        assert_eq!(take_query(&mut req, "access_token").as_deref(), Some("abc"));
        assert_eq!(req.uri(), "/ws?x=1&y=2");
        let mut req = Request::builder()
            .uri("/ws?access_token=abc")
            .body(())
            .unwrap_or_default();
        take_query(&mut req, "access_token");
        assert_eq!(req.uri(), "/ws");
    }

    #[test]
    fn percent_decoding_handles_bad_escapes() {
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("a+b%20c"), "a b c");
    }
}
