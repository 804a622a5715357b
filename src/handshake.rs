//! The WebSocket opening handshake, both halves.
//!
//! The client's upgrade request is checked here ([`check_client`]), turned into the
//! request wsgate sends the backend ([`upstream_request`]), and the backend's answer is
//! parsed and checked ([`parse_upstream_response`]) before the client gets its own 101.
//! wsgate forwards the client's `Sec-WebSocket-Key` so the backend's accept value is the
//! one the client expects; the subprotocol and extensions are whatever the backend chose
//! from the client's offer, so both are negotiated end to end.

use std::net::{IpAddr, SocketAddr};

use base64::{engine::general_purpose::STANDARD, Engine};
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};
use sha1::{Digest, Sha1};

use crate::error::HandshakeRejection;

/// The GUID of RFC 6455 §1.3.
const WS_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Largest backend handshake response wsgate reads.
pub(crate) const MAX_RESPONSE_HEAD: usize = 16 * 1024;

/// What a valid client upgrade request offered.
#[derive(Debug, Clone)]
pub(crate) struct ClientHandshake {
    pub(crate) key: HeaderValue,
    pub(crate) protocols: Vec<String>,
    /// The client's `permessage-deflate` offers, forwarded as they are.
    pub(crate) extensions: Vec<HeaderValue>,
}

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`.
pub(crate) fn accept_key(key: &[u8]) -> String {
    String::from_utf8_lossy(&accept_bytes(key)).into_owned()
}

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`, on the stack: the handshake path
/// compares it and copies it into the client's 101 without a heap string.
pub(crate) fn accept_bytes(key: &[u8]) -> [u8; 28] {
    let mut h = Sha1::new();
    h.update(key);
    h.update(WS_GUID);
    let mut out = [0u8; 28];
    // 20 bytes of SHA-1 are always 28 base64 characters.
    let _ = STANDARD.encode_slice(h.finalize(), &mut out);
    out
}

/// True if a comma-separated header has `token` (case-insensitive) among its values.
pub(crate) fn header_has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

/// Checks a client's upgrade request (RFC 6455 §4.2.1).
///
/// `extended_connect` is set for an HTTP/2 `CONNECT` with `:protocol = websocket`
/// (RFC 8441); such a request has no key, so one is made for the backend's handshake.
pub(crate) fn check_client(
    method: &Method,
    version: Version,
    headers: &HeaderMap,
    extended_connect: bool,
) -> Result<ClientHandshake, HandshakeRejection> {
    if version == Version::HTTP_2 {
        return check_h2_client(method, headers, extended_connect);
    }
    let wants_upgrade = header_has_token(headers, header::UPGRADE, "websocket");
    if method != Method::GET {
        return Err(HandshakeRejection::MethodNotAllowed);
    }
    if !wants_upgrade || !header_has_token(headers, header::CONNECTION, "upgrade") {
        return Err(HandshakeRejection::NotWebSocket);
    }
    let has_body = headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    if has_body {
        return Err(HandshakeRejection::Bad(
            "a WebSocket upgrade carries no body",
        ));
    }
    if version != Version::HTTP_11 {
        return Err(HandshakeRejection::Bad(
            "a WebSocket handshake needs HTTP/1.1",
        ));
    }
    match headers.get(header::SEC_WEBSOCKET_VERSION) {
        None => return Err(HandshakeRejection::Bad("missing Sec-WebSocket-Version")),
        Some(v) if v.as_bytes() != b"13" => return Err(HandshakeRejection::UnsupportedVersion),
        Some(_) => {}
    }
    let mut keys = headers.get_all(header::SEC_WEBSOCKET_KEY).iter();
    let key = match (keys.next(), keys.next()) {
        (Some(k), None) => k.clone(),
        (None, _) => return Err(HandshakeRejection::Bad("missing Sec-WebSocket-Key")),
        (Some(_), Some(_)) => {
            return Err(HandshakeRejection::Bad("more than one Sec-WebSocket-Key"))
        }
    };
    let mut raw = [0u8; 18];
    let valid_key = key.len() == 24
        && STANDARD
            .decode_slice(key.as_bytes(), &mut raw)
            .is_ok_and(|n| n == 16);
    if !valid_key {
        return Err(HandshakeRejection::Bad(
            "Sec-WebSocket-Key is not 16 base64-encoded bytes",
        ));
    }
    offers(headers, key)
}

