//! The TOML configuration: its shape, loading and validation.
//!
//! The keys are a contract with users (see the README's config reference): every key
//! works as documented, unknown keys are errors that name them, and a file that fails
//! validation starts nothing. Durations are strings such as `"250ms"`, `"30s"`, `"5m"`;
//! sizes such as `"64KiB"`, `"16MiB"` (a bare number is bytes).

use std::{
    collections::{BTreeMap, HashSet},
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use ipnet::IpNet;
use serde::{Deserialize, Deserializer};
use wsgate_layers::upstream::{BackendUrl, Policy};

/// A configuration problem, naming the file and the key.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {key}: {message}")]
pub struct ConfigError {
    /// The file (or `<built-in>` / `<command line>`).
    pub file: String,
    /// The key, e.g. `upstream[0].backends[1]`.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[server]`
    #[serde(default)]
    pub server: ServerConfig,
    /// `[[upstream]]`
    #[serde(default)]
    pub upstream: Vec<UpstreamConfig>,
    /// `[[route]]`
    #[serde(default)]
    pub route: Vec<RouteConfig>,
    /// `[relay]`
    #[serde(default)]
    pub relay: RelayConfig,
}

/// `[relay]`: how frames are relayed after the upgrade, for every route.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    /// Validate UTF-8 of text messages and close reasons in both directions, closing
    /// both sides with 1007 on invalid UTF-8 (RFC 6455 §8.1). Off: payloads pass
    /// unchecked and the backend judges them.
    #[serde(default = "default_true")]
    pub validate_utf8: bool,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            validate_utf8: true,
        }
    }
}

/// One address or a list of them.
#[derive(Debug, Clone)]
pub enum OneOrMany<T> {
    /// `listen = "…"`
    One(T),
    /// `listen = ["…", "…"]`
    Many(Vec<T>),
}

impl<'de> Deserialize<'de> for OneOrMany<SocketAddr> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(String),
            Many(Vec<String>),
        }
        let parse = |s: &str| parse_addr(s).map_err(serde::de::Error::custom);
        match Raw::deserialize(d)
            .map_err(|_| serde::de::Error::custom("expected an address string or a list of them"))?
        {
            Raw::One(s) => Ok(Self::One(parse(&s)?)),
            Raw::Many(v) => Ok(Self::Many(
                v.iter().map(|s| parse(s)).collect::<Result<_, _>>()?,
            )),
        }
    }
}

/// A socket address, with a hint on what to write when it is not one.
fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.trim().parse::<SocketAddr>().map_err(|_| {
        format!("`{s}` is not an address; write e.g. \"127.0.0.1:8080\" or \"[::1]:8080\"")
    })
}

/// `server.admin`: one address, parsed like `listen`.
fn admin_addr<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let s = String::deserialize(d)?;
    parse_addr(&s).map(Some).map_err(serde::de::Error::custom)
}

/// A list of networks: `"10.0.0.0/8"`, or a bare address (`"10.1.2.3"`, `"::1"`) for
/// that one host, as nginx's `set_real_ip_from` and most allow-lists take it.
fn networks<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| {
            let t = s.trim();
            t.parse::<IpNet>()
                .or_else(|_| t.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    serde::de::Error::custom(format!(
                        "`{s}` is not a network; write e.g. \"10.0.0.0/8\" or \"192.0.2.7\""
                    ))
                })
        })
        .collect()
}

impl<T: Clone> OneOrMany<T> {
    /// All values.
    pub fn to_vec(&self) -> Vec<T> {
        match self {
            Self::One(t) => vec![t.clone()],
            Self::Many(v) => v.clone(),
        }
    }
}

/// `[server]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Client listeners.
    #[serde(default = "default_listen")]
    pub listen: OneOrMany<SocketAddr>,
    /// Admin listener: `/metrics`, `/healthz`, `/readyz`, status page.
    #[serde(default, deserialize_with = "admin_addr")]
    pub admin: Option<SocketAddr>,
    /// Peers whose forwarding headers are believed.
    #[serde(default, deserialize_with = "networks")]
    pub trusted_proxies: Vec<IpNet>,
    /// Expect the PROXY protocol (v1 or v2) on the client listeners.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// TLS termination.
    pub tls: Option<TlsConfig>,
    /// Time a client has to send its complete handshake request.
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout: HumanDuration,
    /// On SIGTERM/SIGINT, how long open sockets get before wsgate closes them (1001).
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_timeout: HumanDuration,
    /// Read buffer per direction of a busy socket (idle sockets hold none).
    #[serde(default = "default_buffer")]
    pub buffer_size: ByteSize,
    /// Once a close handshake starts, how long the peers get to finish it.
    #[serde(default = "default_close_timeout")]
    pub close_timeout: HumanDuration,
    /// On shutdown, the 1001 closes are spread at random over this window so clients
    /// do not all reconnect in the same instant.
    #[serde(default = "default_drain_window")]
    pub drain_window: HumanDuration,
    /// Largest request head (request line and headers); 431 beyond.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: ByteSize,
    /// Most header fields in a request; 431 beyond.
    #[serde(default = "default_max_headers")]
    pub max_headers: usize,
    /// Most handshakes in progress at once (waiting on a backend); beyond, 503 at once
    /// instead of an unbounded queue.
    pub max_handshakes: Option<usize>,
    /// Most client connections and proxied sockets at once; beyond, 503 and then no
    /// more accepts until one closes. Default: what the open-file limit allows
    /// ([`crate::capacity::derived_limit`]).
    pub max_connections: Option<usize>,
}

fn default_drain_window() -> HumanDuration {
    HumanDuration(Duration::from_secs(1))
}
fn default_max_header_bytes() -> ByteSize {
    ByteSize(16 * 1024)
}
fn default_max_headers() -> usize {
    64
}

fn default_listen() -> OneOrMany<SocketAddr> {
    OneOrMany::One(SocketAddr::from(([127, 0, 0, 1], 8080)))
}
fn default_handshake_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}
fn default_shutdown_grace() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}
fn default_close_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}
fn default_buffer() -> ByteSize {
    ByteSize(64 * 1024)
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            admin: None,
            trusted_proxies: Vec::new(),
            proxy_protocol: false,
            tls: None,
            handshake_timeout: default_handshake_timeout(),
            shutdown_timeout: default_shutdown_grace(),
            buffer_size: default_buffer(),
            close_timeout: default_close_timeout(),
            drain_window: default_drain_window(),
            max_header_bytes: default_max_header_bytes(),
            max_headers: default_max_headers(),
            max_handshakes: None,
            max_connections: None,
        }
    }
}

/// `server.tls`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain (served when no SNI entry matches).
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// More certificates, chosen by the client's SNI name.
    #[serde(default)]
    pub sni: Vec<SniCert>,
    /// How often the files are checked for changes (reloaded without dropping sockets).
    #[serde(default = "default_tls_reload")]
    pub reload_interval: HumanDuration,
}

