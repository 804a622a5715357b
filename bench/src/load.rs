//! The load generator: closed-loop and fixed-rate echo traffic, connection churn, and
//! idle connections.
//!
//! Every scenario has a warm-up, then a measured window during which the proxy's CPU
//! time (and the harness's) is sampled at both ends; messages are counted and their
//! latencies recorded only inside the window. A message carries its send time (ns since
//! the scenario's epoch) in its first 8 payload bytes, so the echo needs no bookkeeping
//! on the sending side.

use std::{
    net::IpAddr,
    sync::{
        atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        tcp::{OwnedReadHalf, OwnedWriteHalf},
        TcpStream,
    },
    sync::Semaphore,
};

use crate::{
    procstat::Tree,
    ws::{self, Target, OP_BINARY, OP_CLOSE},
};

const WARM: u8 = 0;
const MEASURE: u8 = 1;
const STOP: u8 = 2;

/// Processes whose CPU time a window samples.
#[derive(Debug, Clone, Default)]
pub struct Probe {
    /// The proxy under test (none for direct-to-backend).
    pub proxy: Option<Tree>,
    /// The load generator and the backend (each process alone: the proxies are the
    /// generator's children).
    pub harness: Vec<Tree>,
}

/// One measured window.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Window {
    /// Wall time, seconds.
    pub secs: f64,
    /// CPU seconds the proxy used.
    pub proxy_cpu: f64,
    /// CPU seconds the generator and backend used.
    pub harness_cpu: f64,
}

impl Probe {
    fn sample(&self) -> (Instant, u64, u64) {
        let p = self.proxy.map_or(0, |t| t.cpu_ns());
        let h = self.harness.iter().map(|t| t.own_cpu_ns()).sum();
        (Instant::now(), p, h)
    }
}

/// Counters shared by a scenario's tasks.
#[derive(Debug, Default)]
struct Counters {
    ops: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl Counters {
    fn error(&self, e: impl std::fmt::Display) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut f = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        if f.is_none() {
            *f = Some(e.to_string());
        }
    }
}

/// What a throughput, latency or churn scenario measured.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Operations completed in the window (echoed messages or whole connections).
    pub ops: u64,
    /// Payload bytes echoed in the window.
    pub bytes: u64,
    /// Errors (failed connects, handshakes, early closes), warm-up included.
    pub errors: u64,
    /// The first error's text.
    pub first_error: Option<String>,
    /// The window.
    pub window: Window,
    /// Latencies, nanoseconds.
    pub hist: Histogram<u64>,
}

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1_000, 60_000_000_000, 3).expect("valid histogram bounds")
}

fn record(h: &mut Histogram<u64>, ns: u64) {
    let _ = h.record(ns.clamp(1_000, 60_000_000_000));
}

async fn window(probe: &Probe, phase: &AtomicU8, warm: Duration, dur: Duration) -> Window {
    tokio::time::sleep(warm).await;
    let (t0, p0, h0) = probe.sample();
    phase.store(MEASURE, Ordering::Relaxed);
    tokio::time::sleep(dur).await;
    phase.store(STOP, Ordering::Relaxed);
    let (t1, p1, h1) = probe.sample();
    Window {
        secs: (t1 - t0).as_secs_f64(),
        proxy_cpu: p1.saturating_sub(p0) as f64 / 1e9,
        harness_cpu: h1.saturating_sub(h0) as f64 / 1e9,
    }
}

/// Echo traffic on persistent connections.
#[derive(Debug, Clone, Copy)]
pub struct Echo {
    /// Connections.
    pub conns: usize,
    /// Messages in flight per connection (closed loop); ignored with `rate`.
    pub inflight: usize,
    /// Payload bytes per message (at least 8).
    pub size: usize,
    /// Open loop: this many messages per second in total, spread over the connections.
    pub rate: Option<f64>,
}

/// A client frame whose payload is masked once; the timestamp bytes are patched per send.
struct Template {
    frame: Vec<u8>,
    ts_at: usize,
    key: [u8; 4],
}

impl Template {
    fn new(size: usize) -> Self {
        let key = fastrand::u32(..).to_ne_bytes();
        let mut frame = Vec::with_capacity(size + 14);
        ws::put_header(&mut frame, OP_BINARY, size, Some(key));
        let ts_at = frame.len();
        let mut payload: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        ws::apply_mask(&mut payload, key, 0);
        frame.extend_from_slice(&payload);
        Self { frame, ts_at, key }
    }

