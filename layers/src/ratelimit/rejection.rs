//! Why the rate-limit layers refused a handshake, and the response each refusal becomes.

use std::{fmt, time::Duration};

use axum::response::{IntoResponse, Response};
use http::{HeaderName, HeaderValue, StatusCode};

use crate::response_future::text_response;

/// The `RateLimit-Policy` header (IETF draft-ietf-httpapi-ratelimit-headers-09).
pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// The `RateLimit` header (IETF draft-ietf-httpapi-ratelimit-headers-09).
pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// A quota as advertised in `RateLimit-Policy`: `quota` handshakes per `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaPolicy {
    /// Handshakes allowed in one window (the burst).
    pub quota: u32,
    /// Seconds to refill the whole quota.
    pub window_secs: u64,
}

/// Which count a connection limit refused on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionScope {
    /// Too many open sockets from this client network (429).
    PerIp,
    /// Too many open sockets for this verified subject (429).
    PerSubject,
    /// The route (layer instance) is full (503).
    Global,
}

/// A handshake refused by a layer of [`ratelimit`](crate::ratelimit).
///
/// Each variant becomes a plain-text response with the right status; the 429s carry
/// `Retry-After`, and the handshake-rate refusal also the draft `RateLimit-Policy` and
/// `RateLimit` headers. The response also carries the rejection itself as an extension,
/// so an outer layer (a metrics counter, a logger) can tell a connection cap's 429 from
/// a rate limit's, or an overload's 503 from a missing backend's:
///
/// ```
/// use axum::response::IntoResponse;
/// use wsgate_layers::ratelimit::{ConnectionScope, LimitRejection};
///
/// let resp = LimitRejection::TooManyConnections(ConnectionScope::PerIp).into_response();
/// assert_eq!(resp.status(), 429);
/// assert_eq!(
///     resp.extensions().get::<LimitRejection>(),
///     Some(&LimitRejection::TooManyConnections(ConnectionScope::PerIp))
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LimitRejection {
    /// The client network made handshakes faster than its quota (429).
    RateLimited {
        /// How long until one more handshake would be admitted.
        retry_after: Duration,
        /// The quota that was exceeded.
        policy: QuotaPolicy,
    },
    /// The client address is on the deny-list (403).
    Denied,
    /// A connection cap is reached (429 per IP / subject, 503 global).
    TooManyConnections(ConnectionScope),
    /// Too many handshakes are in progress on this server (503).
    Overloaded,
    /// A shared limit store (Redis) is unreachable and the layer fails closed (503).
    StoreUnavailable,
    /// No client address: the server was started without connect info and no
    /// `ClientIpLayer` ran (500, a deployment bug).
    NoClientAddress,
}

impl LimitRejection {
    /// The status this refusal is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Denied => StatusCode::FORBIDDEN,
            Self::TooManyConnections(ConnectionScope::Global) => StatusCode::SERVICE_UNAVAILABLE,
            Self::TooManyConnections(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Overloaded | Self::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::NoClientAddress => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl fmt::Display for LimitRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::RateLimited { retry_after, .. } => write!(
                f,
                "too many handshakes from your address; retry in {}s",
                ceil_secs(*retry_after)
            ),
            Self::Denied => f.write_str("your address is not allowed"),
            Self::TooManyConnections(ConnectionScope::PerIp) => {
                f.write_str("too many open connections from your address")
            }
            Self::TooManyConnections(ConnectionScope::PerSubject) => {
                f.write_str("too many open connections for this account")
            }
            Self::TooManyConnections(ConnectionScope::Global) => {
                f.write_str("this endpoint is at its connection limit; retry later")
            }
            Self::Overloaded => f.write_str("too many handshakes in progress; retry later"),
            Self::StoreUnavailable => f.write_str("rate-limit store unavailable; retry later"),
            Self::NoClientAddress => f.write_str(
                "server misconfigured: no client address (serve with connect info or add ClientIpLayer)",
            ),
        }
    }
}

impl std::error::Error for LimitRejection {}

/// Seconds rounded up, at least 1 (`Retry-After: 0` would invite an immediate retry).
pub(crate) fn ceil_secs(d: Duration) -> u64 {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    s.max(1)
}

impl IntoResponse for LimitRejection {
    fn into_response(self) -> Response {
        let mut r = text_response(self.status(), format!("{self}\n"));
        let h = r.headers_mut();
        match &self {
            Self::RateLimited {
                retry_after,
                policy,
            } => {
                let secs = ceil_secs(*retry_after);
                h.insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
                if let Ok(v) = HeaderValue::from_str(&format!(
                    "\"per-ip\";q={};w={}",
                    policy.quota, policy.window_secs
                )) {
                    h.insert(RATELIMIT_POLICY.clone(), v);
                }
                if let Ok(v) = HeaderValue::from_str(&format!("\"per-ip\";r=0;t={secs}")) {
                    h.insert(RATELIMIT.clone(), v);
                }
            }
            Self::TooManyConnections(_) | Self::Overloaded | Self::StoreUnavailable => {
                h.insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            Self::Denied | Self::NoClientAddress => {}
        }
        r.extensions_mut().insert(self);
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limited_answer_carries_retry_after_rounded_up_and_draft_headers() {
        let r = LimitRejection::RateLimited {
            retry_after: Duration::from_millis(1200),
            policy: QuotaPolicy {
                quota: 40,
                window_secs: 2,
            },
        }
        .into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()["retry-after"], "2");
        assert_eq!(r.headers()["ratelimit-policy"], "\"per-ip\";q=40;w=2");
        assert_eq!(r.headers()["ratelimit"], "\"per-ip\";r=0;t=2");
    }

    #[test]
    fn statuses_match_the_scope() {
        use ConnectionScope::*;
        assert_eq!(LimitRejection::TooManyConnections(PerIp).status(), 429);
        assert_eq!(LimitRejection::TooManyConnections(PerSubject).status(), 429);
        assert_eq!(LimitRejection::TooManyConnections(Global).status(), 503);
        assert_eq!(LimitRejection::Denied.status(), 403);
        assert_eq!(LimitRejection::Overloaded.status(), 503);
        assert_eq!(LimitRejection::NoClientAddress.status(), 500);
        assert_eq!(ceil_secs(Duration::ZERO), 1);
        assert_eq!(ceil_secs(Duration::from_secs(3)), 3);
    }
}
