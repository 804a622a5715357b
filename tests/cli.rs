//! The `wsgate` binary as a user runs it.

mod support;

use std::process::Command;

use support::{echo_on, startup_lines};

fn wsgate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_wsgate"))
}

#[test]
fn shipped_example_config_checks_clean() {
    let out = wsgate()
        .args(["--config", "examples/wsgate.toml", "--check"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok"));
}

#[test]
fn bad_config_exits_nonzero_naming_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "policy = \"round_robin\"",
            "polcy = \"round_robin\"",
            "polcy",
        ),
        (
            "policy = \"round_robin\"",
            "policy = \"fastest\"",
            "upstream[0].policy",
        ),
        (
            "upstream = \"echo\"",
            "upstream = \"missing\"",
            "route[0].upstream",
        ),
        (
            "idle_timeout = \"5m\"",
            "idle_timeout = \"5 lightyears\"",
            "idle_timeout",
        ),
        (
            "max_message = \"16MiB\"",
            "max_message = \"huge\"",
            "max_message",
        ),
        (
            "\"ws://127.0.0.1:9002\"",
            "\"http://127.0.0.1:9002\"",
            "upstream[0].backends[1]",
        ),
    ];
    let good = std::fs::read_to_string("examples/wsgate.toml").unwrap();
    for (from, to, key) in cases {
        assert!(good.contains(from), "{from}");
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, good.replacen(from, to, 1)).unwrap();
        let out = wsgate()
            .args(["--config", path.to_str().unwrap(), "--check"])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{to} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("bad.toml"), "no file named for {to}: {err}");
        assert!(err.contains(key), "no key `{key}` named for {to}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn missing_config_file_is_a_clear_error() {
    let out = wsgate()
        .args(["--config", "/nonexistent/wsgate.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nonexistent/wsgate.toml") && err.contains("cannot read"),
        "{err}"
    );
}

#[test]
fn quick_mode_checks_its_backends() {
    let ok = wsgate()
        .args(["--backend", "ws://127.0.0.1:9001", "--check"])
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let bad = wsgate()
        .args(["--backend", "tcp://127.0.0.1:9001", "--check"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("ws://"));
}

/// Starts `wsgate --listen … --backend ws://BACKEND` plus `extra` on a free port and
/// waits for its listener line; its stderr is drained from then on.
fn spawn_quick(backend: std::net::SocketAddr, extra: &[&str]) -> (std::process::Child, u16) {
    use std::io::BufRead;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = wsgate()
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--backend",
            &format!("ws://{backend}"),
        ])
        .args(extra)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("proxying WebSockets") {
        line.clear();
        assert!(err.read_line(&mut line).unwrap() > 0, "wsgate exited early");
        // stderr is a pipe here, as under systemd or a container runtime.
        if line.contains('\x1b') {
            let _ = child.kill();
            panic!("colour codes in piped logs: {line:?}");
        }
    }
    std::thread::spawn(move || for _ in err.lines() {});
    (child, port)
}

/// Logs written to a pipe (a file, journald, a container runtime) are plain text: the
/// colour codes a terminal gets would end up in every stored line.
#[test]
fn piped_logs_carry_no_colour_codes() {
    let backend = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    // `spawn_quick` reads the start-up lines from a pipe and asserts each is plain.
    let (mut child, _) = spawn_quick(backend.local_addr().unwrap(), &[]);
    child.kill().unwrap();
    child.wait().unwrap();
}

/// `--threads 1` (the current-thread runtime) relays and drains like the default.
#[test]
fn one_thread_relays_and_exits_cleanly_on_sigterm() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let backend = echo_on(&rt, &stop);
    let (mut child, port) = spawn_quick(backend, &["--threads", "1"]);
    rt.block_on(async {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/ws"))
            .await
            .unwrap();
        for i in 0..100 {
            ws.send(Message::text(format!("m{i}"))).await.unwrap();
        }
        for i in 0..100 {
            assert_eq!(
                ws.next().await.unwrap().unwrap(),
                Message::text(format!("m{i}"))
            );
        }
        ws.close(None).await.unwrap();
    });
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    assert_eq!(child.wait().unwrap().code(), Some(0));
    stop.cancel();
}

