//! `wsgate-bench`: the echo backend (`echo`) and the whole benchmark (`suite`).
//! `bench/run.sh` installs the peers, builds, pins and runs the suite.

use std::{
    io::{BufRead, BufReader},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use clap::{Parser, Subcommand};
use wsgate_bench::{
    echo, jwt,
    procstat::{self, Tree},
    suite::{self, Settings},
    targets::{self, Kind, Launch},
};

/// Benchmarks for wsgate against nginx and HAProxy.
#[derive(Debug, Parser)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

// Parsed once at start: the size of the larger variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Cmd {
    /// The echo backend (one thread); prints its address on the first line.
    Echo {
        /// Where to listen.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
    },
    /// Every scenario against every target; writes results.{md,json} and chart.svg.
    Suite {
        /// About two minutes: fewer targets, shorter windows.
        #[arg(long)]
        quick: bool,
        /// The wsgate binary (default: next to this one).
        #[arg(long)]
        wsgate: Option<PathBuf>,
        /// The nginx binary.
        #[arg(long, default_value = "nginx")]
        nginx: PathBuf,
        /// The HAProxy binary.
        #[arg(long, default_value = "haproxy")]
        haproxy: PathBuf,
        /// Comma-separated: direct, wsgate, wsgate-log, wsgate-limits, wsgate-pool, nginx-default,
        /// nginx-tuned, haproxy-default, haproxy-tuned.
        #[arg(long, value_delimiter = ',')]
        targets: Vec<String>,
        /// Comma-separated: msg64, msg64k, churn, jwt, idle, rate.
        #[arg(long, value_delimiter = ',')]
        scenarios: Vec<String>,
        /// Runs per figure.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Measured window, seconds.
        #[arg(long)]
        duration: Option<f64>,
        /// Warm-up before each window, seconds.
        #[arg(long)]
        warmup: Option<f64>,
        /// Scenario 6's rate, messages per second.
        #[arg(long, default_value_t = 20000.0)]
        rate: f64,
        /// Idle-connection checkpoints (the last is the maximum).
        #[arg(long, value_delimiter = ',')]
        idle: Vec<usize>,
        /// Runs of the idle scenario.
        #[arg(long)]
        idle_runs: Option<usize>,
        /// Core the proxies are pinned to (`taskset -c`); -1: no pinning.
        #[arg(long, default_value_t = 1, allow_hyphen_values = true)]
        proxy_core: i64,
        /// Distinct tokens minted per algorithm for the fresh-token runs.
        #[arg(long)]
        token_pool: Option<usize>,
        /// Where results go.
        #[arg(long, default_value = "bench/results")]
        out: PathBuf,
        /// The command line to print as "how to reproduce".
        #[arg(long, default_value = "bench/run.sh")]
        command_line: String,
    },
}

