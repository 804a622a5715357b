//! [`JwtAuthLayer`] and its builder, [`JwtAuthBuilder`].

use std::{fmt, path::PathBuf, sync::Arc, time::Duration};

use http::{HeaderName, Request};
use tokio_util::task::AbortOnDropHandle;
use tower_layer::Layer;

use crate::ratelimit::SubjectKey;

use super::{
    cache::{CacheStats, Entry, TokenDigest, VerifiedCache, DEFAULT_VERIFIED_CACHE},
    claims::{exp_time, ForwardClaims, OnExpiry, TokenExpiry, VerifiedClaims},
    fetch::JwksClient,
    keys::{self, KeySet, Remote, VerifyKey},
    service::JwtAuth,
    source::{Sources, TokenSource},
    verify::{now_secs, Policy, Verified},
};

/// Default `leeway`: clock skew tolerated on `exp`, `nbf` and `iat`.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(60);
/// Default maximum token length in bytes.
pub const DEFAULT_MAX_TOKEN_SIZE: usize = 8 * 1024;
/// Default interval of the background JWKS refresh.
pub const DEFAULT_JWKS_REFRESH: Duration = Duration::from_secs(5 * 60);
/// Default minimum interval between JWKS re-fetches triggered by unknown `kid`s.
pub const DEFAULT_JWKS_REFETCH_MIN: Duration = Duration::from_secs(10);
/// Default timeout of one JWKS fetch (connect, TLS, request and body).
pub const DEFAULT_JWKS_TIMEOUT: Duration = Duration::from_secs(10);
/// Default cookie and query parameter name.
pub const DEFAULT_TOKEN_PARAM: &str = "access_token";

/// Headers a forwarded claim may never be written to: they steer the proxy, the upgrade
/// or other credentials.
const FORBIDDEN_FORWARD_HEADERS: &[&str] = &[
    "host",
    "authorization",
    "proxy-authorization",
    "cookie",
    "connection",
    "upgrade",
    "content-length",
    "transfer-encoding",
    "te",
    "trailer",
    "keep-alive",
    "proxy-connection",
    "forwarded",
    "x-forwarded-for",
];

/// A configuration the layer refuses. Every message names the `[route.jwt]` key at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JwtConfigError {
    /// No key source at all.
    #[error("jwt: no key configured (set one of jwks_file, jwks_url, secret_file, secret_env, public_keys)")]
    NoKeys,
    /// `sources` is empty.
    #[error("jwt: sources is empty (use e.g. [\"header\", \"protocol\"])")]
    NoSources,
    /// A cookie source on a route without an Origin allow-list: browsers attach cookies
    /// to cross-site WebSocket handshakes (CSWSH), so only the Origin check stops another
    /// site from opening an authenticated socket.
    #[error("jwt: sources contains \"cookie\" but the route has no Origin allow-list; cross-site pages could open authenticated sockets (configure the route's allowed origins, or drop the cookie source)")]
    CookieWithoutOriginAllowList,
    /// A secret is empty.
    #[error("jwt: {key} holds an empty secret")]
    EmptySecret {
        /// The config key.
        key: String,
    },
    /// A secret looks like a PEM key (an RSA public key must never be an HMAC secret).
    #[error("jwt: {key} looks like a PEM key; put public keys in public_keys, not in a secret")]
    SecretIsPem {
        /// The config key.
        key: String,
    },
    /// `secret_env` names an unset (or non-UTF-8) variable.
    #[error("jwt: secret_env: environment variable {name} is not set (or not UTF-8)")]
    SecretEnv {
        /// The variable name.
        name: String,
    },
    /// A file could not be read.
    #[error("jwt: {key}: cannot read {}: {source}", path.display())]
    Read {
        /// The config key.
        key: String,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A public key could not be used.
    #[error("jwt: public_keys: {origin}: {reason}")]
    PublicKey {
        /// The file (or `inline`).
        origin: String,
        /// Why.
        reason: String,
    },
    /// A JWKS document is unusable.
    #[error("jwt: {key}: {reason}")]
    Jwks {
        /// The config key (`jwks_file` …).
        key: String,
        /// Why.
        reason: String,
    },
    /// `jwks_url` is not a usable URL (or its TLS setup failed).
    #[error("jwt: jwks_url {url:?}: {reason}")]
    JwksUrl {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The initial JWKS fetch failed.
    #[error("jwt: jwks_url {url:?}: initial fetch failed: {reason}")]
    JwksFetch {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// A `forward_claims` header is invalid or reserved.
    #[error("jwt: forward_claims: header {header:?} {reason}")]
    ForwardHeader {
        /// The header name as configured.
        header: String,
        /// Why.
        reason: &'static str,
    },
    /// A name (`cookie_name`, `query_param`, a claim or scope) is empty or contains
    /// characters it may not.
    #[error("jwt: {key}: {value:?} is not a valid name")]
    BadName {
        /// The config key.
        key: &'static str,
        /// The value.
        value: String,
    },
    /// `build` was called outside a Tokio runtime while a JWKS URL needs one.
    #[error("jwt: jwks_url needs a Tokio runtime for its refresh task")]
    NoRuntime,
}

#[derive(Clone)]
enum Secret {
    Env(String),
    File(PathBuf),
    Inline(Vec<u8>),
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Env(n) => f.debug_tuple("Env").field(n).finish(),
            Self::File(p) => f.debug_tuple("File").field(p).finish(),
            Self::Inline(_) => f.write_str("Inline([redacted])"),
        }
    }
}

