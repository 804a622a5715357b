//! The connection limit (`server.max_connections`, by default sized from the open-file
//! limit): beyond it clients get 503 at once, never a 502 from a backend `connect` that
//! ran out of descriptors, never an unanswered handshake.

mod support;

use std::{
    io::BufRead,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::{SinkExt, StreamExt};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::{self, Message};
use wsgate::metrics::Outcome;

/// wsgate with `ulimit -n open_files` in front of `backend`; returns the child, its port
/// and the connection limit it logged. Its later log lines go to `log`.
fn spawn_limited(
    open_files: u32,
    backend: std::net::SocketAddr,
    log: Arc<Mutex<String>>,
) -> (Child, u16, usize) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // `ulimit -n` in the shell sets the soft and the hard limit, so wsgate cannot
    // raise it past `open_files`.
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -n {open_files} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_wsgate"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--backend", &format!("ws://{backend}")])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut limit = None;
    let mut line = String::new();
    while !line.contains("proxying WebSockets") {
        line.clear();
        if err.read_line(&mut line).unwrap() == 0 {
            let _ = child.kill();
            panic!("wsgate exited early");
        }
        if let Some(rest) = line.split("max_connections=").nth(1) {
            limit = rest.split_whitespace().next().and_then(|n| n.parse().ok());
        }
    }
    std::thread::spawn(move || {
        for l in err.lines().map_while(Result::ok) {
            log.lock().unwrap().push_str(&l);
        }
    });
    let Some(limit) = limit else {
        let _ = child.kill();
        panic!("no `connection limit` line before the listener line");
    };
    (child, port, limit)
}

/// What one client's handshake came to: a socket, or a refusal's status and its
/// `Retry-After` and `Connection` headers.
enum Answer {
    Upgraded(Box<Client>),
    Refused(u16, String, String),
}

/// 64 descriptors' worth of clients more than the limit arrive at once at a wsgate
/// whose open-file limit is 256. Before the limit existed, accepting them used up the
/// descriptors their backend sockets needed: the excess got 502 or no answer at all.
/// Now every client is answered, the excess with 503, and every upgraded socket
/// relays.
#[test]
fn a_burst_beyond_the_descriptor_limit_gets_503s_not_502s_or_silence() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let backend = echo_on(&rt, &stop);
    let log = Arc::new(Mutex::new(String::new()));
    let (mut child, port, limit) = spawn_limited(256, backend, log.clone());
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rt.block_on(burst(port, limit));
    }));
    let _ = child.kill();
    let _ = child.wait();
    stop.cancel();
    if let Err(p) = outcome {
        std::panic::resume_unwind(p);
    }
    let log = log.lock().unwrap();
    assert!(
        !log.contains("Too many open files"),
        "wsgate ran out of descriptors: {log}"
    );
}

async fn burst(port: u16, limit: usize) {
    // 256 descriptors, two per socket, some kept aside: the limit is below 128.
    assert!((64..128).contains(&limit), "limit {limit}");
    let url = format!("ws://127.0.0.1:{port}/ws");
    let clients = limit + 64;
    let tries = (0..clients).map(|_| {
        let url = url.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(Duration::from_secs(20), connect_with(&url, &[])).await {
                Err(_) => panic!("a handshake got no answer within 20 s"),
                Ok(Ok((ws, _))) => Answer::Upgraded(Box::new(ws)),
                Ok(Err(tungstenite::Error::Http(resp))) => {
                    let header = |name: &str| {
                        resp.headers()
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_string()
                    };
                    Answer::Refused(
                        resp.status().as_u16(),
                        header("retry-after"),
                        header("connection"),
                    )
                }
                Ok(Err(e)) => panic!("handshake failed: {e}"),
            }
        })
    });
    let mut upgraded = Vec::new();
    let mut refused = 0;
    for t in tries.collect::<Vec<_>>() {
        match t.await.unwrap() {
            Answer::Upgraded(ws) => upgraded.push(ws),
            Answer::Refused(status, retry_after, connection) => {
                assert_eq!(status, 503, "refused with {status}");
                assert_eq!(retry_after, "1");
                assert_eq!(connection, "close");
                refused += 1;
            }
        }
    }
    assert!(upgraded.len() <= limit, "{} upgraded", upgraded.len());
    // A socket is counted both as a connection and as a socket for the moment it is
    // handed over, so a racing handshake may be refused a little early; not many.
    assert!(
        upgraded.len() + 8 >= limit,
        "only {} upgraded",
        upgraded.len()
    );
    assert_eq!(upgraded.len() + refused, clients);
    // Every upgraded socket got its backend socket: each one relays.
    for (i, ws) in upgraded.iter_mut().enumerate() {
        ws.send(Message::text(format!("m{i}"))).await.unwrap();
    }
    for (i, ws) in upgraded.iter_mut().enumerate() {
        assert_eq!(recv(ws).await, Message::text(format!("m{i}")));
    }
    // Once they close, the room is back.
    for ws in &mut upgraded {
        ws.send(Message::Close(None)).await.unwrap();
    }
    for ws in &mut upgraded {
        while let Some(Ok(_)) = ws.next().await {}
    }
    let mut again = Vec::new();
    for _ in 0..limit / 2 {
        again.push(connect(&url).await);
    }
}

