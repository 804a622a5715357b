//! JWT authentication for WebSocket routes, checked before the upgrade.
//!
//! [`JwtAuthLayer`] reads a bearer token from the request, verifies it, removes it from
//! the request, and only then lets the handshake reach the inner service. A refused
//! handshake is an ordinary HTTP answer ([`JwtRejection`]): `401` for a missing or bad
//! token, `403` for a genuine token that lacks a required claim or scope. The socket is
//! never upgraded for a client that failed.
//!
//! # Example
//!
//! ```no_run
//! use std::net::SocketAddr;
//! use axum::{extract::ws::WebSocketUpgrade, response::Response, routing::get, Router};
//! use wsgate_layers::jwt::{Claims, JwtAuthLayer, TokenSource};
//!
//! #[derive(serde::Deserialize)]
//! struct User { sub: String }
//!
//! async fn ws(upgrade: WebSocketUpgrade, Claims(user): Claims<User>) -> Response {
//!     upgrade.on_upgrade(move |_socket| async move { println!("{} connected", user.sub) })
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let jwt = JwtAuthLayer::builder()
//!     .secret_env("WSGATE_JWT_SECRET")          // HS256/384/512
//!     .issuer("https://issuer.test")
//!     .audience("wsgate")
//!     .sources([TokenSource::Header, TokenSource::Protocol])
//!     .forward_claim("sub", "x-auth-subject")
//!     .build()
//!     .await?;
//! let app = Router::new().route("/ws", get(ws)).layer(jwt);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await?;
//! # Ok(()) }
//! ```
//!
//! The same settings in the wsgate configuration (builder methods map 1:1):
//!
//! ```toml
//! [route.jwt]
//! jwks_file = "jwks.json"      # or jwks_url, secret_file, secret_env, public_keys = ["rsa.pem"]
//! issuer = "https://issuer.test"
//! audience = "wsgate"
//! leeway = "60s"
//! sources = ["header", "protocol"]
//! forward_claims = { sub = "X-Auth-Subject" }
//! on_expiry = "close"
//! ```
//!
//! # Keys
//!
//! | source | builder | notes |
//! |---|---|---|
//! | HMAC secret | [`secret_env`], [`secret_file`], [`secret`] | HS256/384/512; a PEM-looking secret is refused |
//! | PEM public keys | [`public_keys`], [`public_key_pem`] | RSA, EC P-256/P-384, Ed25519, detected |
//! | JWKS file | [`jwks_file`], [`jwks_json`] | RSA, EC, OKP, oct; `use: enc` keys skipped |
//! | JWKS URL | [`jwks_url`] | fetched at build, refreshed in the background, re-fetched for unknown `kid`s; `https` trusts the system roots or only [`jwks_ca_file`]; redirects are not followed |
//!
//! Every key is parsed once and **pinned to its algorithms** (from the JWK's `alg`, its
//! `kty`/`crv`, or the PEM type). A token's `alg` must be one of its key's pins, so an
//! `HS256` token signed with an RSA public key as "secret" finds no key (no algorithm
//! confusion). Key selection:
//!
//! * a `kid` is looked up in the key set (a map lookup and nothing else: a `kid` of
//!   `../../etc/passwd` is just unknown); if no key has that id, keys without an id (a
//!   secret, a PEM file) that allow the `alg` are tried;
//! * a token without `kid` is tried against the keys allowing its `alg`, at most four;
//! * an unknown `kid` with a JWKS URL triggers a re-fetch, at most once per
//!   [`jwks_refetch_min_interval`] (10 s by default) however many bogus `kid`s arrive;
//!   the handshake waits for that fetch and is decided with the new keys. Rotation needs
//!   no restart. A refresh that fails, or returns no usable key, keeps the old keys.
//!
//! The key table is an `ArcSwap`: a handshake never waits for a lock, even while a
//! refresh runs. The refresh task stops when the layer and all its services are dropped.
//!
//! # Verified-token cache
//!
//! A client that reconnects with the same token skips the signature check (RSA and ECDSA
//! verification cost tens of µs; a hit costs a SHA-256 and a map lookup). The layer keeps
//! up to [`verified_cache`] tokens (10 000 by default, `0` turns it off), keyed by the
//! token's SHA-256 (the token is never stored). Only tokens that passed every check are
//! remembered, per layer instance (the claim checks depend on its configuration). `exp`
//! is still checked on every use, with the same rule and leeway as without the cache; a
//! changed JWKS document makes every entry a miss, so a rotated-out key's tokens are
//! verified afresh (and refused). The map is sharded with short critical sections and a
//! bounded clock eviction; [`JwtAuthLayer::cache_stats`] reports hits and misses.
//!
//! # What is refused
//!
//! Before any signature work: tokens longer than [`max_token_size`] (8 KiB), anything but
//! three base64url segments, `alg: none` in any casing, unknown `alg`s, headers that
//! carry a key or key location (`jku`, `x5u`, `jwk`, `x5c`: refused rather than ignored),
//! and any `crit` extension (none is understood). Then the signature, then claims:
//!
//! * `exp` is required (see [`require_exp`]) and must not have passed; `nbf` and `iat`
//!   must not be in the future; all three with [`leeway`] (60 s by default);
//! * `iss` must be a configured [`issuer`] and `aud` must contain a configured
//!   [`audience`], when configured (then they are also required). **Without an audience,
//!   `aud` is not checked.**
//! * [`require_claims`] and [`require_scopes`] give `403 insufficient_scope`. Scopes come
//!   from `scope` (space-separated) and `scp` / `scopes` (string or array).
//!
//! A missing token gets `401` with a bare `WWW-Authenticate: Bearer` (RFC 6750 §3.1: no
//! error code when no credentials were sent); any other `401` carries
//! `Bearer error="invalid_token", error_description="…"`. Descriptions never contain the
//! token, key material or client-chosen text. Logs get the reason only (`debug` level).
//!
//! # Where the token comes from
//!
//! [`sources`], in order, but the `Authorization` header always wins when enabled:
//!
//! * `header`: `Authorization: Bearer <token>`. Several `Authorization` headers are refused.
//! * `protocol`: `Sec-WebSocket-Protocol`, for browsers, which cannot set headers on a
//!   WebSocket. Two conventions:
//!   * `new WebSocket(url, ["bearer", token, "chat.v1"])`: the element after the literal
//!     `bearer` is the token;
//!   * `new WebSocket(url, ["wsgate.bearer." + token, "wsgate.bearer", "chat.v1"])`: the
//!     token is the suffix. **Also offer the bare `wsgate.bearer`**: it is what the server
//!     echoes when nothing else is chosen (echoing the token element would put the token
//!     in the response).
//! * `cookie`: cookie [`cookie_name`] (default `access_token`). Browsers send cookies on
//!   cross-site WebSocket handshakes, so this source is refused at build
//!   ([`JwtConfigError::CookieWithoutOriginAllowList`]) unless the route checks `Origin`
//!   against an allow-list ([`origin_allow_list`]).
//! * `query`: parameter [`query_param`] (default `access_token`). Opt-in: URLs are logged.
//!
//! **The token never travels on**: before the inner service runs, the bearer
//! `Authorization` header, the token cookie (other cookies stay), the token query
//! parameter (other parameters stay, in order) and the token and marker subprotocol
//! elements (other subprotocols stay) are removed, for every enabled source.
//!
//! ## The subprotocol answer
//!
//! A browser that offered subprotocols fails the handshake if the `101` names none. When
//! the token came in `Sec-WebSocket-Protocol`, the layer inserts a [`TokenProtocolMarker`]
//! extension (`bearer` or `wsgate.bearer`, as the client offered it) and itself adds
//! `Sec-WebSocket-Protocol: <marker>` to a `101` response that has no subprotocol. If the
//! inner service picked a real subprotocol, that answer is left alone.
//!
//! # Downstream
//!
//! * [`VerifiedClaims`] (extension): all claims, plus `subject()`, `scopes()`, … The
//!   [`Claims<T>`] extractor deserializes them into your type.
//! * [`TokenExpiry`] (extension, when the token has `exp`): when to close the socket
//!   (code `4401`, reason `token expired`) and whether to (`on_expiry`, default `close`).
//!   The wsgate relay honours it; see [`TokenExpiry`] for an axum handler that does.
//! * [`SubjectKey`](crate::SubjectKey) (extension, when `sub` is a string): the
//!   verified subject, which a [`ConnectionLimitLayer`](crate::ConnectionLimitLayer)
//!   inside this layer counts per-subject caps against.
//! * [`forward_claim`]: claims copied into request headers for the backend; client-sent
//!   copies of those headers are always removed first.
//!
//! [`secret_env`]: JwtAuthBuilder::secret_env
//! [`secret_file`]: JwtAuthBuilder::secret_file
//! [`secret`]: JwtAuthBuilder::secret
//! [`public_keys`]: JwtAuthBuilder::public_keys
//! [`public_key_pem`]: JwtAuthBuilder::public_key_pem
//! [`jwks_file`]: JwtAuthBuilder::jwks_file
//! [`jwks_json`]: JwtAuthBuilder::jwks_json
//! [`jwks_url`]: JwtAuthBuilder::jwks_url
//! [`jwks_ca_file`]: JwtAuthBuilder::jwks_ca_file
//! [`verified_cache`]: JwtAuthBuilder::verified_cache
//! [`jwks_refetch_min_interval`]: JwtAuthBuilder::jwks_refetch_min_interval
//! [`max_token_size`]: JwtAuthBuilder::max_token_size
//! [`require_exp`]: JwtAuthBuilder::require_exp
//! [`leeway`]: JwtAuthBuilder::leeway
//! [`issuer`]: JwtAuthBuilder::issuer
//! [`audience`]: JwtAuthBuilder::audience
//! [`require_claims`]: JwtAuthBuilder::require_claims
//! [`require_scopes`]: JwtAuthBuilder::require_scopes
//! [`sources`]: JwtAuthBuilder::sources
//! [`cookie_name`]: JwtAuthBuilder::cookie_name
//! [`query_param`]: JwtAuthBuilder::query_param
//! [`origin_allow_list`]: JwtAuthBuilder::origin_allow_list
//! [`forward_claim`]: JwtAuthBuilder::forward_claim

mod cache;
mod claims;
mod fetch;
mod future;
mod keys;
mod layer;
mod rejection;
mod service;
mod source;
mod verify;

pub use cache::{CacheStats, DEFAULT_VERIFIED_CACHE};
pub use claims::{
    Claims, ClaimsRejection, OnExpiry, TokenExpiry, TokenProtocolMarker, UnknownOnExpiry,
    VerifiedClaims,
};
pub use future::JwtFuture;
pub use jsonwebtoken::Algorithm;
pub use layer::{
    JwtAuthBuilder, JwtAuthLayer, JwtConfigError, DEFAULT_JWKS_REFETCH_MIN, DEFAULT_JWKS_REFRESH,
    DEFAULT_JWKS_TIMEOUT, DEFAULT_LEEWAY, DEFAULT_MAX_TOKEN_SIZE, DEFAULT_TOKEN_PARAM,
};
pub use rejection::JwtRejection;
pub use service::JwtAuth;
pub use source::{
    TokenSource, UnknownTokenSource, PROTOCOL_PAIR_MARKER, PROTOCOL_PREFIX, PROTOCOL_PREFIX_MARKER,
};
