//! Listeners, routing, TLS and shutdown.
//!
//! Each accepted socket is served by hyper's HTTP/1.1 connection driver with upgrades
//! on; every task is owned by a [`TaskTracker`] and stopped through a
//! [`CancellationToken`]. axum's own graceful shutdown does not see upgraded sockets, so
//! the relays have their own drain signal ([`Shared::drain`]).

use std::{
    convert::Infallible,
    io,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicI64, Ordering},
        Arc,
    },
    time::Duration,
};

use axum::{
    body::Body,
    extract::Request,
    routing::{any_service, MethodRouter},
    Router,
};
use http::StatusCode;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower::{ServiceBuilder, ServiceExt};
use tracing::{debug, info, warn};
use wsgate_layers::{
    client_ip::{ClientIpLayer, PeerAddr},
    sticky::StickyLayer,
    upstream::{Backend, BackendUrl, Policy, Upstream, UpstreamLayer},
};

use crate::{
    capacity::{CapacityLayer, ClientConnection},
    config::{Config, RoutePath},
    error::text,
    hygiene::CheckRequestLayer,
    metrics::Metrics,
    proxy::{ConnMeta, ProxyService, RouteProxy, Shared},
    refusals::CountRefusalsLayer,
    relay::RelaySettings,
    upgrade::{IntoStream, Outcome as FastPath},
    upstream::{
        check_health, check_sticky,
        failover::Retry,
        pool::{Pool, PoolSettings},
        tls_client_config, Connector, Supervisor,
    },
};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What the OS said.
        source: io::Error,
    },
    /// The configuration cannot be turned into a running server.
    #[error("{0}")]
    Config(String),
}

/// A running wsgate.
#[derive(Debug)]
pub struct Running {
    /// Bound client listener addresses (useful with port 0).
    pub listen: Vec<SocketAddr>,
    /// Bound admin address.
    pub admin: Option<SocketAddr>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// The upstream groups, by name.
    pub upstreams: Vec<Arc<Upstream>>,
    /// Health checks, warm pools, DNS re-resolution, drains and reloads of the groups.
    pub supervisor: Arc<Supervisor>,
    stop_accepting: CancellationToken,
    shared: Shared,
    listeners: TaskTracker,
    ready: Arc<AtomicBool>,
    grace: Duration,
    close_timeout: Duration,
}

