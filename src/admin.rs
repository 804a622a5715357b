//! The admin listener: metrics, health, readiness and a live status page.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};

use axum::{
    extract::State,
    response::{Html, IntoResponse, Response},
    routing::get,
    Json, Router,
};
use http::{header, HeaderValue, StatusCode};
use serde::Serialize;
use wsgate_layers::Upstream;

use crate::{
    metrics::{Metrics, Outcome},
    upstream::Supervisor,
};

#[derive(Clone)]
struct AdminState {
    metrics: Arc<Metrics>,
    upstreams: Vec<Arc<Upstream>>,
    ready: Arc<AtomicBool>,
    supervisor: Arc<Supervisor>,
}

/// The admin router.
pub(crate) fn router(
    metrics: Arc<Metrics>,
    upstreams: Vec<Arc<Upstream>>,
    ready: Arc<AtomicBool>,
    supervisor: Arc<Supervisor>,
) -> Router {
    Router::new()
        .route("/", get(|| async { Html(STATUS_PAGE) }))
        .route("/metrics", get(metrics_text))
        .route("/status.json", get(status_json))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(AdminState {
            metrics,
            upstreams,
            ready,
            supervisor,
        })
}

/// 503 while draining, and while wsgate is at its connection limit (a new client would
/// get 503), so a balancer in front sends new clients to another instance; open sockets
/// are not affected.
async fn readyz(State(s): State<AdminState>) -> Response {
    if !s.ready.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response()
    } else if s.metrics.capacity.full() {
        (StatusCode::SERVICE_UNAVAILABLE, "at the connection limit\n").into_response()
    } else {
        (StatusCode::OK, "ready\n").into_response()
    }
}

async fn metrics_text(State(s): State<AdminState>) -> Response {
    let mut extra = String::from(
        "# HELP wsgate_backend_connections_active Open sockets per backend.\n# TYPE wsgate_backend_connections_active gauge\n",
    );
    let mut health = String::from(
        "# HELP wsgate_backend_healthy 1 when the backend takes new sockets.\n# TYPE wsgate_backend_healthy gauge\n",
    );
    let mut transitions = String::from(
        "# HELP wsgate_backend_health_transitions_total Active health check state changes per backend.\n# TYPE wsgate_backend_health_transitions_total counter\n",
    );
    let mut ejections = String::from(
        "# HELP wsgate_backend_ejections_total Passive ejections after failed connects or handshakes.\n# TYPE wsgate_backend_ejections_total counter\n",
    );
    for u in &s.upstreams {
        for b in u.backends() {
            // The id is the URL, plus the address for a backend resolved from a host name.
            let labels = format!("upstream=\"{}\",backend=\"{}\"", u.name(), b.id());
            extra.push_str(&format!(
                "wsgate_backend_connections_active{{{labels}}} {}\n",
                b.active()
            ));
            health.push_str(&format!(
                "wsgate_backend_healthy{{{labels}}} {}\n",
                u8::from(b.is_available())
            ));
            transitions.push_str(&format!(
                "wsgate_backend_health_transitions_total{{{labels}}} {}\n",
                b.health_transitions()
            ));
            ejections.push_str(&format!(
                "wsgate_backend_ejections_total{{{labels}}} {}\n",
                b.ejections()
            ));
        }
    }
    extra.push_str(&health);
    extra.push_str(&transitions);
    extra.push_str(&ejections);
    extra.push_str(&s.supervisor.pool_metrics());
    extra.push_str(&runtime_tasks());
    let mut resp = s.metrics.render(&extra).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    resp
}

/// The runtime's live task count: one per open socket and a few for listeners and
/// background work. After clients leave it must come back to where it was, so a task
/// that outlives its socket (or its reload) shows up here.
fn runtime_tasks() -> String {
    let alive = tokio::runtime::Handle::try_current().map_or(0, |h| h.metrics().num_alive_tasks());
    format!("# HELP wsgate_runtime_tasks_alive Tasks alive in the runtime (sockets and background work).\n# TYPE wsgate_runtime_tasks_alive gauge\nwsgate_runtime_tasks_alive {alive}\n")
}

#[derive(Serialize)]
struct Status {
    active: i64,
    handshakes_ok: u64,
    handshakes_failed: u64,
    routes: Vec<RouteStatus>,
    upstreams: Vec<UpstreamStatus>,
    recent_rejections: Vec<crate::metrics::Rejection>,
}