    fn push(&self, out: &mut Vec<u8>, ts: u64) {
        let at = out.len() + self.ts_at;
        out.extend_from_slice(&self.frame);
        let b = ts.to_le_bytes();
        for i in 0..8 {
            out[at + i] = b[i] ^ self.key[i % 4];
        }
    }
}

fn close_frame() -> Vec<u8> {
    let key = fastrand::u32(..).to_ne_bytes();
    let mut f = Vec::with_capacity(8);
    ws::put_header(&mut f, OP_CLOSE, 2, Some(key));
    let mut code = 1000u16.to_be_bytes();
    ws::apply_mask(&mut code, key, 0);
    f.extend_from_slice(&code);
    f
}

/// Runs echo traffic against `target` and measures one window.
pub async fn echo(
    target: &Target,
    cfg: Echo,
    warm: Duration,
    dur: Duration,
    probe: &Probe,
) -> Outcome {
    let epoch = Instant::now();
    let phase = Arc::new(AtomicU8::new(WARM));
    let counters = Arc::new(Counters::default());
    let mut readers = Vec::new();
    let mut writers = Vec::new();
    let mut sems = Vec::new();
    let period = cfg
        .rate
        .map(|r| Duration::from_secs_f64(cfg.conns as f64 / r.max(1.0)));
    for _ in 0..cfg.conns {
        let (s, rest) =
            match ws::client_handshake(target, None, None, Duration::from_secs(10)).await {
                Ok(x) => x,
                Err(e) => {
                    counters.error(format!("connect: {e}"));
                    continue;
                }
            };
        let (rd, wr) = s.into_split();
        let sem = Arc::new(Semaphore::new(if period.is_some() {
            0
        } else {
            cfg.inflight
        }));
        sems.push(sem.clone());
        let tpl = Template::new(cfg.size.max(8));
        writers.push(tokio::spawn(writer(
            wr,
            tpl,
            sem.clone(),
            period,
            phase.clone(),
            counters.clone(),
            epoch,
        )));
        readers.push(tokio::spawn(reader(
            rd,
            rest,
            (period.is_none()).then_some(sem),
            phase.clone(),
            counters.clone(),
            epoch,
        )));
    }
    let w = window(probe, &phase, warm, dur).await;
    for s in &sems {
        s.add_permits(1);
    }
    let mut hist = new_hist();
    for r in readers {
        match tokio::time::timeout(Duration::from_secs(5), r).await {
            Ok(Ok(h)) => {
                let _ = hist.add(&h);
            }
            Ok(Err(e)) => counters.error(format!("reader task: {e}")),
            Err(_) => counters.error("no close echo within 5 s"),
        }
    }
    // Only now drop the write halves: a half-close (FIN) sent with the close frame makes
    // some proxies (nginx) drop the echoed close frame.
    for w in writers {
        w.abort();
    }
    finish(&counters, w, hist)
}

fn finish(c: &Counters, window: Window, hist: Histogram<u64>) -> Outcome {
    Outcome {
        ops: c.ops.load(Ordering::Relaxed),
        bytes: c.bytes.load(Ordering::Relaxed),
        errors: c.errors.load(Ordering::Relaxed),
        first_error: c
            .first_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone(),
        window,
        hist,
    }
}

async fn writer(
    mut wr: OwnedWriteHalf,
    tpl: Template,
    sem: Arc<Semaphore>,
    period: Option<Duration>,
    phase: Arc<AtomicU8>,
    counters: Arc<Counters>,
    epoch: Instant,
) -> Option<OwnedWriteHalf> {
    let mut buf = Vec::with_capacity(tpl.frame.len() * 8);
    let mut tick = period.map(|p| {
        let mut i = tokio::time::interval(p);
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        i
    });
    loop {
        let n = match tick.as_mut() {
            Some(t) => {
                t.tick().await;
                1
            }
            None => {
                let Ok(p) = sem.acquire().await else {
                    return Some(wr);
                };
                p.forget();
                let more = sem.available_permits();
                if more > 0 {
                    if let Ok(p) = sem.try_acquire_many(more as u32) {
                        p.forget();
                    }
                }
                1 + more
            }
        };
        if phase.load(Ordering::Relaxed) == STOP {
            break;
        }
        buf.clear();
        let ts = epoch.elapsed().as_nanos() as u64;
        for _ in 0..n {
            tpl.push(&mut buf, ts);
        }
        if let Err(e) = wr.write_all(&buf).await {
            counters.error(format!("write: {e}"));
            return None;
        }
    }
    if let Err(e) = wr.write_all(&close_frame()).await {
        counters.error(format!("write close: {e}"));
    }
    // Returned, not dropped: the caller closes the socket once the close echo is read.
    Some(wr)
}