fn default_tls_reload() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}

/// `server.tls.sni[]`: a certificate for some names (`"*.example.com"` allowed).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SniCert {
    /// Names this certificate is served for.
    pub names: Vec<String>,
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// `[[upstream]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Name routes refer to.
    pub name: String,
    /// `ws://` or `wss://` backend addresses.
    pub backends: Vec<String>,
    /// Selection policy.
    #[serde(default = "default_policy")]
    pub policy: String,
    /// Weights for `weighted_round_robin` (and weighted `consistent_hash`).
    pub weights: Option<Vec<u32>>,
    /// Sticky sessions.
    pub sticky: Option<StickyConfig>,
    /// Active health checks.
    pub health: Option<HealthConfig>,
    /// Upstream TCP connect (and TLS) timeout.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: HumanDuration,
    /// Time the backend has to answer the upgrade once connected.
    #[serde(default = "default_upstream_handshake")]
    pub handshake_timeout: HumanDuration,
    /// Warm connection pool.
    pub pool: Option<PoolConfig>,
    /// Passive checks: a failed connect ejects the backend this long, doubled for each
    /// further failure in a row.
    #[serde(default = "default_eject_backoff")]
    pub eject_backoff: HumanDuration,
    /// The longest passive ejection.
    #[serde(default = "default_eject_backoff_max")]
    pub eject_backoff_max: HumanDuration,
    /// Most backends tried for one client handshake.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: usize,
    /// Time all attempts of one client handshake may take together.
    #[serde(default = "default_retry_budget")]
    pub retry_budget: HumanDuration,
    /// How long a backend removed by a reload keeps its open sockets before they are
    /// closed with 1001.
    #[serde(default = "default_drain_timeout")]
    pub drain_timeout: HumanDuration,
    /// How often host names in `backends` are resolved again (each address a backend).
    #[serde(default = "default_resolve_interval")]
    pub resolve_interval: HumanDuration,
    /// Extra PEM CA certificates trusted for `wss://` backends (besides the system roots).
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) presented to `wss://` backends that require mutual TLS.
    pub client_cert: Option<PathBuf>,
    /// Its private key (PEM).
    pub client_key: Option<PathBuf>,
    /// When a backend dies under an open socket (or wsgate moves it), re-attach the
    /// client to another backend instead of closing it with 1012.
    #[serde(default)]
    pub resume: bool,
    /// Text message sent to a client after its socket was re-attached (`resume = true`).
    pub resume_notice: Option<String>,
    /// Periodically move sockets off backends holding far more than the average.
    pub rebalance: Option<RebalanceConfig>,
}

/// `upstream.rebalance`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RebalanceConfig {
    /// Most of a backend's sockets moved per `window` (0 < f <= 1).
    #[serde(default = "default_rebalance_fraction")]
    pub max_fraction: f64,
    /// How often loads are compared; the moves are spread at random over it.
    #[serde(default = "default_rebalance_window")]
    pub window: HumanDuration,
    /// A backend holding more than `threshold` × the mean open sockets is relieved.
    #[serde(default = "default_rebalance_threshold")]
    pub threshold: f64,
}

fn default_rebalance_fraction() -> f64 {
    0.1
}
fn default_rebalance_window() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}
fn default_rebalance_threshold() -> f64 {
    1.5
}

fn default_policy() -> String {
    "round_robin".into()
}
fn default_connect_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(3))
}
fn default_upstream_handshake() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}
fn default_eject_backoff() -> HumanDuration {
    HumanDuration(Duration::from_secs(1))
}
fn default_eject_backoff_max() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}
fn default_max_attempts() -> usize {
    3
}
fn default_retry_budget() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}
fn default_drain_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}
fn default_resolve_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}

/// `upstream.sticky`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StickyConfig {
    /// `cookie`, `claim:NAME`, `header:NAME` or `ip`.
    pub by: String,
    /// Name of the cookie wsgate sets on the 101 (`by = "cookie"`).
    #[serde(default = "default_sticky_cookie")]
    pub cookie_name: String,
    /// Environment variable holding the cookie's HMAC secret (at least 32 bytes); every
    /// instance that should agree on cookies needs the same secret.
    pub secret_env: Option<String>,
    /// File holding the cookie's HMAC secret.
    pub secret_file: Option<PathBuf>,
    /// Bounded-load factor for the key's consistent hash (e.g. 1.25).
    pub bounded_load: Option<f64>,
    /// When the key's own backend recovers, its new sockets go back to it. `false`:
    /// they stay on the backend that took them during the fail-over while it is
    /// available (remembered per instance).
    #[serde(default = "default_true")]
    pub return_on_recovery: bool,
    /// Most keys remembered on their fail-over backend (`return_on_recovery = false`);
    /// default 100000.
    pub failover_memory: Option<usize>,
    /// How long a remembered key is kept after its last socket opened
    /// (`return_on_recovery = false`); default 1h.
    pub failover_ttl: Option<HumanDuration>,
}

fn default_sticky_cookie() -> String {
    "wsgate_sticky".into()
}
fn default_true() -> bool {
    true
}

/// `upstream.health`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// `http`, `tcp` or `websocket`.
    pub kind: String,
    /// Path probed by `http` (default `/healthz`) and `websocket` (default `/`).
    pub path: Option<String>,
    /// Time between probes.
    #[serde(default = "default_health_interval")]
    pub interval: HumanDuration,
    /// Time one probe may take.
    #[serde(default = "default_health_timeout")]
    pub timeout: HumanDuration,
    /// Passing probes in a row that make a down backend healthy.
    #[serde(default = "default_health_threshold")]
    pub rise: u32,
    /// Failing probes in a row that take a backend down.
    #[serde(default = "default_health_threshold")]
    pub fall: u32,
    /// The status an `http` probe expects (default: any 2xx).
    pub expect_status: Option<u16>,
}

fn default_health_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(2))
}
fn default_health_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(1))
}
fn default_health_threshold() -> u32 {
    2
}

/// `upstream.pool`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// Warm (connected, not yet upgraded) connections kept ready per backend.
    #[serde(default)]
    pub min_idle: usize,
    /// Most connections per backend: open sockets plus warm ones.
    pub max: Option<usize>,
    /// A warm connection unused this long is closed.
    #[serde(default = "default_pool_idle")]
    pub idle_timeout: HumanDuration,
}

fn default_pool_idle() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}