/// SIGTERM drains (open sockets keep wsgate alive through the grace period); a second
/// signal exits at once.
#[test]
fn second_signal_exits_at_once() {
    use std::time::{Duration, Instant};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let backend = echo_on(&rt, &stop);
    let (mut child, port) = spawn_quick(backend, &[]);
    let ws = rt
        .block_on(tokio_tungstenite::connect_async(format!(
            "ws://127.0.0.1:{port}/ws"
        )))
        .unwrap();
    let pid = child.id().to_string();
    let kill = |sig: &str| {
        assert!(Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success());
    };
    kill("-TERM");
    // The open socket holds wsgate in its 30 s grace period...
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        child.try_wait().unwrap().is_none(),
        "wsgate exited despite an open socket"
    );
    // ...until the second signal.
    let t = Instant::now();
    kill("-TERM");
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "second signal did not exit"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status.code(), Some(130));
    drop(ws);
    stop.cancel();
}

/// The TOML block of the configuration contract (/work/shared/CONFIG.md), verbatim.
const CONTRACT: &str = r#"# wsgate.toml
[server]
listen = "127.0.0.1:8080"            # client listener (several: listen = ["127.0.0.1:8080", "[::1]:8080"])
admin = "127.0.0.1:9090"             # metrics (/metrics), /healthz, /readyz, status page (/)
# trusted_proxies = ["10.0.0.0/8"]   # peers whose X-Forwarded-For / Forwarded / PROXY header is believed
# proxy_protocol = false
# tls = { cert = "cert.pem", key = "key.pem" }

[[upstream]]
name = "echo"
backends = ["ws://127.0.0.1:9001", "ws://127.0.0.1:9002"]   # ws:// or wss://; a hostname is re-resolved
policy = "round_robin"   # round_robin | weighted_round_robin | least_connections | p2c | random | consistent_hash
# weights = [3, 1]
# sticky = { by = "cookie" }          # cookie | "claim:sub" | "header:X-Session-Id" | ip
# health = { kind = "http", path = "/healthz", interval = "2s", timeout = "1s", rise = 2, fall = 2 }   # http | tcp | websocket
# connect_timeout = "3s"
# pool = { min_idle = 2, max = 1000 }

[[route]]
path = "/ws"                          # exact path; "/chat/*" for a prefix
upstream = "echo"
# origins = ["https://app.example"]   # Origin allow-list
# max_message = "16MiB"
# idle_timeout = "5m"

[route.jwt]                           # this route requires a valid JWT
jwks_file = "jwks.json"               # RSA, EC, OKP and oct (HMAC) keys, each with its kid and alg
                                      # or: jwks_url = "https://idp/.well-known/jwks.json", secret_file = "hs.secret", public_keys = ["rsa.pem"]
issuer = "https://issuer.test"
audience = "wsgate"
leeway = "60s"
sources = ["header", "protocol"]      # also "cookie", "query" (opt-in; see the JWT issue)
# forward_claims = { sub = "X-Auth-Subject" }
# on_expiry = "close"                 # close | keep

[route.rate_limit]                    # per client IP
per_ip = "20/s"
burst = 40
max_connections_per_ip = 100
# max_connections = 10000
# redis = "redis://127.0.0.1:6379"    # limits shared by every wsgate instance
"#;

/// A directory holding a copy of `CONTRACT` (edited by `edits`) as `wsgate.toml`, next
/// to the files it names: `jwks.json`, `hs.secret`, `rsa.pem`, `cert.pem`, `key.pem`.
struct ContractDir(tempfile::TempDir);

impl ContractDir {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let p = |f: &str| dir.path().join(f);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(p("cert.pem"), cert.pem()).unwrap();
        std::fs::write(p("key.pem"), key.serialize_pem()).unwrap();
        std::fs::write(p("rsa.pem"), key.public_key_pem()).unwrap();
        std::fs::write(
            p("hs.secret"),
            "a test secret that is long enough for HS256",
        )
        .unwrap();
        std::fs::write(
            p("jwks.json"),
            r#"{"keys":[{"kty":"oct","kid":"k1","alg":"HS256","k":"eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHg"}]}"#,
        )
        .unwrap();
        Self(dir)
    }

    /// `wsgate --config DIR/wsgate.toml --check` on `CONTRACT` with each `(from, to)`
    /// replaced once, run from another working directory: the files it names are found
    /// next to it.
    fn check(&self, edits: &[(&str, &str)]) -> std::process::Output {
        let mut text = CONTRACT.to_string();
        for (from, to) in edits {
            assert!(text.contains(from), "`{from}` is not in the contract block");
            text = text.replacen(from, to, 1);
        }
        let file = self.0.path().join("wsgate.toml");
        std::fs::write(&file, text).unwrap();
        wsgate()
            .args(["--config", file.to_str().unwrap(), "--check"])
            .current_dir("/")
            .output()
            .unwrap()
    }
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Every commented line of the contract block, uncommented alone, is accepted as it is
/// written (the files the block names lying next to the configuration).
#[test]
fn contract_block_checks_clean_with_each_commented_line_uncommented() {
    let dir = ContractDir::new();
    let out = dir.check(&[]);
    assert!(out.status.success(), "the block itself: {}", stderr(&out));
    let commented: Vec<&str> = CONTRACT
        .lines()
        .filter(|l| {
            let t = l.trim_start();
            t.starts_with("# ")
                && t[2..]
                    .split_once(" = ")
                    .is_some_and(|(k, _)| !k.contains(' '))
        })
        .collect();
    assert!(commented.len() >= 15, "{commented:?}");
    for line in commented {
        let uncommented = line.trim_start().trim_start_matches("# ");
        let out = dir.check(&[(line, uncommented)]);
        assert!(out.status.success(), "`{uncommented}`: {}", stderr(&out));
    }
}

