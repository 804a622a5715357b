//! From `[route.jwt]` and `[route.rate_limit]` to the `wsgate-layers` that enforce them.

use std::time::Duration;

use wsgate_layers::{
    jwt::{JwtAuthBuilder, JwtAuthLayer, OnExpiry, TokenSource},
    ratelimit::{
        redis::{FailMode, RedisLimits},
        ByteRate, ConnectionLimitLayer, IpRateLimitLayer, MessageLimits, OnExcess, RateSpec,
    },
};

use crate::config::{JwtConfig, RateLimitConfig};

/// A configuration problem inside a section: (key within the section, message).
pub(crate) type SectionError = (String, String);

/// The JWT layer's builder for a route (`has_origins`: the route has an Origin allow-list).
pub(crate) fn jwt_builder(
    j: &JwtConfig,
    has_origins: bool,
) -> Result<JwtAuthBuilder, SectionError> {
    let mut b = JwtAuthLayer::builder().origin_allow_list(has_origins);
    if let Some(p) = &j.jwks_file {
        b = b.jwks_file(p.clone());
    }
    if let Some(u) = &j.jwks_url {
        b = b.jwks_url(u.clone());
    }
    if let Some(d) = j.jwks_refresh {
        b = b.jwks_refresh_interval(d.0);
    }
    if let Some(p) = &j.secret_file {
        b = b.secret_file(p.clone());
    }
    if let Some(e) = &j.secret_env {
        b = b.secret_env(e.clone());
    }
    if !j.public_keys.is_empty() {
        b = b.public_keys(j.public_keys.clone());
    }
    if let Some(i) = &j.issuer {
        b = b.issuer(i.clone());
    }
    if let Some(a) = &j.audience {
        b = b.audience(a.clone());
    }
    if let Some(l) = j.leeway {
        b = b.leeway(l.0);
    }
    if let Some(sources) = &j.sources {
        let parsed = sources
            .iter()
            .map(|s| {
                s.parse::<TokenSource>().map_err(|_| {
                    (
                        "sources".to_string(),
                        format!("`{s}` is not a token source (header, protocol, cookie, query)"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        b = b.sources(parsed);
    }
    if let Some(c) = &j.cookie {
        b = b.cookie_name(c.clone());
    }
    if let Some(q) = &j.query_param {
        b = b.query_param(q.clone());
    }
    if !j.forward_claims.is_empty() {
        b = b.forward_claims(j.forward_claims.clone());
    }
    if let Some(o) = &j.on_expiry {
        let o: OnExpiry = o.parse().map_err(|_| {
            (
                "on_expiry".to_string(),
                format!("`{o}` is neither \"close\" nor \"keep\""),
            )
        })?;
        b = b.on_expiry(o);
    }
    if !j.require_claims.is_empty() {
        b = b.require_claims(j.require_claims.clone());
    }
    if !j.require_scopes.is_empty() {
        b = b.require_scopes(j.require_scopes.clone());
    }
    if let Some(s) = j.max_token_size {
        b = b.max_token_size(usize::try_from(s.0).unwrap_or(usize::MAX));
    }
    if let Some(n) = j.verified_cache {
        b = b.verified_cache(n);
    }
    if let Some(p) = &j.jwks_ca_file {
        b = b.jwks_ca_file(p.clone());
    }
    Ok(b)
}

/// Checks a `[route.rate_limit]` without building it.
pub(crate) fn check_rate_limit(l: &RateLimitConfig) -> Result<(), SectionError> {
    rate_spec(l)?;
    if l.per_ip.is_none() && l.burst.is_some() {
        return Err(("burst".into(), "burst needs per_ip".into()));
    }
    if l.burst == Some(0) {
        return Err(("burst".into(), "must be at least 1".into()));
    }
    if let Some(p) = l.ipv6_prefix {
        if !(1..=128).contains(&p) {
            return Err(("ipv6_prefix".into(), "must be between 1 and 128".into()));
        }
    }
    for (k, v) in [
        ("max_connections_per_ip", l.max_connections_per_ip),
        ("max_connections", l.max_connections),
        ("max_connections_per_subject", l.max_connections_per_subject),
    ] {
        if v == Some(0) {
            return Err((k.into(), "must be at least 1".into()));
        }
    }
    if let Some(url) = &l.redis {
        if !(url.starts_with("redis://")
            || url.starts_with("redis+unix://")
            || url.starts_with("unix://"))
        {
            return Err(("redis".into(), format!("`{url}` is not a redis:// URL")));
        }
        RedisLimits::check_url(url).map_err(|e| ("redis".to_string(), format!("`{url}`: {e}")))?;
    }
    if let Some(ttl) = l.redis_lease_ttl {
        if l.redis.is_none() {
            return Err(("redis_lease_ttl".into(), "needs redis".into()));
        }
        if ttl.0 < MIN_LEASE_TTL {
            return Err(("redis_lease_ttl".into(), "must be at least 1s".into()));
        }
    }
    fail_mode(l)?;
    message_limits(l)?;
    Ok(())
}

/// Per-socket message and byte rate limits, if configured.
pub(crate) fn message_limits(l: &RateLimitConfig) -> Result<Option<MessageLimits>, SectionError> {
    if l.message_rate.is_none() && l.byte_rate.is_none() {
        if l.on_excess.is_some() || l.message_burst.is_some() || l.byte_burst.is_some() {
            return Err(("on_excess".into(), "needs message_rate or byte_rate".into()));
        }
        return Ok(None);
    }
    let mut limits = MessageLimits::new();
    if let Some(r) = &l.message_rate {
        let spec: RateSpec = r
            .parse()
            .map_err(|e| ("message_rate".to_string(), format!("`{r}`: {e}")))?;
        let burst = l.message_burst.unwrap_or(u64::from(spec.count().get()));
        limits = limits.messages(spec, burst.max(1));
    }
    if let Some(r) = &l.byte_rate {
        let rate: ByteRate = r
            .parse()
            .map_err(|e| ("byte_rate".to_string(), format!("`{r}`: {e}")))?;
        let burst = l.byte_burst.map_or(rate.bytes(), |b| b.0);
        limits = limits.bytes(rate, burst.max(1));
    }
    if let Some(o) = &l.on_excess {
        let o: OnExcess = o.parse().map_err(|_| {
            (
                "on_excess".to_string(),
                format!("`{o}` is neither \"drop\" nor \"close\""),
            )
        })?;
        limits = limits.on_excess(o);
    }
    Ok(Some(limits))
}

fn fail_mode(l: &RateLimitConfig) -> Result<FailMode, SectionError> {
    match l.redis_fail.as_deref() {
        None | Some("open") => Ok(FailMode::Open),
        Some("closed") => Ok(FailMode::Closed),
        Some(other) => Err((
            "redis_fail".into(),
            format!("`{other}` is neither \"open\" nor \"closed\""),
        )),
    }
}

/// Shortest `redis_lease_ttl`: below it the renewals alone would load Redis, and a busy
/// instance could miss its slots' renewal.
const MIN_LEASE_TTL: Duration = Duration::from_secs(1);
/// The lease heartbeat with the default 30 s lease.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(10);

/// The shared Redis store for a route's limits, scoped to the route, if `redis` is set.
pub(crate) fn redis_store(
    l: &RateLimitConfig,
    route: &str,
) -> Result<Option<RedisLimits>, SectionError> {
    let Some(url) = &l.redis else {
        return Ok(None);
    };
    let mut builder = RedisLimits::builder(url.clone()).fail_mode(fail_mode(l)?);
    if let Some(ttl) = l.redis_lease_ttl {
        // Three renewals per lifetime: one lost or late renewal does not drop a live
        // socket's slot.
        builder = builder
            .lease_ttl(ttl.0)
            .heartbeat((ttl.0 / 3).min(DEFAULT_HEARTBEAT));
    }
    let store = builder
        .build()
        .map_err(|e| ("redis".to_string(), e.to_string()))?;
    Ok(Some(store.scoped(route)))
}

fn rate_spec(l: &RateLimitConfig) -> Result<Option<RateSpec>, SectionError> {
    l.per_ip
        .as_deref()
        .map(|s| {
            s.parse::<RateSpec>()
                .map_err(|e| ("per_ip".to_string(), format!("`{s}`: {e}")))
        })
        .transpose()
}

/// The handshake-rate layer, if `per_ip` is set.
pub(crate) fn rate_layer(
    l: &RateLimitConfig,
    redis: Option<&RedisLimits>,
) -> Result<Option<IpRateLimitLayer>, SectionError> {
    let Some(spec) = rate_spec(l)? else {
        return Ok(None);
    };
    let mut layer = IpRateLimitLayer::new(spec)
        .allow(l.allow.iter().copied())
        .deny(l.deny.iter().copied());
    if let Some(b) = l.burst {
        layer = layer.burst(b);
    }
    if let Some(p) = l.ipv6_prefix {
        layer = layer.ipv6_prefix(p);
    }
    if let Some(store) = redis {
        layer = layer.redis(store.clone());
    }
    Ok(Some(layer))
}

/// The connection-cap layer, if any cap is set.
pub(crate) fn connection_layer(
    l: &RateLimitConfig,
    redis: Option<&RedisLimits>,
) -> Option<ConnectionLimitLayer> {
    if l.max_connections_per_ip.is_none()
        && l.max_connections.is_none()
        && l.max_connections_per_subject.is_none()
    {
        return None;
    }
    let mut layer = ConnectionLimitLayer::new().allow(l.allow.iter().copied());
    if let Some(n) = l.max_connections_per_ip {
        layer = layer.per_ip(n);
    }
    if let Some(n) = l.max_connections {
        layer = layer.global(n);
    }
    if let Some(n) = l.max_connections_per_subject {
        layer = layer.per_subject(n);
    }
    if let Some(p) = l.ipv6_prefix {
        layer = layer.ipv6_prefix(p);
    }
    if let Some(store) = redis {
        layer = layer.redis(store.clone());
    }
    Some(layer)
}