/// `[[route]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Exact path, or a prefix ending in `/*`.
    pub path: String,
    /// The `[[upstream]]` it proxies to.
    pub upstream: String,
    /// `Origin` allow-list (absent: any origin).
    pub origins: Option<Vec<String>>,
    /// `Host` allow-list (absent: any host); others get 421.
    pub hosts: Option<Vec<String>>,
    /// `[route.query]`: query-parameter rules.
    pub query: Option<QueryConfig>,
    /// Largest message either side may send (close 1009 beyond).
    #[serde(default = "default_max_message")]
    pub max_message: ByteSize,
    /// Close sockets silent this long in both directions (1001).
    pub idle_timeout: Option<HumanDuration>,
    /// Close sockets this long after they opened (1001 "max lifetime").
    pub max_lifetime: Option<HumanDuration>,
    /// Ping a client silent this long; close it if it stays silent as long again.
    pub ping_interval: Option<HumanDuration>,
    /// `[route.jwt]`
    pub jwt: Option<JwtConfig>,
    /// `[route.rate_limit]`
    pub rate_limit: Option<RateLimitConfig>,
}

/// `[route.query]`: which query parameters a route accepts and forwards.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryConfig {
    /// Only these parameters may appear (others: 400).
    #[serde(default)]
    pub allow: Vec<String>,
    /// These parameters are refused (400).
    #[serde(default)]
    pub deny: Vec<String>,
    /// These parameters are removed before forwarding.
    #[serde(default)]
    pub strip: Vec<String>,
    /// Longest value accepted (400 beyond).
    pub max_value_len: Option<ByteSize>,
}

/// `[route.jwt]`: the route requires a valid JWT.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// A JWKS file (RSA, EC, OKP and oct keys, each with its `kid` and `alg`).
    pub jwks_file: Option<PathBuf>,
    /// A JWKS URL, fetched at start and refreshed in the background.
    pub jwks_url: Option<String>,
    /// How often the JWKS URL is refetched.
    pub jwks_refresh: Option<HumanDuration>,
    /// A file holding the HMAC secret.
    pub secret_file: Option<PathBuf>,
    /// An environment variable holding the HMAC secret.
    pub secret_env: Option<String>,
    /// PEM public keys (RSA, EC, Ed25519).
    #[serde(default)]
    pub public_keys: Vec<PathBuf>,
    /// Required `iss`.
    pub issuer: Option<String>,
    /// Required `aud`.
    pub audience: Option<String>,
    /// Clock skew allowed on `exp`, `nbf`, `iat`.
    pub leeway: Option<HumanDuration>,
    /// Where the token may come from, in order: header, protocol, cookie, query.
    pub sources: Option<Vec<String>>,
    /// Cookie name for the `cookie` source.
    pub cookie: Option<String>,
    /// Query parameter for the `query` source.
    pub query_param: Option<String>,
    /// Claim → header sent to the backend (client copies removed).
    #[serde(default)]
    pub forward_claims: BTreeMap<String, String>,
    /// `close` (4401 when the token expires on an open socket) or `keep`.
    pub on_expiry: Option<String>,
    /// Claims a token must carry.
    #[serde(default)]
    pub require_claims: Vec<String>,
    /// Scopes a token must carry (`scope`/`scp`).
    #[serde(default)]
    pub require_scopes: Vec<String>,
    /// Largest token accepted.
    pub max_token_size: Option<ByteSize>,
    /// How many verified tokens are remembered (a reused token skips the signature
    /// check); `0` turns the cache off.
    pub verified_cache: Option<usize>,
    /// PEM CA certificate(s) trusted for an `https` `jwks_url` instead of the system roots.
    pub jwks_ca_file: Option<PathBuf>,
}

/// `[route.rate_limit]`: limits per client IP (and per verified subject).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Handshakes per IP: `"20/s"`, `"100/m"`, `"5/h"`.
    pub per_ip: Option<String>,
    /// Burst above the rate.
    pub burst: Option<u32>,
    /// Open WebSockets per IP.
    pub max_connections_per_ip: Option<usize>,
    /// Open WebSockets on this route.
    pub max_connections: Option<usize>,
    /// Open WebSockets per verified JWT subject.
    pub max_connections_per_subject: Option<usize>,
    /// IPv6 clients are keyed by this prefix length.
    pub ipv6_prefix: Option<u8>,
    /// Never limited.
    #[serde(default, deserialize_with = "networks")]
    pub allow: Vec<IpNet>,
    /// Always refused (403).
    #[serde(default, deserialize_with = "networks")]
    pub deny: Vec<IpNet>,
    /// Shared limits across instances.
    pub redis: Option<String>,
    /// When Redis is unreachable: `open` (fall back to local limits) or `closed` (503).
    pub redis_fail: Option<String>,
    /// How long a connection's lease in Redis lives without renewal: the time a crashed
    /// instance's sockets keep their slots (renewed every third of it while open).
    pub redis_lease_ttl: Option<HumanDuration>,
    /// Messages per client socket: `"100/s"`.
    pub message_rate: Option<String>,
    /// Messages allowed at once above `message_rate`.
    pub message_burst: Option<u64>,
    /// Payload bytes per client socket: `"1MiB/s"`.
    pub byte_rate: Option<String>,
    /// Bytes allowed at once above `byte_rate` (also the largest message that can pass).
    pub byte_burst: Option<ByteSize>,
    /// Over a message or byte rate: `close` (1008) or `drop` the message.
    pub on_excess: Option<String>,
}

fn default_max_message() -> ByteSize {
    ByteSize(16 << 20)
}

/// A duration written as `"250ms"`, `"30s"`, `"5m"`, `"1h"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            S(String),
            N(i64),
            F(f64),
        }
        let s = match Raw::deserialize(d)
            .map_err(|_| serde::de::Error::custom("expected a duration string such as \"30s\""))?
        {
            Raw::S(s) => s,
            // A bare number has no unit: seconds? milliseconds? Say what to write.
            Raw::N(n) => {
                return Err(serde::de::Error::custom(format!(
                    "`{n}` has no unit; write e.g. \"{n}s\" or \"{n}ms\""
                )))
            }
            Raw::F(f) => {
                return Err(serde::de::Error::custom(format!(
                    "`{f}` has no unit; write e.g. \"{f}s\""
                )))
            }
        };
        HumanDuration::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl HumanDuration {
    /// Parses `"250ms"`, `"30s"`, `"5m"`, `"1h30m"`, `"2 days"`: humantime's units up to
    /// weeks. Months and years are refused: their length varies, no timeout is that
    /// long, and `"5M"` (months) is one shift key away from `"5m"` (minutes).
    pub fn parse(s: &str) -> Result<Self, String> {
        let hint = "write e.g. \"250ms\", \"30s\", \"5m\", \"1h\"";
        let t = s.trim();
        let calendar = t
            .split(|c: char| !c.is_ascii_alphabetic())
            .any(|unit| matches!(unit, "M" | "month" | "months" | "y" | "year" | "years"));
        if calendar {
            return Err(format!(
                "`{s}`: months and years are not duration units here; {hint}"
            ));
        }
        humantime::parse_duration(t)
            .map(HumanDuration)
            .map_err(|e| format!("`{s}` is not a duration ({e}); {hint}"))
    }
}

