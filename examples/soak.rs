//! Soak and fault driver: many WebSockets through a real `wsgate` process while its
//! backends are killed and restarted, its config is reloaded, and a slow client and a
//! flood client misbehave. Run it through `soak/soak.sh` (which builds the binary and
//! raises the fd limit); the pass criteria and the figures are printed at the end, and
//! the exit status is non-zero if any criterion failed.
//!
//! ```text
//! cargo run --release --example soak -- --wsgate target/release/wsgate \
//!     --minutes 10 --connections 5000
//! ```

use std::{
    collections::BTreeMap,
    net::TcpListener as StdListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use futures_util::{SinkExt, StreamExt};
use tokio::{io::AsyncReadExt, io::AsyncWriteExt, net::TcpStream, task::JoinSet};
use tokio_tungstenite::tungstenite::{Bytes, Error as WsError, Message};

struct Args {
    wsgate: PathBuf,
    minutes: f64,
    connections: usize,
    backends: usize,
    interval: Duration,
    workdir: PathBuf,
    rounds: usize,
    kills: bool,
    reloads: bool,
    settle: Duration,
    wrap: Vec<String>,
}

const USAGE: &str =
    "flags: --wsgate PATH --minutes M --connections N --backends N --interval-ms MS \
--workdir DIR --rounds N --no-kills --no-reloads --settle-secs S --wrap 'CMD ARGS'";

fn args() -> Args {
    let mut a = Args {
        wsgate: PathBuf::from("target/release/wsgate"),
        minutes: 2.0,
        connections: 1000,
        backends: 3,
        interval: Duration::from_millis(1000),
        workdir: std::env::temp_dir().join(format!("wsgate-soak-{}", std::process::id())),
        rounds: 1,
        kills: true,
        reloads: true,
        settle: Duration::from_secs(15),
        wrap: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--wsgate" => a.wsgate = value().into(),
            "--minutes" => a.minutes = value().parse().expect("--minutes"),
            "--connections" => a.connections = value().parse().expect("--connections"),
            "--backends" => a.backends = value().parse().expect("--backends"),
            "--interval-ms" => {
                a.interval = Duration::from_millis(value().parse().expect("--interval-ms"))
            }
            "--workdir" => a.workdir = value().into(),
            // Several rounds of `--minutes` each in the same wsgate process: if RSS after
            // round 2 is where it was after round 1, what stays is reused, not leaked.
            "--rounds" => a.rounds = value().parse::<usize>().expect("--rounds").max(1),
            "--no-kills" => a.kills = false,
            "--no-reloads" => a.reloads = false,
            "--settle-secs" => {
                a.settle = Duration::from_secs(value().parse().expect("--settle-secs"))
            }
            // Run wsgate under a tool, e.g. --wrap "heaptrack -o /tmp/ht/x"; the figures
            // are read from the wsgate process the tool starts.
            "--wrap" => a.wrap = value().split_whitespace().map(String::from).collect(),
            "--help" | "-h" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => panic!("unknown flag {other} ({USAGE})"),
        }
    }
    a
}

/// What the clients saw, counted across all of them.
#[derive(Default)]
struct Tally {
    connects: AtomicU64,
    refused: AtomicU64,
    echoed: AtomicU64,
    /// An echo that differed from what was sent, or came out of order.
    corrupt: AtomicU64,
    /// A socket that ended without a close frame.
    abrupt: AtomicU64,
    /// A socket on which nothing (no echo, no close) came for 15 s.
    hung: AtomicU64,
    closes: Mutex<BTreeMap<u16, u64>>,
    /// Echo round trips in microseconds (a sample).
    latencies: Mutex<Vec<u64>>,
}

