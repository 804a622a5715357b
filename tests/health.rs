//! Active and passive health checks, failover before the 101, 1012 on backend death.

mod support;

use std::{
    sync::{
        atomic::{AtomicU16, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use futures_util::SinkExt;
use support::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

fn config(backends: &[&str], upstream_extra: &str) -> String {
    let list = backends
        .iter()
        .map(|b| format!("\"{b}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"
[server]
listen = "{{LISTEN}}"
admin = "127.0.0.1:0"
shutdown_timeout = "200ms"

[[upstream]]
name = "b"
backends = [{list}]
connect_timeout = "1s"
{upstream_extra}

[[route]]
path = "/ws"
upstream = "b"
"#
    )
}

async fn whoami(ws: &mut Client) -> String {
    ws.send(Message::text("whoami")).await.unwrap();
    recv(ws).await.into_text().unwrap().to_string()
}

/// A port nothing listens on.
async fn dead_port() -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    format!("ws://{a}")
}

/// Rebinds a killed backend's address (the old listener closes asynchronously).
async fn restart(addr: std::net::SocketAddr, name: &str) -> Backend {
    rebind(addr, BackendOpts::named(name)).await
}

#[tokio::test]
async fn tcp_check_takes_a_killed_backend_out_and_back_after_restart() {
    let a = Backend::start(BackendOpts::named("a")).await;
    let b = Backend::start(BackendOpts::named("b")).await;
    let g = gate(&config(
        &[&a.url, &b.url],
        r#"health = { kind = "tcp", interval = "50ms", timeout = "200ms", rise = 2, fall = 2 }"#,
    ))
    .await;
    let backends = g.upstreams[0].backends();
    let a_addr = a.addr;
    a.kill();
    let killed = Instant::now();
    let ba = backends[0].clone();
    eventually("killed backend marked unhealthy", || !ba.is_healthy()).await;
    let down_after = killed.elapsed();
    // While it is down every socket goes to b, and no client sees a failure.
    for _ in 0..6 {
        let mut ws = connect(&ws_url(&g, "/ws")).await;
        assert_eq!(whoami(&mut ws).await, "b");
    }
    let m = metrics(&g).await;
    assert!(
        m.contains(&format!(
            "wsgate_backend_healthy{{upstream=\"b\",backend=\"{}\"}} 0",
            a.url
        )),
        "{m}"
    );
    let _a2 = restart(a_addr, "a2").await;
    let restarted = Instant::now();
    eventually("restarted backend healthy again", || ba.is_healthy()).await;
    let up_after = restarted.elapsed();
    eprintln!("health transition timing: down after {down_after:?} (fall=2, 50ms), up after {up_after:?} (rise=2)");
    assert_eq!(ba.health_transitions(), 2);
    let m = metrics(&g).await;
    assert!(
        m.contains(&format!(
            "wsgate_backend_health_transitions_total{{upstream=\"b\",backend=\"{}\"}} 2",
            a.url
        )),
        "{m}"
    );
    let mut seen = std::collections::HashSet::new();
    for _ in 0..4 {
        let mut ws = connect(&ws_url(&g, "/ws")).await;
        seen.insert(whoami(&mut ws).await);
    }
    assert!(
        seen.contains("a2"),
        "recovered backend takes sockets again: {seen:?}"
    );
    assert_no_leak(&g).await;
    g.shutdown().await;
}

/// An HTTP server answering every request with the current status.
async fn http_health_backend(
    status: Arc<AtomicU16>,
    stop: CancellationToken,
) -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = tokio::select! {
                _ = stop.cancelled() => return,
                a = l.accept() => a.unwrap(),
            };
            let status = status.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = 0;
                while !buf[..got].windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf[got..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got += n,
                    }
                }
                let head = String::from_utf8_lossy(&buf[..got]).to_string();
                let code = if head.starts_with("GET /healthz ") {
                    status.load(Ordering::Relaxed)
                } else {
                    404
                };
                let _ = s
                    .write_all(
                        format!(
                            "HTTP/1.1 {code} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        )
                        .as_bytes(),
                    )
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn http_check_follows_the_status_with_rise_and_fall() {
    let status = Arc::new(AtomicU16::new(200));
    let stop = CancellationToken::new();
    let addr = http_health_backend(status.clone(), stop.clone()).await;
    let url = format!("ws://{addr}");
    let g = gate(&config(
        &[&url],
        r#"health = { kind = "http", path = "/healthz", interval = "30ms", timeout = "500ms", rise = 3, fall = 2, expect_status = 200 }"#,
    ))
    .await;
    let b = g.upstreams[0].backends()[0].clone();
    assert!(b.is_healthy());
    status.store(503, Ordering::Relaxed);
    eventually("503 takes it down", || !b.is_healthy()).await;
    // All backends down: 503 at once, with the reason.
    let started = Instant::now();
    assert_eq!(refused_status(&ws_url(&g, "/ws"), &[]).await, 503);
    assert!(started.elapsed() < Duration::from_secs(1));
    status.store(200, Ordering::Relaxed);
    eventually("200 brings it back", || b.is_healthy()).await;
    assert_eq!(b.health_transitions(), 2);
    stop.cancel();
    g.shutdown().await;
}

#[tokio::test]
async fn websocket_check_needs_a_real_upgrade() {
    let good = Backend::start(BackendOpts::named("good")).await;
    let mut refusing = BackendOpts::named("refusing");
    refusing.refuse = Some(403);
    let bad = Backend::start(refusing).await;
    let g = gate(&config(
        &[&good.url, &bad.url],
        r#"health = { kind = "websocket", path = "/", interval = "30ms", timeout = "500ms", rise = 1, fall = 1 }"#,
    ))
    .await;
    let bs = g.upstreams[0].backends();
    let bad_b = bs[1].clone();
    eventually("a backend refusing the upgrade is unhealthy", || {
        !bad_b.is_healthy()
    })
    .await;
    // Let several more probes run: the good one stays up.
    let good_b = bs[0].clone();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(good_b.is_healthy());
    assert_eq!(good_b.health_transitions(), 0);
    g.shutdown().await;
}

#[tokio::test]
async fn failed_connect_is_retried_before_the_101_and_ejects_the_backend() {
    let dead = dead_port().await;
    let live = Backend::start(BackendOpts::named("live")).await;
    let g = gate(&config(
        &[&dead, &live.url],
        r#"eject_backoff = "5s"
eject_backoff_max = "20s""#,
    ))
    .await;
    for _ in 0..6 {
        // Round robin puts the dead backend first half the time; the client never sees it.
        let mut ws = connect(&ws_url(&g, "/ws")).await;
        assert_eq!(whoami(&mut ws).await, "live");
    }
    let d = g.upstreams[0].backends()[0].clone();
    assert!(d.is_ejected(), "failed connect ejects passively");
    assert_eq!(d.ejections(), 1, "ejected once, then skipped while ejected");
    let m = metrics(&g).await;
    assert!(
        m.contains(&format!(
            "wsgate_backend_ejections_total{{upstream=\"b\",backend=\"{dead}\"}} 1"
        )),
        "{m}"
    );
    assert_no_leak(&g).await;
    g.shutdown().await;
}

#[tokio::test]
async fn failover_gives_up_within_the_time_budget() {
    // Two backends that accept TCP and never answer the upgrade.
    let mut holds = Vec::new();
    let mut urls = Vec::new();
    for _ in 0..2 {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        urls.push(format!("ws://{}", l.local_addr().unwrap()));
        holds.push(l);
    }
    let g = gate(&config(
        &[&urls[0], &urls[1]],
        r#"handshake_timeout = "10s"
retry_budget = "300ms""#,
    ))
    .await;
    let started = Instant::now();
    assert_eq!(refused_status(&ws_url(&g, "/ws"), &[]).await, 502);
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "budget not honoured: {took:?}"
    );
    g.shutdown().await;
}

#[tokio::test]
async fn killing_a_backend_process_closes_its_clients_with_1012() {
    let a = Backend::start(BackendOpts::named("a")).await;
    let b = Backend::start(BackendOpts::named("b")).await;
    let g = gate(&config(&[&a.url, &b.url], "")).await;
    let mut on_a = Vec::new();
    let mut on_b = Vec::new();
    for _ in 0..6 {
        let mut ws = connect(&ws_url(&g, "/ws")).await;
        if whoami(&mut ws).await == "a" {
            on_a.push(ws);
        } else {
            on_b.push(ws);
        }
    }
    assert_eq!((on_a.len(), on_b.len()), (3, 3));
    a.kill();
    for ws in &mut on_a {
        let (code, _) = recv_close(ws).await;
        assert_eq!(code, 1012);
    }
    for ws in &mut on_b {
        assert_eq!(
            whoami(ws).await,
            "b",
            "sockets on the live backend are untouched"
        );
    }
    drop(on_a);
    for mut ws in on_b {
        ws.close(None).await.unwrap();
    }
    assert_no_leak(&g).await;
    g.shutdown().await;
}