/// A size written as `"64KiB"`, `"16MiB"`, `"1GiB"` or a number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Parses `"64KiB"`, `"16 MiB"`, `"1GiB"`, `"100KB"` (decimal), `"512"`.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num.parse().ok()?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "KB" | "kB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            _ => return None,
        };
        n.checked_mul(mult).map(ByteSize)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(i64),
            F(f64),
            S(String),
        }
        let hint = "write e.g. \"64KiB\", \"16MiB\" or a number of bytes";
        match Raw::deserialize(d)
            .map_err(|_| serde::de::Error::custom(format!("expected a size; {hint}")))?
        {
            Raw::N(n) => u64::try_from(n)
                .map(ByteSize)
                .map_err(|_| serde::de::Error::custom(format!("`{n}`: a size cannot be negative"))),
            Raw::F(f) => Err(serde::de::Error::custom(format!(
                "`{f}`: a size is a whole number of bytes; {hint}"
            ))),
            Raw::S(s) => ByteSize::parse(&s)
                .ok_or_else(|| serde::de::Error::custom(format!("`{s}` is not a size; {hint}"))),
        }
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes", self.0)
    }
}

/// Where a route matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoutePath {
    /// This path only.
    Exact(String),
    /// This prefix and everything below it (`"/chat/*"` → `/chat` and `/chat/...`).
    Prefix(String),
}

impl RoutePath {
    fn parse(p: &str) -> Result<Self, String> {
        if !p.starts_with('/') {
            return Err(format!("`{p}` must start with /"));
        }
        if let Some(c) = p.chars().find(|&c| !is_path_char(c)) {
            return Err(format!(
                "`{p}`: `{c}` cannot appear in a route path (a path only: no query or \
                 fragment; percent-encode other characters, e.g. %20)"
            ));
        }
        if p.split('/').any(|seg| seg == "." || seg == "..") {
            return Err(format!("`{p}` is not a plain path (no . or .. segments)"));
        }
        match p.strip_suffix("/*") {
            Some(prefix) if !prefix.contains('*') => Ok(Self::Prefix(prefix.to_string())),
            _ if p.contains('*') => Err(format!(
                "`{p}`: only a trailing /* is allowed (\"/chat/*\")"
            )),
            _ => Ok(Self::Exact(p.to_string())),
        }
    }

    /// The base path a prefix also serves (`/chat` for `/chat/*`, `/` for `/*`), unless
    /// an exact route names it: `location = /chat` wins over `location /chat/` in nginx
    /// too, so the two are not a clash.
    pub fn base(&self) -> Option<&str> {
        match self {
            Self::Exact(_) => None,
            Self::Prefix(p) if p.is_empty() => Some("/"),
            Self::Prefix(p) => Some(p),
        }
    }
}

/// A character a route path may hold as it is: RFC 3986's `pchar` and `/`
/// (`%` for percent-encoded ones; `*` only in a trailing `/*`, checked after).
fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=:@/%".contains(c)
}

