//! The `wsgate` binary as a user runs it.

use std::process::Command;

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
    let backend = rt.block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(wsgate::demo::echo_backend(l, "b".into(), stop.clone()));
        addr
    });
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
    let backend = rt.block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        tokio::spawn(wsgate::demo::echo_backend(l, "b".into(), stop.clone()));
        (addr, stop)
    });
    let (mut child, port) = spawn_quick(backend.0, &[]);
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
    backend.1.cancel();
}
