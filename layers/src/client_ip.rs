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
}

impl<S> Layer<S> for ClientIpLayer {
    type Service = ClientIpService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ClientIpService {
            inner,
            trusted: self.trusted.clone(),
        }
    }
}

/// The service made by [`ClientIpLayer`].
#[derive(Debug, Clone)]
pub struct ClientIpService<S> {
    inner: S,
    trusted: Arc<[IpNet]>,
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
            forwarded_client_ip(req.headers(), &self.trusted).unwrap_or(peer.ip())
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

/// The right-most address in `X-Forwarded-For` that is not itself a trusted proxy.
///
/// Everything left of that hop was written by parties we cannot vouch for, so the
/// right-most untrusted hop is the furthest we can believe.
/// RFC 7239 `Forwarded` wins over `X-Forwarded-For` when both are present.
fn forwarded_client_ip(headers: &http::HeaderMap, trusted: &[IpNet]) -> Option<IpAddr> {
    let mut hops: Vec<IpAddr> = Vec::new();
    if headers.contains_key(http::header::FORWARDED) {
        for v in headers.get_all(http::header::FORWARDED) {
            for element in v.to_str().ok()?.split(',') {
                let for_value = element.split(';').find_map(|pair| {
                    let (k, v) = pair.trim().split_once('=')?;
                    k.eq_ignore_ascii_case("for").then_some(v.trim())
                });
                // An element without `for=` or with an obfuscated identifier (`unknown`,
                // `_hidden`) breaks the chain: nothing left of it can be believed.
                hops.push(parse_hop(for_value?)?);
            }
        }
    } else {
        for v in headers.get_all("x-forwarded-for") {
            for part in v.to_str().ok()?.split(',') {
                hops.push(parse_hop(part.trim())?);
            }
        }
    }
    hops.into_iter()
        .rev()
        .map(canonical)
        .find(|ip| !is_trusted(trusted, *ip))
}

fn parse_hop(s: &str) -> Option<IpAddr> {
    let s = s.trim_matches('"');
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(sa.ip());
    }
    let inner = s.strip_prefix('[')?.split(']').next()?;
    inner.parse().ok()
}

