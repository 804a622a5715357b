//! What the layer hands downstream: verified claims, the expiry, the protocol marker.

use std::{
    str::FromStr,
    sync::Arc,
    time::{Duration, SystemTime},
};

use axum::{
    extract::{FromRequestParts, OptionalFromRequestParts},
    response::IntoResponse,
};
use http::{header::CONNECTION, request::Parts, HeaderMap, HeaderName, HeaderValue, StatusCode};
use jsonwebtoken::Algorithm;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::response_future::text_response;

/// The claims of the token [`JwtAuthLayer`](super::JwtAuthLayer) verified, as a request
/// extension.
///
/// Cheap to clone (shared). Read it with `Extension<VerifiedClaims>`, or deserialize it
/// into your own type with the [`Claims`] extractor.
#[derive(Debug, Clone)]
pub struct VerifiedClaims(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    claims: Map<String, Value>,
    alg: Algorithm,
    kid: Option<String>,
}

impl VerifiedClaims {
    pub(crate) fn new(claims: Map<String, Value>, alg: Algorithm, kid: Option<String>) -> Self {
        Self(Arc::new(Inner { claims, alg, kid }))
    }

    /// All claims of the payload.
    pub fn claims(&self) -> &Map<String, Value> {
        &self.0.claims
    }

    /// One claim.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.claims.get(name)
    }

    /// A string claim.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(Value::as_str)
    }

    /// `sub`, when it is a string.
    pub fn subject(&self) -> Option<&str> {
        self.get_str("sub")
    }

    /// `iss`, when it is a string.
    pub fn issuer(&self) -> Option<&str> {
        self.get_str("iss")
    }

    /// `exp` as a point in time.
    pub fn expires_at(&self) -> Option<SystemTime> {
        exp_time(&self.0.claims)
    }

    /// The granted scopes (`scope`, `scp`, `scopes`; see
    /// [`JwtAuthBuilder::require_scopes`](super::JwtAuthBuilder::require_scopes)).
    pub fn scopes(&self) -> Vec<&str> {
        super::verify::scopes(&self.0.claims)
    }

    /// Whether the token grants `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes().contains(&scope)
    }

    /// The algorithm the token was signed with.
    pub fn algorithm(&self) -> Algorithm {
        self.0.alg
    }

    /// The `kid` of the key that verified the token, if the token named one.
    pub fn key_id(&self) -> Option<&str> {
        self.0.kid.as_deref()
    }

    /// The claims as your own type.
    pub fn deserialize<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        T::deserialize(&self.0.claims)
    }
}

pub(crate) fn exp_time(claims: &Map<String, Value>) -> Option<SystemTime> {
    let exp = claims.get("exp")?.as_f64()?;
    if !exp.is_finite() || exp < 0.0 {
        return None;
    }
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs_f64(exp.min(u64::MAX as f64 / 2.0)))
}

/// Extracts the verified claims as `T`.
///
/// ```no_run
/// use serde::Deserialize;
/// use wsgate_layers::jwt::Claims;
///
/// #[derive(Deserialize)]
/// struct User { sub: String }
///
/// async fn handler(Claims(user): Claims<User>) -> String {
///     format!("hello {}", user.sub)
/// }
/// ```
///
/// Rejects with [`ClaimsRejection`]: `500` when no [`JwtAuthLayer`](super::JwtAuthLayer)
/// ran in front of the handler (a wiring bug), `401` when the verified claims do not fit
/// `T`. `Option<Claims<T>>` is `None` when no layer ran.
#[derive(Debug, Clone)]
pub struct Claims<T>(pub T);

/// Why [`Claims`] could not be extracted.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClaimsRejection {
    /// No [`VerifiedClaims`] in the request: the route is not behind
    /// [`JwtAuthLayer`](super::JwtAuthLayer). Answered `500`.
    JwtAuthLayerMissing,
    /// The claims do not deserialize into the handler's type. Answered `401`.
    UnexpectedShape,
}

impl IntoResponse for ClaimsRejection {
    fn into_response(self) -> axum::response::Response {
        match self {
            Self::JwtAuthLayerMissing => text_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "JwtAuthLayer missing: the route reads Claims but is not behind JwtAuthLayer\n",
            ),
            Self::UnexpectedShape => {
                let mut r = text_response(
                    StatusCode::UNAUTHORIZED,
                    "token claims do not have the shape this route expects\n",
                );
                r.headers_mut().insert(
                    http::header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(
                        "Bearer error=\"invalid_token\", error_description=\"token claims do not have the expected shape\"",
                    ),
                );
                r
            }
        }
    }
}

impl std::fmt::Display for ClaimsRejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::JwtAuthLayerMissing => "JwtAuthLayer missing",
            Self::UnexpectedShape => "token claims do not have the expected shape",
        })
    }
}

impl std::error::Error for ClaimsRejection {}

impl<T, S> FromRequestParts<S> for Claims<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ClaimsRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let claims = parts
            .extensions
            .get::<VerifiedClaims>()
            .ok_or(ClaimsRejection::JwtAuthLayerMissing)?;
        claims.deserialize().map(Claims).map_err(|e| {
            tracing::debug!(error = %e, "jwt: claims do not fit the extractor type");
            ClaimsRejection::UnexpectedShape
        })
    }
}

