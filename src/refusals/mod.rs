//! Counting the handshakes a layer refused before the route's handler ran.
//!
//! The handler counts every handshake it decides (`wsgate_handshakes_total` by outcome,
//! and the refused ones by status) and marks its response [`Counted`]. A refusal written
//! by a layer in front of it (JWT 401/403, rate limit 429, no backend 503 …) never
//! reaches the handler, so [`CountRefusalsLayer`], just inside the client-IP layer,
//! counts every unmarked answer by its status instead: each handshake is counted once,
//! whichever part of the stack answered.
//!
//! A plain Tower layer rather than an `axum::middleware::from_fn` closure: that one
//! boxes its future and clones the rest of the stack for every request, on the path
//! every new connection takes.
//!
//! ```
//! use std::{convert::Infallible, sync::Arc};
//! use axum::{body::Body, extract::Request, response::Response};
//! use tower::{service_fn, ServiceBuilder};
//! use wsgate::{metrics::Metrics, refusals::CountRefusalsLayer};
//!
//! let metrics = Arc::new(Metrics::default());
//! let route = ServiceBuilder::new()
//!     .layer(CountRefusalsLayer::new(metrics, "/ws"))
//!     .service(service_fn(|_: Request| async {
//!         Ok::<_, Infallible>(Response::new(Body::empty()))
//!     }));
//! # let _ = route;
//! ```

mod future;
mod layer;
mod service;

pub use future::ResponseFuture;
pub use layer::CountRefusalsLayer;
pub use service::CountRefusals;

/// Marks a response whose handshake outcome the handler already counted.
#[derive(Debug, Clone, Copy)]
pub struct Counted;