#[derive(Debug, Clone)]
enum Pem {
    File(PathBuf),
    Inline(Vec<u8>),
}

#[derive(Debug, Clone)]
enum Jwks {
    File(PathBuf),
    Inline(String),
}

/// Builds a [`JwtAuthLayer`]. Methods map one-to-one to the `[route.jwt]` keys.
///
/// Start with [`JwtAuthLayer::builder`]. Check a configuration without I/O with
/// [`validate`](Self::validate); [`build`](Self::build) validates, loads every key
/// (reading files, fetching the JWKS URL once) and starts the JWKS refresh.
#[derive(Debug, Clone)]
pub struct JwtAuthBuilder {
    secrets: Vec<Secret>,
    pems: Vec<Pem>,
    jwks: Vec<Jwks>,
    jwks_url: Option<String>,
    jwks_refresh: Duration,
    jwks_refetch_min: Duration,
    jwks_timeout: Duration,
    issuers: Vec<String>,
    audiences: Vec<String>,
    leeway: Duration,
    sources: Vec<TokenSource>,
    cookie_name: String,
    query_param: String,
    forward: Vec<(String, String)>,
    on_expiry: OnExpiry,
    required_claims: Vec<String>,
    required_scopes: Vec<String>,
    require_exp: bool,
    max_token_size: usize,
    origin_allow_list: bool,
    verified_cache: usize,
    jwks_ca_file: Option<PathBuf>,
}

impl Default for JwtAuthBuilder {
    fn default() -> Self {
        Self {
            secrets: Vec::new(),
            pems: Vec::new(),
            jwks: Vec::new(),
            jwks_url: None,
            jwks_refresh: DEFAULT_JWKS_REFRESH,
            jwks_refetch_min: DEFAULT_JWKS_REFETCH_MIN,
            jwks_timeout: DEFAULT_JWKS_TIMEOUT,
            issuers: Vec::new(),
            audiences: Vec::new(),
            leeway: DEFAULT_LEEWAY,
            sources: vec![TokenSource::Header, TokenSource::Protocol],
            cookie_name: DEFAULT_TOKEN_PARAM.to_owned(),
            query_param: DEFAULT_TOKEN_PARAM.to_owned(),
            forward: Vec::new(),
            on_expiry: OnExpiry::Close,
            required_claims: Vec::new(),
            required_scopes: Vec::new(),
            require_exp: true,
            max_token_size: DEFAULT_MAX_TOKEN_SIZE,
            origin_allow_list: false,
            verified_cache: DEFAULT_VERIFIED_CACHE,
            jwks_ca_file: None,
        }
    }
}