async fn reader(
    mut rd: OwnedReadHalf,
    rest: Vec<u8>,
    credits: Option<Arc<Semaphore>>,
    phase: Arc<AtomicU8>,
    counters: Arc<Counters>,
    epoch: Instant,
) -> Histogram<u64> {
    let mut hist = new_hist();
    let mut buf = vec![0u8; 256 << 10];
    buf[..rest.len()].copy_from_slice(&rest);
    let mut filled = rest.len();
    let mut remaining: u64 = 0;
    let mut in_frame = false;
    let mut cur_ts = 0u64;
    let mut cur_len = 0u64;
    loop {
        let mut pos = 0;
        loop {
            if in_frame {
                let skip = (remaining as usize).min(filled - pos);
                pos += skip;
                remaining -= skip as u64;
                if remaining > 0 {
                    break;
                }
                in_frame = false;
                let now = epoch.elapsed().as_nanos() as u64;
                if phase.load(Ordering::Relaxed) == MEASURE {
                    counters.ops.fetch_add(1, Ordering::Relaxed);
                    counters.bytes.fetch_add(cur_len, Ordering::Relaxed);
                    record(&mut hist, now.saturating_sub(cur_ts));
                }
                if let Some(c) = &credits {
                    c.add_permits(1);
                }
                continue;
            }
            let Some(h) = ws::parse_header(&buf[pos..filled]) else {
                break;
            };
            if h.opcode == OP_CLOSE {
                return hist;
            }
            let need = h.header_len + (h.len.min(8) as usize);
            if filled - pos < need {
                break;
            }
            let p = pos + h.header_len;
            cur_ts = if h.len >= 8 {
                let mut b = [0u8; 8];
                b.copy_from_slice(&buf[p..p + 8]);
                u64::from_le_bytes(b)
            } else {
                0
            };
            cur_len = h.len;
            pos = p;
            remaining = h.len;
            in_frame = true;
        }
        buf.copy_within(pos..filled, 0);
        filled -= pos;
        match rd.read(&mut buf[filled..]).await {
            Ok(0) => {
                counters.error("connection closed before the close handshake");
                return hist;
            }
            Ok(n) => filled += n,
            Err(e) => {
                counters.error(format!("read: {e}"));
                return hist;
            }
        }
    }
}

/// Where handshake tokens come from.
#[derive(Debug, Clone)]
pub enum Tokens {
    /// No token.
    None,
    /// The same token on every connection.
    Reused(Arc<str>),
    /// A different token per connection, taken in turn from a pre-minted pool; the
    /// cursor carries on across runs, so a later run does not replay tokens a cache of
    /// verified tokens has seen (until the pool wraps).
    Fresh(Arc<Vec<String>>, Arc<AtomicUsize>),
}

/// New connections: open, one echo, close; `concurrency` at a time.
pub async fn churn(
    target: &Target,
    concurrency: usize,
    tokens: Tokens,
    sources: &[IpAddr],
    warm: Duration,
    dur: Duration,
    probe: &Probe,
) -> (Outcome, u64) {
    let phase = Arc::new(AtomicU8::new(WARM));
    let counters = Arc::new(Counters::default());
    let next = Arc::new(AtomicUsize::new(0));
    let sources: Arc<[IpAddr]> = sources.into();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (target, tokens, sources) = (target.clone(), tokens.clone(), sources.clone());
        let (phase, counters, next) = (phase.clone(), counters.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut hist = new_hist();
            let tpl = Template::new(64);
            while phase.load(Ordering::Relaxed) != STOP {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let src = (!sources.is_empty()).then(|| sources[i % sources.len()]);
                let token = match &tokens {
                    Tokens::None => None,
                    Tokens::Reused(t) => Some(&**t),
                    Tokens::Fresh(pool, cursor) => {
                        let k = cursor.fetch_add(1, Ordering::Relaxed);
                        Some(pool[k % pool.len()].as_str())
                    }
                };
                let t0 = Instant::now();
                let r = tokio::time::timeout(
                    Duration::from_secs(10),
                    one_connection(&target, src, token, &tpl),
                )
                .await;
                match r {
                    Ok(Ok(())) => {
                        if phase.load(Ordering::Relaxed) == MEASURE {
                            counters.ops.fetch_add(1, Ordering::Relaxed);
                            record(&mut hist, t0.elapsed().as_nanos() as u64);
                        }
                    }
                    Ok(Err(e)) => counters.error(e),
                    Err(_) => counters.error("connection cycle timed out"),
                }
            }
            hist
        }));
    }
    let w = window(probe, &phase, warm, dur).await;
    let mut hist = new_hist();
    for t in tasks {
        if let Ok(Ok(h)) = tokio::time::timeout(Duration::from_secs(15), t).await {
            let _ = hist.add(&h);
        }
    }
    let used = next.load(Ordering::Relaxed) as u64;
    (finish(&counters, w, hist), used)
}

