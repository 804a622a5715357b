//! The proxies under test: their configuration files, and starting them pinned to a core.
//!
//! Each proxy gets the same budget: one worker (nginx `worker_processes 1`, HAProxy
//! `nbthread 1`, wsgate `--threads 1`), pinned with `taskset` to the proxy core, while
//! the generator and the backend share the other core. "default" is the packaged
//! configuration with the WebSocket lines every guide adds; "tuned" is what an operator
//! would set for WebSocket traffic (no access log, larger buffers, long tunnel timeouts,
//! descriptors for 10,000 sockets).

use std::{
    fs,
    net::{SocketAddr, TcpListener, TcpStream},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::procstat::Tree;

/// What kind of proxy a target is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The echo backend itself, no proxy: the harness's own ceiling.
    Direct,
    /// wsgate; `log` keeps its default per-connection info log (to a file).
    Wsgate {
        /// Info-level logging on.
        log: bool,
        /// `/ws` has a `[route.rate_limit]` (set never to refuse): what the limiter costs.
        limits: bool,
        /// The upstream keeps a warm pool (`min_idle` connected sockets): what the pool
        /// saves on a handshake.
        pool: bool,
    },
    /// nginx.
    Nginx {
        /// Tuned configuration.
        tuned: bool,
    },
    /// HAProxy.
    Haproxy {
        /// Tuned configuration.
        tuned: bool,
    },
}

impl Kind {
    /// Parses a target name as used on the command line and in the report.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "direct" => Kind::Direct,
            "wsgate" => Kind::Wsgate {
                log: false,
                limits: false,
                pool: false,
            },
            "wsgate-log" => Kind::Wsgate {
                log: true,
                limits: false,
                pool: false,
            },
            "wsgate-limits" => Kind::Wsgate {
                log: false,
                limits: true,
                pool: false,
            },
            "wsgate-pool" => Kind::Wsgate {
                log: false,
                limits: false,
                pool: true,
            },
            "nginx-default" => Kind::Nginx { tuned: false },
            "nginx-tuned" => Kind::Nginx { tuned: true },
            "haproxy-default" => Kind::Haproxy { tuned: false },
            "haproxy-tuned" => Kind::Haproxy { tuned: true },
            _ => return None,
        })
    }

    /// The name used in the report.
    pub fn name(&self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Wsgate { log: true, .. } => "wsgate-log",
            Kind::Wsgate { limits: true, .. } => "wsgate-limits",
            Kind::Wsgate { pool: true, .. } => "wsgate-pool",
            Kind::Wsgate { .. } => "wsgate",
            Kind::Nginx { tuned: false } => "nginx-default",
            Kind::Nginx { tuned: true } => "nginx-tuned",
            Kind::Haproxy { tuned: false } => "haproxy-default",
            Kind::Haproxy { tuned: true } => "haproxy-tuned",
        }
    }

    /// Whether the target verifies JWTs (a `/jwt` route).
    pub fn has_jwt(&self) -> bool {
        matches!(self, Kind::Wsgate { .. })
    }
}

/// A target ready for traffic.
#[derive(Debug)]
pub struct Running {
    /// Which proxy.
    pub kind: Kind,
    /// Where clients connect.
    pub addr: SocketAddr,
    /// The process tree to measure (none for direct, or an in-process proxy).
    pub tree: Option<Tree>,
    child: Option<Child>,
}