impl JwtAuthBuilder {
    /// `jwks_file`: a JWKS document on disk (RSA, EC, OKP and oct keys, each with its
    /// `kid` and, ideally, `alg`). Read once at build.
    pub fn jwks_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.jwks.push(Jwks::File(path.into()));
        self
    }

    /// A JWKS document given as text (for programs that obtain it themselves).
    pub fn jwks_json(mut self, json: impl Into<String>) -> Self {
        self.jwks.push(Jwks::Inline(json.into()));
        self
    }

    /// `jwks_url`: an `http://` or `https://` JWKS endpoint, fetched at build (a failure
    /// fails the build), refreshed every [`jwks_refresh_interval`](Self::jwks_refresh_interval)
    /// in the background and re-fetched when a token names an unknown `kid` (at most once
    /// per [`jwks_refetch_min_interval`](Self::jwks_refetch_min_interval)). `https` uses
    /// the system root certificates, or only [`jwks_ca_file`](Self::jwks_ca_file) when
    /// set. Redirects are not followed (a `3xx` fails the fetch): configure the final URL.
    pub fn jwks_url(mut self, url: impl Into<String>) -> Self {
        self.jwks_url = Some(url.into());
        self
    }

    /// `jwks_ca_file`: PEM file of the CA certificate(s) that sign the `https` JWKS
    /// server's certificate, for an identity provider on a private PKI. When set, these
    /// CAs **replace** the system roots for the JWKS fetch (as `curl --cacert` does).
    /// Read once at build; needs an `https://` [`jwks_url`](Self::jwks_url).
    pub fn jwks_ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.jwks_ca_file = Some(path.into());
        self
    }

    /// `verified_cache` (default 10 000, `0` turns it off): how many verified tokens the
    /// layer remembers, so a reused token skips the signature check.
    ///
    /// Entries are keyed by the SHA-256 of the token (the token is not stored), hold the
    /// verified claims, and are used only until the token's `exp` (re-checked on every
    /// use with the same [`leeway`](Self::leeway)) and only while the key set is the one
    /// that verified them (a changed JWKS document makes every entry a miss). Tokens
    /// without `exp` are not cached. See [`JwtAuthLayer::cache_stats`].
    pub fn verified_cache(mut self, entries: usize) -> Self {
        self.verified_cache = entries;
        self
    }

    /// `jwks_refresh_interval` (default 5 min).
    pub fn jwks_refresh_interval(mut self, every: Duration) -> Self {
        self.jwks_refresh = every;
        self
    }

    /// `jwks_refetch_min_interval` (default 10 s): the least time between two re-fetches
    /// caused by unknown `kid`s.
    pub fn jwks_refetch_min_interval(mut self, min: Duration) -> Self {
        self.jwks_refetch_min = min;
        self
    }

    /// `jwks_timeout` (default 10 s): the budget of one fetch.
    pub fn jwks_timeout(mut self, timeout: Duration) -> Self {
        self.jwks_timeout = timeout;
        self
    }

    /// `secret_file`: an HMAC secret (HS256/384/512) in a file; trailing whitespace and
    /// newlines are ignored. A file that looks like a PEM key is refused.
    pub fn secret_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.secrets.push(Secret::File(path.into()));
        self
    }

    /// `secret_env`: an HMAC secret in an environment variable, read at build.
    pub fn secret_env(mut self, name: impl Into<String>) -> Self {
        self.secrets.push(Secret::Env(name.into()));
        self
    }

    /// An HMAC secret given as bytes.
    ///
    /// For programs that hold the secret already (from a vault, say). Do not hard-code
    /// secrets in source; the proxy configuration deliberately offers only
    /// `secret_file` and `secret_env`. Use at least 32 random bytes.
    pub fn secret(mut self, secret: impl Into<Vec<u8>>) -> Self {
        self.secrets.push(Secret::Inline(secret.into()));
        self
    }

    /// `public_keys`: PEM files holding an RSA, EC (P-256, P-384) or Ed25519 public key
    /// (SPKI `PUBLIC KEY`, PKCS#1 `RSA PUBLIC KEY`, or a `CERTIFICATE`); the type is
    /// detected and pins the key to its algorithms. Private keys are refused.
    pub fn public_keys<P: Into<PathBuf>>(mut self, paths: impl IntoIterator<Item = P>) -> Self {
        self.pems
            .extend(paths.into_iter().map(|p| Pem::File(p.into())));
        self
    }

    /// One PEM public key given as bytes (see [`public_keys`](Self::public_keys)).
    pub fn public_key_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.pems.push(Pem::Inline(pem.into()));
        self
    }

    /// `issuer`: the accepted `iss` (call again to accept several). `iss` becomes required.
    pub fn issuer(mut self, iss: impl Into<String>) -> Self {
        self.issuers.push(iss.into());
        self
    }

    /// `audience`: a value `aud` must contain (call again to accept several). `aud`
    /// becomes required. Without any audience, `aud` is **not checked**: configure one
    /// whenever the issuer serves more than one audience.
    pub fn audience(mut self, aud: impl Into<String>) -> Self {
        self.audiences.push(aud.into());
        self
    }

    /// `leeway` (default 60 s): clock skew tolerated on `exp`, `nbf` and `iat`; whole
    /// seconds.
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }

    /// `sources` (default `["header", "protocol"]`): where tokens are read from. The
    /// `Authorization` header, when enabled, is always looked at first and wins; the
    /// others in the given order. `cookie` needs
    /// [`origin_allow_list(true)`](Self::origin_allow_list); `query` is opt-in because
    /// URLs end up in access logs (the parameter is removed before the request goes on).
    pub fn sources(mut self, sources: impl IntoIterator<Item = TokenSource>) -> Self {
        self.sources = sources.into_iter().collect();
        self
    }

    /// `cookie_name` (default `access_token`).
    pub fn cookie_name(mut self, name: impl Into<String>) -> Self {
        self.cookie_name = name.into();
        self
    }

    /// `query_param` (default `access_token`).
    pub fn query_param(mut self, name: impl Into<String>) -> Self {
        self.query_param = name.into();
        self
    }

    /// One `forward_claims` entry: put `claim` in request header `header`.
    ///
    /// Client-sent copies of every configured header are always removed first, even when
    /// the token lacks the claim. Strings are forwarded as they are, numbers and booleans
    /// as their JSON text, arrays and objects JSON-encoded; `null` and values that are not
    /// valid header values (control characters, non-ASCII) are skipped.
    pub fn forward_claim(mut self, claim: impl Into<String>, header: impl Into<String>) -> Self {
        self.forward.push((claim.into(), header.into()));
        self
    }

    /// `forward_claims`: several `claim → header` entries.
    pub fn forward_claims<C: Into<String>, H: Into<String>>(
        mut self,
        map: impl IntoIterator<Item = (C, H)>,
    ) -> Self {
        self.forward
            .extend(map.into_iter().map(|(c, h)| (c.into(), h.into())));
        self
    }

    /// `on_expiry` (default `close`): see [`TokenExpiry`].
    pub fn on_expiry(mut self, on_expiry: OnExpiry) -> Self {
        self.on_expiry = on_expiry;
        self
    }

    /// `require_claims`: claims that must be present and not `null` (else `403`).
    pub fn require_claims<C: Into<String>>(mut self, claims: impl IntoIterator<Item = C>) -> Self {
        self.required_claims
            .extend(claims.into_iter().map(Into::into));
        self
    }

    /// `require_scopes`: scopes the token must grant (else `403 insufficient_scope`).
    /// Scopes are read from `scope` (space-separated string) and `scp` / `scopes` (string
    /// or array of strings).
    pub fn require_scopes<C: Into<String>>(mut self, scopes: impl IntoIterator<Item = C>) -> Self {
        self.required_scopes
            .extend(scopes.into_iter().map(Into::into));
        self
    }

    /// `require_exp` (default `true`): refuse tokens without `exp`. A present `exp` is
    /// always checked.
    pub fn require_exp(mut self, require: bool) -> Self {
        self.require_exp = require;
        self
    }

    /// `max_token_size` (default 8 KiB): longer tokens are refused before any decoding.
    pub fn max_token_size(mut self, bytes: usize) -> Self {
        self.max_token_size = bytes;
        self
    }

    /// Declares that the route checks `Origin` against an allow-list (required for the
    /// `cookie` source; the proxy sets it from the route's config).
    pub fn origin_allow_list(mut self, present: bool) -> Self {
        self.origin_allow_list = present;
        self
    }

    /// Checks the configuration without reading files or the network.
    pub fn validate(&self) -> Result<(), JwtConfigError> {
        if self.secrets.is_empty()
            && self.pems.is_empty()
            && self.jwks.is_empty()
            && self.jwks_url.is_none()
        {
            return Err(JwtConfigError::NoKeys);
        }
        if self.sources.is_empty() {
            return Err(JwtConfigError::NoSources);
        }
        if self.sources.contains(&TokenSource::Cookie) && !self.origin_allow_list {
            return Err(JwtConfigError::CookieWithoutOriginAllowList);
        }
        check_name("cookie_name", &self.cookie_name)?;
        check_name("query_param", &self.query_param)?;
        for c in &self.required_claims {
            check_name("require_claims", c)?;
        }
        for s in &self.required_scopes {
            check_name("require_scopes", s)?;
        }
        self.forward_headers()?;
        if self.jwks_ca_file.is_some()
            && !self
                .jwks_url
                .as_deref()
                .is_some_and(|u| u.starts_with("https://"))
        {
            return Err(JwtConfigError::Jwks {
                key: "jwks_ca_file".to_owned(),
                reason: "is set but jwks_url is not an https:// URL".to_owned(),
            });
        }
        if let Some(url) = &self.jwks_url {
            let uri: http::Uri = url.parse().map_err(|e| JwtConfigError::JwksUrl {
                url: url.clone(),
                reason: format!("not a URL: {e}"),
            })?;
            if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
                return Err(JwtConfigError::JwksUrl {
                    url: url.clone(),
                    reason: "expected an http:// or https:// URL with a host".to_owned(),
                });
            }
        }
        Ok(())
    }

    fn forward_headers(&self) -> Result<ForwardClaims, JwtConfigError> {
        let mut out = Vec::with_capacity(self.forward.len());
        for (claim, header) in &self.forward {
            check_name("forward_claims", claim)?;
            let name = HeaderName::from_bytes(header.as_bytes()).map_err(|_| {
                JwtConfigError::ForwardHeader {
                    header: header.clone(),
                    reason: "is not a valid header name",
                }
            })?;
            if FORBIDDEN_FORWARD_HEADERS.contains(&name.as_str())
                || name.as_str().starts_with("sec-websocket-")
            {
                return Err(JwtConfigError::ForwardHeader {
                    header: header.clone(),
                    reason: "is reserved (it steers the proxy, the upgrade or credentials)",
                });
            }
            out.push((claim.clone(), name));
        }
        Ok(ForwardClaims(out))
    }

    /// Validates, loads every key (files, environment, one JWKS fetch) and starts the
    /// background JWKS refresh (owned by the layer: it stops when the layer and every
    /// service made from it are dropped).
    pub async fn build(self) -> Result<JwtAuthLayer, JwtConfigError> {
        self.validate()?;
        let mut static_keys: Vec<VerifyKey> = Vec::new();
        for s in &self.secrets {
            let key = match s {
                Secret::Env(name) => {
                    let v = std::env::var(name)
                        .map_err(|_| JwtConfigError::SecretEnv { name: name.clone() })?;
                    keys::hmac_key(v.as_bytes(), "secret_env")?
                }
                Secret::File(p) => {
                    keys::hmac_key(&keys::read_file(p, "secret_file").await?, "secret_file")?
                }
                Secret::Inline(b) => keys::hmac_key(b, "secret")?,
            };
            static_keys.push(key);
        }
        for p in &self.pems {
            let key = match p {
                Pem::File(path) => {
                    let pem = keys::read_file(path, "public_keys").await?;
                    keys::pem_key(&pem, &path.display().to_string())?
                }
                Pem::Inline(pem) => keys::pem_key(pem, "inline")?,
            };
            static_keys.push(key);
        }
        for j in &self.jwks {
            let (key, doc) = match j {
                Jwks::File(path) => ("jwks_file", keys::read_file(path, "jwks_file").await?),
                Jwks::Inline(doc) => ("jwks_json", doc.as_bytes().to_vec()),
            };
            let parsed = keys::parse_jwks(&doc).map_err(|reason| JwtConfigError::Jwks {
                key: key.to_owned(),
                reason,
            })?;
            if parsed.is_empty() {
                return Err(JwtConfigError::Jwks {
                    key: key.to_owned(),
                    reason: "holds no usable signature key".to_owned(),
                });
            }
            static_keys.extend(parsed);
        }
        let remote = match &self.jwks_url {
            None => None,
            Some(url) => {
                let ca = match &self.jwks_ca_file {
                    Some(path) => Some(keys::read_file(path, "jwks_ca_file").await?),
                    None => None,
                };
                let client =
                    JwksClient::new(url, self.jwks_timeout, ca.as_deref()).map_err(|reason| {
                        JwtConfigError::JwksUrl {
                            url: url.clone(),
                            reason,
                        }
                    })?;
                Some(Remote::new(url.clone(), client, self.jwks_refetch_min))
            }
        };
        let key_set = Arc::new(KeySet::new(static_keys, remote));
        let refresher = match &self.jwks_url {
            None => None,
            Some(url) => {
                key_set
                    .refresh()
                    .await
                    .map_err(|reason| JwtConfigError::JwksFetch {
                        url: url.clone(),
                        reason,
                    })?;
                if tokio::runtime::Handle::try_current().is_err() {
                    return Err(JwtConfigError::NoRuntime);
                }
                Some(keys::spawn_refresher(&key_set, self.jwks_refresh))
            }
        };
        let mut sources = Vec::with_capacity(self.sources.len());
        // The Authorization header wins whenever it is enabled.
        if self.sources.contains(&TokenSource::Header) {
            sources.push(TokenSource::Header);
        }
        for s in &self.sources {
            if !sources.contains(s) {
                sources.push(*s);
            }
        }
        let policy = Policy::new(
            self.leeway.as_secs(),
            self.max_token_size,
            &self.issuers,
            &self.audiences,
            self.require_exp,
            self.required_claims.clone(),
            self.required_scopes.clone(),
        );
        Ok(JwtAuthLayer {
            shared: Arc::new(Shared {
                forward: self.forward_headers()?,
                keys: key_set,
                policy,
                sources: Sources {
                    order: sources,
                    cookie_name: self.cookie_name,
                    query_param: self.query_param,
                },
                on_expiry: self.on_expiry,
                cache: VerifiedCache::new(self.verified_cache),
                _refresher: refresher,
            }),
        })
    }
}