impl Config {
    /// Reads, parses and validates a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            key: "(file)".into(),
            message: format!("cannot read: {e}"),
        })?;
        let mut cfg = Self::parse_only(&text, &file)?;
        // Files named in the configuration are found next to it, wherever wsgate was
        // started from (a service's working directory is rarely the config's).
        if let Some(dir) = path.parent() {
            cfg.resolve_paths(dir);
        }
        cfg.validate(&file)?;
        Ok(cfg)
    }

    /// Parses and validates TOML text; `origin` names it in errors. Relative file paths
    /// in it stay relative to the working directory.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let cfg = Self::parse_only(text, origin)?;
        cfg.validate(origin)?;
        Ok(cfg)
    }

    fn parse_only(text: &str, origin: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError {
            file: origin.to_string(),
            key: e
                .span()
                .map(|s| key_at(text, s.start))
                .unwrap_or_else(|| "(syntax)".into()),
            message: plain_numbers(e.message()),
        })
    }

    /// Joins every relative file path in the configuration onto `dir`.
    fn resolve_paths(&mut self, dir: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        };
        if let Some(t) = &mut self.server.tls {
            fix(&mut t.cert);
            fix(&mut t.key);
            for s in &mut t.sni {
                fix(&mut s.cert);
                fix(&mut s.key);
            }
        }
        for u in &mut self.upstream {
            let sticky = u.sticky.as_mut().and_then(|s| s.secret_file.as_mut());
            let files = [&mut u.ca_file, &mut u.client_cert, &mut u.client_key];
            files.into_iter().flatten().chain(sticky).for_each(fix);
        }
        for j in self.route.iter_mut().filter_map(|r| r.jwt.as_mut()) {
            let files = [&mut j.jwks_file, &mut j.secret_file, &mut j.jwks_ca_file];
            files
                .into_iter()
                .flatten()
                .chain(j.public_keys.iter_mut())
                .for_each(fix);
        }
    }

    /// A one-route configuration for `wsgate --listen … --backend …`.
    pub fn quick(
        listen: Vec<SocketAddr>,
        backends: Vec<String>,
        path: &str,
    ) -> Result<Self, ConfigError> {
        let cfg = Config {
            server: ServerConfig {
                listen: OneOrMany::Many(listen),
                ..ServerConfig::default()
            },
            upstream: vec![UpstreamConfig {
                name: "default".into(),
                backends,
                policy: default_policy(),
                weights: None,
                sticky: None,
                health: None,
                connect_timeout: default_connect_timeout(),
                handshake_timeout: default_upstream_handshake(),
                pool: None,
                eject_backoff: default_eject_backoff(),
                eject_backoff_max: default_eject_backoff_max(),
                max_attempts: default_max_attempts(),
                retry_budget: default_retry_budget(),
                drain_timeout: default_drain_timeout(),
                resolve_interval: default_resolve_interval(),
                ca_file: None,
                client_cert: None,
                client_key: None,
                resume: false,
                resume_notice: None,
                rebalance: None,
            }],
            route: vec![RouteConfig {
                path: path.into(),
                upstream: "default".into(),
                origins: None,
                hosts: None,
                query: None,
                max_message: default_max_message(),
                idle_timeout: None,
                max_lifetime: None,
                ping_interval: None,
                jwt: None,
                rate_limit: None,
            }],
            relay: RelayConfig::default(),
        };
        cfg.validate("<command line>").map_err(|mut e| {
            e.key = quick_flag(&e.key);
            e
        })?;
        Ok(cfg)
    }

    fn validate(&self, file: &str) -> Result<(), ConfigError> {
        let err = |key: String, message: String| ConfigError {
            file: file.to_string(),
            key,
            message,
        };
        if self.server.listen.to_vec().is_empty() {
            return Err(err(
                "server.listen".into(),
                "needs at least one address".into(),
            ));
        }
        if self.server.buffer_size.0 < 1024 || self.server.buffer_size.0 > 16 << 20 {
            return Err(err(
                "server.buffer_size".into(),
                "must be between 1KiB and 16MiB".into(),
            ));
        }
        // hyper needs room for at least one full read (8 KiB) in its head buffer.
        if self.server.max_header_bytes.0 < 8192 || self.server.max_header_bytes.0 > 1 << 20 {
            return Err(err(
                "server.max_header_bytes".into(),
                "must be between 8KiB and 1MiB".into(),
            ));
        }
        if self.server.max_handshakes == Some(0) {
            return Err(err(
                "server.max_handshakes".into(),
                "must be at least 1".into(),
            ));
        }
        if self.server.max_connections == Some(0) {
            return Err(err(
                "server.max_connections".into(),
                "must be at least 1".into(),
            ));
        }
        if self.server.max_headers == 0 {
            return Err(err(
                "server.max_headers".into(),
                "must be at least 1".into(),
            ));
        }
        if self.server.proxy_protocol && self.server.trusted_proxies.is_empty() {
            return Err(err(
                "server.proxy_protocol".into(),
                "needs server.trusted_proxies: only those peers may send a PROXY header".into(),
            ));
        }
        check_server(&self.server).map_err(|(key, m)| err(key, m))?;
        let mut names = HashSet::new();
        for (i, u) in self.upstream.iter().enumerate() {
            let k = |s: &str| format!("upstream[{i}].{s}");
            check_upstream(u).map_err(|(key, m)| err(k(&key), m))?;
            if u.name.is_empty() {
                return Err(err(k("name"), "must not be empty".into()));
            }
            if !names.insert(u.name.as_str()) {
                return Err(err(k("name"), format!("`{}` is defined twice", u.name)));
            }
            if u.backends.is_empty() {
                return Err(err(k("backends"), "needs at least one backend".into()));
            }
            for (j, b) in u.backends.iter().enumerate() {
                BackendUrl::parse(b)
                    .map_err(|e| err(k(&format!("backends[{j}]")), e.to_string()))?;
            }
            u.policy
                .parse::<Policy>()
                .map_err(|e| err(k("policy"), e.to_string()))?;
            if let Some(w) = &u.weights {
                if w.len() != u.backends.len() {
                    return Err(err(
                        k("weights"),
                        format!("{} weights for {} backends", w.len(), u.backends.len()),
                    ));
                }
                if w.contains(&0) {
                    return Err(err(k("weights"), "weights must be at least 1".into()));
                }
            }
            if let Some(s) = &u.sticky {
                crate::upstream::check_sticky(s).map_err(|(key, m)| err(k(&key), m))?;
            }
            if let Some(h) = &u.health {
                crate::upstream::check_health(h).map_err(|(key, m)| err(k(&key), m))?;
            }
            crate::upstream::check_moves(u).map_err(|(key, m)| err(k(&key), m))?;
            if let Some(p) = &u.pool {
                if p.max.is_some_and(|m| m == 0 || m < p.min_idle) {
                    return Err(err(
                        k("pool.max"),
                        "must be at least 1 and at least pool.min_idle".into(),
                    ));
                }
            }
            if u.max_attempts == 0 {
                return Err(err(k("max_attempts"), "must be at least 1".into()));
            }
            if u.retry_budget.0.is_zero() {
                return Err(err(k("retry_budget"), "must be more than 0".into()));
            }
            if u.resolve_interval.0 < Duration::from_millis(100) {
                return Err(err(k("resolve_interval"), "must be at least 100ms".into()));
            }
            if u.client_cert.is_some() != u.client_key.is_some() {
                return Err(err(
                    k("client_cert"),
                    "client_cert and client_key go together".into(),
                ));
            }
            if u.connect_timeout.0.is_zero() {
                return Err(err(k("connect_timeout"), "must be more than 0".into()));
            }
        }
        // Two routes clash only on the same path; an exact one beside a prefix with that
        // base is not a clash (`RoutePath::base`).
        let mut paths: Vec<RoutePath> = Vec::with_capacity(self.route.len());
        for (i, r) in self.route.iter().enumerate() {
            let k = |s: &str| format!("route[{i}].{s}");
            let path = RoutePath::parse(&r.path).map_err(|m| err(k("path"), m))?;
            if let Some(prev) = paths.iter().position(|p| *p == path) {
                return Err(err(
                    k("path"),
                    format!(
                        "`{}` is also route[{prev}]'s path (`{}`)",
                        r.path, self.route[prev].path
                    ),
                ));
            }
            paths.push(path);
            if !names.contains(r.upstream.as_str()) {
                return Err(err(
                    k("upstream"),
                    format!("no [[upstream]] is named `{}`", r.upstream),
                ));
            }
            if let Some(u) = self.upstream.iter().find(|u| u.name == r.upstream) {
                check_route(r, u).map_err(|(key, m)| err(k(&key), m))?;
            }
            if r.max_message.0 == 0 {
                return Err(err(k("max_message"), "must be more than 0".into()));
            }
            if let Some(origins) = &r.origins {
                for (j, o) in origins.iter().enumerate() {
                    if o != "*" && !(o.starts_with("http://") || o.starts_with("https://")) {
                        return Err(err(
                            k(&format!("origins[{j}]")),
                            format!("`{o}` is not an origin (scheme://host[:port])"),
                        ));
                    }
                }
            }
            if let Some(j) = &r.jwt {
                crate::layers::jwt_builder(j, r.origins.is_some())
                    .map_err(|(key, m)| err(k(&format!("jwt.{key}")), m))?
                    .validate()
                    .map_err(|e| err(k("jwt"), jwt_message(&e)))?;
            }
            if let Some(l) = &r.rate_limit {
                crate::layers::check_rate_limit(l)
                    .map_err(|(key, m)| err(k(&format!("rate_limit.{key}")), m))?;
            }
        }
        if self.route.is_empty() {
            return Err(err("route".into(), "needs at least one [[route]]".into()));
        }
        Ok(())
    }

    /// The route's parsed path.
    pub fn route_path(route: &RouteConfig) -> RoutePath {
        RoutePath::parse(&route.path).unwrap_or(RoutePath::Exact(route.path.clone()))
    }
}

/// serde's "expected u32" said for people: the range of whole numbers the key takes.
fn plain_numbers(message: &str) -> String {
    let mut m = message.to_string();
    for (ty, max) in [
        ("u8", u64::from(u8::MAX)),
        ("u16", u64::from(u16::MAX)),
        ("u32", u64::from(u32::MAX)),
        ("usize", u64::MAX),
        ("u64", u64::MAX),
    ] {
        if let Some(head) = m.strip_suffix(&format!("expected {ty}")) {
            m = format!("{head}expected a whole number from 0 to {max}");
            break;
        }
    }
    m
}

/// The command-line flag behind a key of the quick-mode configuration.
fn quick_flag(key: &str) -> String {
    if let Some(rest) = key.strip_prefix("upstream[0].backends") {
        // `[1]` → the 2nd --backend
        let n = rest
            .trim_matches(|c| c == '[' || c == ']')
            .parse::<usize>()
            .map_or(String::new(), |i| format!(" (#{})", i + 1));
        return format!("--backend{n}");
    }
    match key {
        k if k.starts_with("route[0].path") => "--path".into(),
        k if k.starts_with("server.listen") => "--listen".into(),
        k => k.into(),
    }
}