impl Running {
    /// Stops accepting, lets open sockets live for the grace period, closes the rest with
    /// 1001 (spread over the jitter window) and waits for them, or until the deadline.
    pub async fn shutdown(self) {
        self.ready.store(false, Ordering::Relaxed);
        self.stop_accepting.cancel();
        self.listeners.close();
        self.shared.tracker.close();
        if tokio::time::timeout(self.grace, self.shared.tracker.wait())
            .await
            .is_err()
        {
            info!(
                open = self.metrics.active(),
                "closing open sockets with 1001"
            );
            self.shared.drain.cancel();
            let deadline = self.shared.drain_jitter + self.close_timeout + Duration::from_secs(1);
            if tokio::time::timeout(deadline, self.shared.tracker.wait())
                .await
                .is_err()
            {
                warn!(
                    open = self.metrics.active(),
                    "shutdown deadline passed; dropping sockets"
                );
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.listeners.wait()).await;
        self.supervisor.shutdown(Duration::from_secs(1)).await;
    }

    /// Closes every open socket now (1001) without waiting for the grace period.
    pub fn drain_now(&self) {
        self.shared.drain.cancel();
    }
}

/// Builds everything from `cfg`, binds the listeners and starts serving.
pub async fn start(cfg: &Config) -> Result<Running, StartError> {
    start_with(cfg, |r| r).await
}

/// Like [`start`], letting the caller add routes to the client router (the demo page).
pub async fn start_with(
    cfg: &Config,
    extend: impl FnOnce(Router) -> Router,
) -> Result<Running, StartError> {
    let metrics = Arc::new(Metrics::default());
    let shared = Shared {
        tracker: TaskTracker::new(),
        drain: CancellationToken::new(),
        drain_jitter: cfg.server.drain_window.0,
        metrics: metrics.clone(),
    };
    set_connection_limit(cfg, &metrics);
    let supervisor = Arc::new(Supervisor::new());
    let (router, upstreams) = build_router(cfg, &shared, &supervisor).await?;
    let router = extend(router);

    let stop_accepting = CancellationToken::new();
    let listeners = TaskTracker::new();
    let mut listen = Vec::new();
    let tls = match &cfg.server.tls {
        Some(t) => {
            let store = Arc::new(crate::tls::CertStore::load(t).map_err(StartError::Config)?);
            let acceptor = store.acceptor().map_err(StartError::Config)?;
            listeners.spawn(store.watch(t.reload_interval.0, stop_accepting.clone()));
            Some(acceptor)
        }
        None => None,
    };
    let opts = ConnOptions {
        handshake_timeout: cfg.server.handshake_timeout.0,
        max_header_bytes: usize::try_from(cfg.server.max_header_bytes.0).unwrap_or(usize::MAX),
        max_headers: cfg.server.max_headers,
        proxy_protocol: cfg
            .server
            .proxy_protocol
            .then(|| Arc::<[ipnet::IpNet]>::from(cfg.server.trusted_proxies.clone())),
    };
    for addr in cfg.server.listen.to_vec() {
        let l = bind_listener(addr).map_err(|source| StartError::Bind { addr, source })?;
        listen.push(
            l.local_addr()
                .map_err(|source| StartError::Bind { addr, source })?,
        );
        listeners.spawn(accept_loop(
            l,
            router.clone(),
            opts.clone(),
            tls.clone(),
            Some(metrics.clone()),
            stop_accepting.clone(),
            listeners.clone(),
        ));
    }
    listeners.spawn(crate::memory::trim_after_closes(
        metrics.clone(),
        stop_accepting.clone(),
    ));
    let ready = Arc::new(AtomicBool::new(true));
    let admin = match cfg.server.admin {
        Some(addr) => {
            let l = bind_listener(addr).map_err(|source| StartError::Bind { addr, source })?;
            let bound = l
                .local_addr()
                .map_err(|source| StartError::Bind { addr, source })?;
            let admin = crate::admin::router(
                metrics.clone(),
                upstreams.clone(),
                ready.clone(),
                supervisor.clone(),
            );
            listeners.spawn(accept_loop(
                l,
                admin,
                // The admin listener never speaks PROXY protocol.
                ConnOptions {
                    proxy_protocol: None,
                    ..opts.clone()
                },
                None,
                // Not counted against the connection limit: `/metrics` must answer
                // when wsgate is full.
                None,
                stop_accepting.clone(),
                listeners.clone(),
            ));
            Some(bound)
        }
        None => None,
    };
    info!(?listen, ?admin, "wsgate listening");
    Ok(Running {
        listen,
        admin,
        metrics,
        upstreams,
        supervisor,
        stop_accepting,
        shared,
        listeners,
        ready,
        grace: cfg.server.shutdown_timeout.0,
        close_timeout: cfg.server.close_timeout.0,
    })
}

/// Sets the connection limit: `server.max_connections`, or what the open-file limit
/// allows (`crate::capacity`). Warns when the configured limit needs more descriptors
/// than the process may open, since `EMFILE` would then come first.
fn set_connection_limit(cfg: &Config, metrics: &Metrics) {
    let reserved = crate::capacity::reserved(cfg);
    let open_files = crate::capacity::open_file_limit();
    let limit = match (cfg.server.max_connections, open_files) {
        (Some(n), Some(files)) => {
            let needed = (n as u64).saturating_mul(2).saturating_add(reserved);
            if needed > files {
                warn!(
                    max_connections = n,
                    needed,
                    open_file_limit = files,
                    "server.max_connections needs more descriptors than the open-file limit \
                     allows; raise the limit (ulimit -n, systemd LimitNOFILE=) or lower \
                     server.max_connections"
                );
            }
            n
        }
        (Some(n), None) => n,
        (None, Some(files)) => crate::capacity::derived_limit(files, reserved),
        (None, None) => return,
    };
    metrics.capacity.set_limit(limit);
    info!(
        max_connections = limit,
        open_file_limit = open_files,
        "connection limit"
    );
}

/// The client router: one route per `[[route]]`, each behind its layers.
async fn build_router(
    cfg: &Config,
    shared: &Shared,
    supervisor: &Arc<Supervisor>,
) -> Result<(Router, Vec<Arc<Upstream>>), StartError> {
    let mut upstreams = Vec::new();
    let mut connectors = Vec::new();
    let mut stickies = Vec::new();
    for u in &cfg.upstream {
        // Health-checked and pooled all the same, so most likely a typo in a route.
        if !cfg.route.iter().any(|r| r.upstream == u.name) {
            warn!(upstream = %u.name, "no route uses this upstream");
        }
        let policy: Policy =
            u.policy
                .parse()
                .map_err(|e: wsgate_layers::upstream::UpstreamError| {
                    StartError::Config(e.to_string())
                })?;
        let weights = u.weights.clone().unwrap_or_default();
        let backends = u
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let url = BackendUrl::parse(b).map_err(|e| StartError::Config(e.to_string()))?;
                Ok(Arc::new(Backend::with_weight(
                    url,
                    weights.get(i).copied().unwrap_or(1),
                )))
            })
            .collect::<Result<Vec<_>, StartError>>()?;
        let mut up = Upstream::from_backends(u.name.clone(), policy, backends)
            .map_err(|e| StartError::Config(format!("upstream `{}`: {e}", u.name)))?;
        let u_err = |(k, m): (String, String)| {
            StartError::Config(format!("upstream `{}`.{k}: {m}", u.name))
        };
        let sticky = match &u.sticky {
            Some(s) => {
                if crate::upstream::supervisor::has_process_secret(s) {
                    warn!(
                        upstream = %u.name,
                        "sticky cookies are signed with a random secret of this process: they hold until a restart and on this instance only; set sticky.secret_env or sticky.secret_file (the same on every instance) to keep them"
                    );
                }
                if let Some(f) = s.bounded_load {
                    up = up.with_bounded_load(f);
                }
                if let Some(m) = crate::upstream::supervisor::failover_memory(s)
                    .map_err(|(k, m)| u_err((format!("sticky.{k}"), m)))?
                {
                    up = up.with_failover_memory(m);
                }
                Some(
                    check_sticky(s)
                        .map_err(u_err)?
                        .secure(cfg.server.tls.is_some()),
                )
            }
            None => None,
        };
        let health = u
            .health
            .as_ref()
            .map(check_health)
            .transpose()
            .map_err(u_err)?;
        let client_auth = u.client_cert.as_deref().zip(u.client_key.as_deref());
        let tls = tls_client_config(u.ca_file.as_deref(), client_auth)
            .map_err(|e| StartError::Config(format!("upstream `{}`: {e}", u.name)))?;
        let mut connector = Connector::new(tls, u.connect_timeout.0, u.handshake_timeout.0)
            .with_retry(Retry {
                max_attempts: u.max_attempts,
                budget: u.retry_budget.0,
                eject_base: u.eject_backoff.0,
                eject_max: u.eject_backoff_max.0,
            });
        if u.resume {
            connector = connector.with_resume(crate::upstream::ResumeSettings {
                notice: u.resume_notice.clone(),
            });
        }
        connector = connector.with_rebalance(u.rebalance.is_some());
        if let Some(p) = &u.pool {
            connector = connector.with_pool(Arc::new(Pool::new(PoolSettings {
                min_idle: p.min_idle,
                max: p.max,
                idle_timeout: p.idle_timeout.0,
            })));
        }
        let up = Arc::new(up);
        supervisor
            .add(u, up.clone(), connector.clone(), health)
            .await;
        connectors.push(connector);
        stickies.push(sticky);
        upstreams.push(up);
    }
    let outer = OuterLayers {
        handshakes: cfg
            .server
            .max_handshakes
            .map(wsgate_layers::ratelimit::HandshakeLimitLayer::new),
        client_ip: ClientIpLayer::new().trusted_proxies(cfg.server.trusted_proxies.iter().copied()),
        capacity: CapacityLayer::new(shared.metrics.clone()),
    };
    // Route paths are literal (config validation allows no `{capture}`); a segment
    // starting with `:` is a plain path too, which axum 0.8 would refuse with a panic.
    let mut router = Router::new().without_v07_checks();
    let exact: std::collections::HashSet<String> = cfg
        .route
        .iter()
        .filter_map(|r| match Config::route_path(r) {
            RoutePath::Exact(p) => Some(p),
            RoutePath::Prefix(_) => None,
        })
        .collect();
    for r in &cfg.route {
        let i = cfg
            .upstream
            .iter()
            .position(|u| u.name == r.upstream)
            .ok_or_else(|| StartError::Config(format!("route {}: unknown upstream", r.path)))?;
        let route = Arc::new(RouteProxy {
            name: r.path.clone(),
            connector: connectors[i].clone(),
            relay: Arc::new(RelaySettings {
                max_message: r.max_message.0,
                buffer_size: cfg.server.buffer_size.0 as usize,
                idle_timeout: r.idle_timeout.map(|d| d.0),
                close_timeout: cfg.server.close_timeout.0,
                rsv_allowed: 0,
                expires_at: None,
                max_lifetime: r.max_lifetime.map(|d| d.0),
                message_limits: match &r.rate_limit {
                    Some(l) => crate::layers::message_limits(l).map_err(|(k, m)| {
                        StartError::Config(format!("route `{}`: rate_limit.{k}: {m}", r.path))
                    })?,
                    None => None,
                },
                ping_interval: r.ping_interval.map(|d| d.0),
                validate_utf8: cfg.relay.validate_utf8,
            }),
            origins: r.origins.clone(),
            hosts: r.hosts.clone(),
            query: r.query.as_ref().map(|q| crate::hygiene::QueryRules {
                allow: q.allow.clone(),
                deny: q.deny.clone(),
                strip: q.strip.clone(),
                max_value_len: q
                    .max_value_len
                    .map(|m| usize::try_from(m.0).unwrap_or(usize::MAX)),
            }),
            shared: shared.clone(),
            active: Arc::new(AtomicI64::new(0)),
            reserved_headers: reserved_headers(cfg, r),
        });
        shared.metrics.register_route(&r.path, route.active.clone());
        let method_router = route_service(
            r,
            route,
            upstreams[i].clone(),
            stickies[i].clone(),
            &outer,
            shared,
        )
        .await?;
        let path = Config::route_path(r);
        // A prefix serves its base path too, unless an exact route takes it.
        let base = path
            .base()
            .filter(|b| !exact.contains(*b))
            .map(str::to_owned);
        router = match path {
            RoutePath::Exact(p) => router.route(&p, method_router),
            RoutePath::Prefix(p) => {
                let router = match base {
                    Some(base) => router.route(&base, method_router.clone()),
                    None => router,
                };
                router.route(&format!("{p}/{{*rest}}"), method_router)
            }
        };
    }
    Ok((router.fallback_service(not_found(outer)), upstreams))
}