fn check_name(key: &'static str, value: &str) -> Result<(), JwtConfigError> {
    let ok = !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b';' | b'=' | b',' | b'"' | b'\\'));
    if ok {
        Ok(())
    } else {
        Err(JwtConfigError::BadName {
            key,
            value: value.to_owned(),
        })
    }
}

/// What every [`JwtAuth`] service of one layer shares.
pub(crate) struct Shared {
    pub(crate) keys: Arc<KeySet>,
    pub(crate) policy: Policy,
    pub(crate) sources: Sources,
    pub(crate) forward: ForwardClaims,
    pub(crate) on_expiry: OnExpiry,
    pub(crate) cache: VerifiedCache,
    /// Aborts the JWKS refresh when the last layer/service clone goes.
    _refresher: Option<AbortOnDropHandle<()>>,
}

impl Shared {
    /// Hands a verified token downstream: identity headers, [`TokenExpiry`],
    /// [`SubjectKey`] (a string `sub`: what per-subject connection caps count) and
    /// [`VerifiedClaims`].
    pub(crate) fn admit<B>(&self, req: &mut Request<B>, claims: VerifiedClaims) {
        self.forward.apply(req.headers_mut(), claims.claims());
        if let Some(sub) = claims.subject() {
            // The verified subject replaces any key a layer further out inserted.
            req.extensions_mut().insert(SubjectKey(sub.to_owned()));
        }
        if let Some(at) = exp_time(claims.claims()) {
            req.extensions_mut().insert(TokenExpiry {
                at,
                close: self.on_expiry == OnExpiry::Close,
            });
        }
        req.extensions_mut().insert(claims);
    }

