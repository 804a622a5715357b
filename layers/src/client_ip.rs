//! Who the client is.
//!
//! [`ClientIpLayer`] puts a [`ClientIp`] in every request's extensions. By default it is
//! the socket peer (axum's [`ConnectInfo`]); forwarding headers are believed only when the
//! peer is inside a configured trusted-proxy list, so a client cannot choose its own IP by
//! sending `X-Forwarded-For`.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    task::{Context, Poll},
};

use axum::extract::ConnectInfo;
use http::{Request, Response, StatusCode};
use ipnet::IpNet;
use tower_layer::Layer;
use tower_service::Service;

use crate::response_future::{text_response, ResponseFuture};

/// The client's IP address as decided by [`ClientIpLayer`].
///
/// Read it in a handler with `Extension<ClientIp>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientIp(pub IpAddr);

/// The address of the TCP peer (the client, or a proxy in front of wsgate).
///
/// Whoever accepts the socket inserts this; [`ClientIpLayer`] also accepts axum's
/// [`ConnectInfo<SocketAddr>`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// Whether the peer is a trusted proxy whose forwarding headers were believed.
///
/// Inserted next to [`ClientIp`]; the proxy uses it to decide whether to append to or
/// replace `X-Forwarded-For`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrustedPeer(pub bool);

/// Resolves the client's IP and inserts [`ClientIp`].
///
/// A request without a known peer address is answered 500: it means the server was
/// started without connect info, a deployment bug that must not silently key every
/// client as one.
#[derive(Debug, Clone, Default)]
pub struct ClientIpLayer {
    trusted: Arc<[IpNet]>,
    header: ForwardingHeader,
}

/// Which forwarding header the trusted proxies write.
///
/// Only one is read. A proxy that appends to `X-Forwarded-For` usually passes a
/// client's own `Forwarded` header through untouched, so believing both would let the
/// client choose its address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ForwardingHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2` (nginx, HAProxy, most load balancers).
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client, for=proxy1`.
    Forwarded,
}

impl ClientIpLayer {
    /// A layer that trusts no proxy: the client IP is the socket peer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Believe `X-Forwarded-For` and `Forwarded` from peers inside these networks.
    pub fn trusted_proxies(mut self, nets: impl IntoIterator<Item = IpNet>) -> Self {
        self.trusted = nets.into_iter().collect();
        self
    }

    /// Read this header from trusted proxies (default `X-Forwarded-For`).
    pub fn forwarding_header(mut self, header: ForwardingHeader) -> Self {
        self.header = header;
        self
    }
}

impl<S> Layer<S> for ClientIpLayer {
    type Service = ClientIpService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ClientIpService {
            inner,
            trusted: self.trusted.clone(),
            header: self.header,
        }
    }
}

/// The service made by [`ClientIpLayer`].
#[derive(Debug, Clone)]
pub struct ClientIpService<S> {
    inner: S,
    trusted: Arc<[IpNet]>,
    header: ForwardingHeader,
}

impl<S, B> Service<Request<B>> for ClientIpService<S>
where
    S: Service<Request<B>, Response = Response<axum::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let Some(peer) = peer_addr(&req) else {
            return ResponseFuture::early(text_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server misconfigured: no peer address (serve with connect info)\n",
            ));
        };
        let trusted = is_trusted(&self.trusted, peer.ip());
        let ip = if trusted {
            forwarded_client_ip(req.headers(), &self.trusted, self.header).unwrap_or(peer.ip())
        } else {
            peer.ip()
        };
        req.extensions_mut().insert(ClientIp(canonical(ip)));
        req.extensions_mut().insert(TrustedPeer(trusted));
        ResponseFuture::inner(self.inner.call(req))
    }
}

fn peer_addr<B>(req: &Request<B>) -> Option<SocketAddr> {
    if let Some(PeerAddr(a)) = req.extensions().get::<PeerAddr>() {
        return Some(*a);
    }
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(a)| *a)
}

/// IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`, seen on dual-stack listeners) are the
/// IPv4 client they stand for; keying them apart would double that client's limits.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

fn is_trusted(trusted: &[IpNet], ip: IpAddr) -> bool {
    let ip = canonical(ip);
    trusted.iter().any(|n| n.contains(&ip))
}