/// The layers in front of every route, and of the not-found answer, outermost first.
struct OuterLayers {
    /// Outermost: a handshake waiting on a backend holds a slot; when all are taken the
    /// next request gets 503 at once rather than queueing without bound
    /// (`server.max_handshakes`).
    handshakes: Option<wsgate_layers::ratelimit::HandshakeLimitLayer>,
    /// Who the client is, for the limits and the forwarding headers; inside the request
    /// checks ([`CheckRequestLayer`]) that come next.
    client_ip: ClientIpLayer,
    /// 503 beyond the connection limit (`crate::capacity`); in a route's stack just
    /// inside the refusal counter, so these refusals are counted (as `overloaded`).
    capacity: CapacityLayer,
}

/// The answer for a path no route serves: 404, behind the same request checks as the
/// routes.
fn not_found(outer: OuterLayers) -> MethodRouter {
    let answer = tower::service_fn(|_: Request| async {
        Ok::<_, Infallible>(text(
            StatusCode::NOT_FOUND,
            "no route for this path\n".into(),
        ))
    });
    any_service(
        ServiceBuilder::new()
            .option_layer(outer.handshakes)
            .layer(CheckRequestLayer)
            .layer(outer.capacity)
            .service(answer),
    )
}

/// A route's whole stack, built as one concrete service around its handler and handed
/// to axum once: axum boxes a route's service (a clone and a boxed future per request),
/// so each `.layer(..)` on a `MethodRouter` would add one of those per layer.
///
/// Outermost first: the handshake cap and request checks ([`OuterLayers`]), the client
/// IP, the outcome counter (so a refusal by any layer below is counted), the handshake
/// rate limit, the JWT check (which inserts the `SubjectKey` the caps count), the
/// connection caps, the sticky key (which may need the verified claims) and, innermost,
/// the upstream choice. Rate limiting runs before JWT so a flood of bad tokens costs no
/// signature checks.
async fn route_service(
    r: &crate::config::RouteConfig,
    route: Arc<RouteProxy>,
    upstream: Arc<Upstream>,
    sticky: Option<StickyLayer>,
    outer: &OuterLayers,
    shared: &Shared,
) -> Result<MethodRouter, StartError> {
    let cfg_err =
        |key: &str, m: String| StartError::Config(format!("route `{}`: {key}: {m}", r.path));
    let redis = match &r.rate_limit {
        Some(l) => crate::layers::redis_store(l, &r.path)
            .map_err(|(k, m)| cfg_err(&format!("rate_limit.{k}"), m))?,
        None => None,
    };
    let connections = r
        .rate_limit
        .as_ref()
        .and_then(|l| crate::layers::connection_layer(l, redis.as_ref()));
    let jwt = match &r.jwt {
        Some(j) => Some(
            crate::layers::jwt_builder(j, r.origins.is_some())
                .map_err(|(k, m)| cfg_err(&format!("jwt.{k}"), m))?
                .build()
                .await
                .map_err(|e| cfg_err("jwt", e.to_string()))?,
        ),
        None => None,
    };
    let rate = match &r.rate_limit {
        Some(l) => crate::layers::rate_layer(l, redis.as_ref())
            .map_err(|(k, m)| cfg_err(&format!("rate_limit.{k}"), m))?,
        None => None,
    };
    let stack = ServiceBuilder::new()
        .option_layer(outer.handshakes.clone())
        .layer(CheckRequestLayer)
        .layer(outer.client_ip.clone())
        .layer(CountRefusalsLayer::new(shared.metrics.clone(), &r.path))
        .layer(outer.capacity.clone())
        .option_layer(rate)
        .option_layer(jwt)
        .option_layer(connections)
        .option_layer(sticky)
        .layer(UpstreamLayer::new(upstream))
        .service(ProxyService::new(route));
    Ok(any_service(stack))
}

