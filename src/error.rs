//! Why a client's handshake was refused, and why a backend could not be reached.

use axum::{
    body::Body,
    response::{IntoResponse, Response},
};
use http::{header, HeaderValue, StatusCode};

/// A client upgrade request wsgate refuses before talking to any backend.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeRejection {
    /// Not a GET.
    #[error("this route only accepts GET WebSocket upgrades")]
    MethodNotAllowed,
    /// A plain HTTP request on a WebSocket route.
    #[error("this route speaks WebSocket only: send Upgrade: websocket and Connection: Upgrade")]
    NotWebSocket,
    /// `Sec-WebSocket-Version` other than 13.
    #[error("unsupported Sec-WebSocket-Version: this server speaks version 13")]
    UnsupportedVersion,
    /// A malformed handshake.
    #[error("bad WebSocket handshake: {0}")]
    Bad(&'static str),
}

impl IntoResponse for HandshakeRejection {
    fn into_response(self) -> Response {
        let msg = format!("{self}\n");
        let (status, extra): (StatusCode, &[(header::HeaderName, &'static str)]) = match self {
            Self::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, &[(header::ALLOW, "GET")]),
            Self::NotWebSocket => (
                StatusCode::UPGRADE_REQUIRED,
                &[
                    (header::UPGRADE, "websocket"),
                    (header::CONNECTION, "Upgrade"),
                ],
            ),
            Self::UnsupportedVersion => (
                StatusCode::UPGRADE_REQUIRED,
                &[(header::SEC_WEBSOCKET_VERSION, "13")],
            ),
            Self::Bad(_) => (StatusCode::BAD_REQUEST, &[]),
        };
        let mut resp = text(status, msg);
        for (name, value) in extra {
            resp.headers_mut()
                .insert(name.clone(), HeaderValue::from_static(value));
        }
        resp
    }
}

/// Why the upstream socket could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// TCP connect failed (refused, unreachable, DNS).
    #[error("cannot connect to backend {backend}: {source}")]
    Connect {
        /// The backend.
        backend: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Connect or handshake took longer than allowed.
    #[error("backend {backend} did not answer within {after:?}")]
    Timeout {
        /// The backend.
        backend: String,
        /// The time allowed.
        after: std::time::Duration,
    },
    /// TLS to a `wss://` backend failed.
    #[error("TLS to backend {backend} failed: {reason}")]
    Tls {
        /// The backend.
        backend: String,
        /// What failed.
        reason: String,
    },
    /// The backend answered something that is not a valid WebSocket handshake.
    #[error("backend {backend} broke the handshake: {reason}")]
    Protocol {
        /// The backend.
        backend: String,
        /// What was wrong.
        reason: &'static str,
    },
}

impl UpstreamError {
    /// Another backend may succeed where this one failed (the client has not been
    /// answered and nothing was sent that a retry would repeat with effect).
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            Self::Connect { .. } | Self::Timeout { .. } | Self::Tls { .. }
        )
    }
}

impl IntoResponse for UpstreamError {
    fn into_response(self) -> Response {
        let status = StatusCode::BAD_GATEWAY;
        // The client learns that the backend failed, not the backend's address.
        let msg = match self {
            Self::Connect { .. } => "backend unreachable\n",
            Self::Timeout { .. } => "backend did not answer in time\n",
            Self::Tls { .. } => "TLS to backend failed\n",
            Self::Protocol { .. } => "backend broke the WebSocket handshake\n",
        };
        text(status, msg.to_string())
    }
}

pub(crate) fn text(status: StatusCode, msg: String) -> Response {
    let mut r = Response::new(Body::from(msg));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