/// RFC 8441 §4-5: the `CONNECT` carries the version and offers, but no key.
fn check_h2_client(
    method: &Method,
    headers: &HeaderMap,
    extended_connect: bool,
) -> Result<ClientHandshake, HandshakeRejection> {
    if method != Method::CONNECT || !extended_connect {
        return Err(if method == Method::GET || method == Method::CONNECT {
            HandshakeRejection::NotWebSocket
        } else {
            HandshakeRejection::MethodNotAllowed
        });
    }
    match headers.get(header::SEC_WEBSOCKET_VERSION) {
        None => return Err(HandshakeRejection::Bad("missing Sec-WebSocket-Version")),
        Some(v) if v.as_bytes() != b"13" => return Err(HandshakeRejection::UnsupportedVersion),
        Some(_) => {}
    }
    let nonce: [u8; 16] = std::array::from_fn(|_| fastrand::u8(..));
    let key = HeaderValue::from_str(&STANDARD.encode(nonce))
        .map_err(|_| HandshakeRejection::Bad("internal: key"))?;
    offers(headers, key)
}

/// The subprotocols and extensions a client offered.
fn offers(headers: &HeaderMap, key: HeaderValue) -> Result<ClientHandshake, HandshakeRejection> {
    let mut protocols = Vec::new();
    for v in headers.get_all(header::SEC_WEBSOCKET_PROTOCOL) {
        let s = v
            .to_str()
            .map_err(|_| HandshakeRejection::Bad("Sec-WebSocket-Protocol is not ASCII"))?;
        protocols.extend(
            s.split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(String::from),
        );
    }
    // Only permessage-deflate is forwarded: the relay passes its RSV1 bit and compressed
    // payloads through untouched, so it works end to end. An extension wsgate does not
    // know could give RSV bits a meaning the relay cannot check.
    let extensions = headers
        .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
        .iter()
        .filter_map(|v| {
            let s = v.to_str().ok()?;
            let offers: Vec<&str> = s
                .split(',')
                .map(str::trim)
                .filter(|o| extension_name(o).eq_ignore_ascii_case("permessage-deflate"))
                .collect();
            (!offers.is_empty())
                .then(|| HeaderValue::from_str(&offers.join(", ")).ok())
                .flatten()
        })
        .collect();
    Ok(ClientHandshake {
        key,
        protocols,
        extensions,
    })
}

fn extension_name(offer: &str) -> &str {
    offer.split(';').next().unwrap_or("").trim()
}

/// Headers that describe one hop, never forwarded (RFC 9110 §7.6.1), plus the ones
/// wsgate writes itself.
const MANAGED: [&str; 22] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
    "sec-websocket-extensions",
    "sec-websocket-accept",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-real-ip",
    "forwarded",
    "x-request-id",
];

/// Other headers that name the client's address, which CDNs and load balancers set and
/// some backends and frameworks read (`True-Client-IP`, `CF-Connecting-IP` …). wsgate
/// does not write them, so from an untrusted client they are dropped rather than
/// replaced: a client must not choose the address a backend believes. From a trusted
/// proxy they pass.
const CLIENT_ADDRESS: &[&str] = &[
    "x-client-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-cluster-client-ip",
    "x-original-forwarded-for",
    "x-forwarded",
    "forwarded-for",
    "x-forwarded-port",
    "x-forwarded-ssl",
    "x-forwarded-scheme",
    "x-url-scheme",
];

/// Whether `name` (any case) is one of the [`MANAGED`] headers.
fn is_managed(name: &str) -> bool {
    MANAGED.iter().any(|m| m.eq_ignore_ascii_case(name))
}