impl Tally {
    fn close(&self, code: u16) {
        *self.closes.lock().unwrap().entry(code).or_default() += 1;
    }
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn spawn_backend(wsgate: &Path, port: u16, i: usize) -> Child {
    Command::new(wsgate)
        .args([
            "echo",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--name",
            &format!("b{i}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start echo backend")
}

async fn wait_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(Instant::now() < deadline, "nothing listening on {port}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn config(listen: u16, admin: u16, backends: &[u16]) -> String {
    let list = backends
        .iter()
        .map(|p| format!("\"ws://127.0.0.1:{p}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"[server]
listen = "127.0.0.1:{listen}"
admin = "127.0.0.1:{admin}"
handshake_timeout = "5s"
close_timeout = "2s"
shutdown_timeout = "5s"

[[upstream]]
name = "echo"
backends = [{list}]
connect_timeout = "1s"

[[route]]
path = "/ws"
upstream = "echo"
max_message = "1MiB"
"#
    )
}

/// Resource use of a process, from /proc.
#[derive(Debug, Clone, Copy, Default)]
struct Usage {
    fds: usize,
    rss_kib: u64,
    threads: u64,
    active: u64,
    /// Tasks alive in wsgate's runtime (`wsgate_runtime_tasks_alive`).
    tasks: u64,
}

async fn usage(pid: u32, admin: u16) -> Usage {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let metrics = http_get(admin, "/metrics").await.unwrap_or_default();
    let gauge = |name: &str| {
        metrics
            .lines()
            .find(|l| l.strip_prefix(name).is_some_and(|r| r.starts_with(' ')))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(u64::MAX)
    };
    Usage {
        fds,
        rss_kib: field("VmRSS:"),
        threads: field("Threads:"),
        active: gauge("wsgate_connections_active"),
        tasks: gauge("wsgate_runtime_tasks_alive"),
    }
}

async fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = tokio::time::timeout(
        Duration::from_secs(2),
        TcpStream::connect(("127.0.0.1", port)),
    )
    .await
    .ok()?
    .ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
        .await
        .ok()?
        .ok()?;
    Some(out)
}

/// A well-behaved client: sends numbered messages of random size and checks each echo,
/// reconnecting after every close.
async fn client(
    id: usize,
    url: String,
    interval: Duration,
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
) {
    let mut seq = 0u64;
    while !stop.load(Relaxed) {
        let ws = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::connect_async(url.as_str()),
        )
        .await;
        let mut ws = match ws {
            Ok(Ok((ws, _))) => ws,
            _ => {
                tally.refused.fetch_add(1, Relaxed);
                tokio::time::sleep(Duration::from_millis(200 + fastrand::u64(..800))).await;
                continue;
            }
        };
        tally.connects.fetch_add(1, Relaxed);
        // Spread the first messages out.
        tokio::time::sleep(Duration::from_millis(fastrand::u64(
            ..interval.as_millis() as u64 + 1,
        )))
        .await;
        loop {
            if stop.load(Relaxed) {
                let _ = ws.close(None).await;
                // The close handshake must finish; then the socket ends.
                let end = tokio::time::timeout(Duration::from_secs(10), async {
                    while let Some(Ok(_)) = ws.next().await {}
                })
                .await;
                if end.is_err() {
                    tally.hung.fetch_add(1, Relaxed);
                }
                return;
            }
            seq += 1;
            let len = fastrand::usize(8..2048);
            let body: Vec<u8> = (0..len)
                .map(|i| (i as u64 ^ seq ^ id as u64) as u8)
                .collect();
            let msg = if seq % 2 == 0 {
                Message::Binary(Bytes::from(body))
            } else {
                let text: String = format!("{id}:{seq}:")
                    + &"abcdefghijklmnopqrstuvwxyz".repeat(len / 26 + 1)[..len];
                Message::text(text)
            };
            let sent_at = Instant::now();
            if ws.send(msg.clone()).await.is_err() {
                // The peer closed first: read its close below.
            }
            let reply = loop {
                match tokio::time::timeout(Duration::from_secs(15), ws.next()).await {
                    Err(_) => break Err(None),
                    Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                    Ok(Some(Ok(Message::Close(f)))) => {
                        break Err(Some(f.map(|f| u16::from(f.code)).unwrap_or(1005)))
                    }
                    Ok(Some(Ok(m))) => break Ok(m),
                    Ok(Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed))) => {
                        break Err(Some(0))
                    }
                    Ok(Some(Err(_))) | Ok(None) => break Err(Some(0)),
                }
            };
            match reply {
                Ok(m) if m == msg => {
                    tally.echoed.fetch_add(1, Relaxed);
                    if seq % 16 == 0 {
                        tally
                            .latencies
                            .lock()
                            .unwrap()
                            .push(sent_at.elapsed().as_micros() as u64);
                    }
                }
                Ok(_) => {
                    tally.corrupt.fetch_add(1, Relaxed);
                    break;
                }
                Err(None) => {
                    tally.hung.fetch_add(1, Relaxed);
                    break;
                }
                Err(Some(0)) => {
                    tally.abrupt.fetch_add(1, Relaxed);
                    break;
                }
                Err(Some(code)) => {
                    tally.close(code);
                    // Finish the close handshake, as a client does.
                    let _ = tokio::time::timeout(Duration::from_secs(5), async {
                        while let Some(Ok(_)) = ws.next().await {}
                    })
                    .await;
                    break;
                }
            }
            tokio::time::sleep(interval.mul_f64(0.5 + fastrand::f64())).await;
        }
    }
}