/// The identity headers some route's `forward_claims` sets and route `r` does not: on
/// `r` a client's copy is removed, so a backend that trusts the header (it is wsgate's to
/// set) cannot be handed a forged one through a route without that claim forwarding.
fn reserved_headers(cfg: &Config, r: &crate::config::RouteConfig) -> Vec<http::HeaderName> {
    let names = |route: &crate::config::RouteConfig| -> Vec<http::HeaderName> {
        route
            .jwt
            .iter()
            .flat_map(|j| j.forward_claims.values())
            // An invalid name fails the route's JWT layer at start; nothing to reserve.
            .filter_map(|h| http::HeaderName::from_bytes(h.as_bytes()).ok())
            .collect()
    };
    let own = names(r);
    let mut out: Vec<http::HeaderName> = Vec::new();
    for name in cfg.route.iter().flat_map(names) {
        if !own.contains(&name) && !out.contains(&name) {
            out.push(name);
        }
    }
    out
}

#[derive(Debug, Clone)]
struct ConnOptions {
    handshake_timeout: Duration,
    max_header_bytes: usize,
    max_headers: usize,
    /// Expect a PROXY protocol header, only from these peers.
    proxy_protocol: Option<Arc<[ipnet::IpNet]>>,
}

/// Accept queue length: bursts of new connections wait in the kernel, not in SYN retries.
const BACKLOG: u32 = 1024;