/// A problem with a key: (key, message).
type KeyError = (String, String);

/// `[server]` checks beyond the field types.
fn check_server(s: &ServerConfig) -> Result<(), KeyError> {
    let e = |k: &str, m: &str| Err((format!("server.{k}"), m.to_string()));
    let listen = s.listen.to_vec();
    for (i, a) in listen.iter().enumerate() {
        // Port 0 asks the OS for a free port: never a clash.
        if a.port() != 0 && listen[..i].contains(a) {
            return e("listen", &format!("`{a}` is listed twice"));
        }
    }
    if let Some(a) = s.admin.filter(|a| a.port() != 0 && listen.contains(a)) {
        return e(
            "admin",
            &format!("`{a}` is also a client listener (server.listen)"),
        );
    }
    if s.handshake_timeout.0.is_zero() {
        return e("handshake_timeout", "must be more than 0");
    }
    if s.close_timeout.0.is_zero() {
        return e("close_timeout", "must be more than 0");
    }
    if let Some(t) = &s.tls {
        // The certificate files are polled at this interval.
        if t.reload_interval.0 < Duration::from_millis(10) {
            return e("tls.reload_interval", "must be at least 10ms");
        }
    }
    Ok(())
}

/// `[[upstream]]` checks beyond the field types (key relative to the upstream).
fn check_upstream(u: &UpstreamConfig) -> Result<(), KeyError> {
    let e = |k: &str, m: String| Err((k.to_string(), m));
    if u.weights.is_some()
        && u.sticky.is_none()
        && !matches!(
            u.policy.as_str(),
            "round_robin" | "weighted_round_robin" | "consistent_hash"
        )
    {
        return e(
            "weights",
            format!(
                "policy `{}` ignores weights; use round_robin, weighted_round_robin, \
                 consistent_hash or sticky keys, or remove weights",
                u.policy
            ),
        );
    }
    if u.handshake_timeout.0.is_zero() {
        return e("handshake_timeout", "must be more than 0".into());
    }
    if u.eject_backoff_max.0 < u.eject_backoff.0 {
        return e("eject_backoff_max", "must be at least eject_backoff".into());
    }
    if u.pool.as_ref().is_some_and(|p| p.idle_timeout.0.is_zero()) {
        return e("pool.idle_timeout", "must be more than 0".into());
    }
    Ok(())
}

/// `[[route]]` checks that need its upstream `u` (key relative to the route).
fn check_route(r: &RouteConfig, u: &UpstreamConfig) -> Result<(), KeyError> {
    for (k, d) in [
        ("idle_timeout", r.idle_timeout),
        ("max_lifetime", r.max_lifetime),
        ("ping_interval", r.ping_interval),
    ] {
        if d.is_some_and(|d| d.0.is_zero()) {
            return Err((
                k.into(),
                "must be more than 0 (leave the key out for no limit)".into(),
            ));
        }
    }
    if let Some(j) = &r.jwt {
        // Each refresh fetches the JWKS URL: a tiny interval would hammer the provider.
        if j.jwks_refresh.is_some_and(|d| d.0 < Duration::from_secs(1)) {
            return Err(("jwt.jwks_refresh".into(), "must be at least 1s".into()));
        }
        return Ok(());
    }
    // Without [route.jwt] there are no verified claims: these would silently do nothing.
    let by = u.sticky.as_ref().map(|s| s.by.as_str()).unwrap_or("");
    if by.starts_with("claim:") {
        return Err((
            "jwt".into(),
            format!(
                "missing: upstream `{}` is sticky by `{by}`, a verified JWT claim, \
                 so its routes need [route.jwt]",
                u.name
            ),
        ));
    }
    if r.rate_limit
        .as_ref()
        .is_some_and(|l| l.max_connections_per_subject.is_some())
    {
        return Err((
            "rate_limit.max_connections_per_subject".into(),
            "counts verified JWT subjects: the route needs [route.jwt]".into(),
        ));
    }
    Ok(())
}

/// A JWT layer error without the layer's own `jwt: ` prefix (the key already says it).
fn jwt_message(e: &impl fmt::Display) -> String {
    let m = e.to_string();
    m.strip_prefix("jwt: ").map(str::to_string).unwrap_or(m)
}

/// The key at byte `offset` of `text`, spelled as the validation errors spell it
/// (`upstream[1].policy`, `route[0].jwt.issuer`), with its line number. Best effort from
/// the text: the table header above it (arrays of tables indexed, a comment after the
/// header ignored) plus the key of the line, or of the line that opened a value spread
/// over several lines.
fn key_at(text: &str, offset: usize) -> String {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let line_no = text[..offset].matches('\n').count() + 1;
    let mut table = String::new();
    let mut arrays: BTreeMap<String, usize> = BTreeMap::new();
    let mut key = String::new();
    for (i, line) in text.lines().take(line_no).enumerate() {
        let line = line.trim();
        if let Some(name) = table_header(line) {
            if line.starts_with("[[") {
                arrays
                    .entry(name.clone())
                    .and_modify(|n| *n += 1)
                    .or_insert(0);
            }
            table = indexed(&name, &arrays);
            key.clear();
            if i + 1 == line_no {
                return format!("{table} (line {line_no})");
            }
        } else if let Some((k, _)) = line.split_once('=').filter(|_| !line.starts_with('#')) {
            key = k.trim().trim_matches('"').to_string();
        }
    }
    let out = match (table.is_empty(), key.is_empty()) {
        (true, true) => "(top level)".to_string(),
        (true, false) => key,
        (false, true) => table,
        (false, false) => format!("{table}.{key}"),
    };
    format!("{out} (line {line_no})")
}

/// `Some("route.jwt")` for a `[route.jwt]` or `[[route]]`-style header line (a comment
/// after it allowed).
fn table_header(line: &str) -> Option<String> {
    let inner = line.strip_prefix('[')?;
    let inner = inner.strip_prefix('[').unwrap_or(inner);
    let end = inner.find(']')?;
    let name: String = inner[..end]
        .split('.')
        .map(|p| p.trim().trim_matches('"'))
        .collect::<Vec<_>>()
        .join(".");
    Some(name)
}