async fn one_connection(
    target: &Target,
    src: Option<IpAddr>,
    token: Option<&str>,
    tpl: &Template,
) -> std::io::Result<()> {
    let (mut s, rest) = ws::client_handshake(target, src, token, Duration::from_secs(10)).await?;
    let mut out = Vec::with_capacity(96);
    tpl.push(&mut out, 0);
    out.extend_from_slice(&close_frame());
    // The echo, then the close: both frames go in one write, as a real client's
    // last message and its close often do; the replies come back in order.
    s.write_all(&out).await?;
    let mut buf = rest;
    buf.reserve(256);
    let mut got_echo = false;
    loop {
        let mut pos = 0;
        while let Some(h) = ws::parse_header(&buf[pos..]) {
            let end = pos + h.header_len + h.len as usize;
            if buf.len() < end {
                break;
            }
            if h.opcode == OP_CLOSE {
                if !got_echo {
                    return Err(std::io::Error::other("close before the echo"));
                }
                return Ok(());
            }
            got_echo = true;
            pos = end;
        }
        buf.drain(..pos);
        let mut chunk = [0u8; 512];
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed before the close frame",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// What the idle-connection scenario measured.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct IdleOutcome {
    /// Proxy RSS before any connection, bytes.
    pub rss_base: u64,
    /// (connections up, proxy RSS bytes) at each checkpoint.
    pub points: Vec<(usize, u64)>,
    /// Failed connections.
    pub errors: u64,
    /// The first error.
    pub first_error: Option<String>,
    /// Seconds to open them all.
    pub open_secs: f64,
}

/// Opens idle proxied connections (each does one echo first, then stays silent), reading
/// the proxy's RSS at each checkpoint count; closes them all at the end.
pub async fn idle(
    target: &Target,
    checkpoints: &[usize],
    sources: &[IpAddr],
    proxy: Option<Tree>,
) -> IdleOutcome {
    let mut out = IdleOutcome {
        rss_base: proxy.map_or(0, |t| t.rss_bytes()),
        ..Default::default()
    };
    let counters = Arc::new(Counters::default());
    let held: Arc<Mutex<Vec<TcpStream>>> = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let mut opened = 0usize;
    let sources: Arc<[IpAddr]> = sources.into();
    for &goal in checkpoints {
        let next = Arc::new(AtomicUsize::new(opened));
        let mut tasks = Vec::new();
        for _ in 0..64 {
            let (target, sources, held, counters, next) = (
                target.clone(),
                sources.clone(),
                held.clone(),
                counters.clone(),
                next.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let tpl = Template::new(64);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= goal {
                        return;
                    }
                    let src = (!sources.is_empty()).then(|| sources[i % sources.len()]);
                    match open_idle(&target, src, &tpl).await {
                        Ok(s) => held.lock().unwrap_or_else(|p| p.into_inner()).push(s),
                        Err(e) => counters.error(e),
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        opened = goal;
        if checkpoints.last() == Some(&goal) {
            out.open_secs = started.elapsed().as_secs_f64();
        }
        // Let the proxy settle (buffers returned, deferred frees) before reading RSS.
        tokio::time::sleep(Duration::from_millis(700)).await;
        let up = held.lock().unwrap_or_else(|p| p.into_inner()).len();
        out.points.push((up, proxy.map_or(0, |t| t.rss_bytes())));
    }
    held.lock().unwrap_or_else(|p| p.into_inner()).clear();
    out.errors = counters.errors.load(Ordering::Relaxed);
    out.first_error = counters
        .first_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    out
}

async fn open_idle(
    target: &Target,
    src: Option<IpAddr>,
    tpl: &Template,
) -> std::io::Result<TcpStream> {
    let (mut s, rest) = ws::client_handshake(target, src, None, Duration::from_secs(10)).await?;
    let mut out = Vec::with_capacity(80);
    tpl.push(&mut out, 0);
    s.write_all(&out).await?;
    let mut buf = rest;
    let want = 2 + 64;
    let mut chunk = [0u8; 256];
    while buf.len() < want {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no echo"))??;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed before the echo",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(s)
}