/// Binds a listener set up so that each accepted socket needs no setup of its own.
///
/// * `TCP_NODELAY` is inherited by accepted sockets on Linux, which saves a `setsockopt`
///   per connection (elsewhere [`serve_connection`] sets it on each socket).
/// * `TCP_DEFER_ACCEPT` (Linux): the kernel hands over a connection once the client's
///   first bytes (the request head, or a TLS ClientHello) have arrived, so a new socket
///   is readable when wsgate first sees it. A client that connects and stays silent sits
///   in the kernel's queue for [`DEFER_ACCEPT_SECS`] before it is handed over (and then
///   gets the usual handshake timeout), holding no descriptor meanwhile.
/// * Delayed ACKs (`TCP_QUICKACK` off, inherited): the client's request is acknowledged by
///   the 101 rather than by a segment of its own ([`crate::sockopt::delay_acks`]).
fn bind_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = crate::sockopt::tcp_socket_for(addr)?;
    socket.set_reuseaddr(true)?;
    #[cfg(target_os = "linux")]
    crate::sockopt::defer_accept(&socket, DEFER_ACCEPT_SECS)?;
    socket.bind(addr)?;
    let listener = socket.listen(BACKLOG)?;
    // After `listen`, which resets the delayed-ACK state the accepted sockets inherit.
    #[cfg(target_os = "linux")]
    crate::sockopt::delay_acks(&listener)?;
    Ok(listener)
}