/// Sends 64 KiB messages and never reads: wsgate must hold it back, not buffer it all.
async fn slow_client(url: String, stop: Arc<AtomicBool>) -> String {
    let Ok((ws, _)) = tokio_tungstenite::connect_async(url.as_str()).await else {
        return "slow client: refused".into();
    };
    let (mut tx, rx) = ws.split();
    let mut sent = 0u64;
    while !stop.load(Relaxed) {
        let r = tokio::time::timeout(
            Duration::from_secs(1),
            tx.send(Message::Binary(Bytes::from(vec![7u8; 64 * 1024]))),
        )
        .await;
        match r {
            Ok(Ok(())) => sent += 1,
            Ok(Err(_)) => break,
            Err(_) => {} // blocked by backpressure, as it should be
        }
    }
    drop(rx);
    format!("slow client: wrote {sent} × 64 KiB without reading, then dropped")
}

/// Sends small messages as fast as it can while reading the echoes.
async fn flood_client(url: String, stop: Arc<AtomicBool>) -> String {
    let Ok((ws, _)) = tokio_tungstenite::connect_async(url.as_str()).await else {
        return "flood client: refused".into();
    };
    let (mut tx, mut rx) = ws.split();
    let got = Arc::new(AtomicU64::new(0));
    let g = got.clone();
    let reader = tokio::spawn(async move {
        while let Some(Ok(m)) = rx.next().await {
            if m.is_close() {
                return;
            }
            g.fetch_add(1, Relaxed);
        }
    });
    let started = Instant::now();
    let mut sent = 0u64;
    while !stop.load(Relaxed) {
        if tx.send(Message::text("flood")).await.is_err() {
            break;
        }
        sent += 1;
        if sent % 256 == 0 {
            tokio::task::yield_now().await;
        }
    }
    let _ = tx.close().await;
    let _ = tokio::time::timeout(Duration::from_secs(10), reader).await;
    let secs = started.elapsed().as_secs_f64();
    format!(
        "flood client: sent {sent} ({:.0}/s), {} echoes back",
        sent as f64 / secs,
        got.load(Relaxed)
    )
}

fn percentile(v: &mut [u64], p: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    v[((v.len() - 1) as f64 * p) as usize]
}

