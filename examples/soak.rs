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
}

fn args() -> Args {
    let mut a = Args {
        wsgate: PathBuf::from("target/release/wsgate"),
        minutes: 2.0,
        connections: 1000,
        backends: 3,
        interval: Duration::from_millis(1000),
        workdir: std::env::temp_dir().join(format!("wsgate-soak-{}", std::process::id())),
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
            other => panic!("unknown flag {other} (--wsgate --minutes --connections --backends --interval-ms --workdir)"),
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
    let active = metrics
        .lines()
        .find(|l| l.starts_with("wsgate_connections_active "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(u64::MAX);
    Usage {
        fds,
        rss_kib: field("VmRSS:"),
        threads: field("Threads:"),
        active,
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

#[tokio::main]
async fn main() {
    let a = args();
    std::fs::create_dir_all(&a.workdir).unwrap();
    let gate_port = free_port();
    let admin_port = free_port();
    let backend_ports: Vec<u16> = (0..a.backends + 1).map(|_| free_port()).collect();
    let cfg_path = a.workdir.join("wsgate.toml");
    // The last backend joins and leaves on reloads.
    let base = &backend_ports[..a.backends];
    std::fs::write(&cfg_path, config(gate_port, admin_port, base)).unwrap();

    let mut backends: Vec<Child> = backend_ports
        .iter()
        .enumerate()
        .map(|(i, p)| spawn_backend(&a.wsgate, *p, i))
        .collect();
    for p in &backend_ports {
        wait_listening(*p).await;
    }
    let mut gate = Command::new(&a.wsgate)
        .arg("--config")
        .arg(&cfg_path)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(a.workdir.join("wsgate.log")).unwrap())
        .spawn()
        .expect("start wsgate");
    let pid = gate.id();
    wait_listening(gate_port).await;
    wait_listening(admin_port).await;
    let url = format!("ws://127.0.0.1:{gate_port}/ws");

    let cold = usage(pid, admin_port).await;
    // Warm up: a round of connections, so the baseline includes lazily made state.
    {
        let mut set = JoinSet::new();
        for _ in 0..100 {
            let url = url.clone();
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
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = JoinSet::new();
    for id in 0..a.connections {
        clients.spawn(client(
            id,
            url.clone(),
            a.interval,
            tally.clone(),
            stop.clone(),
        ));
        if id % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let slow = tokio::spawn(slow_client(url.clone(), stop.clone()));
    let flood = tokio::spawn(flood_client(url.clone(), stop.clone()));

    // Chaos and monitoring until the time is up.
    let started = Instant::now();
    let run_for = Duration::from_secs_f64(a.minutes * 60.0);
    let mut kills = 0u32;
    let mut reloads = 0u32;
    let mut with_extra = false;
    let mut peak = baseline;
    let mut crashed = None;
    let mut next_kill = Instant::now() + Duration::from_secs(5 + fastrand::u64(..10));
    let mut next_reload = Instant::now() + Duration::from_secs(20 + fastrand::u64(..20));
    let mut samples = Vec::new();
    while started.elapsed() < run_for {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Ok(Some(status)) = gate.try_wait() {
            crashed = Some(status);
            break;
        }
        let now = Instant::now();
        if now >= next_kill {
            let i = fastrand::usize(..a.backends);
            let _ = backends[i].kill(); // SIGKILL: a crash, no close frames
            let _ = backends[i].wait();
            kills += 1;
            tokio::time::sleep(Duration::from_millis(500 + fastrand::u64(..2500))).await;
            backends[i] = spawn_backend(&a.wsgate, backend_ports[i], i);
            next_kill = Instant::now() + Duration::from_secs(5 + fastrand::u64(..15));
        }
        if now >= next_reload {
            with_extra = !with_extra;
            let list = if with_extra { &backend_ports[..] } else { base };
            std::fs::write(&cfg_path, config(gate_port, admin_port, list)).unwrap();
            let _ = Command::new("kill")
                .args(["-HUP", &pid.to_string()])
                .status();
            reloads += 1;
            next_reload = Instant::now() + Duration::from_secs(20 + fastrand::u64(..20));
        }
        if started.elapsed().as_secs() % 5 == 0 {
            let u = usage(pid, admin_port).await;
            peak.fds = peak.fds.max(u.fds);
            peak.rss_kib = peak.rss_kib.max(u.rss_kib);
            peak.threads = peak.threads.max(u.threads);
            if u.active != u64::MAX {
                peak.active = peak.active.max(u.active);
            }
            samples.push((started.elapsed().as_secs(), u));
            println!(
                "t={:>4}s fds={} rss={} KiB threads={} active={} echoed={} kills={kills} reloads={reloads}",
                started.elapsed().as_secs(),
                u.fds,
                u.rss_kib,
                u.threads,
                u.active,
                tally.echoed.load(Relaxed)
            );
        }
    }

    // Wind down: every client closes properly; then everything must be released.
    stop.store(true, Relaxed);
    let wind_down = Instant::now();
    while clients.join_next().await.is_some() {}
    let clients_done = wind_down.elapsed();
    let slow_report = slow.await.unwrap();
    let flood_report = flood.await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut after = usage(pid, admin_port).await;
    while (after.active != 0 || after.fds > baseline.fds) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        after = usage(pid, admin_port).await;
    }
    let released_in = wind_down.elapsed();
    // RSS: wsgate gives freed memory back a few seconds after a large fall in open sockets
    // (src/memory.rs); wait up to 15 s for it.
    let rss_limit = baseline.rss_kib + baseline.rss_kib / 2 + 8 * 1024;
    let rss_deadline = Instant::now() + Duration::from_secs(15);
    while after.rss_kib > rss_limit && Instant::now() < rss_deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        after = usage(pid, admin_port).await;
    }
    let rss_in = wind_down.elapsed();
    if crashed.is_none() {
        if let Ok(Some(status)) = gate.try_wait() {
            crashed = Some(status);
        }
    }

    // Graceful stop of wsgate: SIGTERM must end it cleanly.
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let exit = tokio::task::spawn_blocking(move || gate.wait())
        .await
        .unwrap();
    for b in &mut backends {
        let _ = b.kill();
        let _ = b.wait();
    }

    let mut lat = std::mem::take(&mut *tally.latencies.lock().unwrap());
    let closes = tally.closes.lock().unwrap().clone();
    let corrupt = tally.corrupt.load(Relaxed);
    let abrupt = tally.abrupt.load(Relaxed);
    let hung = tally.hung.load(Relaxed);
    let rss_ok = after.rss_kib <= rss_limit;
    println!(
        "\n== wsgate soak: {} connections, {:.1} min ==",
        a.connections, a.minutes
    );
    println!("chaos: {kills} backend kills (SIGKILL + restart), {reloads} config reloads (SIGHUP)");
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
    println!("{slow_report}");
    println!("{flood_report}");
    println!("wsgate cold    {cold:?}");
    println!("wsgate warm    {baseline:?}");
    println!("wsgate peak    {peak:?}");
    println!(
        "wsgate after   {after:?} (clients closed in {clients_done:?}, released in {released_in:?}, RSS read at {rss_in:?})"
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
