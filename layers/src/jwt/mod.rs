//! JWT authentication for WebSocket routes (work in progress).
