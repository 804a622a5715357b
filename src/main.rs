//! The `wsgate` command line: parse, load the config, run. Errors end here as `anyhow`.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

/// jemalloc rather than glibc's malloc: after a burst of sockets closes, glibc keeps
/// most of the freed memory resident (live chunks left scattered over its per-thread
/// arenas, and `malloc_trim` does not shrink the top of a thread's arena), so RSS stays
/// well above what is in use; jemalloc's background thread returns unused pages within
/// seconds. RELIABILITY.md ("Soak and faults") has the measurements.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read when it starts: a background thread purges pages unused
/// for `dirty_decay_ms` (no allocation needs to happen for that), and purged pages go
/// straight back to the OS (`muzzy_decay_ms:0`) so RSS shows it.
#[cfg(feature = "jemalloc")]
#[allow(unsafe_code, non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8; 60] =
    b"background_thread:true,dirty_decay_ms:5000,muzzy_decay_ms:0\0";

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;
use wsgate::{config::Config, demo, server};

/// A WebSocket reverse proxy made of Tower layers.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// The TOML configuration file.
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Validate the configuration and exit.
    #[arg(long)]
    check: bool,
    /// Quick mode: listen here (repeatable), with --backend.
    #[arg(long, value_name = "ADDR")]
    listen: Vec<SocketAddr>,
    /// Quick mode: a ws:// or wss:// backend (repeatable); round-robin over them.
    #[arg(long, value_name = "URL")]
    backend: Vec<String>,
    /// Quick mode: the WebSocket route's path [default: /ws].
    #[arg(long)]
    path: Option<String>,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Human, global = true)]
    log_format: LogFormat,
    /// Runtime worker threads (default: one per core; also `WSGATE_THREADS`). 1 runs
    /// tokio's current-thread scheduler, like one nginx worker.
    #[arg(long, value_name = "N", global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run wsgate in front of two built-in echo backends, with a page to try it.
    Demo {
        /// Client listener.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Admin listener (metrics, status page).
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin: SocketAddr,
    },
    /// Run an echo backend (answers `whoami` with its name).
    Echo {
        /// Where to listen.
        #[arg(long, default_value = "127.0.0.1:9001")]
        listen: SocketAddr,
        /// The name `whoami` answers.
        #[arg(long)]
        name: Option<String>,
    },
    /// Open a WebSocket, send each MESSAGE (or stdin's lines), print the replies.
    Client {
        /// ws:// or wss:// URL.
        url: String,
        /// Messages to send; none: read lines from stdin.
        messages: Vec<String>,
    },
}