/// wsgate's own process id: the child itself, or with `--wrap` the `wsgate` process the
/// tool started under it (found through `/proc`).
async fn gate_pid(child: &Child, wrapped: bool) -> u32 {
    if !wrapped {
        return child.id();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(pid) = descendant_named(child.id(), "wsgate") {
            return pid;
        }
        assert!(
            Instant::now() < deadline,
            "no wsgate process under the wrapper"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn descendant_named(root: u32, name: &str) -> Option<u32> {
    // (pid, parent, command name) of every process.
    let procs: Vec<(u32, u32, String)> = std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| {
            let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let (head, tail) = stat.rsplit_once(')')?;
            let comm = head.split_once('(')?.1.to_string();
            let ppid = tail.split_whitespace().nth(1)?.parse().ok()?;
            Some((pid, ppid, comm))
        })
        .collect();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for (pid, ppid, comm) in &procs {
            if *ppid == p {
                if comm == name {
                    return Some(*pid);
                }
                frontier.push(*pid);
            }
        }
    }
    None
}

/// Backend kills and config reloads, kept across rounds.
struct Chaos {
    wsgate: PathBuf,
    cfg_path: PathBuf,
    gate_port: u16,
    admin_port: u16,
    /// Every backend's port; the last one joins and leaves on reloads.
    ports: Vec<u16>,
    backends: Vec<Child>,
    with_extra: bool,
    kills: u32,
    reloads: u32,
    next_kill: Option<Instant>,
    next_reload: Option<Instant>,
}

impl Chaos {
    fn base(&self) -> &[u16] {
        &self.ports[..self.ports.len() - 1]
    }

    /// Does whatever is due: kill and restart a backend, reload the config.
    async fn tick(&mut self, pid: u32) {
        let now = Instant::now();
        if self.next_kill.is_some_and(|t| now >= t) {
            let i = fastrand::usize(..self.ports.len() - 1);
            let _ = self.backends[i].kill(); // SIGKILL: a crash, no close frames
            let _ = self.backends[i].wait();
            self.kills += 1;
            tokio::time::sleep(Duration::from_millis(500 + fastrand::u64(..2500))).await;
            self.backends[i] = spawn_backend(&self.wsgate, self.ports[i], i);
            self.next_kill = Some(Instant::now() + Duration::from_secs(5 + fastrand::u64(..15)));
        }
        if self.next_reload.is_some_and(|t| now >= t) {
            self.with_extra = !self.with_extra;
            let list = if self.with_extra {
                &self.ports[..]
            } else {
                self.base()
            };
            std::fs::write(
                &self.cfg_path,
                config(self.gate_port, self.admin_port, list),
            )
            .unwrap();
            let _ = Command::new("kill")
                .args(["-HUP", &pid.to_string()])
                .status();
            self.reloads += 1;
            self.next_reload = Some(Instant::now() + Duration::from_secs(20 + fastrand::u64(..20)));
        }
    }

    fn stop(&mut self) {
        for b in &mut self.backends {
            let _ = b.kill();
            let _ = b.wait();
        }
    }
}

/// What one round left behind.
struct Round {
    after: Usage,
    /// RSS at moments after the open sockets were all released: (seconds, KiB).
    rss_trace: Vec<(f64, u64)>,
    clients_done: Duration,
    released_in: Duration,
    reports: Vec<String>,
    crashed: Option<std::process::ExitStatus>,
}

/// The gate under test.
struct Gate {
    child: Child,
    pid: u32,
    admin: u16,
    url: String,
}

/// One round: `a.connections` clients plus the slow and flood clients for `a.minutes`
/// under chaos, then every client closes and the release is measured.
async fn round(
    a: &Args,
    gate: &mut Gate,
    chaos: &mut Chaos,
    tally: &Arc<Tally>,
    baseline: &Usage,
    peak: &mut Usage,
) -> Round {
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = JoinSet::new();
    for id in 0..a.connections {
        clients.spawn(client(
            id,
            gate.url.clone(),
            a.interval,
            tally.clone(),
            stop.clone(),
        ));
        if id % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let slow = tokio::spawn(slow_client(gate.url.clone(), stop.clone()));
    let flood = tokio::spawn(flood_client(gate.url.clone(), stop.clone()));

    let started = Instant::now();
    let run_for = Duration::from_secs_f64(a.minutes * 60.0);
    let mut crashed = None;
    while started.elapsed() < run_for {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Ok(Some(status)) = gate.child.try_wait() {
            crashed = Some(status);
            break;
        }
        chaos.tick(gate.pid).await;
        if started.elapsed().as_secs() % 5 == 0 {
            let u = usage(gate.pid, gate.admin).await;
            peak.fds = peak.fds.max(u.fds);
            peak.rss_kib = peak.rss_kib.max(u.rss_kib);
            peak.threads = peak.threads.max(u.threads);
            if u.active != u64::MAX {
                peak.active = peak.active.max(u.active);
            }
            if u.tasks != u64::MAX {
                peak.tasks = peak.tasks.max(u.tasks);
            }
            println!(
                "t={:>4}s fds={} rss={} KiB threads={} tasks={} active={} echoed={} kills={} reloads={}",
                started.elapsed().as_secs(),
                u.fds,
                u.rss_kib,
                u.threads,
                u.tasks,
                u.active,
                tally.echoed.load(Relaxed),
                chaos.kills,
                chaos.reloads,
            );
        }
    }

    // Wind down: every client closes properly; then everything must be released.
    stop.store(true, Relaxed);
    let wind_down = Instant::now();
    while clients.join_next().await.is_some() {}
    let clients_done = wind_down.elapsed();
    let reports = vec![slow.await.unwrap(), flood.await.unwrap()];
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut after = usage(gate.pid, gate.admin).await;
    while (after.active != 0 || after.fds > baseline.fds) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        after = usage(gate.pid, gate.admin).await;
    }
    let released_in = wind_down.elapsed();
    // RSS is read `settle` after the release: wsgate gives freed memory back a few
    // seconds after a large fall in open sockets (src/memory.rs). Tasks of drained
    // backends live until their drain timeout (30 s) after the last reload, so the task
    // count gets up to 35 s more to come back.
    let released = Instant::now();
    let mut rss_trace = vec![(0.0, after.rss_kib)];
    while released.elapsed() < a.settle
        || (after.tasks > baseline.tasks && released.elapsed() < a.settle + Duration::from_secs(35))
    {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let u = usage(gate.pid, gate.admin).await;
        if released.elapsed() <= a.settle + Duration::from_millis(250) {
            after = u;
            rss_trace.push((released.elapsed().as_secs_f64(), u.rss_kib));
        } else {
            after.tasks = u.tasks;
        }
    }
    if crashed.is_none() {
        if let Ok(Some(status)) = gate.child.try_wait() {
            crashed = Some(status);
        }
    }
    Round {
        after,
        rss_trace,
        clients_done,
        released_in,
        reports,
        crashed,
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

#[tokio::main]
async fn main() {
    let a = args();
    std::fs::create_dir_all(&a.workdir).unwrap();
    let gate_port = free_port();
    let admin_port = free_port();
    let ports: Vec<u16> = (0..a.backends + 1).map(|_| free_port()).collect();
    let cfg_path = a.workdir.join("wsgate.toml");
    std::fs::write(
        &cfg_path,
        config(gate_port, admin_port, &ports[..a.backends]),
    )
    .unwrap();
    let backends: Vec<Child> = ports
        .iter()
        .enumerate()
        .map(|(i, p)| spawn_backend(&a.wsgate, *p, i))
        .collect();
    for p in &ports {
        wait_listening(*p).await;
    }
    let mut cmd = match a.wrap.split_first() {
        Some((tool, rest)) => {
            let mut c = Command::new(tool);
            c.args(rest).arg(&a.wsgate);
            c
        }
        None => Command::new(&a.wsgate),
    };
    let child = cmd
        .arg("--config")
        .arg(&cfg_path)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(a.workdir.join("wsgate.log")).unwrap())
        .spawn()
        .expect("start wsgate");
    let pid = gate_pid(&child, !a.wrap.is_empty()).await;
    wait_listening(gate_port).await;
    wait_listening(admin_port).await;
    let mut gate = Gate {
        child,
        pid,
        admin: admin_port,
        url: format!("ws://127.0.0.1:{gate_port}/ws"),
    };
    let first = Instant::now();
    let mut chaos = Chaos {
        wsgate: a.wsgate.clone(),
        cfg_path,
        gate_port,
        admin_port,
        ports,
        backends,
        with_extra: false,
        kills: 0,
        reloads: 0,
        next_kill: a
            .kills
            .then(|| first + Duration::from_secs(5 + fastrand::u64(..10))),
        next_reload: a
            .reloads
            .then(|| first + Duration::from_secs(20 + fastrand::u64(..20))),
    };

    let cold = usage(pid, admin_port).await;
    // Warm up: a round of connections, so the baseline includes lazily made state.
    {
        let mut set = JoinSet::new();
        for _ in 0..100 {
            let url = gate.url.clone();
            set.spawn(async move {
                if let Ok((mut ws, _)) = tokio_tungstenite::connect_async(url.as_str()).await {
                    let _ = ws.send(Message::text("warm")).await;
                    let _ = ws.next().await;
                    let _ = ws.close(None).await;
                    while let Some(Ok(_)) = ws.next().await {}
                }
            });
        }
        while set.join_next().await.is_some() {}
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut baseline = usage(pid, admin_port).await;
    while baseline.active != 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        baseline = usage(pid, admin_port).await;
    }
    println!("baseline: cold {cold:?}, warm {baseline:?}");

    let tally = Arc::new(Tally::default());
    let mut peak = baseline;
    let mut rounds = Vec::new();
    for r in 1..=a.rounds {
        let done = round(&a, &mut gate, &mut chaos, &tally, &baseline, &mut peak).await;
        let trace: Vec<String> = done
            .rss_trace
            .iter()
            .step_by(4)
            .map(|(t, kib)| format!("{t:.0}s {}", mib(*kib)))
            .collect();
        println!(
            "round {r} after: {:?}; RSS after the release: {}",
            done.after,
            trace.join(", ")
        );
        let crashed = done.crashed.is_some();
        rounds.push(done);
        if crashed {
            break;
        }
    }
    let last = rounds.last().expect("at least one round");
    let after = last.after;
    let crashed = last.crashed;

    // Graceful stop of wsgate: SIGTERM must end it cleanly.
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let mut child = gate.child;
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap();
    chaos.stop();

    let mut lat = std::mem::take(&mut *tally.latencies.lock().unwrap());
    let closes = tally.closes.lock().unwrap().clone();
    let corrupt = tally.corrupt.load(Relaxed);
    let abrupt = tally.abrupt.load(Relaxed);
    let hung = tally.hung.load(Relaxed);
    let rss_limit = baseline.rss_kib + baseline.rss_kib / 2 + 8 * 1024;
    let rss_ok = after.rss_kib <= rss_limit;
    println!(
        "\n== wsgate soak: {} connections, {:.1} min{} ==",
        a.connections,
        a.minutes,
        if a.rounds > 1 {
            format!(" × {} rounds", rounds.len())
        } else {
            String::new()
        }
    );
    println!(
        "chaos: {} backend kills (SIGKILL + restart), {} config reloads (SIGHUP)",
        chaos.kills, chaos.reloads
    );
    println!(
        "clients: {} connects, {} refused/failed handshakes (retried), {} echoes verified",
        tally.connects.load(Relaxed),
        tally.refused.load(Relaxed),
        tally.echoed.load(Relaxed)
    );
    println!("close codes received: {closes:?}");
    println!(
        "echo round trip: p50 {} µs, p99 {} µs, max {} µs",
        percentile(&mut lat, 0.5),
        percentile(&mut lat, 0.99),
        percentile(&mut lat, 1.0)
    );
    for line in &last.reports {
        println!("{line}");
    }
    println!("wsgate cold    {cold:?}");
    println!("wsgate warm    {baseline:?}");
    println!("wsgate peak    {peak:?}");
    for (i, r) in rounds.iter().enumerate() {
        let at_release = r.rss_trace.first().map_or(0, |(_, k)| *k);
        println!(
            "wsgate after{} {:?} (clients closed in {:.1?}, released in {:.1?}; RSS {} at the release, {} {:?} later)",
            if a.rounds > 1 { format!(" round {}", i + 1) } else { "  ".into() },
            r.after,
            r.clients_done,
            r.released_in,
            mib(at_release),
            mib(r.after.rss_kib),
            a.settle,
        );
    }
    println!(
        "RSS limit: 1.5 × warm + 8 MiB = {}; after: {}",
        mib(rss_limit),
        mib(after.rss_kib)
    );
    println!("wsgate exit on SIGTERM: {exit:?}");
    let checks = [
        ("wsgate never crashed", crashed.is_none()),
        ("no corrupted or reordered message", corrupt == 0),
        ("no socket ended without a close frame", abrupt == 0),
        ("no silent hang (15 s without echo or close)", hung == 0),
        ("open sockets back to 0", after.active == 0),
        (
            "file descriptors back to baseline",
            after.fds <= baseline.fds,
        ),
        (
            "threads back to baseline",
            after.threads <= baseline.threads.max(cold.threads) + 2,
        ),
        ("tasks back to baseline", after.tasks <= baseline.tasks),
        ("RSS back near baseline (≤ 1.5 × warm + 8 MiB)", rss_ok),
        (
            "clean exit on SIGTERM",
            exit.as_ref().is_ok_and(|s| s.success()),
        ),
    ];
    let mut ok = true;
    for (what, pass) in checks {
        println!("{} {what}", if pass { "PASS" } else { "FAIL" });
        ok &= pass;
    }
    if let Some(status) = crashed {
        println!(
            "wsgate exited during the run: {status:?} (log: {})",
            a.workdir.join("wsgate.log").display()
        );
    }
    println!("corrupt={corrupt} abrupt={abrupt} hung={hung}");
    std::process::exit(if ok { 0 } else { 1 });
}
