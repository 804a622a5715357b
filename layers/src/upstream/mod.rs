//! Which backend takes a WebSocket.
//!
//! An [`Upstream`] is a named group of [`Backend`]s and a [`Policy`]. [`UpstreamLayer`]
//! asks it for an ordered list of candidates (the chosen backend first, then the
//! fail-over order) and puts them in the request as [`SelectedUpstream`]; the handler
//! connects to the first candidate that answers. When no backend is healthy the layer
//! answers `503` itself.
//!
//! The backend set is swapped atomically ([`arc_swap`]) so a reload never blocks a
//! handshake, and a backend's open-socket count is a guard ([`ActiveConnection`]) so no
//! path can leak it.
//!
//! ```
//! use std::sync::Arc;
//! use wsgate_layers::upstream::{Policy, Upstream};
//!
//! let up = Upstream::new("chat", Policy::RoundRobin, ["ws://127.0.0.1:9001", "ws://127.0.0.1:9002"]).unwrap();
//! let first = up.candidates(None);
//! let second = up.candidates(None);
//! assert_ne!(first[0].url(), second[0].url());
//! ```

mod backend;
mod hash;
mod layer;
pub mod memory;
mod policy;

pub use backend::{ActiveConnection, Backend, BackendUrl, BackendUrlError, MovableSocket};
pub use hash::stable_hash;
pub use layer::{SelectedUpstream, StickyKey, UpstreamLayer, UpstreamService};
pub use memory::FailoverMemory;
pub use policy::{Policy, Upstream, UpstreamError};