fn init_logs(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour_logs())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Colours only for a person at a terminal: logs piped to a file, journald or a container
/// runtime would otherwise carry escape codes into every line. `NO_COLOR` (no-color.org)
/// turns them off at a terminal too.
fn colour_logs() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // A fixed core budget (benchmarks, containers): size the runtime to it.
    let threads = cli
        .threads
        .or_else(|| std::env::var("WSGATE_THREADS").ok()?.parse().ok())
        .filter(|&n| n > 0);
    // One thread: the current-thread scheduler, like one nginx worker. It runs the same
    // tasks without the work-stealing machinery (shared queues, wake-ups across threads)
    // that a single worker has no use for.
    let mut builder = if threads == Some(1) {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    builder.enable_all();
    if let Some(n) = threads.filter(|&n| n > 1) {
        builder.worker_threads(n);
    }
    let runtime = match builder.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wsgate: error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` prints the cause chain on one line, without a backtrace: the message
            // (file, key, what is wrong) is what the user acts on.
            eprintln!("wsgate: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Some(Command::Client { url, messages }) => return client(&url, messages).await,
        _ => init_logs(cli.log_format),
    }
    raise_open_file_limit();
    match cli.command {
        Some(Command::Demo { listen, admin }) => run_demo(listen, admin).await,
        Some(Command::Echo { listen, name }) => {
            let l = TcpListener::bind(listen)
                .await
                .with_context(|| format!("cannot listen on {listen}"))?;
            let name = name.unwrap_or_else(|| format!("echo {listen}"));
            eprintln!("echo backend `{name}` on ws://{listen}");
            let stop = CancellationToken::new();
            let s = stop.clone();
            tokio::spawn(async move {
                let _ = tokio::signal::ctrl_c().await;
                s.cancel();
            });
            demo::echo_backend(l, name, stop).await;
            Ok(())
        }
        Some(Command::Client { .. }) => Ok(()),
        None => run_proxy(cli).await,
    }
}

/// Up to the hard limit: a proxy needs two descriptors per socket, and the usual soft
/// default (1024) would cap it near 500 sockets (`wsgate::capacity`).
fn raise_open_file_limit() {
    match wsgate::capacity::raise_open_file_limit() {
        Ok(n) => tracing::debug!(
            open_file_limit = n,
            "open-file limit raised to the hard limit"
        ),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
}

async fn run_proxy(cli: Cli) -> Result<()> {
    let cfg = match (&cli.config, cli.backend.is_empty()) {
        (Some(path), true) => {
            // Quick-mode flags next to a file would be silently ignored.
            if !cli.listen.is_empty() || cli.path.is_some() {
                bail!("--listen and --path are quick-mode flags (with --backend); with --config, set server.listen and [[route]] path in the file");
            }
            let cfg = Config::load(path)?;
            wsgate::preflight::check_files(&cfg, &path.display().to_string()).await?;
            cfg
        }
        (Some(_), false) => bail!("--config and --backend do not mix: put the backends in the file"),
        (None, false) => {
            let listen = if cli.listen.is_empty() {
                vec![SocketAddr::from(([127, 0, 0, 1], 8080))]
            } else {
                cli.listen.clone()
            };
            Config::quick(listen, cli.backend.clone(), cli.path.as_deref().unwrap_or("/ws"))?
        }
        (None, true) if !cli.listen.is_empty() || cli.path.is_some() => {
            bail!("quick mode needs at least one --backend ws://HOST:PORT")
        }
        (None, true) => bail!(
            "nothing to do: give --config FILE, or --backend URL for quick mode, or try `wsgate demo`"
        ),
    };
    if cli.check {
        println!(
            "{}: ok ({} upstream(s), {} route(s))",
            cli.config
                .as_ref()
                .map_or("<command line>".into(), |p| p.display().to_string()),
            cfg.upstream.len(),
            cfg.route.len()
        );
        return Ok(());
    }
    // Before the listeners: from here on a signal is never missed (nor fatal).
    let mut stop = Signals::stop();
    let mut hangup = Signals::hangup();
    let running = server::start(&cfg).await?;
    for a in &running.listen {
        eprintln!("wsgate: proxying WebSockets on {a}");
    }
    // Backend changes in the file apply live: on SIGHUP and when the file changes.
    if let Some(path) = &cli.config {
        running.watch_config(path.clone(), wsgate::reload::WATCH_INTERVAL);
    }
    loop {
        tokio::select! {
            _ = stop.recv() => break,
            _ = hangup.recv() => {
                if let Some(path) = &cli.config {
                    // A refused file is logged by reload; the running config stays.
                    let _ = running.reload(path).await;
                }
            }
        }
    }
    eprintln!("wsgate: shutting down (a second signal exits at once)");
    tokio::spawn(async move {
        stop.recv().await;
        std::process::exit(130);
    });
    running.shutdown().await;
    Ok(())
}

async fn run_demo(listen: SocketAddr, admin: SocketAddr) -> Result<()> {
    let d = demo::start_demo(listen, Some(admin)).await?;
    let gate = d.gate.listen[0];
    println!();
    println!("  wsgate demo is running: two echo backends behind ws://{gate}/ws (round-robin)");
    println!();
    println!("  open in a browser:   http://{gate}/");
    println!("  or from a terminal:  cargo run --release -- client ws://{gate}/ws whoami hello");
    if let Some(a) = d.gate.admin {
        println!("  status page:         http://{a}/   (metrics: http://{a}/metrics)");
    }
    println!();
    println!("  Ctrl-C to stop.");
    let mut stop = Signals::stop();
    stop.recv().await;
    tokio::spawn(async move {
        stop.recv().await;
        std::process::exit(130);
    });
    d.shutdown().await;
    Ok(())
}

/// A Unix signal listened to from start-up on: a signal that arrives while wsgate is busy
/// with the previous one (a reload, a shutdown) is still seen by the next wait, which a
/// listener made afresh for each wait would miss.
struct Signals {
    #[cfg(unix)]
    streams: Vec<tokio::signal::unix::Signal>,
}

impl Signals {
    /// SIGTERM and SIGINT (Ctrl-C).
    fn stop() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::SignalKind;
            Self::of(&[SignalKind::terminate(), SignalKind::interrupt()])
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// SIGHUP.
    fn hangup() -> Self {
        #[cfg(unix)]
        {
            Self::of(&[tokio::signal::unix::SignalKind::hangup()])
        }
        #[cfg(not(unix))]
        Self {}
    }

    #[cfg(unix)]
    fn of(kinds: &[tokio::signal::unix::SignalKind]) -> Self {
        Self {
            streams: kinds
                .iter()
                .filter_map(|k| tokio::signal::unix::signal(*k).ok())
                .collect(),
        }
    }

    /// Resolves on the next signal (never, if none could be listened to, except Ctrl-C
    /// where there is no Unix signal handling).
    async fn recv(&mut self) {
        #[cfg(unix)]
        {
            if self.streams.is_empty() {
                return std::future::pending().await;
            }
            let next = futures_util::future::select_all(
                self.streams.iter_mut().map(|s| Box::pin(s.recv())),
            );
            next.await;
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

async fn client(url: &str, messages: Vec<String>) -> Result<()> {
    let (mut ws, resp) = tokio_tungstenite::connect_async(url)
        .await
        .with_context(|| format!("cannot open {url}"))?;
    eprintln!("connected: {}", resp.status());
    let lines: Vec<String> = if messages.is_empty() {
        std::io::stdin().lines().map_while(Result::ok).collect()
    } else {
        messages
    };
    for m in lines {
        ws.send(Message::text(m.clone())).await?;
        println!("> {m}");
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => println!("< {t}"),
            Ok(Some(Ok(Message::Binary(b)))) => println!("< ({} bytes binary)", b.len()),
            Ok(Some(Ok(Message::Close(c)))) => {
                println!("closed by server: {c:?}");
                return Ok(());
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => bail!("socket error: {e}"),
            Ok(None) => bail!("server closed the connection"),
            Err(_) => bail!("no reply within 5 s"),
        }
    }
    ws.close(None).await?;
    Ok(())
}