    /// The claims of a token verified earlier by this layer, if the cache still holds it,
    /// its `exp` has not passed (with the leeway) and the keys are those that verified it.
    pub(crate) fn cached(&self, digest: &TokenDigest, generation: u64) -> Option<VerifiedClaims> {
        self.cache
            .get(digest, now_secs(), self.policy.leeway, generation)
            .map(|e| e.claims)
    }

    /// Wraps a freshly verified token's claims and remembers them under `digest` (when
    /// the cache is on and the token has an `exp`).
    pub(crate) fn remember(
        &self,
        digest: Option<TokenDigest>,
        generation: u64,
        v: Verified,
    ) -> VerifiedClaims {
        let exp = v.claims.get("exp").and_then(serde_json::Value::as_u64);
        let claims = VerifiedClaims::new(v.claims, v.alg, v.kid);
        if let (Some(digest), Some(exp)) = (digest, exp) {
            let entry = Entry {
                claims: claims.clone(),
                exp,
                generation,
            };
            self.cache
                .insert(digest, entry, now_secs(), self.policy.leeway);
        }
        claims
    }
}

/// Verifies a JWT before the WebSocket upgrade; see the [module docs](super).
///
/// Cheap to clone: every clone (and every [`JwtAuth`] service made from it) shares the
/// key set and its refresh task.
#[derive(Clone)]
pub struct JwtAuthLayer {
    pub(crate) shared: Arc<Shared>,
}

