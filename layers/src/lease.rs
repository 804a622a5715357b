//! Things held for as long as a WebSocket is open.
//!
//! A layer that admits a socket against a limit (per-IP connections, a global cap, a
//! per-user cap) pushes a guard into the request's [`Leases`]. The guard releases its
//! slot when dropped, so the count is right on every path: normal close, error, backend
//! failure, a vanished client, even a panicking handler (the request and its extensions
//! are dropped during unwinding).
//!
//! Whoever runs the socket must keep the leases alive for its whole life. The wsgate
//! relay does; in your own axum handler move them into the upgrade task:
//!
//! ```no_run
//! use axum::{extract::ws::WebSocketUpgrade, response::Response, Extension};
//! use wsgate_layers::Leases;
//!
//! async fn handler(ws: WebSocketUpgrade, leases: Option<Extension<Leases>>) -> Response {
//!     ws.on_upgrade(move |socket| async move {
//!         let _leases = leases; // released when the socket task ends
//!         drop(socket);
//!     })
//! }
//! ```

use std::{any::Any, fmt, sync::Arc};

/// Guards held for the life of one WebSocket. Cloning shares them; the slots are freed
/// when the last clone is dropped.
#[derive(Clone, Default)]
pub struct Leases(Vec<Arc<dyn Any + Send + Sync>>);

impl Leases {
    /// Holds `guard` until every clone of these leases is dropped.
    pub fn push<G: Any + Send + Sync>(&mut self, guard: G) {
        self.0.push(Arc::new(guard));
    }

    /// How many guards are held.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Leases {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Leases")
            .field("held", &self.0.len())
            .finish()
    }
}
