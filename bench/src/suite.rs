//! The whole benchmark: every scenario against every target, runs interleaved, then the
//! tables (medians with their spread, ratios to direct and to each peer) and the chart.
//!
//! Runs are interleaved (run 1 of every target, then run 2 …) so that a burst of load
//! from elsewhere on the machine smears over all targets instead of sinking one.

use std::{fmt::Write as _, net::IpAddr, sync::Arc, time::Duration};

use serde::Serialize;

use crate::{
    load::{self, Echo, IdleOutcome, Outcome, Probe, Tokens},
    procstat::Tree,
    targets::{Kind, Running},
    ws::Target,
};

/// Tokens for the JWT scenario of one algorithm.
#[derive(Debug, Clone)]
pub struct JwtTokens {
    /// `RS256`, `ES256`, `EdDSA`.
    pub alg: String,
    /// One token used on every connection.
    pub reused: Arc<str>,
    /// Distinct tokens, one per connection (cycled if the runs outlast the pool).
    pub fresh: Arc<Vec<String>>,
    /// How many fresh tokens have been handed out, across runs.
    pub cursor: Arc<std::sync::atomic::AtomicUsize>,
}

/// How long and how much.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Measured runs per figure (the median is reported).
    pub runs: usize,
    /// Warm-up before each window.
    pub warm: Duration,
    /// Window length.
    pub dur: Duration,
    /// Scenario 6: total messages per second.
    pub rate: f64,
    /// Scenario 6: connections carrying it.
    pub rate_conns: usize,
    /// Scenario 4/5: idle connection counts at which RSS is read.
    pub idle_checkpoints: Vec<usize>,
    /// Runs of the idle scenario.
    pub idle_runs: usize,
    /// Source addresses for churn and idle connections.
    pub sources: Vec<IpAddr>,
    /// JWT tokens per algorithm (empty: no JWT scenario).
    pub jwt: Vec<JwtTokens>,
    /// Which scenarios: msg64, msg64k, churn, jwt, idle, rate.
    pub scenarios: Vec<String>,
}

impl Settings {
    fn has(&self, s: &str) -> bool {
        self.scenarios.iter().any(|x| x == s)
    }
}

/// One measured run.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    /// Operations per second.
    pub rate: f64,
    /// Payload MB/s (10^6 bytes), one direction.
    pub mbps: f64,
    /// Latency percentiles, µs.
    pub p50_us: f64,
    /// p99, µs.
    pub p99_us: f64,
    /// p99.9, µs.
    pub p999_us: f64,
    /// Proxy CPU per operation, µs (None: no separate proxy process).
    pub proxy_us_per_op: Option<f64>,
    /// Proxy CPU / wall time (1.0 = its core is saturated).
    pub proxy_util: Option<f64>,
    /// Generator + backend CPU per operation, µs.
    pub harness_us_per_op: f64,
    /// Generator + backend CPU / wall time (the harness has one core).
    pub harness_util: f64,
    /// Operations in the window.
    pub ops: u64,
    /// Errors.
    pub errors: u64,
    /// First error.
    pub first_error: Option<String>,
}

impl Run {
    fn from(o: &Outcome, has_proxy: bool) -> Self {
        let w = o.window;
        let ops = o.ops.max(1) as f64;
        let q = |p: f64| o.hist.value_at_quantile(p) as f64 / 1e3;
        Run {
            rate: o.ops as f64 / w.secs,
            mbps: o.bytes as f64 / w.secs / 1e6,
            p50_us: q(0.50),
            p99_us: q(0.99),
            p999_us: q(0.999),
            proxy_us_per_op: has_proxy.then(|| w.proxy_cpu * 1e6 / ops),
            proxy_util: has_proxy.then(|| w.proxy_cpu / w.secs),
            harness_us_per_op: w.harness_cpu * 1e6 / ops,
            harness_util: w.harness_cpu / w.secs,
            ops: o.ops,
            errors: o.errors,
            first_error: o.first_error.clone(),
        }
    }
}

