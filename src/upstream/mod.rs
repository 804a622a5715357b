//! Reaching backends: TCP or TLS connect, and the upstream half of the handshake.
//!
//! Backend *choice* lives in [`wsgate_layers::upstream`]; this module opens the socket
//! to the chosen backend and performs the HTTP/1.1 upgrade on it, by hand: the request is
//! a few hundred bytes wsgate already knows how to write, and reading the answer with
//! `httparse` keeps any bytes the backend sent right after its 101 (a greeting frame),
//! which a general HTTP client would hide or drop.

mod connect;

pub(crate) use connect::Opened;
pub use connect::{tls_client_config, Connector};
