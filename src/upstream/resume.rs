//! Re-attaching an open client socket to another backend (`resume = true`).
//!
//! Design note. When a backend dies under an open socket (EOF or reset without a close
//! frame), or wsgate itself moves the socket (a removed backend's drain, rebalancing),
//! the relay stops at a boundary in both directions and hands the client back
//! ([`RelayEnd::BackendGone`](crate::relay)). The handler then opens a new upstream
//! WebSocket here: same path, query and forwarded headers as the client's handshake,
//! offering only the subprotocol the first backend chose (a backend choosing another, or
//! none, is a failed attempt), no extension (a `permessage-deflate` context cannot move,
//! so such sockets are never resumed), and two headers that tell the backend what
//! this is: `X-Wsgate-Resumed: 1` and `X-Wsgate-Session: <connection id>`. Copies of
//! those headers sent by clients are removed on every upstream with `resume`, so a
//! backend can trust them.
//!
//! Attempts are bounded: at most `max_attempts` backends (never the one that died),
//! within `retry_budget`. Nothing of this runs for upstreams without `resume`.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use base64::{engine::general_purpose::STANDARD, Engine as _};
use http::{HeaderMap, HeaderName, HeaderValue};
use tokio::time::{timeout_at, Instant};
use tracing::{debug, warn};
use wsgate_layers::upstream::{Backend, Upstream};

use super::{Connector, Opened};
use crate::{
    config::UpstreamConfig,
    handshake::{upstream_request, ClientHandshake, Forwarding, UpstreamAnswer},
    relay::Stream,
};

/// Header telling a backend that the socket continues an earlier session.
pub const RESUMED_HEADER: &str = "x-wsgate-resumed";
/// Header carrying the connection id (the first handshake's `X-Request-Id`).
pub const SESSION_HEADER: &str = "x-wsgate-session";

/// Resume settings of one upstream.
#[derive(Debug, Clone, Default)]
pub struct ResumeSettings {
    /// Text message sent to the client after a re-attachment.
    pub notice: Option<String>,
}

/// Checks `upstream.resume`, `resume_notice` and `rebalance`; the error names the key.
pub fn check_moves(u: &UpstreamConfig) -> Result<(), (String, String)> {
    if let Some(n) = &u.resume_notice {
        if !u.resume {
            return Err((
                "resume_notice".into(),
                "only used with resume = true".into(),
            ));
        }
        if n.len() > 4096 {
            return Err((
                "resume_notice".into(),
                "at most 4096 bytes (it is one text message)".into(),
            ));
        }
    }
    if let Some(r) = &u.rebalance {
        if !(r.max_fraction.is_finite() && r.max_fraction > 0.0 && r.max_fraction <= 1.0) {
            return Err((
                "rebalance.max_fraction".into(),
                "must be more than 0 and at most 1 (e.g. 0.1)".into(),
            ));
        }
        if !(r.threshold.is_finite() && r.threshold >= 1.0) {
            return Err((
                "rebalance.threshold".into(),
                "must be a number of at least 1.0 (e.g. 1.5)".into(),
            ));
        }
        if r.window.0 < Duration::from_millis(10) {
            return Err(("rebalance.window".into(), "must be at least 10ms".into()));
        }
    }
    Ok(())
}

/// What a socket keeps of its client's handshake to rebuild it for another backend.
/// Built only for sockets of upstreams with `resume`.
#[derive(Debug)]
pub(crate) struct ResumeRequest {
    /// Path and query as forwarded the first time.
    pub(crate) path_and_query: String,
    /// The client's headers plus the resume headers.
    pub(crate) headers: HeaderMap,
    /// The handshake to check answers against: the negotiated subprotocol only.
    pub(crate) hs: ClientHandshake,
    /// The subprotocol the first backend chose.
    pub(crate) protocol: Option<HeaderValue>,
    pub(crate) client_ip: IpAddr,
    pub(crate) trusted_peer: bool,
    pub(crate) peer: SocketAddr,
    pub(crate) tls: bool,
    /// The connection id, sent as `X-Request-Id` and `X-Wsgate-Session`.
    pub(crate) session: String,
    pub(crate) host: Option<String>,
}

impl ResumeRequest {
    fn build(&self, backend: &Backend) -> Vec<u8> {
        let fwd = Forwarding {
            client_ip: self.client_ip,
            trusted_peer: self.trusted_peer,
            peer: self.peer,
            tls: self.tls,
            request_id: &self.session,
            host: self.host.as_deref(),
        };
        let url = backend.url();
        let target = format!("{}{}", url.path_prefix(), self.path_and_query);
        upstream_request(&target, url.authority(), &self.hs, &self.headers, &fwd)
    }
}