/// The client as told by the trusted proxies: the right-most hop that is not itself a
/// trusted proxy.
///
/// Every hop is appended by the party that received the connection from the hop before
/// it, so walking from the right we can believe each hop until we pass the first
/// untrusted one: everything left of it was written by parties we cannot vouch for.
///
/// A hop we cannot read (`unknown`, an obfuscated `_name`, garbage) that a trusted proxy
/// wrote means that proxy could not tell us the client: the answer is that proxy's own
/// address (the last trusted hop), never a hop further left. `None` when the header is
/// absent (the caller then uses the socket peer).
fn forwarded_client_ip(
    headers: &http::HeaderMap,
    trusted: &[IpNet],
    header: ForwardingHeader,
) -> Option<IpAddr> {
    let name = match header {
        ForwardingHeader::XForwardedFor => http::HeaderName::from_static("x-forwarded-for"),
        ForwardingHeader::Forwarded => http::header::FORWARDED,
    };
    let mut values = headers.get_all(&name).iter().peekable();
    values.peek()?;
    let mut hops: Vec<&[u8]> = Vec::new();
    for v in values {
        match header {
            ForwardingHeader::XForwardedFor => hops.extend(v.as_bytes().split(|b| *b == b',')),
            ForwardingHeader::Forwarded => hops.extend(
                split_unquoted(v.as_bytes(), b',')
                    .into_iter()
                    .map(forwarded_for_param),
            ),
        }
    }
    let mut last_trusted: Option<IpAddr> = None;
    for hop in hops.iter().rev() {
        let Some(ip) = std::str::from_utf8(hop).ok().and_then(parse_hop) else {
            // Unreadable hop: the client is unknown past this point.
            return last_trusted;
        };
        let ip = canonical(ip);
        if !is_trusted(trusted, ip) {
            return Some(ip);
        }
        last_trusted = Some(ip);
    }
    // Every hop is a trusted proxy: the left-most is the closest we know to the client.
    last_trusted
}

/// Splits `s` on `sep` outside double-quoted strings (RFC 7230 quoted-string, with `\`
/// escapes).
fn split_unquoted(s: &[u8], sep: u8) -> Vec<&[u8]> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, &b) in s.iter().enumerate() {
        if escaped {
            escaped = false;
        } else if quoted && b == b'\\' {
            escaped = true;
        } else if b == b'"' {
            quoted = !quoted;
        } else if b == sep && !quoted {
            parts.push(&s[start..i]);
            start = i + 1;
        }
    }
    parts.push(&s[start..]);
    parts
}

/// The value of `for=` in one `Forwarded` element (empty if there is none, which then
/// reads as an unknown hop).
fn forwarded_for_param(element: &[u8]) -> &[u8] {
    split_unquoted(element, b';')
        .into_iter()
        .find_map(|pair| {
            let eq = pair.iter().position(|b| *b == b'=')?;
            let (k, v) = (pair[..eq].trim_ascii(), pair[eq + 1..].trim_ascii());
            k.eq_ignore_ascii_case(b"for").then_some(v)
        })
        .unwrap_or(&[])
}

