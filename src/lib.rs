//! wsgate: a WebSocket reverse proxy made of Tower layers.
//!
//! The binary (`src/main.rs`) is a thin shell over this library: it parses the command
//! line, loads a [`config::Config`] and calls [`server::start`]. The checks that run
//! before an upgrade (client IP, JWT, rate and connection limits, upstream choice) live in
//! the separate `wsgate-layers` crate so any axum app can use them.
//!
//! # Layout
//!
//! | module | concern |
//! |---|---|
//! | [`config`] | the TOML contract: shape, loading, validation (errors name file and key) |
//! | [`preflight`] | reading the certificates, keys and secrets a configuration names, before start and for `--check` |
//! | [`server`] | listeners, TLS termination, per-route layer stacks, graceful shutdown |
//! | [`proxy`] | the WebSocket route handler: upstream handshake first, then the client's 101 |
//! | `upgrade` | HTTP/1.1 WebSocket upgrades read, routed and answered without hyper's driver (the rest goes to hyper) |
//! | [`hygiene`] | request-line checks before any route sees a request (a Tower layer) |
//! | [`refusals`] | counting the handshakes a layer refused before the handler (a Tower layer) |
//! | [`upstream`] | TCP/TLS connect to a backend and the upstream half of the handshake; failover, health checks, warm pool, DNS discovery, backend-set changes |
//! | [`reload`] | SIGHUP and file-change reloads of the backend lists |
//! | [`relay`] | everything after the 101: the frame-header relay (design notes there) |
//! | [`metrics`] | counters rendered for Prometheus on the admin listener |
//! | [`demo`] | `wsgate demo` and the echo backend |
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let cfg = wsgate::config::Config::load("wsgate.toml".as_ref())?;
//! let running = wsgate::server::start(&cfg).await?;
//! println!("listening on {:?}", running.listen);
//! running.shutdown().await;
//! # Ok(()) }
//! ```
#![warn(missing_docs)]
#![deny(unsafe_code)]
mod admin;
pub mod capacity;
pub mod config;
pub mod demo;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
mod handshake;
pub mod hygiene;
mod layers;
mod memory;
pub mod metrics;
pub mod preflight;
pub mod proxy;
pub mod refusals;
pub mod relay;
pub mod reload;
pub mod server;
#[cfg(target_os = "linux")]
mod sockopt;
pub mod tls;
mod upgrade;
pub mod upstream;
