//! Admission control for WebSocket routes: handshake rate per client, open-connection
//! caps, a cap on handshakes in progress, and message rates inside an open socket.
//!
//! | layer / type | limits | refusal |
//! |---|---|---|
//! | [`IpRateLimitLayer`] | handshakes per client network (GCRA, `per_ip` + `burst`), allow/deny CIDRs | 429 + `Retry-After`, `RateLimit-Policy`, `RateLimit`; 403 deny-listed |
//! | [`HandshakeLimitLayer`] | handshakes in progress on the server | 503 at once, never queued |
//! | [`ConnectionLimitLayer`] | open sockets per client network, per [`SubjectKey`], per route | 429 per IP / subject, 503 route full |
//! | [`MessageRateLimiter`] | messages and bytes per second inside one socket | drop the message, or close 1008 |
//!
//! With the `redis` feature, `IpRateLimitLayer::redis` and
//! `ConnectionLimitLayer::redis` share the counts between wsgate instances (see
//! the `redis` module for the data layout and the fail-open / fail-closed choice).
//!
//! # Order of layers
//!
//! Outermost first (in axum, the *last* `.layer(..)` call runs first):
//!
//! 1. [`ClientIpLayer`](crate::ClientIpLayer): who the client is;
//! 2. [`IpRateLimitLayer`]: cheap, keyed, refuses a noisy client before it costs anything;
//! 3. [`HandshakeLimitLayer`]: bounds the expensive work below;
//! 4. the auth layer (JWT), which inserts [`SubjectKey`];
//! 5. [`ConnectionLimitLayer`]: takes the connection slots, held by the socket's
//!    [`Leases`](crate::Leases).
//!
//! ```
//! use std::net::SocketAddr;
//! use axum::{routing::get, Router};
//! use wsgate_layers::{
//!     client_ip::ClientIpLayer,
//!     ratelimit::{ConnectionLimitLayer, HandshakeLimitLayer, IpRateLimitLayer},
//! };
//! # async fn handler() {}
//! # fn build() -> Result<Router, Box<dyn std::error::Error>> {
//! // [route.rate_limit] per_ip = "20/s", burst = 40, max_connections_per_ip = 100,
//! //                    max_connections = 10000
//! let app: Router = Router::new()
//!     .route("/ws", get(handler))
//!     .layer(ConnectionLimitLayer::new().per_ip(100).global(10_000))
//!     .layer(HandshakeLimitLayer::new(1_024))
//!     .layer(IpRateLimitLayer::new("20/s".parse()?).burst(40))
//!     .layer(ClientIpLayer::new());
//! # Ok(app) }
//! ```
//!
//! # Load shedding
//!
//! These layers answer refusals themselves, so axum needs no error handling. tower's
//! `ConcurrencyLimitLayer` *waits* for capacity, and `LoadShedLayer` turns "not ready"
//! into an error (`Overloaded`), which in axum needs `HandleErrorLayer` to become a 503:
//! `ServiceBuilder::new().layer(HandleErrorLayer::new(|_| async { StatusCode::SERVICE_UNAVAILABLE })).load_shed().concurrency_limit(n)`.
//! Prefer [`HandshakeLimitLayer`] for handshakes; use that tower stack only for plain
//! HTTP routes where queueing briefly is acceptable. Header-size limits and the handshake
//! (slowloris) timeout belong to the listener, not to a layer.

use std::net::{IpAddr, SocketAddr};

use axum::extract::ConnectInfo;
use http::Request;

use crate::client_ip::{ClientIp, PeerAddr};

mod connection;
mod future;
mod handshake;
mod ip_rate;
mod key;
mod message;
#[cfg(feature = "redis")]
pub mod redis;
mod rejection;
mod spec;
mod store;

pub use connection::{
    ConnectionGuard, ConnectionLimit, ConnectionLimitLayer, ConnectionLimits, SubjectKey,
};
pub use future::LimitFuture;
pub use handshake::{HandshakeLimit, HandshakeLimitLayer, PermitFuture};
pub use ip_rate::{
    IpRateLimit, IpRateLimitLayer, IpRateLimiter, RateDecision, DEFAULT_MAX_KEYS,
    DEFAULT_PRUNE_INTERVAL,
};
pub use key::{IpKey, KeyPrefix};
pub use message::{Admit, Excess, MessageLimits, MessageRateLimiter, OnExcess};
pub use rejection::{ConnectionScope, LimitRejection, QuotaPolicy, RATELIMIT, RATELIMIT_POLICY};
pub use spec::{ByteRate, RateSpec, RateSpecError};

/// The client address a limit is keyed by: [`ClientIp`] if a
/// [`ClientIpLayer`](crate::ClientIpLayer) ran, else the socket peer.
pub(crate) fn client_addr<B>(req: &Request<B>) -> Option<IpAddr> {
    let ext = req.extensions();
    if let Some(ClientIp(ip)) = ext.get::<ClientIp>() {
        return Some(*ip);
    }
    if let Some(PeerAddr(a)) = ext.get::<PeerAddr>() {
        return Some(a.ip());
    }
    ext.get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(a)| a.ip())
}