/// Removes what a client may not pass to a backend though it is not hop-by-hop:
///
/// * the resume headers, wsgate's to set (also where resume is off: a backend that
///   trusts them must never see a client's copy);
/// * `reserved`: identity headers another route's `forward_claims` sets, so a route
///   without that claim forwarding cannot carry a forged one;
/// * every `_` alias (`X_Forwarded_For`, `X_Auth_Subject`) of those and of the headers
///   wsgate writes itself, which CGI-style backends read as the real header
///   ([`wsgate_layers::header_alias`]).
///
/// A request with none of them (nearly all) costs a few map look-ups and no allocation.
pub(crate) fn remove_reserved(headers: &mut HeaderMap, reserved: &[HeaderName]) {
    use crate::upstream::resume::{strip_resume_headers, RESUMED_HEADER, SESSION_HEADER};
    strip_resume_headers(headers);
    for name in reserved {
        headers.remove(name);
    }
    wsgate_layers::header_alias::remove_underscore_aliases(headers, |n| {
        is_managed(n)
            || n == RESUMED_HEADER
            || n == SESSION_HEADER
            || reserved.iter().any(|r| r.as_str() == n)
    });
}

/// Names listed in `Connection` are hop-by-hop for this message too.
fn connection_listed(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .map(str::trim)
        // Filtered before lowercasing: the usual `Connection: Upgrade` allocates nothing.
        .filter(|t| !t.is_empty() && !t.eq_ignore_ascii_case("upgrade"))
        .map(str::to_ascii_lowercase)
        .collect()
}

/// Who the client is and how it reached wsgate, for the forwarding headers.
#[derive(Debug, Clone)]
pub(crate) struct Forwarding<'a> {
    pub(crate) client_ip: IpAddr,
    /// The peer is a trusted proxy: its `X-Forwarded-For` chain is kept and extended.
    pub(crate) trusted_peer: bool,
    pub(crate) peer: SocketAddr,
    pub(crate) tls: bool,
    pub(crate) request_id: &'a str,
    /// The host the client asked for (`Host`, or HTTP/2's `:authority`).
    pub(crate) host: Option<&'a str>,
}

/// The request wsgate writes to the backend, as HTTP/1.1 bytes.
pub(crate) fn upstream_request(
    path_and_query: &str,
    authority: &str,
    hs: &ClientHandshake,
    client_headers: &HeaderMap,
    fwd: &Forwarding<'_>,
) -> Vec<u8> {
    let rest = upstream_headers(hs, client_headers, fwd);
    upstream_head("", path_and_query, authority, &rest)
}