/// How long the kernel holds a connection whose client has sent nothing yet.
const DEFER_ACCEPT_SECS: u32 = 1;

/// Accepts connections and spawns a task for each. With `capacity`, each connection
/// is counted against the connection limit, and at the limit (plus the refusal lane)
/// the loop stops accepting until one closes (`crate::capacity`).
async fn accept_loop(
    listener: TcpListener,
    router: Router,
    opts: ConnOptions,
    tls: Option<TlsAcceptor>,
    capacity: Option<Arc<Metrics>>,
    stop: CancellationToken,
    tasks: TaskTracker,
) {
    loop {
        if let Some(m) = &capacity {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = m.capacity.room() => {}
            }
        }
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                let counted = capacity.as_ref().map(ClientConnection::open);
                tasks.spawn(serve_connection(
                    stream,
                    peer,
                    router.clone(),
                    opts.clone(),
                    tls.clone(),
                    stop.clone(),
                    counted,
                ));
            }
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning on the error.
                warn!(error = %e, "accept failed");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
        }
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    opts: ConnOptions,
    tls: Option<TlsAcceptor>,
    stop: CancellationToken,
    // In the connection count until this task ends.
    _counted: Option<ClientConnection>,
) {
    // On Linux the socket inherited TCP_NODELAY from its listener (`bind_listener`).
    #[cfg(not(target_os = "linux"))]
    let _ = stream.set_nodelay(true);
    let peer = match &opts.proxy_protocol {
        None => peer,
        Some(trusted) => {
            let ip = wsgate_layers::client_ip::canonical(peer.ip());
            if !trusted.iter().any(|n| n.contains(&ip)) {
                // A PROXY header from anyone but a trusted proxy would let a client choose
                // its address; such peers are not served at all.
                debug!(%peer, "PROXY protocol listener: peer is not a trusted proxy");
                return;
            }
            let read = tokio::select! {
                _ = stop.cancelled() => return,
                r = tokio::time::timeout(opts.handshake_timeout, read_proxy_header(&stream)) => r,
            };
            match read {
                Ok(Ok(source)) => source.unwrap_or(peer),
                Ok(Err(e)) => {
                    debug!(%peer, error = %e, "bad PROXY protocol header");
                    return;
                }
                Err(_) => {
                    debug!(%peer, "PROXY protocol header timed out");
                    return;
                }
            }
        }
    };
    match tls {
        None => serve_http(stream, peer, router, opts, false, stop).await,
        // Boxed: the TLS states are large, and inline they would size (and be copied
        // with) every plain connection's task too.
        Some(acceptor) => Box::pin(serve_tls(stream, peer, acceptor, router, opts, stop)).await,
    }
}

