//! Active health checks: one probe loop per backend.
//!
//! A probe is a plain TCP connect (`tcp`), an HTTP `GET` of a path expecting a status
//! (`http`), or a full WebSocket handshake that is then closed with 1000 (`websocket`).
//! A backend goes down after `fall` failed probes in a row and comes back after `rise`
//! passing ones, as in Pingora and HAProxy, so one lost packet does not flap it. Every
//! change is logged and counted (`wsgate_backend_health_transitions_total`).
//!
//! Probes run on the supervisor's [`TaskTracker`](tokio_util::task::TaskTracker), each
//! stopped by its own child [`CancellationToken`] when its backend leaves the group or
//! wsgate shuts down.

use std::{sync::Arc, time::Duration};

use base64::{engine::general_purpose::STANDARD, Engine as _};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use wsgate_layers::upstream::Backend;

use super::Connector;
use crate::{config::HealthConfig, relay::Stream};

/// How a backend is probed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthKind {
    /// HTTP `GET` of the path; the status must match.
    Http,
    /// TCP (and TLS) connect.
    Tcp,
    /// Full WebSocket handshake on the path, then a close.
    WebSocket,
}

/// One upstream's active check.
#[derive(Debug, Clone)]
pub struct HealthCheck {
    /// Probe kind.
    pub kind: HealthKind,
    /// Path for `http` and `websocket`.
    pub path: String,
    /// Between probes.
    pub interval: Duration,
    /// One probe's time limit.
    pub timeout: Duration,
    /// Passing probes in a row to come back.
    pub rise: u32,
    /// Failing probes in a row to go down.
    pub fall: u32,
    /// Expected `http` status (`None`: any 2xx).
    pub expect_status: Option<u16>,
}

/// Checks `upstream.health`; the error names the key under `health`.
pub fn check_health(h: &HealthConfig) -> Result<HealthCheck, (String, String)> {
    let e = |k: &str, m: &str| (format!("health.{k}"), m.to_string());
    let kind = match h.kind.as_str() {
        "http" => HealthKind::Http,
        "tcp" => HealthKind::Tcp,
        "websocket" => HealthKind::WebSocket,
        other => {
            return Err(e(
                "kind",
                &format!("`{other}` is not a check kind (http, tcp, websocket)"),
            ))
        }
    };
    let path = h.path.clone().unwrap_or_else(|| {
        if kind == HealthKind::Http {
            "/healthz".into()
        } else {
            "/".into()
        }
    });
    if !path.starts_with('/')
        || path
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err(e("path", "must be a path starting with /"));
    }
    if h.interval.0 < Duration::from_millis(10) {
        return Err(e("interval", "must be at least 10ms"));
    }
    if h.timeout.0.is_zero() {
        return Err(e("timeout", "must be more than 0"));
    }
    if h.rise == 0 {
        return Err(e("rise", "must be at least 1"));
    }
    if h.fall == 0 {
        return Err(e("fall", "must be at least 1"));
    }
    if h.expect_status.is_some_and(|s| !(100..=599).contains(&s)) {
        return Err(e("expect_status", "must be an HTTP status (100-599)"));
    }
    Ok(HealthCheck {
        kind,
        path,
        interval: h.interval.0,
        timeout: h.timeout.0,
        rise: h.rise,
        fall: h.fall,
        expect_status: h.expect_status,
    })
}

/// Probes `backend` every interval until `stop`, flipping its health after `rise`
/// passes or `fall` failures in a row.
pub(crate) async fn watch(
    upstream: String,
    backend: Arc<Backend>,
    check: HealthCheck,
    connector: Connector,
    stop: CancellationToken,
) {
    let (mut passes, mut fails) = (0u32, 0u32);
    loop {
        let result = tokio::select! {
            _ = stop.cancelled() => return,
            r = tokio::time::timeout(check.timeout, probe(&backend, &check, &connector)) => {
                r.unwrap_or_else(|_| Err(format!("no answer within {:?}", check.timeout)))
            }
        };
        match result {
            Ok(()) => {
                passes = passes.saturating_add(1);
                fails = 0;
                if !backend.is_healthy() && passes >= check.rise {
                    backend.set_healthy(true);
                    info!(upstream, backend = %backend.url(), addr = ?backend.addr(), passes, "backend is healthy");
                }
            }
            Err(why) => {
                fails = fails.saturating_add(1);
                passes = 0;
                if backend.is_healthy() && fails >= check.fall {
                    backend.set_healthy(false);
                    warn!(upstream, backend = %backend.url(), addr = ?backend.addr(), fails, reason = %why, "backend is unhealthy");
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(check.interval) => {}
        }
    }
}

async fn probe(
    backend: &Backend,
    check: &HealthCheck,
    connector: &Connector,
) -> Result<(), String> {
    let mut stream = connector
        .connect_timed(backend)
        .await
        .map_err(|e| e.to_string())?;
    let url = backend.url();
    let target = format!("{}{}", url.path_prefix(), check.path);
    match check.kind {
        HealthKind::Tcp => Ok(()),
        HealthKind::Http => {
            let req = format!(
                "GET {target} HTTP/1.1\r\nHost: {}\r\nUser-Agent: wsgate-health\r\nConnection: close\r\n\r\n",
                url.authority()
            );
            let status = request(&mut stream, req.as_bytes()).await?.0;
            let ok = match check.expect_status {
                Some(s) => status == s,
                None => (200..300).contains(&status),
            };
            if ok {
                Ok(())
            } else {
                Err(format!("answered {status}"))
            }
        }
        HealthKind::WebSocket => {
            let key = STANDARD.encode(fastrand::u128(..).to_be_bytes());
            let req = format!(
                "GET {target} HTTP/1.1\r\nHost: {}\r\nUser-Agent: wsgate-health\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n",
                url.authority()
            );
            let (status, accept) = request(&mut stream, req.as_bytes()).await?;
            if status != 101 {
                return Err(format!("answered {status} to the upgrade"));
            }
            if accept.as_deref() != Some(crate::handshake::accept_key(key.as_bytes()).as_str()) {
                return Err("wrong Sec-WebSocket-Accept".into());
            }
            // A masked close frame, code 1000, so the backend sees a clean goodbye.
            let mask = fastrand::u32(..).to_be_bytes();
            let mut frame = vec![0x88, 0x82, mask[0], mask[1], mask[2], mask[3]];
            frame.extend([0x03 ^ mask[0], 0xe8 ^ mask[1]]);
            let _ = stream.write_all(&frame).await;
            let _ = stream.flush().await;
            Ok(())
        }
    }
}

/// Sends `req` and reads the response head: its status and `Sec-WebSocket-Accept`.
async fn request(stream: &mut Stream, req: &[u8]) -> Result<(u16, Option<String>), String> {
    stream.write_all(req).await.map_err(|e| e.to_string())?;
    stream.flush().await.map_err(|e| e.to_string())?;
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed the connection before answering".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => {
                let status = resp.code.unwrap_or(0);
                let accept = resp
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("sec-websocket-accept"))
                    .and_then(|h| std::str::from_utf8(h.value).ok())
                    .map(|v| v.trim().to_string());
                return Ok((status, accept));
            }
            Ok(httparse::Status::Partial) if buf.len() < 16 * 1024 => continue,
            Ok(httparse::Status::Partial) => return Err("response head too large".into()),
            Err(e) => return Err(format!("bad HTTP answer: {e}")),
        }
    }
}