pub(crate) fn header_line(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The request line and `Host` for one backend, followed by `rest` (from
/// [`upstream_headers`]): one allocation per attempt.
pub(crate) fn upstream_head(
    prefix: &str,
    path_and_query: &str,
    authority: &str,
    rest: &[u8],
) -> Vec<u8> {
    let mut req =
        Vec::with_capacity(prefix.len() + path_and_query.len() + authority.len() + rest.len() + 26);
    req.extend_from_slice(b"GET ");
    req.extend_from_slice(prefix.as_bytes());
    req.extend_from_slice(path_and_query.as_bytes());
    req.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    req.extend_from_slice(authority.as_bytes());
    req.extend_from_slice(b"\r\n");
    req.extend_from_slice(rest);
    req
}

/// Every header line of the upstream request after `Host`, and the blank line that ends
/// the head. It is the same for every backend tried, so it is built once per handshake,
/// straight from the borrowed client headers into one buffer.
pub(crate) fn upstream_headers(
    hs: &ClientHandshake,
    client_headers: &HeaderMap,
    fwd: &Forwarding<'_>,
) -> Vec<u8> {
    use std::io::Write as _;
    let mut out = Vec::with_capacity(384);
    let line = header_line;
    line(&mut out, "Connection", b"Upgrade");
    line(&mut out, "Upgrade", b"websocket");
    line(&mut out, "Sec-WebSocket-Version", b"13");
    line(&mut out, "Sec-WebSocket-Key", hs.key.as_bytes());
    if let Some((first, more)) = hs.protocols.split_first() {
        out.extend_from_slice(b"Sec-WebSocket-Protocol: ");
        out.extend_from_slice(first.as_bytes());
        for p in more {
            out.extend_from_slice(b", ");
            out.extend_from_slice(p.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
    }
    for ext in &hs.extensions {
        line(&mut out, "Sec-WebSocket-Extensions", ext.as_bytes());
    }
    let listed = connection_listed(client_headers);
    for (name, value) in client_headers {
        if is_managed(name.as_str()) || listed.iter().any(|l| l == name.as_str()) {
            continue;
        }
        // `HeaderName`s are lowercase, so a plain comparison.
        if !fwd.trusted_peer && CLIENT_ADDRESS.contains(&name.as_str()) {
            continue;
        }
        line(&mut out, name.as_str(), value.as_bytes());
    }
    // The client's address, formatted once for the three headers that carry it.
    let mut ip_buf = [0u8; 48];
    let ip = ip_text(fwd.client_ip, &mut ip_buf);
    out.extend_from_slice(b"X-Forwarded-For: ");
    // From a trusted proxy the chain is believed, so it is extended with the hop we saw;
    // from anyone else it is replaced, so a client cannot forge its origin. Every line
    // of the chain is kept, in order: a proxy may add its own line after its client's
    // (HAProxy does), and the client address it wrote is in that last line.
    let lines = client_headers.get_all("x-forwarded-for");
    let believed = fwd.trusted_peer
        && lines.iter().next().is_some()
        && lines.iter().all(|v| v.to_str().is_ok());
    if believed {
        for (i, part) in lines.iter().enumerate() {
            if i > 0 {
                out.extend_from_slice(b", ");
            }
            out.extend_from_slice(part.as_bytes().trim_ascii());
        }
        // Writes into a Vec cannot fail.
        let _ = write!(out, ", {}", fwd.peer.ip());
    } else {
        out.extend_from_slice(ip);
    }
    out.extend_from_slice(b"\r\nX-Real-IP: ");
    out.extend_from_slice(ip);
    let proto: &[u8] = if fwd.tls { b"https" } else { b"http" };
    out.extend_from_slice(b"\r\nX-Forwarded-Proto: ");
    out.extend_from_slice(proto);
    out.extend_from_slice(b"\r\n");
    let host = fwd.host.filter(|h| h.bytes().all(|b| b.is_ascii_graphic()));
    if let Some(host) = host {
        line(&mut out, "X-Forwarded-Host", host.as_bytes());
    }
    match fwd.client_ip {
        IpAddr::V4(_) => {
            out.extend_from_slice(b"Forwarded: for=");
            out.extend_from_slice(ip);
        }
        IpAddr::V6(_) => {
            out.extend_from_slice(b"Forwarded: for=\"[");
            out.extend_from_slice(ip);
            out.extend_from_slice(b"]\"");
        }
    }
    out.extend_from_slice(b";proto=");
    out.extend_from_slice(proto);
    if let Some(host) = host {
        out.extend_from_slice(b";host=\"");
        out.extend_from_slice(host.as_bytes());
        out.push(b'"');
    }
    out.extend_from_slice(b"\r\n");
    line(&mut out, "X-Request-Id", fwd.request_id.as_bytes());
    out.extend_from_slice(b"\r\n");
    out
}

/// `ip` as text, in `buf` (an IPv6 address takes at most 45 bytes).
fn ip_text(ip: IpAddr, buf: &mut [u8; 48]) -> &[u8] {
    use std::io::Write as _;
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    // 48 bytes hold any address, so this cannot fail.
    let _ = write!(cursor, "{ip}");
    let n = usize::try_from(cursor.position()).unwrap_or(0);
    &buf[..n]
}

/// The backend's answer to the upgrade.
#[derive(Debug)]
pub(crate) enum UpstreamAnswer {
    /// 101: the headers to pass to the client, and how many bytes the head took.
    Switching {
        protocol: Option<HeaderValue>,
        extensions: Option<HeaderValue>,
        /// The backend's `Sec-WebSocket-Accept`, checked: the client's 101 carries it.
        accept: [u8; 28],
        /// End-to-end headers of the backend's 101 (e.g. `Set-Cookie`).
        extra: HeaderMap,
        head_len: usize,
    },
    /// Anything else: passed to the client as it is.
    Refused {
        status: StatusCode,
        headers: HeaderMap,
        head_len: usize,
        content_length: Option<usize>,
    },
}

/// The backend's response headers as httparse left them: read in place, so a 101 whose
/// headers are all hop-by-hop (the usual case) costs no allocation.
pub(crate) struct RawHeaders<'h, 'b>(pub(crate) &'h [httparse::Header<'b>]);

impl<'b> RawHeaders<'_, 'b> {
    /// The first value of `name`.
    pub(crate) fn get(&self, name: &HeaderName) -> Option<&'b [u8]> {
        self.0
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name.as_str()))
            .map(|h| h.value)
    }

    /// True if a comma-separated header has `token` among its values.
    pub(crate) fn has_token(&self, name: &HeaderName, token: &str) -> bool {
        self.0
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name.as_str()))
            .filter_map(|h| std::str::from_utf8(h.value).ok())
            .any(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    }

    /// Whether `name` is hop-by-hop for this message: managed, or listed in `Connection`.
    fn hop_by_hop(&self, name: &str) -> bool {
        is_managed(name)
            || self
                .0
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case("connection"))
                .filter_map(|h| std::str::from_utf8(h.value).ok())
                .flat_map(|s| s.split(','))
                .map(str::trim)
                .any(|t| !t.eq_ignore_ascii_case("upgrade") && t.eq_ignore_ascii_case(name))
    }

    /// The end-to-end headers, minus `skip`.
    fn end_to_end(&self, skip: &[HeaderName]) -> HeaderMap {
        let mut out = HeaderMap::new();
        for h in self.0 {
            if self.hop_by_hop(h.name)
                || skip.iter().any(|s| h.name.eq_ignore_ascii_case(s.as_str()))
            {
                continue;
            }
            // Both were checked by httparse and the caller; a failure here cannot happen,
            // and would drop the header rather than forward it.
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(h.name.as_bytes()),
                HeaderValue::from_bytes(h.value),
            ) {
                out.append(name, value);
            }
        }
        out
    }
}