/// `route.jwt` with the current element of each array of tables: `route[1].jwt`.
fn indexed(name: &str, arrays: &BTreeMap<String, usize>) -> String {
    let mut out = String::new();
    let mut prefix = String::new();
    for part in name.split('.') {
        if !prefix.is_empty() {
            prefix.push('.');
            out.push('.');
        }
        prefix.push_str(part);
        out.push_str(part);
        if let Some(i) = arrays.get(&prefix) {
            out.push_str(&format!("[{i}]"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[server]
listen = "127.0.0.1:8080"

[[upstream]]
name = "echo"
backends = ["ws://127.0.0.1:9001", "ws://127.0.0.1:9002"]
policy = "round_robin"

[[route]]
path = "/ws"
upstream = "echo"
max_message = "1MiB"
idle_timeout = "5m"
"#;

    #[test]
    fn parses_the_documented_shape() {
        let c = Config::parse(GOOD, "t.toml").unwrap();
        assert_eq!(c.route[0].max_message, ByteSize(1 << 20));
        assert_eq!(
            c.route[0].idle_timeout,
            Some(HumanDuration(Duration::from_secs(300)))
        );
    }

    #[test]
    fn errors_name_file_and_key() {
        let e = Config::parse(&GOOD.replace("policy", "polcy"), "t.toml").unwrap_err();
        assert_eq!(e.file, "t.toml");
        assert!(
            e.key.contains("polcy") || e.message.contains("polcy"),
            "{e}"
        );
        let e = Config::parse(&GOOD.replace("\"5m\"", "\"5 parsecs\""), "t.toml").unwrap_err();
        assert!(e.key.contains("idle_timeout"), "{e}");
        let e = Config::parse(
            &GOOD.replace("upstream = \"echo\"", "upstream = \"nope\""),
            "t.toml",
        )
        .unwrap_err();
        assert_eq!(e.key, "route[0].upstream");
        let e =
            Config::parse(&GOOD.replace("ws://127.0.0.1:9002", "http://x"), "t.toml").unwrap_err();
        assert_eq!(e.key, "upstream[0].backends[1]");
    }

    #[test]
    fn bad_listen_address_says_what_to_write() {
        let e = Config::parse(&GOOD.replace("127.0.0.1:8080", "localhost"), "t.toml").unwrap_err();
        assert!(e.key.starts_with("server.listen"), "{e}");
        assert!(e.message.contains("`localhost` is not an address"), "{e}");
        let c = Config::parse(
            &GOOD.replace("\"127.0.0.1:8080\"", "[\"127.0.0.1:8080\", \"[::1]:8080\"]"),
            "t.toml",
        )
        .unwrap();
        assert_eq!(c.server.listen.to_vec().len(), 2);
    }

    #[test]
    fn sizes_and_paths() {
        assert_eq!(ByteSize::parse("64KiB"), Some(ByteSize(65536)));
        assert_eq!(ByteSize::parse("16 MiB"), Some(ByteSize(16 << 20)));
        assert_eq!(ByteSize::parse("12 parsecs"), None);
        assert_eq!(ByteSize::parse("99999999999999999999GiB"), None);
        assert_eq!(
            RoutePath::parse("/chat/*"),
            Ok(RoutePath::Prefix("/chat".into()))
        );
        assert!(RoutePath::parse("chat").is_err());
        assert!(RoutePath::parse("/a/*/b").is_err());
    }

    fn err_of(text: &str) -> ConfigError {
        Config::parse(text, "t.toml").unwrap_err()
    }

    #[test]
    fn durations_take_units_up_to_weeks_but_not_months_or_years() {
        let d = |s: &str| HumanDuration::parse(s).map(|d| d.0);
        assert_eq!(d("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(d("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(d("5 minutes"), Ok(Duration::from_secs(300)));
        assert_eq!(d("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(d("2 days"), Ok(Duration::from_secs(2 * 86400)));
        for bad in [
            "5M",
            "1y",
            "2 months",
            "1 year",
            "5",
            "-5s",
            "5 lightyears",
            "",
        ] {
            assert!(d(bad).is_err(), "{bad} accepted");
        }
        let e = err_of(&GOOD.replace("\"5m\"", "300"));
        assert!(
            e.message.contains("no unit") && e.message.contains("\"300s\""),
            "{e}"
        );
    }

    #[test]
    fn sizes_refuse_negative_and_fractional_numbers_and_read_mb_as_decimal() {
        let e = err_of(&GOOD.replace("\"1MiB\"", "-1"));
        assert!(e.message.contains("negative"), "{e}");
        let e = err_of(&GOOD.replace("\"1MiB\"", "1.5"));
        assert!(e.message.contains("whole number"), "{e}");
        assert_eq!(ByteSize::parse("16MB"), Some(ByteSize(16_000_000)));
        assert_eq!(ByteSize::parse("16mb"), None);
        assert_eq!(ByteSize::parse("16M"), None);
    }

    #[test]
    fn keys_under_commented_headers_and_arrays_of_tables_are_indexed() {
        let text = format!(
            "{GOOD}\n[[upstream]]   # a second one\nname = \"two\"\nbackends = [\n  \"ws://127.0.0.1:9003\",\n]\npolcy = \"p2c\"\n"
        );
        let e = err_of(&text);
        assert!(e.key.starts_with("upstream[1].polcy (line "), "{e}");
        let text =
            format!("{GOOD}\n[route.jwt]   # comment [x]\nsecret_env = \"X\"\nisuer = \"i\"\n");
        let e = err_of(&text);
        assert!(e.key.starts_with("route[0].jwt.isuer (line "), "{e}");
        let text = GOOD.replace(
            "\"ws://127.0.0.1:9001\", ",
            "\n  \"ws://127.0.0.1:9001\",\n  7, ",
        );
        let e = err_of(&text);
        assert!(e.key.starts_with("upstream[0].backends (line "), "{e}");
        let e = err_of(&GOOD.replace(
            "max_message = \"1MiB\"",
            "max_message = 4294967296000000000000",
        ));
        assert!(e.message.len() < 200, "{e}");
        let e = err_of(&GOOD.replace("[server]", "[server]\nmax_headers = -3"));
        assert!(e.message.contains("whole number from 0"), "{e}");
    }

    #[test]
    fn routes_serving_the_same_path_or_odd_characters_are_refused() {
        let two = |a: &str, b: &str| {
            format!("{GOOD}\n[[route]]\npath = \"{b}\"\nupstream = \"echo\"\n").replacen(
                "path = \"/ws\"",
                &format!("path = \"{a}\""),
                1,
            )
        };
        for (a, b) in [("/chat/*", "/chat/*"), ("/x", "/x"), ("/*", "/*")] {
            let e = err_of(&two(a, b));
            assert_eq!(e.key, "route[1].path", "{a} + {b}: {e}");
        }
        // An exact route takes its path from a prefix's base: `/ws` beside `/ws/*`.
        for (a, b) in [
            ("/ws", "/ws/*"),
            ("/", "/*"),
            ("/chat/*", "/chat"),
            ("/ws/", "/ws/*"),
            ("/a/*", "/a/b/*"),
            ("/*", "/x/*"),
            ("/:id", "/x"),
        ] {
            Config::parse(&two(a, b), "t.toml").unwrap_or_else(|e| panic!("{a} + {b}: {e}"));
        }
        for bad in [
            "/{id}", "/a b", "/ü", "/a?b", "/a#b", "/a/../b", "/.", "/a/*/b",
        ] {
            let e = err_of(&GOOD.replace("path = \"/ws\"", &format!("path = \"{bad}\"")));
            assert_eq!(e.key, "route[0].path", "{bad}: {e}");
        }
    }

    #[test]
    fn zero_where_zero_means_nothing_is_refused() {
        for (from, to, key) in [
            (
                "idle_timeout = \"5m\"",
                "idle_timeout = \"0s\"",
                "route[0].idle_timeout",
            ),
            (
                "idle_timeout = \"5m\"",
                "ping_interval = \"0s\"",
                "route[0].ping_interval",
            ),
            (
                "idle_timeout = \"5m\"",
                "max_lifetime = \"0ms\"",
                "route[0].max_lifetime",
            ),
            (
                "[server]",
                "[server]\nhandshake_timeout = \"0s\"",
                "server.handshake_timeout",
            ),
            (
                "[server]",
                "[server]\nclose_timeout = \"0s\"",
                "server.close_timeout",
            ),
            (
                "policy = \"round_robin\"",
                "handshake_timeout = \"0s\"",
                "upstream[0].handshake_timeout",
            ),
            (
                "policy = \"round_robin\"",
                "eject_backoff_max = \"0s\"",
                "upstream[0].eject_backoff_max",
            ),
            (
                "policy = \"round_robin\"",
                "pool = { min_idle = 1, idle_timeout = \"0s\" }",
                "upstream[0].pool.idle_timeout",
            ),
        ] {
            let e = err_of(&GOOD.replace(from, to));
            assert_eq!(e.key, key, "{to}: {e}");
        }
    }

    #[test]
    fn listeners_must_not_clash() {
        let e = err_of(&GOOD.replace(
            "listen = \"127.0.0.1:8080\"",
            "listen = \"127.0.0.1:8080\"\nadmin = \"127.0.0.1:8080\"",
        ));
        assert_eq!(e.key, "server.admin", "{e}");
        let e = err_of(&GOOD.replace(
            "\"127.0.0.1:8080\"",
            "[\"127.0.0.1:8080\", \"127.0.0.1:8080\"]",
        ));
        assert_eq!(e.key, "server.listen", "{e}");
        let e = err_of(&GOOD.replace("listen = \"127.0.0.1:8080\"", "admin = \"9090\""));
        assert!(
            e.message.contains("\"127.0.0.1:8080\""),
            "says what to write: {e}"
        );
        // Port 0 (any free port) twice is no clash.
        Config::parse(
            &GOOD.replace(
                "\"127.0.0.1:8080\"",
                "\"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"",
            ),
            "t.toml",
        )
        .unwrap();
    }

    #[test]
    fn weights_need_a_policy_that_uses_them() {
        let with = |policy: &str| {
            GOOD.replace(
                "policy = \"round_robin\"",
                &format!("policy = \"{policy}\"\nweights = [3, 1]"),
            )
        };
        for ok in ["round_robin", "weighted_round_robin", "consistent_hash"] {
            Config::parse(&with(ok), "t.toml").unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for ignored in ["least_connections", "p2c", "random"] {
            assert_eq!(
                err_of(&with(ignored)).key,
                "upstream[0].weights",
                "{ignored}"
            );
        }
        let sticky = with("random").replace(
            "weights = [3, 1]",
            "weights = [3, 1]\nsticky = { by = \"ip\" }",
        );
        Config::parse(&sticky, "t.toml").unwrap();
    }

    #[test]
    fn claim_keys_and_subject_caps_need_jwt_on_the_route() {
        let e = err_of(&GOOD.replace(
            "policy = \"round_robin\"",
            "sticky = { by = \"claim:sub\" }",
        ));
        assert_eq!(e.key, "route[0].jwt", "{e}");
        let e = err_of(&format!(
            "{GOOD}\n[route.rate_limit]\nmax_connections_per_subject = 3\n"
        ));
        assert_eq!(
            e.key, "route[0].rate_limit.max_connections_per_subject",
            "{e}"
        );
    }

    #[test]
    fn networks_take_bare_addresses_as_one_host() {
        let c = Config::parse(
            &GOOD.replace(
                "[server]",
                "[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"192.0.2.7\", \"::1\"]",
            ),
            "t.toml",
        )
        .unwrap();
        let nets: Vec<String> = c
            .server
            .trusted_proxies
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(nets, ["10.0.0.0/8", "192.0.2.7/32", "::1/128"]);
        let e = err_of(&GOOD.replace("[server]", "[server]\ntrusted_proxies = [\"10.0.0.0/33\"]"));
        assert!(e.key.starts_with("server.trusted_proxies"), "{e}");
    }

    #[test]
    fn redis_url_is_parsed_at_load() {
        for bad in [
            "redis://:::6379",
            "redis://",
            "redis://127.0.0.1:99999",
            "http://x",
        ] {
            let e = err_of(&format!(
                "{GOOD}\n[route.rate_limit]\nmax_connections = 5\nredis = \"{bad}\"\n"
            ));
            assert_eq!(e.key, "route[0].rate_limit.redis", "{bad}: {e}");
        }
    }

    #[test]
    fn jwt_errors_do_not_repeat_the_section() {
        let e = err_of(&format!("{GOOD}\n[route.jwt]\nissuer = \"i\"\n"));
        assert_eq!(e.key, "route[0].jwt");
        assert!(e.message.starts_with("no key configured"), "{e}");
    }

    #[test]
    fn relative_file_paths_are_found_next_to_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let text = GOOD.replace(
            "[server]",
            "[server]\ntls = { cert = \"c.pem\", key = \"/abs/k.pem\" }",
        );
        let file = dir.path().join("wsgate.toml");
        std::fs::write(
            &file,
            format!("{text}\n[route.jwt]\nsecret_file = \"s\"\npublic_keys = [\"p.pem\"]\n"),
        )
        .unwrap();
        let c = Config::load(&file).unwrap();
        let tls = c.server.tls.unwrap();
        assert_eq!(tls.cert, dir.path().join("c.pem"));
        assert_eq!(tls.key, PathBuf::from("/abs/k.pem"));
        let jwt = c.route[0].jwt.as_ref().unwrap();
        assert_eq!(
            jwt.secret_file.as_deref(),
            Some(dir.path().join("s").as_path())
        );
        assert_eq!(jwt.public_keys, [dir.path().join("p.pem")]);
    }

    #[test]
    fn quick_mode_errors_name_the_flag() {
        let addr = SocketAddr::from(([127, 0, 0, 1], 0));
        let e = Config::quick(vec![addr], vec!["ws://a:1".into(), "tcp://b".into()], "/ws")
            .unwrap_err();
        assert_eq!(e.key, "--backend (#2)");
        let e = Config::quick(vec![addr], vec!["ws://a:1".into()], "ws").unwrap_err();
        assert_eq!(e.key, "--path");
        let e = Config::quick(vec![addr], vec![], "/ws").unwrap_err();
        assert_eq!(e.key, "--backend");
    }
}