impl<T, S> OptionalFromRequestParts<S> for Claims<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ClaimsRejection;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        if parts.extensions.get::<VerifiedClaims>().is_none() {
            return Ok(None);
        }
        <Self as FromRequestParts<S>>::from_request_parts(parts, state)
            .await
            .map(Some)
    }
}

/// What to do with an open socket when its token expires (`on_expiry`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnExpiry {
    /// Close it with code `4401`, reason `token expired` (the default).
    #[default]
    Close,
    /// Keep it open: the token only guarded the handshake.
    Keep,
}

/// An `on_expiry` value that is neither `close` nor `keep`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown jwt on_expiry {0:?} (expected close or keep)")]
pub struct UnknownOnExpiry(pub String);

impl FromStr for OnExpiry {
    type Err = UnknownOnExpiry;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "close" => Ok(Self::Close),
            "keep" => Ok(Self::Keep),
            _ => Err(UnknownOnExpiry(s.to_owned())),
        }
    }
}

/// When the token of this connection expires, and whether to close the socket then.
///
/// Inserted as a request extension when the token has `exp`. The wsgate relay closes the
/// socket with [`TokenExpiry::CLOSE_CODE`] / [`TokenExpiry::CLOSE_REASON`] at `at` when
/// `close` is set. In your own axum handler, race the socket against the deadline:
///
/// ```no_run
/// use axum::{extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade}, response::Response, Extension};
/// use wsgate_layers::jwt::TokenExpiry;
///
/// async fn handler(ws: WebSocketUpgrade, expiry: Option<Extension<TokenExpiry>>) -> Response {
///     ws.on_upgrade(move |mut socket: WebSocket| async move {
///         let deadline = expiry.filter(|e| e.close).map(|e| e.remaining());
///         let expired = async {
///             match deadline {
///                 Some(d) => tokio::time::sleep(d).await,
///                 None => std::future::pending().await,
///             }
///         };
///         tokio::pin!(expired);
///         loop {
///             tokio::select! {
///                 _ = &mut expired => {
///                     let _ = socket.send(Message::Close(Some(CloseFrame {
///                         code: TokenExpiry::CLOSE_CODE,
///                         reason: TokenExpiry::CLOSE_REASON.into(),
///                     }))).await;
///                     break;
///                 }
///                 msg = socket.recv() => match msg {
///                     Some(Ok(m)) => { let _ = socket.send(m).await; }
///                     _ => break,
///                 },
///             }
///         }
///     })
/// }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenExpiry {
    /// The token's `exp`.
    pub at: SystemTime,
    /// Whether the socket must be closed at `at` (`on_expiry = "close"`).
    pub close: bool,
}

impl TokenExpiry {
    /// The WebSocket close code for an expired token.
    pub const CLOSE_CODE: u16 = 4401;
    /// The WebSocket close reason for an expired token.
    pub const CLOSE_REASON: &'static str = "token expired";

    /// Time left until `at` (zero when already past).
    pub fn remaining(&self) -> Duration {
        self.at
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
    }
}

/// The subprotocol to answer in the `101` when the backend chooses none.
///
/// The client put its token in `Sec-WebSocket-Protocol`, which the layer stripped. A
/// browser fails a handshake that offered subprotocols and got none back, so the server
/// must echo an element the client offered, and the only token-free one is this marker:
/// `bearer` for the `["bearer", "<token>"]` form, `wsgate.bearer` for the
/// `["wsgate.bearer.<token>", "wsgate.bearer"]` form.
///
/// [`JwtAuth`](super::JwtAuth) itself adds `Sec-WebSocket-Protocol: <marker>` to a `101`
/// response that has none, so axum handlers need do nothing; the wsgate proxy also reads
/// the extension when it builds its own `101`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenProtocolMarker(pub String);

/// Claim → header forwarding, with the removal of client-sent copies.
#[derive(Debug, Clone, Default)]
pub(crate) struct ForwardClaims(pub(crate) Vec<(String, HeaderName)>);

impl ForwardClaims {
    /// Removes every configured identity header (always: a client must never be able to
    /// send `X-Auth-Subject` itself), then sets them from the verified claims.
    ///
    /// The client's `X_Auth_Subject` goes too (a CGI-style backend reads it as the same
    /// field, see [`header_alias`](crate::header_alias)), and so does `X-Auth-Subject`
    /// in its `Connection` header: a proxy drops the headers listed there, which would let
    /// the client remove the verified value on its way to the backend.
    pub(crate) fn apply(&self, headers: &mut HeaderMap, claims: &Map<String, Value>) {
        if self.0.is_empty() {
            return;
        }
        for (_, h) in &self.0 {
            headers.remove(h);
        }
        crate::header_alias::remove_underscore_aliases(headers, |n| self.names(n));
        self.unlist_from_connection(headers);
        for (claim, h) in &self.0 {
            let Some(v) = claims.get(claim).and_then(claim_header_value) else {
                continue;
            };
            headers.append(h.clone(), v);
        }
    }
}

