//! Reaching backends: connect, failover, health, the warm pool and discovery.
//!
//! Backend *choice* lives in [`wsgate_layers::upstream`]; this module opens the socket
//! to the chosen backend and performs the HTTP/1.1 upgrade on it, by hand: the request is
//! a few hundred bytes wsgate already knows how to write, and reading the answer with
//! `httparse` keeps any bytes the backend sent right after its 101 (a greeting frame),
//! which a general HTTP client would hide or drop.
//!
//! * [`connect`]: TCP/TLS connect and the upgrade.
//! * [`failover`]: trying candidates in turn within a budget; passive ejection.
//! * [`health`]: active checks (HTTP, TCP, WebSocket) with rise/fall thresholds.
//! * [`pool`]: warm, not yet upgraded connections per backend.
//! * [`resume`]: re-attaching an open client socket to another backend.
//! * [`supervisor`]: the tasks above per backend, the backend set's changes (reload,
//!   DNS re-resolution) and draining of removed backends.

mod connect;
pub mod failover;
pub mod health;
pub mod pool;
pub mod resume;
pub mod supervisor;

pub(crate) use connect::Opened;
pub use connect::{tls_client_config, Connector};
pub use health::{check_health, HealthCheck};
pub use resume::{check_moves, ResumeSettings};
pub use supervisor::{check_sticky, Supervisor};
