//! Trying the chosen backends in turn before the client is answered.
//!
//! The [`UpstreamLayer`](wsgate_layers::UpstreamLayer) hands the handler an ordered list
//! of candidates. A connect, TLS or handshake failure is retried on the next one, up to
//! `max_attempts` backends and within `retry_budget` for all of them together, so a
//! client never sees a dead backend while another can take it. Each failure is also a
//! passive health check: the backend is ejected for a backoff that doubles with every
//! failure in a row (`eject_backoff` … `eject_backoff_max`), and a success ends the
//! streak.

use std::{sync::Arc, time::Duration};

use tokio::time::{timeout_at, Instant};
use tracing::warn;
use wsgate_layers::upstream::Backend;

use super::{Connector, Opened};
use crate::{error::UpstreamError, handshake::ClientHandshake};

/// Retry and passive-ejection settings of one upstream.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// Most backends tried for one client handshake.
    pub max_attempts: usize,
    /// Time all attempts may take together.
    pub budget: Duration,
    /// First passive ejection.
    pub eject_base: Duration,
    /// Longest passive ejection.
    pub eject_max: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            budget: Duration::from_secs(5),
            eject_base: Duration::from_secs(1),
            eject_max: Duration::from_secs(30),
        }
    }
}

impl Connector {
    /// The same connector with these retry settings.
    pub fn with_retry(mut self, retry: Retry) -> Self {
        self.retry = retry;
        self
    }

    /// Opens the first candidate that completes its handshake (or refuses it with its
    /// own status), trying at most `max_attempts` within the retry budget. `request`
    /// builds the upgrade request for a backend.
    pub(crate) async fn open_any(
        &self,
        candidates: &[Arc<Backend>],
        request: impl Fn(&Backend) -> Vec<u8>,
        hs: &ClientHandshake,
        request_id: &str,
    ) -> Result<(Arc<Backend>, Opened), Option<UpstreamError>> {
        let deadline = Instant::now() + self.retry.budget;
        let mut last = None;
        for backend in candidates.iter().take(self.retry.max_attempts.max(1)) {
            let req = request(backend);
            let result = match timeout_at(deadline, self.open(backend, &req, hs)).await {
                Ok(r) => r,
                Err(_) => Err(UpstreamError::Timeout {
                    backend: backend.url().to_string(),
                    after: self.retry.budget,
                }),
            };
            match result {
                Ok(opened) => {
                    backend.record_success();
                    return Ok((backend.clone(), opened));
                }
                Err(e) => {
                    // A handshake the backend broke is retried too: the upgrade is a GET
                    // and the client has sent nothing else yet.
                    let retry = e.retryable() || matches!(e, UpstreamError::Protocol { .. });
                    if retry {
                        let ejected =
                            backend.record_failure(self.retry.eject_base, self.retry.eject_max);
                        warn!(
                            request_id,
                            backend = %backend.url(),
                            error = %e,
                            ejected_ms = ejected.as_millis() as u64,
                            "upstream attempt failed; backend ejected"
                        );
                    } else {
                        warn!(request_id, backend = %backend.url(), error = %e, "upstream attempt failed");
                    }
                    last = Some(e);
                    if !retry || Instant::now() >= deadline {
                        break;
                    }
                }
            }
        }
        Err(last)
    }
}