impl ForwardClaims {
    /// Whether `name` (lower case, `-` for `_`) is one of the identity headers.
    fn names(&self, name: &str) -> bool {
        self.0.iter().any(|(_, h)| h.as_str() == name)
    }

    /// Takes the identity headers (and their aliases) out of `Connection`, keeping every
    /// other token. Nothing is rebuilt unless one is listed.
    fn unlist_from_connection(&self, headers: &mut HeaderMap) {
        let listed = |token: &str| {
            self.0
                .iter()
                .any(|(_, h)| crate::header_alias::is_alias(h.as_str(), token.trim()))
        };
        let any = headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(listed));
        if !any {
            return;
        }
        let kept: Vec<HeaderValue> = headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| {
                let Ok(text) = v.to_str() else {
                    return Some(v.clone());
                };
                let rest: Vec<&str> = text
                    .split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty() && !listed(t))
                    .collect();
                HeaderValue::from_str(&rest.join(", "))
                    .ok()
                    .filter(|v| !v.is_empty())
            })
            .collect();
        headers.remove(CONNECTION);
        for v in kept {
            headers.append(CONNECTION, v);
        }
    }
}

/// Strings as they are, numbers and booleans as their JSON text, arrays and objects
/// JSON-encoded; `null` and anything that is not a valid header value (control
/// characters, non-ASCII) is skipped.
pub(crate) fn claim_header_value(v: &Value) -> Option<HeaderValue> {
    let text = match v {
        Value::Null => return None,
        Value::String(s) => s.clone(),
        Value::Bool(_) | Value::Number(_) | Value::Array(_) | Value::Object(_) => v.to_string(),
    };
    if text.bytes().any(|b| !(b == b' ' || b.is_ascii_graphic())) {
        return None;
    }
    HeaderValue::from_str(&text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn claim_values_become_safe_header_values() {
        assert_eq!(
            claim_header_value(&json!("alice"))
                .as_ref()
                .map(|v| v.as_bytes()),
            Some(&b"alice"[..])
        );
        assert_eq!(
            claim_header_value(&json!(42))
                .as_ref()
                .map(|v| v.as_bytes()),
            Some(&b"42"[..])
        );
        assert_eq!(
            claim_header_value(&json!(true))
                .as_ref()
                .map(|v| v.as_bytes()),
            Some(&b"true"[..])
        );
        assert_eq!(
            claim_header_value(&json!(["a", "b"]))
                .as_ref()
                .map(|v| v.as_bytes()),
            Some(&br#"["a","b"]"#[..])
        );
        assert!(claim_header_value(&json!("a\r\nX-Evil: 1")).is_none());
        assert!(claim_header_value(&json!("tab\there")).is_none());
        assert!(claim_header_value(&json!("é")).is_none());
        assert!(claim_header_value(&Value::Null).is_none());
    }

    #[test]
    fn forwarding_removes_client_copies_even_without_the_claim() {
        let fwd = ForwardClaims(vec![(
            "sub".into(),
            HeaderName::from_static("x-auth-subject"),
        )]);
        let mut h = HeaderMap::new();
        h.insert("x-auth-subject", HeaderValue::from_static("mallory"));
        fwd.apply(&mut h, &Map::new());
        assert!(!h.contains_key("x-auth-subject"));
        let claims = json!({"sub": "alice"})
            .as_object()
            .cloned()
            .unwrap_or_default();
        h.insert("x-auth-subject", HeaderValue::from_static("mallory"));
        fwd.apply(&mut h, &claims);
        assert_eq!(h.get_all("x-auth-subject").iter().count(), 1);
        assert_eq!(h["x-auth-subject"], "alice");
    }

    #[test]
    fn forwarding_removes_aliases_and_connection_listings_of_identity_headers() {
        let fwd = ForwardClaims(vec![(
            "sub".into(),
            HeaderName::from_static("x-auth-subject"),
        )]);
        let mut h = HeaderMap::new();
        h.insert("x_auth_subject", HeaderValue::from_static("mallory"));
        h.insert("x_other", HeaderValue::from_static("kept"));
        h.append(
            CONNECTION,
            HeaderValue::from_static("Upgrade, X-Auth-Subject, keep-alive"),
        );
        h.append(CONNECTION, HeaderValue::from_static("x_auth_subject"));
        let claims = json!({"sub": "alice"})
            .as_object()
            .cloned()
            .unwrap_or_default();
        fwd.apply(&mut h, &claims);
        assert!(!h.contains_key("x_auth_subject"));
        assert_eq!(h["x_other"], "kept");
        assert_eq!(h["x-auth-subject"], "alice");
        let conn: Vec<_> = h.get_all(CONNECTION).iter().collect();
        assert_eq!(conn, ["Upgrade, keep-alive"]);
    }

    #[test]
    fn on_expiry_parses() {
        assert_eq!("close".parse(), Ok(OnExpiry::Close));
        assert_eq!("Keep".parse(), Ok(OnExpiry::Keep));
        assert!("later".parse::<OnExpiry>().is_err());
    }
}