#[derive(Serialize)]
struct RouteStatus {
    path: String,
    active: i64,
}

#[derive(Serialize)]
struct UpstreamStatus {
    name: String,
    backends: Vec<BackendStatus>,
}

#[derive(Serialize)]
struct BackendStatus {
    url: String,
    healthy: bool,
    draining: bool,
    active: usize,
}

async fn status_json(State(s): State<AdminState>) -> Json<Status> {
    let failed = [
        Outcome::AuthFailed,
        Outcome::Forbidden,
        Outcome::RateLimited,
        Outcome::TooManyConnections,
        Outcome::NoBackend,
        Outcome::UpstreamFailed,
        Outcome::UpstreamRefused,
        Outcome::BadRequest,
    ]
    .iter()
    .map(|o| s.metrics.handshakes(*o))
    .sum();
    Json(Status {
        active: s.metrics.active(),
        handshakes_ok: s.metrics.handshakes(Outcome::Ok),
        handshakes_failed: failed,
        routes: s
            .metrics
            .routes()
            .into_iter()
            .map(|(path, active)| RouteStatus { path, active })
            .collect(),
        recent_rejections: s.metrics.recent_rejections(),
        upstreams: s
            .upstreams
            .iter()
            .map(|u| UpstreamStatus {
                name: u.name().to_string(),
                backends: u
                    .backends()
                    .iter()
                    .map(|b| BackendStatus {
                        url: b.url().to_string(),
                        healthy: b.is_healthy(),
                        draining: b.is_draining(),
                        active: b.active(),
                    })
                    .collect(),
            })
            .collect(),
    })
}

const STATUS_PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>wsgate status</title>
<style>body{font:14px system-ui,sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 10px;text-align:left}.up{color:#070}.down{color:#b00}</style>
</head><body>
<h1>wsgate</h1>
<p>Open sockets: <b id="active">…</b> · handshakes ok: <b id="ok">…</b> · refused or failed: <b id="failed">…</b></p>
<p>Handshakes per second: <b id="rate">…</b></p>
<h2>Backends</h2>
<table><thead><tr><th>upstream</th><th>backend</th><th>health</th><th>open sockets</th></tr></thead><tbody id="backends"></tbody></table>
<h2>Routes</h2>
<table><thead><tr><th>route</th><th>open sockets</th></tr></thead><tbody id="routes"></tbody></table>
<h2>Recent rejections</h2>
<table><thead><tr><th>time</th><th>route</th><th>status</th><th>outcome</th></tr></thead><tbody id="rejections"></tbody></table>
<script>
let last = null;
const esc = t => String(t).replace(/[&<>"]/g, c => ({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c]));
async function refresh(){
  try{
    const s = await (await fetch('/status.json')).json();
    const total = s.handshakes_ok + s.handshakes_failed, now = Date.now();
    if (last) document.getElementById('rate').textContent = ((total - last.total) * 1000 / (now - last.at)).toFixed(1);
    last = {total, at: now};
    document.getElementById('routes').innerHTML = s.routes.map(r => `<tr><td>${esc(r.path)}</td><td>${r.active}</td></tr>`).join('');
    document.getElementById('rejections').innerHTML = s.recent_rejections.slice().reverse().map(r => `<tr><td>${new Date(r.at*1000).toISOString()}</td><td>${esc(r.route)}</td><td>${r.status}</td><td>${esc(r.outcome)}</td></tr>`).join('');
    document.getElementById('active').textContent = s.active;
    document.getElementById('ok').textContent = s.handshakes_ok;
    document.getElementById('failed').textContent = s.handshakes_failed;
    const rows = [];
    for (const u of s.upstreams) for (const b of u.backends) {
      const h = b.draining ? 'draining' : (b.healthy ? 'healthy' : 'down');
      rows.push(`<tr><td>${esc(u.name)}</td><td>${esc(b.url)}</td><td class="${b.healthy?'up':'down'}">${h}</td><td>${b.active}</td></tr>`);
    }
    document.getElementById('backends').innerHTML = rows.join('');
  }catch(e){}
}
refresh(); setInterval(refresh, 1000);
</script></body></html>"#;