/// All runs of one scenario variant against one target.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Scenario key.
    pub scenario: String,
    /// Target name.
    pub target: String,
    /// Variant (JWT algorithm and token mode), or "".
    pub variant: String,
    /// The runs.
    pub runs: Vec<Run>,
    /// For fresh-token runs: connections made and the size of the token pool.
    pub tokens_used: Option<(u64, usize)>,
}

/// Idle-connection runs of one target.
#[derive(Debug, Clone, Serialize)]
pub struct IdleRow {
    /// Target name.
    pub target: String,
    /// The runs.
    pub runs: Vec<IdleOutcome>,
}

/// Everything measured.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Report {
    /// Throughput, latency and churn rows.
    pub rows: Vec<Row>,
    /// Idle rows.
    pub idle: Vec<IdleRow>,
}

impl Report {
    /// Total errors across every run.
    pub fn errors(&self) -> u64 {
        self.rows
            .iter()
            .flat_map(|r| r.runs.iter().map(|x| x.errors))
            .chain(
                self.idle
                    .iter()
                    .flat_map(|r| r.runs.iter().map(|x| x.errors)),
            )
            .sum()
    }

    /// The first error text of each failing row.
    pub fn error_summary(&self) -> Vec<String> {
        let mut out = Vec::new();
        for r in &self.rows {
            for x in &r.runs {
                if x.errors > 0 {
                    out.push(format!(
                        "{} {} {}: {} errors, first: {}",
                        r.scenario,
                        r.target,
                        r.variant,
                        x.errors,
                        x.first_error.as_deref().unwrap_or("?")
                    ));
                }
            }
        }
        for r in &self.idle {
            for x in &r.runs {
                if x.errors > 0 {
                    out.push(format!(
                        "idle {}: {} errors, first: {}",
                        r.target,
                        x.errors,
                        x.first_error.as_deref().unwrap_or("?")
                    ));
                }
            }
        }
        out
    }

    fn row(&self, scenario: &str, target: &str, variant: &str) -> Option<&Row> {
        self.rows
            .iter()
            .find(|r| r.scenario == scenario && r.target == target && r.variant == variant)
    }
}

fn push(rows: &mut Vec<Row>, scenario: &str, target: &str, variant: &str, run: Run) {
    if let Some(r) = rows
        .iter_mut()
        .find(|r| r.scenario == scenario && r.target == target && r.variant == variant)
    {
        r.runs.push(run);
        return;
    }
    rows.push(Row {
        scenario: scenario.into(),
        target: target.into(),
        variant: variant.into(),
        runs: vec![run],
        tokens_used: None,
    });
}

fn progress(scenario: &str, target: &str, variant: &str, r: &Run) {
    eprintln!(
        "  {scenario:<7} {target:<16} {variant:<14} {:>10.0}/s  p99 {:>8.0} µs  proxy {:>7} µs/op ({:>4} core)  harness {:>6.2} µs/op ({:.2} core)  errors {}",
        r.rate,
        r.p99_us,
        r.proxy_us_per_op.map_or("-".into(), |v| format!("{v:.2}")),
        r.proxy_util.map_or("-".into(), |v| format!("{v:.2}")),
        r.harness_us_per_op,
        r.harness_util,
        r.errors
    );
}