impl Running {
    /// A target that is already listening (in-process proxy, or the backend itself).
    pub fn external(kind: Kind, addr: SocketAddr, tree: Option<Tree>) -> Self {
        Self {
            kind,
            addr,
            tree,
            child: None,
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            // SIGKILL: a graceful wsgate would wait `shutdown_timeout` for open sockets.
            // To the whole process group: killing nginx's master alone left its worker
            // running (re-parented to init, still on the proxy core, holding its port and
            // sockets), one more after every nginx run.
            if let Ok(pgid) = libc::pid_t::try_from(c.id()) {
                // SAFETY: kill(2) with a negative pid signals that process group; it takes
                // no pointers. The group is the child's own (`process_group(0)` below).
                unsafe { libc::kill(-pgid, libc::SIGKILL) };
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Paths and placement for starting proxies.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The wsgate binary.
    pub wsgate: PathBuf,
    /// nginx and haproxy binaries.
    pub nginx: PathBuf,
    /// HAProxy binary.
    pub haproxy: PathBuf,
    /// Config files, logs and keys go here.
    pub work: PathBuf,
    /// The core the proxy is pinned to (`taskset -c`), if any.
    pub core: Option<usize>,
    /// PEM public keys for wsgate's `/jwt` route.
    pub jwt_keys: Vec<PathBuf>,
}

/// A free loopback port (bound, then released: a race is possible but unlikely).
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `[route.rate_limit]` for the `wsgate-limits` target: every check in the path (the
/// handshake GCRA per client IP, the per-IP and global connection counts) with limits
/// far above what the benchmark reaches, so nothing is refused and only the cost shows.
pub const NEVER_REFUSING_LIMITS: &str = "[route.rate_limit]\nper_ip = \"1000000/s\"\n\
     burst = 1000000\nmax_connections_per_ip = 1000000\nmax_connections = 1000000\n";

/// `[upstream.pool]` for the `wsgate-pool` target: more warm connections than the churn
/// scenario's concurrency (32), so a handshake finds one ready when the pool keeps up.
pub const WARM_POOL: &str = "\n[upstream.pool]\nmin_idle = 48\n";

/// Writes wsgate's configuration: `/ws` plain (or with [`NEVER_REFUSING_LIMITS`]),
/// `/jwt` with `[route.jwt]`.
pub fn wsgate_config(
    listen: SocketAddr,
    backend: SocketAddr,
    jwt_keys: &[PathBuf],
    limits: bool,
    pool: bool,
) -> String {
    let mut s = format!(
        "[server]\nlisten = \"{listen}\"\n\n\
         [[upstream]]\nname = \"echo\"\nbackends = [\"ws://{backend}\"]\n{pool}\n\
         [[route]]\npath = \"/ws\"\nupstream = \"echo\"\n",
        pool = if pool { WARM_POOL } else { "" },
    );
    if limits {
        s.push_str(NEVER_REFUSING_LIMITS);
    }
    if !jwt_keys.is_empty() {
        let keys: Vec<String> = jwt_keys
            .iter()
            .map(|k| format!("\"{}\"", k.display()))
            .collect();
        s.push_str(&format!(
            "\n[[route]]\npath = \"/jwt\"\nupstream = \"echo\"\n\n[route.jwt]\npublic_keys = [{}]\n",
            keys.join(", ")
        ));
    }
    s
}

fn nginx_config(dir: &Path, listen: SocketAddr, backend: SocketAddr, tuned: bool) -> String {
    let d = dir.display();
    // Default: Debian's nginx.conf shape (access log on, default buffers and timeouts)
    // plus the WebSocket proxy lines from nginx's own guide. Both get one worker and
    // enough descriptors for the idle-connection scenarios.
    let (access, buffers, timeouts, backlog) = if tuned {
        (
            "access_log off;".to_string(),
            "proxy_buffer_size 64k; proxy_buffers 4 64k; proxy_busy_buffers_size 64k;",
            "proxy_read_timeout 3600s; proxy_send_timeout 3600s;",
            " backlog=4096",
        )
    } else {
        (format!("access_log {d}/access.log;"), "", "", "")
    };
    format!(
        "worker_processes 1;\nworker_rlimit_nofile 20000;\ndaemon off;\npid {d}/nginx.pid;\n\
         error_log {d}/error.log warn;\n\
         events {{ worker_connections 30000; }}\n\
         http {{\n  {access}\n  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;\n\
           fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
           tcp_nodelay on;\n\
           map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}\n\
           upstream echo {{ server {backend}; }}\n\
           server {{\n    listen {listen}{backlog};\n    location / {{\n\
               proxy_pass http://echo;\n      proxy_http_version 1.1;\n\
               proxy_set_header Upgrade $http_upgrade;\n\
               proxy_set_header Connection $connection_upgrade;\n\
               proxy_set_header Host $host;\n      {buffers}\n      {timeouts}\n    }}\n  }}\n}}\n"
    )
}

fn haproxy_config(listen: SocketAddr, backend: SocketAddr, tuned: bool) -> String {
    if tuned {
        format!(
            "global\n  nbthread 1\n  maxconn 9950\n  tune.bufsize 65536\n\n\
             defaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n\
               timeout server 60s\n  timeout tunnel 1h\n  timeout client-fin 5s\n\n\
             frontend fe\n  bind {listen}\n  default_backend be\n\n\
             backend be\n  server echo {backend}\n"
        )
    } else {
        // Debian's haproxy.cfg defaults (log to /dev/log, httplog, 50 s timeouts).
        format!(
            "global\n  nbthread 1\n  log /dev/log local0\n\n\
             defaults\n  log global\n  mode http\n  option httplog\n  option dontlognull\n\
               timeout connect 5000\n  timeout client 50000\n  timeout server 50000\n\n\
             frontend fe\n  bind {listen}\n  default_backend be\n\n\
             backend be\n  server echo {backend}\n"
        )
    }
}

/// Starts `kind` in front of `backend`, pinned to the proxy core, and waits until it
/// accepts connections.
pub fn start(kind: Kind, backend: SocketAddr, l: &Launch) -> std::io::Result<Running> {
    if kind == Kind::Direct {
        return Ok(Running::external(kind, backend, None));
    }
    let port = free_port()?;
    let listen: SocketAddr = ([127, 0, 0, 1], port).into();
    let dir = l.work.join(kind.name());
    fs::create_dir_all(&dir)?;
    let mut cmd = match l.core {
        Some(c) => {
            let mut t = Command::new("taskset");
            t.arg("-c").arg(c.to_string());
            t
        }
        None => Command::new("env"),
    };
    let log = fs::File::create(dir.join("stderr.log"))?;
    match kind {
        Kind::Direct => unreachable!(),
        Kind::Wsgate {
            log: with_log,
            limits,
            pool,
        } => {
            let cfg = dir.join("wsgate.toml");
            fs::write(
                &cfg,
                wsgate_config(listen, backend, &l.jwt_keys, limits, pool),
            )?;
            cmd.arg(&l.wsgate)
                .arg("--threads")
                .arg("1")
                .arg("--config")
                .arg(&cfg)
                .env("RUST_LOG", if with_log { "info" } else { "warn" });
        }
        Kind::Nginx { tuned } => {
            let cfg = dir.join("nginx.conf");
            fs::write(&cfg, nginx_config(&dir, listen, backend, tuned))?;
            cmd.arg(&l.nginx).arg("-p").arg(&dir).arg("-c").arg(&cfg);
        }
        Kind::Haproxy { tuned } => {
            let cfg = dir.join("haproxy.cfg");
            fs::write(&cfg, haproxy_config(listen, backend, tuned))?;
            cmd.arg(&l.haproxy).arg("-db").arg("-f").arg(&cfg);
        }
    }
    // Its own process group, so that stopping it stops every process it forked.
    cmd.process_group(0);
    let child = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    let pid = child.id();
    let mut running = Running {
        kind,
        addr: listen,
        tree: Some(Tree(pid)),
        child: Some(child),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if TcpStream::connect_timeout(&listen, Duration::from_millis(200)).is_ok() {
            // nginx forks its worker after binding: let it come up.
            std::thread::sleep(Duration::from_millis(300));
            return Ok(running);
        }
        if let Some(c) = running.child.as_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                let log = fs::read_to_string(dir.join("stderr.log")).unwrap_or_default();
                return Err(std::io::Error::other(format!(
                    "{} exited ({status}): {}",
                    kind.name(),
                    log.trim()
                )));
            }
        }
        if Instant::now() > deadline {
            return Err(std::io::Error::other(format!(
                "{} did not listen on {listen} within 20 s",
                kind.name()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