async fn serve_tls(
    stream: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    router: Router,
    opts: ConnOptions,
    stop: CancellationToken,
) {
    // The TLS handshake counts against the same deadline as the request head, so a client
    // trickling a ClientHello is cut off like a slow HTTP client.
    let accepted = tokio::select! {
        _ = stop.cancelled() => return,
        r = tokio::time::timeout(opts.handshake_timeout, acceptor.accept(stream)) => r,
    };
    match accepted {
        Ok(Ok(tls_stream)) if tls_stream.get_ref().1.alpn_protocol() == Some(b"h2") => {
            serve_h2(tls_stream, peer, router, opts, stop).await
        }
        Ok(Ok(tls_stream)) => serve_http(tls_stream, peer, router, opts, true, stop).await,
        Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
        Err(_) => debug!(%peer, "TLS handshake timed out"),
    }
}

/// Reads and consumes a PROXY protocol (v1 or v2) header; returns the client address it
/// names (`None` for `LOCAL`/`UNKNOWN`: keep the socket peer).
///
/// It peeks and then consumes exactly the header, so the socket stays a plain
/// `TcpStream` (the relay's fast path) with no bytes of the request held aside.
async fn read_proxy_header(stream: &TcpStream) -> io::Result<Option<SocketAddr>> {
    let mut buf = vec![0u8; 536];
    loop {
        stream.readable().await?;
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        match wsgate_layers::proxy_protocol::parse(&buf[..n]) {
            Ok(Some((header, len))) => {
                let mut consumed = vec![0u8; len];
                let mut got = 0;
                while got < len {
                    stream.readable().await?;
                    match stream.try_read(&mut consumed[got..]) {
                        Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                        Ok(k) => got += k,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                        Err(e) => return Err(e),
                    }
                }
                return Ok(header.source());
            }
            Ok(None) if n == buf.len() => buf.resize(buf.len() * 2, 0),
            Ok(None) => {
                // Only part of the header has arrived and peeking does not clear
                // readiness, so wait a moment instead of spinning; the caller's handshake
                // timeout bounds this.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
        }
        if buf.len() > 64 * 1024 + 16 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "PROXY header too long",
            ));
        }
    }
}

/// Serves an HTTP/2 connection (TLS with ALPN `h2`), with RFC 8441 extended CONNECT so
/// browsers can carry many WebSockets on one connection.
async fn serve_h2<I>(
    io: I,
    peer: SocketAddr,
    router: Router,
    opts: ConnOptions,
    stop: CancellationToken,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let meta = ConnMeta { tls: true };
    let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(PeerAddr(peer));
        req.extensions_mut().insert(meta);
        let router = router.clone();
        async move {
            let resp = router.oneshot(req.map(Body::new)).await;
            Ok::<_, Infallible>(resp.unwrap_or_else(|e| match e {}))
        }
    });
    let mut builder =
        hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .enable_connect_protocol()
        .max_header_list_size(u32::try_from(opts.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => {
            if let Err(e) = res {
                debug!(%peer, error = %e, "HTTP/2 connection ended with an error");
            }
        }
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
        }
    }
}