/// Parses the backend's response head from `buf`. `Ok(None)`: need more bytes.
pub(crate) fn parse_upstream_response(
    buf: &[u8],
    hs: &ClientHandshake,
) -> Result<Option<UpstreamAnswer>, &'static str> {
    let mut raw = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut raw);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err("malformed HTTP response from backend"),
    };
    let status = resp
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or("backend sent no status")?;
    let headers = RawHeaders(resp.headers);
    // httparse admits only token names (which `http` accepts too); values are checked
    // with `http`'s rule here because a refusal's headers are passed on.
    for h in headers.0 {
        if h.value
            .iter()
            .any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f)
        {
            return Err("bad header value");
        }
    }
    if status != StatusCode::SWITCHING_PROTOCOLS {
        let content_length = headers
            .get(&header::CONTENT_LENGTH)
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.trim().parse().ok());
        return Ok(Some(UpstreamAnswer::Refused {
            status,
            headers: headers.end_to_end(&[]),
            head_len,
            content_length,
        }));
    }
    if !headers.has_token(&header::UPGRADE, "websocket")
        || !headers.has_token(&header::CONNECTION, "upgrade")
    {
        return Err("backend's 101 lacks Upgrade: websocket");
    }
    let accept = accept_bytes(hs.key.as_bytes());
    if headers.get(&header::SEC_WEBSOCKET_ACCEPT) != Some(&accept[..]) {
        return Err("backend's Sec-WebSocket-Accept is wrong");
    }
    let protocol = match headers.get(&header::SEC_WEBSOCKET_PROTOCOL) {
        Some(p) => {
            let chosen = std::str::from_utf8(p)
                .map_err(|_| "bad subprotocol")?
                .trim();
            if !hs.protocols.iter().any(|o| o == chosen) {
                return Err("backend chose a subprotocol the client did not offer");
            }
            Some(HeaderValue::from_bytes(p).map_err(|_| "bad subprotocol")?)
        }
        None => None,
    };
    let extensions = match headers.get(&header::SEC_WEBSOCKET_EXTENSIONS) {
        Some(e) => {
            let s = std::str::from_utf8(e).map_err(|_| "bad extension header")?;
            let all_deflate = s
                .split(',')
                .all(|x| extension_name(x).eq_ignore_ascii_case("permessage-deflate"));
            if hs.extensions.is_empty() || !all_deflate {
                return Err("backend chose an extension the client did not offer");
            }
            Some(HeaderValue::from_bytes(e).map_err(|_| "bad extension header")?)
        }
        None => None,
    };
    Ok(Some(UpstreamAnswer::Switching {
        protocol,
        extensions,
        accept,
        extra: headers.end_to_end(&[header::DATE, header::SERVER]),
        head_len,
    }))
}