/// The status code of a GET on the admin listener.
async fn admin_get(g: &wsgate::server::Running, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(g.admin.unwrap())
        .await
        .unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out.split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string()
}

fn with_limit(toml: String, n: usize) -> String {
    toml.replacen(
        "[server]\n",
        &format!("[server]\nmax_connections = {n}\n"),
        1,
    )
}

/// The head of a raw answer to a WebSocket request, and whether wsgate then closed.
async fn raw_answer(addr: std::net::SocketAddr, path: &str) -> (String, bool) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {SAMPLE_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    // Reads to the end: only a closed connection ends this.
    let closed = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .is_ok();
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

#[tokio::test]
async fn max_connections_answers_503_closes_and_admits_again_after_a_close() {
    let b = Backend::start(BackendOpts::named("a")).await;
    let g = gate(&with_limit(one_route(&[&b.url], ""), 2)).await;
    let url = ws_url(&g, "/ws");
    let first = connect(&url).await;
    let mut second = connect(&url).await;
    // Full: any route, or no route at all, gets 503 and the connection is closed.
    for path in ["/ws", "/app/x", "/nowhere"] {
        let (head, closed) = raw_answer(g.listen[0], path).await;
        assert!(head.starts_with("HTTP/1.1 503"), "{path}: {head}");
        assert!(
            head.to_ascii_lowercase().contains("retry-after: 1"),
            "{head}"
        );
        assert!(closed, "{path}: connection kept open");
    }
    // The two route refusals are counted as overloaded; the 404 path has no route.
    assert_eq!(g.metrics.handshakes(Outcome::Overloaded), 2);
    let text = metrics(&g).await;
    assert!(text.contains("wsgate_connection_limit 2\n"), "{text}");
    assert!(
        text.contains("wsgate_handshakes_total{outcome=\"overloaded\"} 2\n"),
        "{text}"
    );
    // Readiness says so, so a balancer sends new clients elsewhere.
    assert_eq!(admin_get(&g, "/readyz").await, "503");
    // The sockets still relay.
    second.send(Message::text("still here")).await.unwrap();
    assert_eq!(recv(&mut second).await, Message::text("still here"));
    drop(first);
    eventually("the closed socket released", || {
        g.metrics.capacity.in_use() == 1
    })
    .await;
    assert_eq!(admin_get(&g, "/readyz").await, "200");
    let mut third = connect(&url).await;
    third.send(Message::text("in")).await.unwrap();
    assert_eq!(recv(&mut third).await, Message::text("in"));
    drop((second, third));
    assert_no_leak(&g).await;
    eventually("connection count back to 0", || {
        g.metrics.capacity.in_use() == 0
    })
    .await;
}

#[tokio::test]
async fn max_connections_zero_is_a_config_error_naming_the_key() {
    let text =
        with_limit(one_route(&["ws://127.0.0.1:1"], ""), 0).replace("{LISTEN}", "127.0.0.1:0");
    let err = wsgate::config::Config::parse(&text, "t.toml").unwrap_err();
    assert!(err.to_string().contains("server.max_connections"), "{err}");
}

/// A configured limit that needs more descriptors than the process may open is
/// started with (the operator may raise the limit later), but named in a warning.
#[test]
fn a_limit_beyond_the_open_file_limit_is_named_in_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wsgate.toml");
    let toml = with_limit(one_route(&["ws://127.0.0.1:1"], ""), 1000)
        .replace("{LISTEN}", "127.0.0.1:0")
        .replace("admin = \"127.0.0.1:0\"\n", "");
    std::fs::write(&path, toml).unwrap();
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("ulimit -n 256 && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_wsgate"))
        .arg("--config")
        .arg(&path);
    let warned = startup_lines(cmd)
        .into_iter()
        .find(|l| l.contains("server.max_connections needs more descriptors"));
    let line = warned.expect("no warning naming server.max_connections");
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("open_file_limit=256"), "{line}");
}
