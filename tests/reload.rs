//! Live backend changes: reload (explicit and on file change), drain, DNS discovery.

mod support;

use std::{collections::HashSet, path::Path, sync::Arc, time::Duration};

use futures_util::SinkExt;
use support::*;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use wsgate::{config::Config, reload::WATCH_INTERVAL, server::Running};

fn config(backends: &[&str], extra: &str) -> String {
    let list = backends
        .iter()
        .map(|b| format!("\"{b}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
shutdown_timeout = "200ms"

[[upstream]]
name = "b"
backends = [{list}]
drain_timeout = "300ms"
{extra}

[[route]]
path = "/ws"
upstream = "b"
"#
    )
}

async fn start_file(path: &Path) -> Running {
    let cfg = Config::load(path).unwrap();
    wsgate::server::start(&cfg).await.unwrap()
}

/// Closes and lets go of the socket (a client that keeps its TCP connection after the
/// close handshake holds the relay until `close_timeout`).
async fn bye(mut ws: Client) {
    ws.close(None).await.unwrap();
    drop(ws);
}

async fn whoami(ws: &mut Client) -> String {
    ws.send(Message::text("whoami")).await.unwrap();
    recv(ws).await.into_text().unwrap().to_string()
}

#[tokio::test]
async fn reload_adds_and_removes_backends_keeping_open_sockets() {
    let a = Backend::start(BackendOpts::named("a")).await;
    let b = Backend::start(BackendOpts::named("b")).await;
    let c = Backend::start(BackendOpts::named("c")).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wsgate.toml");
    std::fs::write(&file, config(&[&a.url, &b.url], "")).unwrap();
    let g = start_file(&file).await;
    let url = ws_url(&g, "/ws");
    let (mut on_a, mut on_b) = (connect(&url).await, connect(&url).await);
    assert_eq!(whoami(&mut on_a).await, "a");
    assert_eq!(whoami(&mut on_b).await, "b");
    let kept = g.upstreams[0].backends()[1].clone();

    std::fs::write(&file, config(&[&b.url, &c.url], "weights = [1, 3]")).unwrap();
    let changes = g.reload(&file).await.unwrap();
    assert_eq!(changes[0].1.added, vec![c.url.clone()]);
    assert_eq!(changes[0].1.removed, vec![a.url.clone()]);
    let now = g.upstreams[0].backends();
    assert!(
        Arc::ptr_eq(&now[0], &kept),
        "b keeps its Backend (counts, state)"
    );
    assert_eq!(kept.active(), 1);

    // New sockets never go to the removed backend.
    let mut seen = HashSet::new();
    for _ in 0..8 {
        let mut ws = connect(&url).await;
        seen.insert(whoami(&mut ws).await);
        bye(ws).await;
    }
    assert_eq!(seen, HashSet::from(["b".to_string(), "c".to_string()]));
    // The socket on the remaining backend is untouched; the removed one still works
    // until the drain timeout, then gets 1001.
    assert_eq!(whoami(&mut on_b).await, "b");
    assert_eq!(whoami(&mut on_a).await, "a");
    let (code, _) = recv_close(&mut on_a).await;
    assert_eq!(code, 1001);
    // Sends the close reply tungstenite queued, completing the handshake.
    let _ = on_a.flush().await;
    assert_eq!(whoami(&mut on_b).await, "b", "still open after the drain");
    bye(on_b).await;
    drop(on_a);
    assert_no_leak(&g).await;
    g.shutdown().await;
}

/// `config` with an admin listener.
fn config_with_admin(backends: &[&str]) -> String {
    config(backends, "").replace(
        "shutdown_timeout",
        "admin = \"127.0.0.1:0\"\nshutdown_timeout",
    )
}

fn tasks_alive(metrics: &str) -> usize {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("wsgate_runtime_tasks_alive "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no wsgate_runtime_tasks_alive in {metrics}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_that_come_and_go_over_many_reloads_leave_no_task_or_metric_series() {
    let steady = Backend::start(BackendOpts::named("steady")).await;
    // Every backend is started first, so its accept loop is already in the baseline.
    let mut passing = Vec::new();
    for i in 0..10 {
        passing.push(Backend::start(BackendOpts::named(&format!("p{i}"))).await);
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wsgate.toml");
    std::fs::write(&file, config_with_admin(&[&steady.url])).unwrap();
    let g = start_file(&file).await;
    let url = ws_url(&g, "/ws");
    let mut warm = connect(&url).await;
    assert_eq!(whoami(&mut warm).await, "steady");
    bye(warm).await;
    assert_no_leak(&g).await;
    let baseline = tasks_alive(&metrics(&g).await);

    for (i, p) in passing.iter().enumerate() {
        // The backend joins, takes a socket, leaves (drained) while it is open.
        std::fs::write(&file, config_with_admin(&[&steady.url, &p.url])).unwrap();
        g.reload(&file).await.unwrap();
        let (mut one, mut two) = (connect(&url).await, connect(&url).await);
        let mut names = vec![whoami(&mut one).await, whoami(&mut two).await];
        names.sort();
        assert_eq!(names, vec![format!("p{i}"), "steady".to_string()]);
        assert!(
            metrics(&g).await.contains(&p.url),
            "a joined backend has series"
        );
        std::fs::write(&file, config_with_admin(&[&steady.url])).unwrap();
        let changes = g.reload(&file).await.unwrap();
        assert_eq!(changes[0].1.removed, vec![p.url.clone()]);
        bye(one).await;
        bye(two).await;
    }
    assert_no_leak(&g).await;

    // Series only for the backend that is configured now.
    let m = metrics(&g).await;
    for p in &passing {
        assert!(
            !m.contains(&p.url),
            "a removed backend's series stayed: {m}"
        );
    }
    let series = m
        .lines()
        .filter(|l| l.starts_with("wsgate_backend_connections_active{"))
        .count();
    assert_eq!(series, 1, "{m}");
    // Relays, drain tasks and per-backend tasks all end (a drain ends after its
    // 300 ms timeout): the runtime is back to the tasks it had before the reloads.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = tasks_alive(&metrics(&g).await);
        if now <= baseline {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{now} tasks alive after 10 reloads, {baseline} before"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    g.shutdown().await;
}

#[tokio::test]
async fn a_bad_new_config_is_refused_and_the_old_one_keeps_running() {
    let a = Backend::start(BackendOpts::named("a")).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wsgate.toml");
    std::fs::write(&file, config(&[&a.url], "")).unwrap();
    let g = start_file(&file).await;
    std::fs::write(&file, config(&["http://not-ws"], "")).unwrap();
    let err = g.reload(&file).await.unwrap_err();
    assert!(err.contains("upstream[0].backends[0]"), "{err}");
    std::fs::write(&file, "this is [not toml").unwrap();
    assert!(g.reload(&file).await.is_err());
    let mut ws = connect(&ws_url(&g, "/ws")).await;
    assert_eq!(whoami(&mut ws).await, "a");
    assert_eq!(g.upstreams[0].backends().len(), 1);
    bye(ws).await;
    assert_no_leak(&g).await;
    g.shutdown().await;
}

#[tokio::test]
async fn a_changed_file_is_picked_up_without_a_signal() {
    let a = Backend::start(BackendOpts::named("a")).await;
    let b = Backend::start(BackendOpts::named("b")).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wsgate.toml");
    std::fs::write(&file, config(&[&a.url], "")).unwrap();
    let g = start_file(&file).await;
    g.watch_config(file.clone(), Duration::from_millis(50));
    assert!(WATCH_INTERVAL <= Duration::from_secs(1));
    // A different length guarantees the change is seen even within one mtime tick.
    std::fs::write(&file, config(&[&b.url], "# changed")).unwrap();
    let up = g.upstreams[0].clone();
    let b_url = b.url.clone();
    eventually("watcher applied the new file", move || {
        up.backends()
            .iter()
            .map(|x| x.url().to_string())
            .collect::<Vec<_>>()
            == vec![b_url.clone()]
    })
    .await;
    let mut ws = connect(&ws_url(&g, "/ws")).await;
    assert_eq!(whoami(&mut ws).await, "b");
    bye(ws).await;
    assert_no_leak(&g).await;
    g.shutdown().await;
}

#[tokio::test]
async fn a_host_name_becomes_one_backend_per_address() {
    // `localhost` resolves to 127.0.0.1 and ::1 here: one backend on each, same port.
    let v4 = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = v4.local_addr().unwrap().port();
    let Ok(v6) = TcpListener::bind(("::1", port)).await else {
        eprintln!("no IPv6 loopback here; skipping");
        return;
    };
    let _b4 = Backend::serve(v4, BackendOpts::named("v4"));
    let _b6 = Backend::serve(v6, BackendOpts::named("v6"));
    let host = format!("ws://localhost:{port}");
    let cfg = Config::parse(&config(&[&host], r#"resolve_interval = "100ms""#), "t.toml").unwrap();
    let g = wsgate::server::start(&cfg).await.unwrap();
    let resolved = tokio::net::lookup_host(("localhost", port))
        .await
        .unwrap()
        .count();
    let ids: HashSet<String> = g.upstreams[0].backends().iter().map(|b| b.id()).collect();
    assert_eq!(ids.len(), resolved, "{ids:?}");
    assert!(ids.contains(&format!("{host}@127.0.0.1")), "{ids:?}");
    let before = g.upstreams[0].backends();
    let mut seen = HashSet::new();
    for _ in 0..4 {
        let mut ws = connect(&ws_url(&g, "/ws")).await;
        seen.insert(whoami(&mut ws).await);
        bye(ws).await;
    }
    if resolved == 2 {
        assert_eq!(seen, HashSet::from(["v4".to_string(), "v6".to_string()]));
    }
    // A re-resolution with the same answer keeps the same backends (and their sockets).
    let changes = g.supervisor.re_resolve("b").await;
    assert!(changes.is_empty(), "{changes:?}");
    let after = g.upstreams[0].backends();
    assert!(before.iter().zip(&after).all(|(x, y)| Arc::ptr_eq(x, y)));
    assert_no_leak(&g).await;
    g.shutdown().await;
}