/// Whether a negotiated extension header turns on RSV1 (permessage-deflate).
pub(crate) fn rsv_bits(extensions: Option<&HeaderValue>) -> u8 {
    match extensions {
        Some(_) => 0x40,
        None => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("gw.test"));
        h.insert(header::UPGRADE, HeaderValue::from_static("WebSocket"));
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        h.insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        h.insert(
            header::SEC_WEBSOCKET_KEY,
            HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="),
        );
        h
    }

    #[test]
    fn rfc_accept_key_example() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn refuses_what_is_not_a_websocket_handshake() {
        let h = client_headers();
        assert!(check_client(&Method::GET, Version::HTTP_11, &h, false).is_ok());
        assert!(matches!(
            check_client(&Method::POST, Version::HTTP_11, &h, false),
            Err(HandshakeRejection::MethodNotAllowed)
        ));
        assert!(matches!(
            check_client(&Method::GET, Version::HTTP_11, &HeaderMap::new(), false),
            Err(HandshakeRejection::NotWebSocket)
        ));
        let mut bad = h.clone();
        bad.insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("8"));
        assert!(matches!(
            check_client(&Method::GET, Version::HTTP_11, &bad, false),
            Err(HandshakeRejection::UnsupportedVersion)
        ));
        let mut bad = h.clone();
        bad.insert(header::SEC_WEBSOCKET_KEY, HeaderValue::from_static("short"));
        assert!(matches!(
            check_client(&Method::GET, Version::HTTP_11, &bad, false),
            Err(HandshakeRejection::Bad(_))
        ));
        assert!(check_client(&Method::GET, Version::HTTP_10, &h, false).is_err());
    }

    #[test]
    fn forwarded_request_drops_hop_headers_and_replaces_forwarding() {
        let mut h = client_headers();
        h.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-app", HeaderValue::from_static("kept"));
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("Upgrade, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("dropped"));
        let hs = check_client(&Method::GET, Version::HTTP_11, &h, false).unwrap();
        let fwd = Forwarding {
            client_ip: "10.1.2.3".parse().unwrap(),
            trusted_peer: false,
            peer: "10.1.2.3:5555".parse().unwrap(),
            tls: false,
            request_id: "abc",
            host: Some("gw.test"),
        };
        let req = String::from_utf8(upstream_request("/ws?a=1", "b:9", &hs, &h, &fwd)).unwrap();
        assert!(req.starts_with("GET /ws?a=1 HTTP/1.1\r\nHost: b:9\r\n"));
        assert!(req.contains("X-Forwarded-For: 10.1.2.3\r\n"));
        assert!(!req.contains("6.6.6.6"));
        assert!(req.contains("x-app: kept\r\n"));
        assert!(!req.contains("keep-alive"));
        assert!(!req.contains("dropped"));
        assert!(req.contains("Forwarded: for=10.1.2.3;proto=http;host=\"gw.test\"\r\n"));
        assert!(req.ends_with("\r\n\r\n"));
    }

    #[test]
    fn upstream_answer_checks_accept_and_protocol() {
        let mut h = client_headers();
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("a, b"),
        );
        let hs = check_client(&Method::GET, Version::HTTP_11, &h, false).unwrap();
        let ok = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: b\r\n\r\nXY";
        match parse_upstream_response(ok, &hs).unwrap().unwrap() {
            UpstreamAnswer::Switching {
                protocol, head_len, ..
            } => {
                assert_eq!(protocol.unwrap(), "b");
                assert_eq!(&ok[head_len..], b"XY");
            }
            other => panic!("{other:?}"),
        }
        let wrong = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: c\r\n\r\n";
        assert!(parse_upstream_response(wrong, &hs).is_err());
        assert!(parse_upstream_response(&ok[..20], &hs).unwrap().is_none());
        let forbidden = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 4\r\n\r\nnope";
        assert!(matches!(
            parse_upstream_response(forbidden, &hs).unwrap().unwrap(),
            UpstreamAnswer::Refused {
                status: StatusCode::FORBIDDEN,
                content_length: Some(4),
                ..
            }
        ));
    }

    #[test]
    fn upstream_request_is_one_buffer_with_every_header_once() {
        let mut h = client_headers();
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("chat, v2"),
        );
        h.insert(
            header::SEC_WEBSOCKET_EXTENSIONS,
            HeaderValue::from_static("permessage-deflate; client_max_window_bits, x-unknown"),
        );
        h.insert("x-forwarded-for", HeaderValue::from_static("192.0.2.9"));
        let hs = check_client(&Method::GET, Version::HTTP_11, &h, false).unwrap();
        let v6 = Forwarding {
            client_ip: "2001:db8::1".parse().unwrap(),
            trusted_peer: true,
            peer: "[2001:db8::2]:4000".parse().unwrap(),
            tls: true,
            request_id: "r1",
            host: Some("gw.test"),
        };
        let rest = upstream_headers(&hs, &h, &v6);
        let a = upstream_head("/base", "/ws?x=1", "b:9", &rest);
        let b = upstream_head("", "/ws", "c", &rest);
        let a = String::from_utf8(a).unwrap();
        let b = String::from_utf8(b).unwrap();
        assert!(a.starts_with("GET /base/ws?x=1 HTTP/1.1\r\nHost: b:9\r\nConnection: Upgrade\r\n"));
        assert!(b.starts_with("GET /ws HTTP/1.1\r\nHost: c\r\nConnection: Upgrade\r\n"));
        assert_eq!(
            a.split_once("\r\nConnection").unwrap().1,
            b.split_once("\r\nConnection").unwrap().1
        );
        for line in [
            "Sec-WebSocket-Protocol: chat, v2\r\n",
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n",
            // A trusted peer's chain is extended with the hop wsgate saw.
            "X-Forwarded-For: 192.0.2.9, 2001:db8::2\r\n",
            "X-Real-IP: 2001:db8::1\r\n",
            "X-Forwarded-Proto: https\r\n",
            "X-Forwarded-Host: gw.test\r\n",
            "Forwarded: for=\"[2001:db8::1]\";proto=https;host=\"gw.test\"\r\n",
            "X-Request-Id: r1\r\n\r\n",
        ] {
            assert_eq!(a.matches(line).count(), 1, "{line:?} in {a}");
        }
        assert!(!a.contains("x-unknown"));
        assert_eq!(a.matches("\r\n\r\n").count(), 1);
        assert!(a.ends_with("\r\n\r\n"));
        // The one-call form is the same bytes.
        let whole = upstream_request("/ws?x=1", "b:9", &hs, &h, &v6);
        assert_eq!(
            String::from_utf8(whole).unwrap(),
            a.replacen("/base/ws", "/ws", 1)
        );
    }

    #[test]
    fn backend_101_headers_are_filtered_in_place() {
        let hs = check_client(&Method::GET, Version::HTTP_11, &client_headers(), false).unwrap();
        let ok = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade, X-Hop\r\nX-Hop: secret\r\nDate: now\r\nServer: s\r\nSet-Cookie: a=1\r\nX-App: kept\r\nKeep-Alive: 5\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
        match parse_upstream_response(ok, &hs).unwrap().unwrap() {
            UpstreamAnswer::Switching {
                accept,
                extra,
                protocol,
                extensions,
                ..
            } => {
                assert_eq!(&accept, b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
                assert_eq!(extra.len(), 2, "{extra:?}");
                assert_eq!(extra["set-cookie"], "a=1");
                assert_eq!(extra["x-app"], "kept");
                assert!(protocol.is_none() && extensions.is_none());
            }
            other => panic!("{other:?}"),
        }
        let no_upgrade = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
        assert!(parse_upstream_response(no_upgrade, &hs).is_err());
        let bad_value = b"HTTP/1.1 403 Forbidden\r\nX-A: a\x01b\r\n\r\n";
        assert!(parse_upstream_response(bad_value, &hs).is_err());
        let refused = b"HTTP/1.1 404 Not Found\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\nX-Why: gone\r\nTransfer-Encoding: chunked\r\n\r\n";
        match parse_upstream_response(refused, &hs).unwrap().unwrap() {
            UpstreamAnswer::Refused {
                headers,
                status,
                content_length,
                ..
            } => {
                assert_eq!(status, StatusCode::NOT_FOUND);
                assert_eq!(content_length, None);
                assert_eq!(headers.len(), 1, "{headers:?}");
                assert_eq!(headers["x-why"], "gone");
            }
            other => panic!("{other:?}"),
        }
    }
}