fn main() {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match cli.command {
        Cmd::Echo { listen } => rt.block_on(async move {
            procstat::raise_nofile();
            let l = tokio::net::TcpListener::bind(listen)
                .await
                .expect("echo: cannot listen");
            println!("{}", l.local_addr().expect("local address"));
            echo::serve(l).await;
        }),
        Cmd::Suite {
            quick,
            wsgate,
            nginx,
            haproxy,
            targets: names,
            scenarios,
            runs,
            duration,
            warmup,
            rate,
            idle,
            idle_runs,
            proxy_core,
            token_pool,
            out,
            command_line,
        } => {
            let started = Instant::now();
            let nofile = procstat::raise_nofile();
            let names = if !names.is_empty() {
                names
            } else if quick {
                vec!["direct", "wsgate", "nginx-tuned", "haproxy-tuned"]
                    .into_iter()
                    .map(String::from)
                    .collect()
            } else {
                [
                    "direct",
                    "wsgate",
                    "wsgate-log",
                    "wsgate-limits",
                    "wsgate-pool",
                    "nginx-default",
                    "nginx-tuned",
                    "haproxy-default",
                    "haproxy-tuned",
                ]
                .into_iter()
                .map(String::from)
                .collect()
            };
            let kinds: Vec<Kind> = names
                .iter()
                .map(|n| Kind::parse(n).unwrap_or_else(|| panic!("unknown target {n}")))
                .collect();
            let scenarios = if scenarios.is_empty() {
                ["msg64", "msg64k", "churn", "jwt", "idle", "rate"]
                    .into_iter()
                    .map(String::from)
                    .collect()
            } else {
                scenarios
            };
            // Each proxied idle connection costs the proxy two descriptors: stay under
            // half the limit, with room for listeners and logs.
            let max_idle = ((nofile as usize).saturating_sub(200) / 2).min(9_900);
            let idle = if idle.is_empty() {
                vec![5_000.min(max_idle), max_idle]
            } else {
                idle
            };
            let settings = Settings {
                runs,
                warm: Duration::from_secs_f64(warmup.unwrap_or(if quick { 0.3 } else { 0.5 })),
                dur: Duration::from_secs_f64(duration.unwrap_or(if quick { 1.0 } else { 2.0 })),
                rate,
                rate_conns: ((rate / 1000.0).ceil() as usize).clamp(1, 64),
                idle_checkpoints: idle,
                idle_runs: idle_runs.unwrap_or(if quick { 1 } else { 3 }),
                sources: (1..=8)
                    .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i)))
                    .collect(),
                jwt: Vec::new(),
                scenarios,
            };
            let work = std::env::temp_dir().join(format!("wsgate-bench-{}", std::process::id()));
            std::fs::create_dir_all(&work).expect("work dir");
            let wsgate = wsgate.unwrap_or_else(|| {
                std::env::current_exe()
                    .ok()
                    .and_then(|p| p.parent().map(|d| d.join("wsgate")))
                    .unwrap_or_else(|| "wsgate".into())
            });
            let mut settings = settings;
            let mut jwt_keys = Vec::new();
            if settings.scenarios.iter().any(|s| s == "jwt") && kinds.iter().any(Kind::has_jwt) {
                let t = Instant::now();
                let keys = jwt::generate_keys(&work.join("keys")).expect("openssl key generation");
                let pool = token_pool.unwrap_or(if quick { 2000 } else { 8000 });
                for k in &keys {
                    settings
                        .jwt
                        .push(jwt::mint(k, pool).expect("minting tokens"));
                    jwt_keys.push(k.public.clone());
                }
                eprintln!(
                    "minted {pool} tokens × {} algorithms in {:.1} s",
                    keys.len(),
                    t.elapsed().as_secs_f64()
                );
            }
            let launch = Launch {
                wsgate: wsgate.clone(),
                nginx: nginx.clone(),
                haproxy: haproxy.clone(),
                work: work.clone(),
                core: usize::try_from(proxy_core).ok(),
                jwt_keys,
            };
            // The backend: its own process, on the harness's core (inherited affinity).
            let exe = std::env::current_exe().expect("current exe");
            let mut backend = Command::new(exe)
                .arg("echo")
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start the echo backend");
            let mut line = String::new();
            if let Some(out) = backend.stdout.take() {
                let _ = BufReader::new(out).read_line(&mut line);
            }
            let backend_addr: SocketAddr = line.trim().parse().expect("backend address");
            let backend_tree = Tree(backend.id());
            let mut running = Vec::new();
            for k in &kinds {
                match targets::start(*k, backend_addr, &launch) {
                    Ok(r) => running.push(r),
                    Err(e) => eprintln!("skipping {}: {e}", k.name()),
                }
            }
            let present: Vec<&str> = running.iter().map(|r| r.kind.name()).collect();
            eprintln!(
                "backend {backend_addr}; targets {present:?}; proxy core {proxy_core}; fd limit {nofile}"
            );
            // A fresh copy on a new port; the old one is killed when it is replaced.
            let restart = |k: Kind| targets::start(k, backend_addr, &launch);
            let rep = rt.block_on(suite::run(
                &mut running,
                Some(backend_tree),
                &settings,
                Some(&restart),
            ));
            drop(running);
            let _ = backend.kill();
            let _ = backend.wait();

            let env = environment(&wsgate, &nginx, &haproxy);
            let mut md = String::new();
            md.push_str(&format!(
                "## Results {}\n\n{env}\nReproduce: `{command_line}` (took {:.0} s). \
                 Each figure: median of {} runs (min–max in brackets), {:.1} s windows after {:.1} s warm-up. \
                 Proxies pinned to core {proxy_core}, generator and backend share the other core.\n\n",
                if quick { "(quick mode)" } else { "" },
                started.elapsed().as_secs_f64(),
                settings.runs,
                settings.dur.as_secs_f64(),
                settings.warm.as_secs_f64(),
            ));
            md.push_str(&suite::markdown(&rep, &present, &settings));
            let errors = rep.error_summary();
            if !errors.is_empty() {
                md.push_str("### Errors\n\n");
                for e in &errors {
                    md.push_str(&format!("- {e}\n"));
                }
                md.push('\n');
            }
            std::fs::create_dir_all(&out).expect("results dir");
            std::fs::write(out.join("results.md"), &md).expect("write results.md");
            std::fs::write(out.join("results.json"), suite::json(&rep)).expect("write json");
            std::fs::write(out.join("chart.svg"), suite::chart(&rep, &present)).expect("chart");
            println!("{md}");
            eprintln!(
                "wrote {0}/results.md, {0}/results.json, {0}/chart.svg in {1:.0} s",
                out.display(),
                started.elapsed().as_secs_f64()
            );
            if errors.is_empty() {
                let _ = std::fs::remove_dir_all(&work);
            } else {
                eprintln!("errors: proxy configs and logs kept in {}", work.display());
            }
        }
    }
}

fn first_line(cmd: &mut Command) -> String {
    cmd.output()
        .ok()
        .map(|o| {
            let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
            s.push_str(&String::from_utf8_lossy(&o.stderr));
            s.lines().next().unwrap_or("").trim().to_string()
        })
        .unwrap_or_else(|| "not found".into())
}

fn environment(wsgate: &Path, nginx: &Path, haproxy: &Path) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|x| x.trim().to_string())
        })
        .unwrap_or_default();
    // Not available_parallelism: the suite itself is pinned to one core.
    let cores = std::fs::read_to_string("/proc/cpuinfo").map_or(0, |s| {
        s.lines().filter(|l| l.starts_with("processor")).count()
    });
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let date = first_line(Command::new("date").arg("-u").arg("+%Y-%m-%d %H:%M UTC"));
    format!(
        "- date: {date}\n- machine: {cpu}, {cores} cores, Linux {}\n- wsgate: {} (release build, `--threads 1`)\n- nginx: {}\n- HAProxy: {}\n- rustc: {}\n",
        kernel.trim(),
        first_line(Command::new(wsgate).arg("--version")),
        first_line(Command::new(nginx).arg("-v")),
        first_line(Command::new(haproxy).arg("-v")),
        first_line(Command::new("rustc").arg("--version")),
    )
}