/// Serves an HTTP/1.1 connection: a plain WebSocket upgrade on the fast path
/// ([`crate::upgrade`]), anything else (and whatever follows a refusal on a kept-alive
/// connection) with hyper.
async fn serve_http<I>(
    io: I,
    peer: SocketAddr,
    router: Router,
    opts: ConnOptions,
    tls: bool,
    stop: CancellationToken,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static + IntoStream,
{
    let meta = ConnMeta { tls };
    let outcome = {
        let fast = crate::upgrade::serve(
            io,
            crate::upgrade::Limits {
                bytes: opts.max_header_bytes,
                headers: opts.max_headers,
            },
            opts.handshake_timeout,
            &stop,
            |mut req: Request| {
                req.extensions_mut().insert(PeerAddr(peer));
                req.extensions_mut().insert(meta);
                let resp = router.clone().oneshot(req);
                async move { resp.await.unwrap_or_else(|e| match e {}) }
            },
        );
        let mut fast = std::pin::pin!(fast);
        tokio::select! {
            o = fast.as_mut() => o,
            // As hyper's graceful shutdown: a handshake under way may finish, briefly (one
        // still waiting for its head ends at once: `serve` watches `stop` too).
            _ = stop.cancelled() => match tokio::time::timeout(Duration::from_secs(5), fast).await {
                Ok(o) => o,
                Err(_) => return,
            },
        }
    };
    match outcome {
        FastPath::Done => {}
        // Boxed for the same reason as TLS: hyper's connection state is large and rare here.
        FastPath::Fallback(io) => Box::pin(serve_hyper(io, peer, router, opts, meta, stop)).await,
    }
}

/// Serves an HTTP/1.1 connection with hyper (upgrades on).
async fn serve_hyper<I>(
    io: I,
    peer: SocketAddr,
    router: Router,
    opts: ConnOptions,
    meta: ConnMeta,
    stop: CancellationToken,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(PeerAddr(peer));
        req.extensions_mut().insert(meta);
        let router = router.clone();
        async move {
            let resp = router.oneshot(req.map(Body::new)).await;
            Ok::<_, Infallible>(resp.unwrap_or_else(|e| match e {}))
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(opts.handshake_timeout)
        .max_buf_size(opts.max_header_bytes)
        .max_headers(opts.max_headers);
    let conn = builder
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => {
            if let Err(e) = res {
                debug!(%peer, error = %e, "client connection ended with an error");
            }
        }
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// Every accepted socket's task is this future, moved into the task when spawned: the
    /// TLS and hyper states are boxed so a plain connection does not carry (or copy) them.
    #[tokio::test]
    async fn a_plain_connection_task_stays_small() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let opts = ConnOptions {
            handshake_timeout: Duration::from_secs(1),
            max_header_bytes: 8192,
            max_headers: 100,
            proxy_protocol: None,
        };
        let peer = client.local_addr().unwrap();
        let fut = serve_connection(
            client,
            peer,
            Router::new(),
            opts,
            None,
            CancellationToken::new(),
            None,
        );
        // 2,232 B in a debug build (the fast path's head, request and router future);
        // with TLS or hyper's HTTP/1 state inline it was over 7 KiB.
        let size = std::mem::size_of_val(&fut);
        assert!(size <= 3072, "{size} B");
    }

    #[tokio::test]
    async fn accepted_sockets_inherit_nodelay_and_wait_for_the_first_bytes() {
        let listener = bind_listener(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = TcpStream::connect(addr).await.unwrap();
        // TCP_DEFER_ACCEPT: connected, but silent, so not handed over yet (it would be
        // after about DEFER_ACCEPT_SECS; well before that here).
        let early = tokio::time::timeout(Duration::from_millis(300), listener.accept()).await;
        assert!(early.is_err(), "a silent client was accepted at once");
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let (accepted, _) = tokio::time::timeout(Duration::from_secs(5), listener.accept())
            .await
            .expect("accepted once the client spoke")
            .unwrap();
        assert!(accepted.nodelay().unwrap(), "TCP_NODELAY not inherited");
        // Delayed ACKs inherited too: the request is acknowledged by the answer.
        assert!(
            !crate::sockopt::quickack(&accepted).unwrap(),
            "accepted socket acknowledges at once"
        );
        // The first bytes are there when the socket is handed over.
        let mut buf = [0u8; 64];
        assert!(accepted.try_read(&mut buf).unwrap() > 0);
    }
}