/// The handshake for a resumed session: a fresh key, only the negotiated protocol,
/// no extension.
pub(crate) fn resumed_handshake(
    hs: &ClientHandshake,
    protocol: Option<&HeaderValue>,
) -> ClientHandshake {
    let key = STANDARD.encode(fastrand::u128(..).to_be_bytes());
    ClientHandshake {
        key: HeaderValue::from_str(&key).unwrap_or_else(|_| hs.key.clone()),
        protocols: protocol
            .and_then(|p| p.to_str().ok())
            .map(|p| vec![p.trim().to_string()])
            .unwrap_or_default(),
        extensions: Vec::new(),
    }
}

/// The client's headers for a resumed session: its own, plus who it is.
pub(crate) fn resumed_headers(headers: &HeaderMap, session: &str) -> HeaderMap {
    let mut h = headers.clone();
    h.insert(
        HeaderName::from_static(RESUMED_HEADER),
        HeaderValue::from_static("1"),
    );
    if let Ok(v) = HeaderValue::from_str(session) {
        h.insert(HeaderName::from_static(SESSION_HEADER), v);
    }
    h
}

/// Removes client-sent copies of the resume headers (a backend must be able to trust them).
pub(crate) fn strip_resume_headers(headers: &mut HeaderMap) {
    headers.remove(RESUMED_HEADER);
    headers.remove(SESSION_HEADER);
}

impl Connector {
    /// The same connector re-attaching sockets whose backend went away.
    pub fn with_resume(mut self, settings: ResumeSettings) -> Self {
        self.resume = Some(Arc::new(settings));
        self
    }

    /// Its resume settings, if resume is on.
    pub fn resume(&self) -> Option<&Arc<ResumeSettings>> {
        self.resume.as_ref()
    }

    /// The same connector registering each socket so rebalancing can move it.
    pub fn with_rebalance(mut self, on: bool) -> Self {
        self.rebalance = on;
        self
    }

    /// Whether sockets are registered for rebalancing.
    pub fn rebalance(&self) -> bool {
        self.rebalance
    }

    /// Opens a resumed session on another available backend of `upstream` (never
    /// `gone`): at most `max_attempts` backends within the retry budget. The backend
    /// must switch with the originally negotiated subprotocol and no extension.
    pub(crate) async fn reopen(
        &self,
        upstream: &Upstream,
        key: Option<&[u8]>,
        gone: &Arc<Backend>,
        req: &ResumeRequest,
    ) -> Option<(Arc<Backend>, Stream, Vec<u8>)> {
        let session = req.session.as_str();
        let deadline = Instant::now() + self.retry.budget;
        let candidates = upstream.candidates(key);
        let tries = candidates
            .iter()
            .filter(|b| !Arc::ptr_eq(b, gone) && b.id() != gone.id())
            .take(self.retry.max_attempts.max(1));
        for backend in tries {
            let request = req.build(backend);
            let opened = match timeout_at(deadline, self.open(backend, &request, &req.hs)).await {
                Ok(Ok(o)) => o,
                Ok(Err(e)) => {
                    let ejected =
                        backend.record_failure(self.retry.eject_base, self.retry.eject_max);
                    warn!(session, backend = %backend.url(), error = %e, ejected_ms = ejected.as_millis() as u64, "resume attempt failed; backend ejected");
                    continue;
                }
                Err(_) => {
                    warn!(session, backend = %backend.url(), "resume attempts ran out of time");
                    return None;
                }
            };
            match opened {
                Opened::Upgraded {
                    stream,
                    leftover,
                    answer:
                        UpstreamAnswer::Switching {
                            protocol,
                            extensions: None,
                            ..
                        },
                } if same_protocol(protocol.as_ref(), req.protocol.as_ref()) => {
                    backend.record_success();
                    if let Some(k) = key {
                        upstream.served_instead_of(k, backend, gone);
                    }
                    return Some((backend.clone(), stream, leftover));
                }
                Opened::Upgraded { .. } => {
                    debug!(session, backend = %backend.url(), "resume refused: another subprotocol or an extension");
                }
                Opened::Refused { status, .. } => {
                    debug!(session, backend = %backend.url(), %status, "backend refused the resumed session");
                }
            }
        }
        None
    }
}

fn same_protocol(a: Option<&HeaderValue>, b: Option<&HeaderValue>) -> bool {
    let norm = |v: Option<&HeaderValue>| {
        v.and_then(|v| v.to_str().ok())
            .map(|s| s.trim().to_string())
    };
    norm(a) == norm(b)
}
