//! wsgate's benchmark harness: a load generator, an echo backend and the suite that
//! measures wsgate, nginx and HAProxy against the same backend (see `BENCHMARKS.md`).
//!
//! # Layout
//!
//! * [`ws`]: just enough WebSocket framing for a generator that costs less than the
//!   proxies it measures.
//! * [`echo`]: the backend, streaming frames back without buffering messages.
//! * [`load`]: the scenarios (closed-loop and fixed-rate echo, connection churn, idle).
//! * [`procstat`]: CPU time and RSS of a process tree from `/proc`.
//! * [`targets`]: configurations and launching of wsgate, nginx and HAProxy.
//! * [`jwt`]: keys and tokens for the JWT scenario.
//! * [`suite`]: runs everything, takes medians, writes the tables and the chart.

#![warn(missing_docs)]
#![deny(unreachable_pub)]

pub mod echo;
pub mod jwt;
pub mod load;
pub mod procstat;
pub mod suite;
pub mod targets;
pub mod ws;