impl fmt::Debug for JwtAuthLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtAuthLayer")
            .field("keys", &self.key_count())
            .field("sources", &self.shared.sources.order)
            .finish_non_exhaustive()
    }
}

impl JwtAuthLayer {
    /// Starts a configuration.
    pub fn builder() -> JwtAuthBuilder {
        JwtAuthBuilder::default()
    }

    /// A layer accepting HS256/384/512 tokens signed with the secret in environment
    /// variable `name`, with every other setting at its default.
    pub async fn from_secret_env(name: &str) -> Result<Self, JwtConfigError> {
        Self::builder().secret_env(name).build().await
    }

    /// How many keys are currently usable (static ones plus the last fetched JWKS).
    pub fn key_count(&self) -> usize {
        self.shared.keys.table().len()
    }

    /// Hits and misses of the verified-token cache (see
    /// [`JwtAuthBuilder::verified_cache`]), summed over its shards.
    pub fn cache_stats(&self) -> CacheStats {
        self.shared.cache.stats()
    }

    /// Re-reads the JWKS URL now (for an operator's reload signal). Returns the number
    /// of keys fetched; on failure the old keys stay.
    pub async fn refresh_keys(&self) -> Result<usize, String> {
        self.shared.keys.refresh().await
    }
}

impl<S> Layer<S> for JwtAuthLayer {
    type Service = JwtAuth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        JwtAuth::new(inner, self.shared.clone())
    }
}
