//! Tower layers that protect and route WebSocket endpoints.
//!
//! `wsgate-layers` is the library half of [wsgate](https://example.invalid/wsgate): the
//! checks and decisions a WebSocket gateway makes *before* it answers an upgrade, packaged
//! as ordinary [`tower`](https://docs.rs/tower) layers so they drop into any axum
//! [`Router`](axum::Router) without the rest of wsgate.
//!
//! Every layer follows the same rules:
//!
//! * A policy failure (401, 403, 429, 503 …) is a **response**, never an error: the
//!   wrapped service stays infallible, so axum needs no `HandleErrorLayer`.
//! * What a layer decided travels to the handler as a typed request extension
//!   ([`ClientIp`], [`SelectedUpstream`], …), so the handler (or the wsgate relay) reads the
//!   decision instead of re-deriving it.
//!
//! # Layout
//!
//! | module | what it decides |
//! |---|---|
//! | [`client_ip`] | who the client is (socket peer, or a trusted proxy's forwarding headers) |
//! | [`header_alias`] | which header names a CGI-style backend reads as one (`X_Auth_Subject` is `X-Auth-Subject`) |
//! | [`jwt`] | whether the client holds a valid token ([`JwtAuthLayer`]); hands [`VerifiedClaims`], [`SubjectKey`], [`TokenExpiry`](jwt::TokenExpiry) and [`TokenProtocolMarker`](jwt::TokenProtocolMarker) downstream |
//! | [`proxy_protocol`] | the client address a load balancer sends in a PROXY v1/v2 header (parser for the listener) |
//! | [`ratelimit`] | whether the client may connect now: handshake rate per IP, connection caps, handshakes in progress, message rates |
//! | [`sticky`] | the key that keeps a client on one backend: signed cookie (set on the 101), JWT claim, header or client IP ([`StickyLayer`]) |
//! | [`upstream`] | which backend takes the socket: the backend set, its policies (consistent hash with bounded load) and [`UpstreamLayer`] |
//!
//! # Example
//!
//! ```no_run
//! use std::{net::SocketAddr, sync::Arc};
//! use axum::{routing::get, Router};
//! use wsgate_layers::{client_ip::ClientIpLayer, upstream::{Upstream, UpstreamLayer, Policy}};
//!
//! # async fn handler() {}
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let echo = Arc::new(Upstream::new("echo", Policy::RoundRobin, ["ws://127.0.0.1:9001"])?);
//! let app: Router = Router::new()
//!     .route("/ws", get(handler))
//!     .layer(UpstreamLayer::new(echo))
//!     .layer(ClientIpLayer::new());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await?;
//! # Ok(()) }
//! ```
#![warn(missing_docs)]
#![deny(unreachable_pub)]
#![deny(unsafe_code)]

pub mod client_ip;
mod cookie_header;
pub mod header_alias;
pub mod jwt;
pub mod lease;
pub mod proxy_protocol;
pub mod ratelimit;
pub mod response_future;
pub mod sticky;
pub mod upstream;

pub use client_ip::{ClientIp, ClientIpLayer};
pub use jwt::{JwtAuthLayer, VerifiedClaims};
pub use lease::Leases;
pub use ratelimit::{ConnectionLimitLayer, HandshakeLimitLayer, IpRateLimitLayer, SubjectKey};
pub use sticky::StickyLayer;
pub use upstream::{Backend, SelectedUpstream, Upstream, UpstreamLayer};