/// One hop: `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`, `[2001:db8::1]`,
/// `[2001:db8::1]:5678`, optionally double-quoted. `unknown`, `_obfuscated`, zone ids
/// and anything else are `None`.
fn parse_hop(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    let s = match s.strip_prefix('"') {
        Some(rest) => rest.strip_suffix('"')?,
        None => s,
    };
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(sa.ip());
    }
    // `[v6]` without a port
    let inner = s.strip_prefix('[')?.strip_suffix(']')?;
    inner.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn xff(values: &[&str], trusted: &[&str]) -> Option<IpAddr> {
        let mut h = http::HeaderMap::new();
        for v in values {
            h.append(
                "x-forwarded-for",
                http::HeaderValue::from_bytes(v.as_bytes()).unwrap(),
            );
        }
        forwarded_client_ip(&h, &nets(trusted), ForwardingHeader::XForwardedFor)
    }

    fn fwd(values: &[&str], trusted: &[&str]) -> Option<IpAddr> {
        let mut h = http::HeaderMap::new();
        for v in values {
            h.append(
                http::header::FORWARDED,
                http::HeaderValue::from_str(v).unwrap(),
            );
        }
        forwarded_client_ip(&h, &nets(trusted), ForwardingHeader::Forwarded)
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn right_most_untrusted_hop_wins_over_client_written_ones() {
        // The client wrote 6.6.6.6; our proxy appended the real client 203.0.113.7.
        assert_eq!(
            xff(&["6.6.6.6, 203.0.113.7"], &["10.0.0.0/8"]),
            ip("203.0.113.7")
        );
        // Chain of trusted proxies is skipped.
        assert_eq!(
            xff(
                &["6.6.6.6, 203.0.113.7, 10.0.0.2, 10.0.0.3"],
                &["10.0.0.0/8"]
            ),
            ip("203.0.113.7")
        );
        // Several header lines are one list, in order.
        assert_eq!(
            xff(&["6.6.6.6", "203.0.113.7", "10.0.0.2"], &["10.0.0.0/8"]),
            ip("203.0.113.7")
        );
    }

    #[test]
    fn garbage_left_of_the_real_hop_does_not_discard_it() {
        // Before hardening, one unparsable hop made the whole header ignored and the
        // client was keyed as the proxy (sharing its limits with everyone behind it).
        assert_eq!(
            xff(&["not-an-ip, 203.0.113.7"], &["10.0.0.0/8"]),
            ip("203.0.113.7")
        );
        let mut h = http::HeaderMap::new();
        let v = http::HeaderValue::from_bytes(b"\xffjunk, 203.0.113.7").unwrap();
        h.insert("x-forwarded-for", v);
        let t = nets(&["10.0.0.0/8"]);
        let got = forwarded_client_ip(&h, &t, ForwardingHeader::XForwardedFor);
        assert_eq!(got, ip("203.0.113.7"));
    }

    #[test]
    fn unknown_hop_written_by_a_trusted_proxy_stops_at_that_proxy() {
        assert_eq!(
            xff(&["6.6.6.6, unknown, 10.0.0.2"], &["10.0.0.0/8"]),
            ip("10.0.0.2")
        );
        // Right-most hop unreadable: no hop to use, the caller falls back to the peer.
        assert_eq!(xff(&["6.6.6.6, unknown"], &["10.0.0.0/8"]), None);
        assert_eq!(xff(&["6.6.6.6,"], &["10.0.0.0/8"]), None);
    }

    #[test]
    fn all_trusted_chain_answers_the_left_most_proxy_and_absent_header_is_none() {
        assert_eq!(
            xff(&["10.0.0.1, 10.0.0.2"], &["10.0.0.0/8"]),
            ip("10.0.0.1")
        );
        assert_eq!(xff(&[], &["10.0.0.0/8"]), None);
    }

    #[test]
    fn ipv6_forms_and_ports_are_understood() {
        let t = &["10.0.0.0/8"];
        assert_eq!(xff(&["[2001:db8::1]:4711"], t), ip("2001:db8::1"));
        assert_eq!(xff(&["[2001:db8::1]"], t), ip("2001:db8::1"));
        assert_eq!(xff(&["2001:db8::1"], t), ip("2001:db8::1"));
        assert_eq!(xff(&["[::1]:80"], t), ip("::1"));
        assert_eq!(xff(&["192.0.2.1:8080"], t), ip("192.0.2.1"));
        assert_eq!(xff(&["::ffff:192.0.2.1"], t), ip("192.0.2.1"));
        assert_eq!(xff(&["fe80::1%eth0"], t), None);
        // A trusted proxy given in mapped form is still trusted.
        assert_eq!(xff(&["192.0.2.9, ::ffff:10.0.0.5"], t), ip("192.0.2.9"));
    }

    #[test]
    fn forwarded_elements_quoted_ipv6_and_obfuscated_identifiers() {
        let t = &["10.0.0.0/8"];
        assert_eq!(
            fwd(
                &[r#"for=6.6.6.6, for="[2001:db8:cafe::17]:4711";proto=https, for=10.0.0.2"#],
                t
            ),
            ip("2001:db8:cafe::17")
        );
        assert_eq!(
            fwd(&["For=\"192.0.2.60:8080\";by=10.0.0.1"], t),
            ip("192.0.2.60")
        );
        // A comma inside a quoted value does not split elements.
        assert_eq!(
            fwd(&[r#"for="_a,b";proto=http, for=192.0.2.8"#], t),
            ip("192.0.2.8")
        );
        assert_eq!(
            fwd(&["for=6.6.6.6, for=unknown, for=10.0.0.3"], t),
            ip("10.0.0.3")
        );
        assert_eq!(fwd(&["for=6.6.6.6, for=_hidden"], t), None);
        assert_eq!(fwd(&["proto=https"], t), None);
    }

    #[test]
    fn only_the_configured_header_is_read() {
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::FORWARDED,
            http::HeaderValue::from_static("for=6.6.6.6"),
        );
        h.insert(
            "x-forwarded-for",
            http::HeaderValue::from_static("203.0.113.7"),
        );
        let t = nets(&["10.0.0.0/8"]);
        assert_eq!(
            forwarded_client_ip(&h, &t, ForwardingHeader::XForwardedFor),
            ip("203.0.113.7")
        );
        assert_eq!(
            forwarded_client_ip(&h, &t, ForwardingHeader::Forwarded),
            ip("6.6.6.6")
        );
    }
}
