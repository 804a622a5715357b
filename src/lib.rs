//! wsgate
mod admin;
pub mod config;
pub mod demo;
pub mod error;
mod handshake;
mod layers;
pub mod metrics;
pub mod proxy;
pub mod relay;
pub mod server;
pub mod tls;
pub mod upstream;
