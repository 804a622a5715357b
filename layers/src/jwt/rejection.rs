//! Why a handshake was refused: one variant per failure, each with its status.

use std::fmt;

use axum::{body::Body, response::IntoResponse};
use http::{header::WWW_AUTHENTICATE, HeaderValue, Response, StatusCode};

use crate::response_future::text_response;

/// A request refused by [`JwtAuth`](super::JwtAuth).
///
/// Every variant becomes a response (see [`IntoResponse`]):
///
/// * [`Missing`](Self::Missing): `401` with a bare `WWW-Authenticate: Bearer` challenge.
///   RFC 6750 §3.1 asks servers not to send an error code when the client sent no
///   credentials at all, so none is sent; the body says what was expected.
/// * [`InsufficientScope`](Self::InsufficientScope) and
///   [`MissingRequiredClaim`](Self::MissingRequiredClaim): `403` with
///   `WWW-Authenticate: Bearer error="insufficient_scope", error_description="…"`. The
///   token is genuine; it just does not grant this route.
/// * Everything else: `401` with `WWW-Authenticate: Bearer error="invalid_token",
///   error_description="…"`.
///
/// Descriptions say what was wrong in words a developer can act on; they never quote the
/// token, a key, or any other client-controlled text (a `kid` may be anything).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum JwtRejection {
    /// No token in any of the configured sources.
    Missing,
    /// The token is longer than the configured maximum; nothing of it was decoded.
    TooLarge {
        /// The configured maximum, in bytes.
        max: usize,
    },
    /// Not a JWS compact serialization (three base64url segments), or a segment does not
    /// decode to the JSON it must hold.
    Malformed(&'static str),
    /// `alg: none` (in any casing): an unsigned token is never accepted.
    UnsignedToken,
    /// The `alg` is not one this layer verifies.
    UnsupportedAlgorithm,
    /// The header names a key or a key location (`jku`, `x5u`, `jwk`, `x5c`). Keys are
    /// only ever taken from the configured key set, so such tokens are refused outright.
    EmbeddedKey(&'static str),
    /// The header lists `crit` extensions; this layer understands none.
    CriticalExtension,
    /// The `kid` names no configured key (also after a permitted JWKS re-fetch).
    UnknownKey,
    /// No configured key may verify this `alg` (for example an `HS256` token when only
    /// RSA keys are configured), or the key named by `kid` is pinned to another algorithm.
    AlgorithmMismatch,
    /// The signature does not verify.
    BadSignature,
    /// `exp` has passed (beyond the leeway).
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    NotYetValid,
    /// `iat` is in the future (beyond the leeway).
    IssuedInFuture,
    /// `iss` is not the configured issuer.
    WrongIssuer,
    /// `aud` does not contain the configured audience.
    WrongAudience,
    /// A registered claim the validation requires (`exp`, `iss`, `aud`) is absent.
    MissingClaim(String),
    /// A registered claim has the wrong type (for example a string `exp`).
    InvalidClaim(String),
    /// The token is genuine but lacks a claim the route requires (`403`).
    MissingRequiredClaim(String),
    /// The token is genuine but lacks a scope the route requires (`403`).
    InsufficientScope(String),
}

impl JwtRejection {
    /// The status this rejection answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::InsufficientScope(_) | Self::MissingRequiredClaim(_) => StatusCode::FORBIDDEN,
            _ => StatusCode::UNAUTHORIZED,
        }
    }

    /// The `WWW-Authenticate` challenge sent with the response.
    pub fn challenge(&self) -> String {
        match self {
            Self::Missing => "Bearer".to_owned(),
            Self::InsufficientScope(_) | Self::MissingRequiredClaim(_) => format!(
                "Bearer error=\"insufficient_scope\", error_description=\"{}\"",
                quoted_safe(&self.to_string())
            ),
            _ => format!(
                "Bearer error=\"invalid_token\", error_description=\"{}\"",
                quoted_safe(&self.to_string())
            ),
        }
    }

    /// A short machine-friendly name of the reason, for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::TooLarge { .. } => "too_large",
            Self::Malformed(_) => "malformed",
            Self::UnsignedToken => "alg_none",
            Self::UnsupportedAlgorithm => "unsupported_alg",
            Self::EmbeddedKey(_) => "embedded_key",
            Self::CriticalExtension => "crit",
            Self::UnknownKey => "unknown_kid",
            Self::AlgorithmMismatch => "alg_mismatch",
            Self::BadSignature => "bad_signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::IssuedInFuture => "iat_future",
            Self::WrongIssuer => "wrong_issuer",
            Self::WrongAudience => "wrong_audience",
            Self::MissingClaim(_) => "missing_claim",
            Self::InvalidClaim(_) => "invalid_claim",
            Self::MissingRequiredClaim(_) => "missing_required_claim",
            Self::InsufficientScope(_) => "insufficient_scope",
        }
    }
}