/// The alternatives the contract's comments name, alone and together.
#[test]
fn contract_alternatives_check_clean() {
    let dir = ContractDir::new();
    let jwks = r#"jwks_file = "jwks.json""#;
    let sticky = r#"# sticky = { by = "cookie" }"#;
    let health = r#"# health = { kind = "http""#;
    let sources = r#"sources = ["header", "protocol"]"#;
    let cases: Vec<Vec<(&str, &str)>> = vec![
        vec![(
            r#"listen = "127.0.0.1:8080""#,
            r#"listen = ["127.0.0.1:8080", "[::1]:8080"]"#,
        )],
        vec![
            (
                r#"policy = "round_robin""#,
                r#"policy = "weighted_round_robin""#,
            ),
            ("# weights", "weights"),
        ],
        vec![(
            r#"policy = "round_robin""#,
            r#"policy = "least_connections""#,
        )],
        vec![(r#"policy = "round_robin""#, r#"policy = "p2c""#)],
        vec![(r#"policy = "round_robin""#, r#"policy = "random""#)],
        vec![
            (r#"policy = "round_robin""#, r#"policy = "consistent_hash""#),
            ("# weights", "weights"),
        ],
        vec![(sticky, r#"sticky = { by = "claim:sub" }"#)],
        vec![(sticky, r#"sticky = { by = "header:X-Session-Id" }"#)],
        vec![(sticky, r#"sticky = { by = "ip" }"#)],
        vec![(
            sticky,
            r#"sticky = { by = "cookie", secret_file = "hs.secret" }"#,
        )],
        vec![(health, r#"health = { kind = "tcp""#)],
        vec![(health, r#"health = { kind = "websocket""#)],
        vec![(jwks, r#"jwks_url = "https://idp/.well-known/jwks.json""#)],
        vec![(jwks, r#"secret_file = "hs.secret""#)],
        vec![(jwks, r#"public_keys = ["rsa.pem"]"#)],
        vec![(sources, r#"sources = ["header", "protocol", "query"]"#)],
        vec![
            (
                sources,
                r#"sources = ["cookie", "query", "header", "protocol"]"#,
            ),
            ("# origins", "origins"),
        ],
        vec![(r#"# on_expiry = "close""#, r#"on_expiry = "keep""#)],
        vec![
            ("# trusted_proxies", "trusted_proxies"),
            ("# proxy_protocol = false", "proxy_protocol = true"),
            ("# tls", "tls"),
            ("# weights", "weights"),
            (sticky, r#"sticky = { by = "claim:sub" }"#),
            ("# health", "health"),
            ("# connect_timeout", "connect_timeout"),
            ("# pool", "pool"),
            ("# origins", "origins"),
            ("# max_message", "max_message"),
            ("# idle_timeout", "idle_timeout"),
            ("# forward_claims", "forward_claims"),
            ("# on_expiry", "on_expiry"),
            ("# max_connections =", "max_connections ="),
            ("# redis", "redis"),
        ],
    ];
    for edits in cases {
        let out = dir.check(&edits);
        assert!(out.status.success(), "{edits:?}: {}", stderr(&out));
    }
}

/// `--check` reads what the file names, as start would: a missing certificate or key
/// file fails the check, naming the configuration file and the key.
#[test]
fn check_reads_the_files_the_config_names() {
    let dir = ContractDir::new();
    let cases = [
        (
            vec![(
                "# tls = { cert = \"cert.pem\"",
                "tls = { cert = \"gone.pem\"",
            )],
            "server.tls.cert",
        ),
        (
            vec![(
                "# tls = { cert = \"cert.pem\", key = \"key.pem\"",
                "tls = { cert = \"cert.pem\", key = \"cert.pem\"",
            )],
            "server.tls.key",
        ),
        (
            vec![("jwks_file = \"jwks.json\"", "jwks_file = \"gone.json\"")],
            "route[0].jwt.jwks_file",
        ),
        (
            vec![("jwks_file = \"jwks.json\"", "jwks_file = \"hs.secret\"")],
            "route[0].jwt.jwks_file",
        ),
        (
            vec![("jwks_file = \"jwks.json\"", "secret_file = \"gone.secret\"")],
            "route[0].jwt.secret_file",
        ),
        (
            vec![("jwks_file = \"jwks.json\"", "public_keys = [\"gone.pem\"]")],
            "route[0].jwt.public_keys",
        ),
        (
            vec![(
                "connect_timeout = \"3s\"",
                "connect_timeout = \"3s\"\nca_file = \"gone.pem\"",
            )],
            "upstream[0].ca_file",
        ),
    ];
    for (edits, key) in cases {
        let out = dir.check(&edits);
        let err = stderr(&out);
        assert!(!out.status.success(), "{edits:?} was accepted");
        assert!(
            err.contains("wsgate.toml") && err.contains(key),
            "{edits:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}

/// Each kind of mistake exits non-zero naming the file and the key (with the line for
/// what the TOML reader finds), never a panic.
#[test]
fn every_kind_of_mistake_names_the_key() {
    let dir = ContractDir::new();
    let route2 = "max_connections_per_ip = 100\n\n[[route]]\npath = \"/ws\"\nupstream = \"echo\"";
    let cases: &[(&str, &str, &str)] = &[
        ("admin =", "admn =", "server.admn (line 4)"),
        ("[server]", "[sever]", "sever (line 2)"),
        ("policy =", "polcy =", "upstream[0].polcy (line 12)"),
        ("path = \"/ws\"", "pth = \"/ws\"", "route[0].pth (line 20)"),
        ("issuer =", "isuer =", "route[0].jwt.isuer (line 29)"),
        ("burst =", "brust =", "route[0].rate_limit.brust (line 38)"),
        (
            "# health = { kind = \"http\", path",
            "health = { kind = \"http\", pth",
            "upstream[0].health",
        ),
        (
            "listen = \"127.0.0.1:8080\"",
            "listen = 8080",
            "server.listen",
        ),
        ("burst = 40", "burst = \"40\"", "route[0].rate_limit.burst"),
        ("burst = 40", "burst = -1", "route[0].rate_limit.burst"),
        (
            "# idle_timeout = \"5m\"",
            "idle_timeout = \"5M\"",
            "route[0].idle_timeout",
        ),
        (
            "# idle_timeout = \"5m\"",
            "idle_timeout = 300",
            "route[0].idle_timeout",
        ),
        (
            "# idle_timeout = \"5m\"",
            "idle_timeout = \"0s\"",
            "route[0].idle_timeout",
        ),
        (
            "# max_message = \"16MiB\"",
            "max_message = \"16M\"",
            "route[0].max_message",
        ),
        (
            "# max_message = \"16MiB\"",
            "max_message = -1",
            "route[0].max_message",
        ),
        (
            "# weights = [3, 1]",
            "weights = [3, 1, 1]",
            "upstream[0].weights",
        ),
        (
            "upstream = \"echo\"",
            "upstream = \"nope\"",
            "route[0].upstream",
        ),
        ("max_connections_per_ip = 100", route2, "route[1].path"),
        (
            "[\"ws://127.0.0.1:9001\", \"ws://127.0.0.1:9002\"]",
            "[]",
            "upstream[0].backends",
        ),
        (
            "ws://127.0.0.1:9002",
            "http://127.0.0.1:9002",
            "upstream[0].backends[1]",
        ),
        ("path = \"/ws\"", "path = \"ws\"", "route[0].path"),
        ("path = \"/ws\"", "path = \"/{id}\"", "route[0].path"),
        (
            "# redis = \"redis://127.0.0.1:6379\"",
            "redis = \"redis://:::6379\"",
            "route[0].rate_limit.redis",
        ),
        (
            "per_ip = \"20/s\"",
            "per_ip = \"20 per second\"",
            "route[0].rate_limit.per_ip",
        ),
        (
            "admin = \"127.0.0.1:9090\"",
            "admin = \"127.0.0.1:8080\"",
            "server.admin",
        ),
        (
            "# trusted_proxies = [\"10.0.0.0/8\"]",
            "trusted_proxies = [\"10.0.0.0/33\"]",
            "server.trusted_proxies",
        ),
        (
            "sources = [\"header\", \"protocol\"]",
            "sources = [\"cookie\"]",
            "route[0].jwt",
        ),
    ];
    for (from, to, key) in cases {
        let out = dir.check(&[(from, to)]);
        let err = stderr(&out);
        assert!(!out.status.success(), "`{to}` was accepted");
        assert!(
            err.contains("wsgate.toml"),
            "no file named for `{to}`: {err}"
        );
        assert!(err.contains(key), "no key `{key}` named for `{to}`: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

/// Sticky keys from a JWT claim on a route without `[route.jwt]` would never exist.
#[test]
fn claim_stickiness_on_a_route_without_jwt_is_refused() {
    let dir = ContractDir::new();
    let jwt_start = CONTRACT.find("[route.jwt]").unwrap();
    let jwt_end = CONTRACT.find("[route.rate_limit]").unwrap();
    let jwt = &CONTRACT[jwt_start..jwt_end];
    let out = dir.check(&[
        (
            "# sticky = { by = \"cookie\" }",
            "sticky = { by = \"claim:sub\" }",
        ),
        (jwt, ""),
    ]);
    let err = stderr(&out);
    assert!(!out.status.success(), "accepted");
    assert!(
        err.contains("route[0].jwt") && err.contains("claim:sub"),
        "{err}"
    );
}

/// Two routes with one path stop start with a message naming both, not a panic; an
/// exact path beside a prefix with that base is not a clash (the exact route takes it;
/// `tests/handshake.rs` serves both).
#[test]
fn overlapping_routes_stop_start_with_a_message_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wsgate.toml");
    std::fs::write(
        &file,
        "[server]\nlisten = \"127.0.0.1:0\"\n[[upstream]]\nname = \"e\"\nbackends = [\"ws://127.0.0.1:9\"]\n\
         [[route]]\npath = \"/ws/*\"\nupstream = \"e\"\n[[route]]\npath = \"/ws/*\"\nupstream = \"e\"\n",
    )
    .unwrap();
    let out = wsgate()
        .args(["--config", file.to_str().unwrap()])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("route[1].path") && err.contains("route[0]"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    for (a, b) in [("/ws", "/ws/*"), ("/", "/*")] {
        std::fs::write(
            &file,
            format!(
                "[[upstream]]\nname = \"e\"\nbackends = [\"ws://127.0.0.1:9\"]\n\
                 [[route]]\npath = \"{a}\"\nupstream = \"e\"\n\
                 [[route]]\npath = \"{b}\"\nupstream = \"e\"\n"
            ),
        )
        .unwrap();
        let out = wsgate()
            .args(["--config", file.to_str().unwrap(), "--check"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{a} + {b}: {}", stderr(&out));
    }
}

/// Quick-mode flags are refused next to a file (they would be ignored) or without a
/// backend; quick-mode errors name the flag.
#[test]
fn quick_mode_flags_are_checked_and_named() {
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "--config",
                "examples/wsgate.toml",
                "--listen",
                "127.0.0.1:1",
                "--check",
            ],
            "--listen",
        ),
        (
            &[
                "--config",
                "examples/wsgate.toml",
                "--path",
                "/x",
                "--check",
            ],
            "--path",
        ),
        (&["--listen", "127.0.0.1:1"], "--backend"),
        (
            &["--backend", "ws://127.0.0.1:1", "--path", "ws", "--check"],
            "--path",
        ),
        (
            &[
                "--backend",
                "ws://127.0.0.1:1",
                "--backend",
                "http://x",
                "--check",
            ],
            "--backend (#2)",
        ),
    ];
    for (args, says) in cases {
        let out = wsgate().args(*args).output().unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    // A usage error (clap) exits 2.
    let out = wsgate().args(["--config"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// An upstream no route uses is started (health checks, pool) but named in a warning:
/// most likely a typo in a route's `upstream`.
#[test]
fn an_upstream_no_route_uses_is_named_in_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wsgate.toml");
    std::fs::write(
        &file,
        "[server]\nlisten = \"127.0.0.1:0\"\n\
         [[upstream]]\nname = \"used\"\nbackends = [\"ws://127.0.0.1:9\"]\n\
         [[upstream]]\nname = \"spare\"\nbackends = [\"ws://127.0.0.1:9\"]\n\
         [[route]]\npath = \"/ws\"\nupstream = \"used\"\n",
    )
    .unwrap();
    let mut cmd = wsgate();
    cmd.args(["--config", file.to_str().unwrap()]);
    let warnings: Vec<_> = startup_lines(cmd)
        .into_iter()
        .filter(|l| l.contains("no route uses this upstream"))
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("upstream=spare"), "{warnings:?}");
}