/// Runs the selected scenarios against `targets`; `backend` is the echo backend's process
/// (counted as harness CPU) when it runs in its own process.
///
/// `restart` starts a fresh copy of a target: each idle run begins with a fresh proxy
/// process, because an allocator that keeps freed memory (glibc's, in wsgate) would
/// otherwise hide the next run's growth inside the previous run's peak.
pub async fn run(
    targets: &mut [Running],
    backend: Option<Tree>,
    s: &Settings,
    restart: Option<&dyn Fn(Kind) -> std::io::Result<Running>>,
) -> Report {
    let mut harness = vec![Tree(std::process::id())];
    harness.extend(backend);
    let probe = |t: &Running| Probe {
        proxy: t.tree,
        harness: harness.clone(),
    };
    let target = |t: &Running, path: &str| Target {
        addr: t.addr,
        path: path.into(),
    };
    let mut rep = Report::default();
    let echo_scenarios = [
        (
            "msg64",
            Echo {
                conns: 64,
                inflight: 8,
                size: 64,
                rate: None,
            },
        ),
        (
            "msg64k",
            Echo {
                conns: 16,
                inflight: 2,
                size: 64 << 10,
                rate: None,
            },
        ),
        (
            "rate",
            Echo {
                conns: s.rate_conns,
                inflight: 1,
                size: 64,
                rate: Some(s.rate),
            },
        ),
    ];
    for (key, cfg) in echo_scenarios {
        if !s.has(key) {
            continue;
        }
        eprintln!("scenario {key}: {cfg:?}");
        for _ in 0..s.runs {
            for t in targets.iter() {
                let o = load::echo(&target(t, "/ws"), cfg, s.warm, s.dur, &probe(t)).await;
                let r = Run::from(&o, t.tree.is_some());
                progress(key, t.kind.name(), "", &r);
                push(&mut rep.rows, key, t.kind.name(), "", r);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    if s.has("churn") {
        eprintln!("scenario churn: open, one 64 B echo, close; 32 at a time");
        for _ in 0..s.runs {
            for t in targets.iter() {
                let (o, _) = load::churn(
                    &target(t, "/ws"),
                    32,
                    Tokens::None,
                    &s.sources,
                    s.warm,
                    s.dur,
                    &probe(t),
                )
                .await;
                let r = Run::from(&o, t.tree.is_some());
                progress("churn", t.kind.name(), "", &r);
                push(&mut rep.rows, "churn", t.kind.name(), "", r);
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }
    if s.has("jwt") && !s.jwt.is_empty() {
        eprintln!("scenario jwt: churn with a token (fresh per connection / one reused)");
        for _ in 0..s.runs {
            for t in targets.iter().filter(|t| t.kind.has_jwt()) {
                for j in &s.jwt {
                    for (mode, tokens) in [
                        ("fresh", Tokens::Fresh(j.fresh.clone(), j.cursor.clone())),
                        ("reused", Tokens::Reused(j.reused.clone())),
                    ] {
                        let variant = format!("{} {mode}", j.alg);
                        let (o, _) = load::churn(
                            &target(t, "/jwt"),
                            32,
                            tokens,
                            &s.sources,
                            s.warm,
                            s.dur,
                            &probe(t),
                        )
                        .await;
                        let r = Run::from(&o, t.tree.is_some());
                        progress("jwt", t.kind.name(), &variant, &r);
                        push(&mut rep.rows, "jwt", t.kind.name(), &variant, r);
                        if mode == "fresh" {
                            let used = j.cursor.load(std::sync::atomic::Ordering::Relaxed);
                            if let Some(row) = rep.rows.iter_mut().rev().find(|r| {
                                r.scenario == "jwt"
                                    && r.target == t.kind.name()
                                    && r.variant == variant
                            }) {
                                row.tokens_used = Some((used as u64, j.fresh.len()));
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                }
            }
        }
    }
    if s.has("idle") {
        eprintln!(
            "scenario idle: connections held open after one echo; RSS at {:?}",
            s.idle_checkpoints
        );
        for _ in 0..s.idle_runs {
            for t in targets.iter_mut().filter(|t| t.tree.is_some()) {
                if let Some(restart) = restart {
                    match restart(t.kind) {
                        Ok(fresh) => *t = fresh,
                        Err(e) => eprintln!("  idle    {:<16} restart failed: {e}", t.kind.name()),
                    }
                }
                let o =
                    load::idle(&target(t, "/ws"), &s.idle_checkpoints, &s.sources, t.tree).await;
                eprintln!(
                    "  idle    {:<16} base {:.1} MiB, points {:?}, errors {} {}",
                    t.kind.name(),
                    o.rss_base as f64 / 1048576.0,
                    o.points
                        .iter()
                        .map(|(n, r)| format!("{n}: {:.1} MiB", *r as f64 / 1048576.0))
                        .collect::<Vec<_>>(),
                    o.errors,
                    o.first_error.as_deref().unwrap_or("")
                );
                match rep.idle.iter_mut().find(|r| r.target == t.kind.name()) {
                    Some(r) => r.runs.push(o),
                    None => rep.idle.push(IdleRow {
                        target: t.kind.name().into(),
                        runs: vec![o],
                    }),
                }
                // The proxy and the kernel tear the sockets down.
                tokio::time::sleep(Duration::from_millis(1500)).await;
            }
        }
    }
    rep
}

// ---------------------------------------------------------------------------------------
// Aggregation and rendering.

fn median(mut v: Vec<f64>) -> Option<(f64, f64, f64)> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    let m = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some((m, v[0], v[n - 1]))
}

fn stat(row: &Row, f: impl Fn(&Run) -> Option<f64>) -> Option<(f64, f64, f64)> {
    median(row.runs.iter().filter_map(f).collect())
}

fn fmt_num(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn cell(s: Option<(f64, f64, f64)>) -> String {
    match s {
        Some((m, lo, hi)) if hi > lo => format!("{} ({}–{})", fmt_num(m), fmt_num(lo), fmt_num(hi)),
        Some((m, _, _)) => fmt_num(m),
        None => "–".into(),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
        _ => "–".into(),
    }
}

/// Idle figures of one target: (KiB per connection from base to the first checkpoint,
/// KiB per connection between the first and last checkpoints, connections up at the
/// last, RSS MiB at the last, errors), medians over runs.
pub fn idle_figures(r: &IdleRow) -> Option<(f64, f64, f64, f64, f64)> {
    let per_run: Vec<(f64, f64, f64, f64, f64)> = r
        .runs
        .iter()
        .filter_map(|o| {
            let first = *o.points.first()?;
            let last = *o.points.last()?;
            let avg = (first.1 as f64 - o.rss_base as f64) / first.0.max(1) as f64 / 1024.0;
            let slope = if last.0 > first.0 {
                (last.1 as f64 - first.1 as f64) / (last.0 - first.0) as f64 / 1024.0
            } else {
                avg
            };
            Some((
                avg,
                slope,
                last.0 as f64,
                last.1 as f64 / 1048576.0,
                o.errors as f64,
            ))
        })
        .collect();
    if per_run.is_empty() {
        return None;
    }
    let m = |f: fn(&(f64, f64, f64, f64, f64)) -> f64| {
        median(per_run.iter().map(f).collect()).map_or(0.0, |x| x.0)
    };
    Some((m(|x| x.0), m(|x| x.1), m(|x| x.2), m(|x| x.3), m(|x| x.4)))
}

/// The markdown tables.
pub fn markdown(rep: &Report, targets: &[&str], s: &Settings) -> String {
    let mut o = String::new();
    let direct = |scn: &str, f: &dyn Fn(&Run) -> Option<f64>| {
        rep.row(scn, "direct", "")
            .and_then(|r| stat(r, f))
            .map(|x| x.0)
    };
    // Scenario 1.
    let sections: [(&str, String, &str, bool); 3] = [
        (
            "msg64",
            "### 1. 64 B messages, 64 connections × 8 in flight".into(),
            "msgs/s",
            false,
        ),
        (
            "msg64k",
            "### 2. 64 KiB messages, 16 connections × 2 in flight".into(),
            "MB/s",
            true,
        ),
        (
            "rate",
            format!(
                "### 6. Latency at a fixed {:.0} msgs/s (64 B, {} connections)",
                s.rate, s.rate_conns
            ),
            "msgs/s",
            false,
        ),
    ];
    for (key, title, unit, mb) in sections {
        if !rep.rows.iter().any(|r| r.scenario == key) {
            continue;
        }
        let _ = writeln!(o, "{title}\n");
        let _ = writeln!(
            o,
            "| target | {unit} | ÷ direct | proxy CPU µs/msg | proxy core | harness core | p50 µs | p99 µs | p99.9 µs | errors |"
        );
        let _ = writeln!(o, "|---|---|---|---|---|---|---|---|---|---|");
        let rate_of = |r: &Run| Some(if mb { r.mbps } else { r.rate });
        let d = direct(key, &rate_of);
        for t in targets {
            let Some(row) = rep.row(key, t, "") else {
                continue;
            };
            let rate = stat(row, rate_of);
            let _ = writeln!(
                o,
                "| {t} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                cell(rate),
                ratio(rate.map(|x| x.0), d),
                cell(stat(row, |r| r.proxy_us_per_op)),
                cell(stat(row, |r| r.proxy_util)),
                cell(stat(row, |r| Some(r.harness_util))),
                cell(stat(row, |r| Some(r.p50_us))),
                cell(stat(row, |r| Some(r.p99_us))),
                cell(stat(row, |r| Some(r.p999_us))),
                row.runs.iter().map(|r| r.errors).sum::<u64>()
            );
        }
        let _ = writeln!(o);
    }
    for key in ["churn", "jwt"] {
        if !rep.rows.iter().any(|r| r.scenario == key) {
            continue;
        }
        if key == "churn" {
            let _ = writeln!(
                o,
                "### 3. New connections (open, one 64 B echo, close), 32 at a time\n"
            );
        } else {
            let _ = writeln!(
                o,
                "### 3b. New connections with a JWT (`Authorization: Bearer`), wsgate only\n"
            );
        }
        let _ = writeln!(
            o,
            "| target | token | conns/s | ÷ direct | ÷ no JWT | proxy CPU µs/conn | proxy core | p50 ms | p99 ms | errors |"
        );
        let _ = writeln!(o, "|---|---|---|---|---|---|---|---|---|---|");
        let d = direct("churn", &|r: &Run| Some(r.rate));
        for r in rep.rows.iter().filter(|r| r.scenario == key) {
            let rate = stat(r, |x| Some(x.rate));
            let nojwt = rep
                .row("churn", &r.target, "")
                .and_then(|x| stat(x, |y| Some(y.rate)))
                .map(|x| x.0);
            let ms =
                |v: Option<(f64, f64, f64)>| cell(v.map(|(a, b, c)| (a / 1e3, b / 1e3, c / 1e3)));
            let token = if r.variant.is_empty() {
                "none".to_string()
            } else {
                match r.tokens_used {
                    Some((used, pool)) if used as usize > pool => {
                        format!(
                            "{} ({used} tokens handed out, pool {pool}: reused after wrap)",
                            r.variant
                        )
                    }
                    Some((used, pool)) => format!("{} ({used} distinct, pool {pool})", r.variant),
                    None => r.variant.clone(),
                }
            };
            let _ = writeln!(
                o,
                "| {} | {token} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.target,
                cell(rate),
                ratio(rate.map(|x| x.0), d),
                if key == "jwt" {
                    ratio(rate.map(|x| x.0), nojwt)
                } else {
                    "–".into()
                },
                cell(stat(r, |x| x.proxy_us_per_op)),
                cell(stat(r, |x| x.proxy_util)),
                ms(stat(r, |x| Some(x.p50_us))),
                ms(stat(r, |x| Some(x.p99_us))),
                r.runs.iter().map(|x| x.errors).sum::<u64>()
            );
        }
        let _ = writeln!(o);
    }
    if !rep.idle.is_empty() {
        let _ = writeln!(
            o,
            "### 4–5. Idle proxied connections (each did one echo, then silence)\n\n\
             RSS read at {:?} connections. \"KiB/conn\" = (RSS at the first checkpoint − RSS before) ÷ connections; \
             \"slope\" = RSS growth per connection between the checkpoints; \
             the projection is RSS(last) + slope × (1,000,000 − last): one million proxied \
             client connections (two million sockets in the proxy).\n",
            s.idle_checkpoints
        );
        let _ = writeln!(
            o,
            "| target | KiB/conn | slope KiB/conn | up at the end | RSS at the end MiB | projected RSS for 1M conns GiB | errors |"
        );
        let _ = writeln!(o, "|---|---|---|---|---|---|---|");
        for t in targets {
            let Some(r) = rep.idle.iter().find(|r| r.target == *t) else {
                continue;
            };
            if let Some((avg, slope, up, rss, errs)) = idle_figures(r) {
                let proj = (rss * 1048576.0 + slope * 1024.0 * (1e6 - up)) / (1u64 << 30) as f64;
                let _ = writeln!(
                    o,
                    "| {t} | {avg:.2} | {slope:.2} | {up:.0} | {rss:.1} | {proj:.1} | {errs:.0} |"
                );
            }
        }
        let _ = writeln!(o);
    }
    // wsgate against each peer.
    let peers: Vec<&str> = targets
        .iter()
        .copied()
        .filter(|t| t.starts_with("nginx") || t.starts_with("haproxy"))
        .collect();
    if targets.contains(&"wsgate") && !peers.is_empty() {
        let _ = writeln!(
            o,
            "### wsgate against each peer\n\nEach cell: the peer's median, then wsgate ÷ peer \
             (for CPU, memory and latency below 1 is better for wsgate; for rates above 1).\n"
        );
        let _ = write!(o, "| metric | wsgate |");
        for p in &peers {
            let _ = write!(o, " {p} |");
        }
        let _ = writeln!(o);
        let _ = write!(o, "|---|---|");
        for _ in &peers {
            let _ = write!(o, "---|");
        }
        let _ = writeln!(o);
        let g = |scn: &'static str, f: fn(&Run) -> Option<f64>| getter(rep, scn, f);
        let idle_avg: Getter<'_> = Box::new(|t: &str| {
            rep.idle
                .iter()
                .find(|r| r.target == t)
                .and_then(idle_figures)
                .map(|x| x.0)
        });
        let metrics: Vec<(&str, Getter<'_>)> = vec![
            ("64 B msgs/s", g("msg64", |r| Some(r.rate))),
            ("64 B proxy CPU µs/msg", g("msg64", |r| r.proxy_us_per_op)),
            ("64 B p99 µs", g("msg64", |r| Some(r.p99_us))),
            ("64 KiB MB/s", g("msg64k", |r| Some(r.mbps))),
            (
                "64 KiB proxy CPU µs/msg",
                g("msg64k", |r| r.proxy_us_per_op),
            ),
            ("64 KiB p99 µs", g("msg64k", |r| Some(r.p99_us))),
            ("conns/s", g("churn", |r| Some(r.rate))),
            ("proxy CPU µs/conn", g("churn", |r| r.proxy_us_per_op)),
            ("KiB RSS per idle conn", idle_avg),
            ("fixed-rate p99 µs", g("rate", |r| Some(r.p99_us))),
            ("fixed-rate p99.9 µs", g("rate", |r| Some(r.p999_us))),
            (
                "fixed-rate proxy CPU µs/msg",
                g("rate", |r| r.proxy_us_per_op),
            ),
        ];
        for (label, get) in metrics {
            let w = get("wsgate");
            let _ = write!(o, "| {label} | {} |", w.map_or("–".into(), fmt_num));
            for p in &peers {
                let v = get(p);
                let _ = write!(o, " {} ({}) |", v.map_or("–".into(), fmt_num), ratio(w, v));
            }
            let _ = writeln!(o);
        }
        let _ = writeln!(o);
    }
    o
}

type Getter<'a> = Box<dyn Fn(&str) -> Option<f64> + 'a>;

fn getter<'a>(rep: &'a Report, scn: &'static str, f: fn(&Run) -> Option<f64>) -> Getter<'a> {
    Box::new(move |t: &str| rep.row(scn, t, "").and_then(|r| stat(r, f)).map(|x| x.0))
}

/// CPU per operation and memory per idle connection, wsgate beside the peers, as SVG.
pub fn chart(rep: &Report, targets: &[&str]) -> String {
    let proxies: Vec<&str> = targets.iter().copied().filter(|t| *t != "direct").collect();
    let get = |scn: &str, t: &str| {
        rep.row(scn, t, "")
            .and_then(|r| stat(r, |x| x.proxy_us_per_op))
            .map(|x| x.0)
    };
    let idle = |t: &str| {
        rep.idle
            .iter()
            .find(|r| r.target == t)
            .and_then(idle_figures)
            .map(|x| x.0)
    };
    let panels: Vec<(&str, Vec<Option<f64>>)> = vec![
        (
            "CPU µs per 64 B message",
            proxies.iter().map(|t| get("msg64", t)).collect(),
        ),
        (
            "CPU µs per 64 KiB message",
            proxies.iter().map(|t| get("msg64k", t)).collect(),
        ),
        (
            "CPU µs per connection",
            proxies.iter().map(|t| get("churn", t)).collect(),
        ),
        (
            "KiB RSS per idle connection",
            proxies.iter().map(|t| idle(t)).collect(),
        ),
    ];
    let colors = [
        "#2b7bba", "#8fbbdc", "#2e9e5b", "#9fd4b2", "#d4602a", "#f0b090", "#777",
    ];
    let color = |t: &str| match t {
        "wsgate" => colors[0],
        "wsgate-log" => colors[1],
        "nginx-tuned" => colors[2],
        "nginx-default" => colors[3],
        "haproxy-tuned" => colors[4],
        "haproxy-default" => colors[5],
        _ => colors[6],
    };
    let (pw, ph, top, left) = (300.0, 260.0, 60.0, 20.0);
    let width = left * 2.0 + pw * panels.len() as f64;
    let height = top + ph + 60.0 + 20.0 * ((proxies.len() as f64) / 3.0).ceil();
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{left}\" y=\"24\" font-size=\"16\" font-weight=\"bold\">wsgate, nginx and HAProxy: \
         proxy CPU per operation and memory per idle connection (lower is better)</text>\n"
    );
    for (i, (title, vals)) in panels.iter().enumerate() {
        let x0 = left + pw * i as f64 + 10.0;
        let max = vals
            .iter()
            .flatten()
            .cloned()
            .fold(0.0f64, f64::max)
            .max(1e-9);
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" font-weight=\"bold\">{title}</text>",
            x0,
            top - 10.0
        );
        let base = top + ph - 30.0;
        let _ = writeln!(
            s,
            "<line x1=\"{x0}\" y1=\"{base}\" x2=\"{}\" y2=\"{base}\" stroke=\"#333\"/>",
            x0 + pw - 30.0
        );
        let n = vals.len().max(1) as f64;
        let bw = (pw - 40.0) / n;
        for (j, v) in vals.iter().enumerate() {
            let bx = x0 + 5.0 + bw * j as f64;
            match v {
                Some(v) => {
                    let h = (v / max) * (ph - 70.0);
                    let _ = writeln!(
                        s,
                        "<rect x=\"{bx:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{h:.1}\" fill=\"{}\"/>\n\
                         <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"11\">{}</text>",
                        base - h,
                        bw * 0.8,
                        color(proxies[j]),
                        bx + bw * 0.4,
                        base - h - 4.0,
                        fmt_num(*v)
                    );
                }
                None => {
                    let _ = writeln!(
                        s,
                        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"11\">n/a</text>",
                        bx + bw * 0.4,
                        base - 4.0
                    );
                }
            }
        }
    }
    let ly = top + ph + 10.0;
    for (j, t) in proxies.iter().enumerate() {
        let lx = left + 10.0 + 200.0 * (j % 3) as f64;
        let y = ly + 20.0 * (j / 3) as f64;
        let _ = writeln!(
            s,
            "<rect x=\"{lx}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"{}\"/><text x=\"{}\" y=\"{}\">{t}</text>",
            y - 10.0,
            color(t),
            lx + 18.0,
            y
        );
    }
    s.push_str("</svg>\n");
    s
}

/// Serialises the raw runs.
pub fn json(rep: &Report) -> String {
    serde_json::to_string_pretty(rep).unwrap_or_default()
}
