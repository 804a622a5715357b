//! Sticky sessions: derive the [`StickyKey`] that [`UpstreamLayer`] hashes.
//!
//! [`StickyLayer`] runs just outside [`UpstreamLayer`] and inserts a [`StickyKey`] taken
//! from one source:
//!
//! | source | constructor | key |
//! |---|---|---|
//! | a cookie wsgate sets itself | [`StickyLayer::cookie`] | a random session id, HMAC-signed |
//! | a verified JWT claim | [`StickyLayer::claim`] | the claim's value from [`VerifiedClaims`](crate::VerifiedClaims) |
//! | a request header | [`StickyLayer::header`] | the header's value |
//! | the client IP | [`StickyLayer::client_ip`] | [`ClientIp`](crate::ClientIp) (or the socket peer) |
//! | your own | [`StickyLayer::from_fn`] | whatever [`MakeStickyKey`] returns |
//!
//! The upstream group then sends every socket with the same key to the first available
//! backend in the key's rendezvous order (weighted, optionally load-bounded: see
//! [`Upstream::with_bounded_load`](crate::upstream::Upstream::with_bounded_load)). The
//! hash is fixed across processes and versions, so two wsgate instances with the same
//! backend list agree without talking to each other; adding or removing one of N
//! backends moves about 1/N of the keys. When the key's backend is down or draining,
//! the next in its order takes it; when it recovers, new sockets go back, unless the
//! upstream has a [`FailoverMemory`](crate::upstream::FailoverMemory)
//! ([`Upstream::with_failover_memory`](crate::upstream::Upstream::with_failover_memory)):
//! then the key stays on the backend that took it while that one is available. That
//! memory is per process, so two instances may disagree about such a key after a
//! fail-over.
//!
//! # The cookie
//!
//! A client without a valid cookie gets a fresh session id; the cookie carrying it is set
//! **on the 101 response itself** (a `Set-Cookie` header on the switching-protocols
//! answer, which browsers honour), so even a client whose first request is the WebSocket
//! upgrade is sticky from then on. The value is `base64url(id) "." base64url(tag)` where
//! `tag` is HMAC-SHA256 of the id under a secret the operator configures: a client cannot
//! forge an id (so it cannot pick a backend by trying ids), and the cookie names no
//! backend. Every instance that must agree needs the same secret; a cookie signed with
//! another secret is ignored and replaced. The cookie is removed from the request the
//! backend sees.
//!
//! # Example
//!
//! ```no_run
//! use std::sync::Arc;
//! use axum::{routing::get, Router};
//! use wsgate_layers::{
//!     sticky::StickyLayer,
//!     upstream::{Policy, Upstream, UpstreamLayer},
//!     ClientIpLayer,
//! };
//!
//! # async fn handler() {}
//! # fn build() -> Result<Router, Box<dyn std::error::Error>> {
//! let chat = Arc::new(
//!     Upstream::new("chat", Policy::ConsistentHash, ["ws://127.0.0.1:9001", "ws://127.0.0.1:9002"])?
//!         .with_bounded_load(1.25),
//! );
//! let secret = std::env::var("WSGATE_STICKY_SECRET")?;
//! let app = Router::new()
//!     .route("/ws", get(handler))
//!     .layer(UpstreamLayer::new(chat))                      // reads StickyKey
//!     .layer(StickyLayer::cookie("wsgate_sticky", secret.as_bytes())?.secure(true))
//!     .layer(ClientIpLayer::new());
//! # Ok(app) }
//! ```

mod cookie;
mod future;
mod layer;
mod service;

pub use cookie::{CookieSigner, SecretError, MIN_SECRET_LEN};
pub use future::ResponseFuture;
pub use layer::{MakeStickyKey, StickyLayer};
pub use service::Sticky;

pub use crate::upstream::StickyKey;