impl fmt::Display for JwtRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing => f.write_str("no bearer token in the request"),
            Self::TooLarge { max } => write!(f, "token is larger than {max} bytes"),
            Self::Malformed(what) => write!(f, "malformed token: {what}"),
            Self::UnsignedToken => f.write_str("unsigned tokens (alg none) are not accepted"),
            Self::UnsupportedAlgorithm => f.write_str("token alg is not supported"),
            Self::EmbeddedKey(field) => {
                write!(f, "token header field {field} is not accepted")
            }
            Self::CriticalExtension => {
                f.write_str("token header lists unsupported crit extensions")
            }
            Self::UnknownKey => f.write_str("token kid names no known key"),
            Self::AlgorithmMismatch => f.write_str("no key may verify the token's alg"),
            Self::BadSignature => f.write_str("token signature is invalid"),
            Self::Expired => f.write_str("token has expired"),
            Self::NotYetValid => f.write_str("token is not valid yet (nbf)"),
            Self::IssuedInFuture => f.write_str("token is issued in the future (iat)"),
            Self::WrongIssuer => f.write_str("token issuer is not accepted"),
            Self::WrongAudience => f.write_str("token audience is not accepted"),
            Self::MissingClaim(c) => write!(f, "token lacks the {c} claim"),
            Self::InvalidClaim(c) => write!(f, "token claim {c} has an invalid type"),
            Self::MissingRequiredClaim(c) => write!(f, "token lacks the required claim {c}"),
            Self::InsufficientScope(s) => write!(f, "token lacks the required scope {s}"),
        }
    }
}

impl std::error::Error for JwtRejection {}

impl IntoResponse for JwtRejection {
    fn into_response(self) -> Response<Body> {
        let mut res = text_response(self.status(), format!("{self}\n"));
        if let Ok(v) = HeaderValue::from_str(&self.challenge()) {
            res.headers_mut().insert(WWW_AUTHENTICATE, v);
        } else {
            res.headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        res
    }
}

/// Keeps a description inside an RFC 7235 quoted-string and a header value: printable
/// ASCII, without `"` and `\`.
fn quoted_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_token_gets_a_bare_bearer_challenge() {
        let res = JwtRejection::Missing.into_response();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(res.headers()[WWW_AUTHENTICATE], "Bearer");
    }

    #[test]
    fn scope_failures_are_403_insufficient_scope() {
        let res = JwtRejection::InsufficientScope("chat:write".into()).into_response();
        assert_eq!(res.status(), StatusCode::FORBIDDEN);
        let v = res.headers()[WWW_AUTHENTICATE].to_str().unwrap_or_default();
        assert!(v.starts_with("Bearer error=\"insufficient_scope\""), "{v}");
    }

    #[test]
    fn descriptions_cannot_break_the_quoted_string() {
        let r = JwtRejection::MissingRequiredClaim("a\"b\\c\nd".into());
        let c = r.challenge();
        assert!(!c.contains("a\"b"));
        assert!(HeaderValue::from_str(&c).is_ok());
    }
}
