//! Backend choice per policy over real backends, and the warm connection pool.

mod support;

use std::{collections::HashMap, time::Instant};

use futures_util::SinkExt;
use support::*;
use tokio_tungstenite::tungstenite::Message;

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
shutdown_timeout = "200ms"

[[upstream]]
name = "b"
backends = [{list}]
{upstream_extra}

[[route]]
path = "/ws"
upstream = "b"
"#
    )
}

async fn three() -> Vec<Backend> {
    let mut v = Vec::new();
    for i in 0..3 {
        v.push(Backend::start(BackendOpts::named(&format!("b{i}"))).await);
    }
    v
}

async fn whoami(ws: &mut Client) -> String {
    ws.send(Message::text("whoami")).await.unwrap();
    recv(ws).await.into_text().unwrap().to_string()
}

/// Opens `n` sockets one after another, keeping them open when `keep`; counts by backend.
async fn spread(url: &str, n: usize, keep: bool) -> (HashMap<String, usize>, Vec<Client>) {
    let mut counts = HashMap::new();
    let mut open = Vec::new();
    for _ in 0..n {
        let mut ws = connect(url).await;
        *counts.entry(whoami(&mut ws).await).or_insert(0) += 1;
        if keep {
            open.push(ws);
        } else {
            ws.close(None).await.unwrap();
        }
    }
    (counts, open)
}

#[tokio::test]
async fn each_policy_spreads_as_it_promises() {
    let bs = three().await;
    let urls: Vec<&str> = bs.iter().map(|b| b.url.as_str()).collect();

    let g = gate(&config(&urls, r#"policy = "round_robin""#)).await;
    let (c, _) = spread(&ws_url(&g, "/ws"), 30, false).await;
    assert!(c.values().all(|n| *n == 10), "round_robin {c:?}");

    let g = gate(&config(
        &urls,
        "policy = \"weighted_round_robin\"\nweights = [3, 1, 1]",
    ))
    .await;
    let (c, _) = spread(&ws_url(&g, "/ws"), 50, false).await;
    assert_eq!((c["b0"], c["b1"], c["b2"]), (30, 10, 10), "weighted {c:?}");

    // Least connections counts open WebSockets: kept sockets balance exactly.
    let g = gate(&config(&urls, r#"policy = "least_connections""#)).await;
    let (c, open) = spread(&ws_url(&g, "/ws"), 30, true).await;
    assert!(c.values().all(|n| *n == 10), "least_connections {c:?}");
    drop(open);

    let g = gate(&config(&urls, r#"policy = "p2c""#)).await;
    let (c, open) = spread(&ws_url(&g, "/ws"), 30, true).await;
    // The less loaded of two: never far from even.
    assert!(c.values().all(|n| (6..=14).contains(n)), "p2c {c:?}");
    drop(open);

    let g = gate(&config(&urls, r#"policy = "random""#)).await;
    let (c, _) = spread(&ws_url(&g, "/ws"), 60, false).await;
    assert_eq!(c.len(), 3, "random reaches every backend {c:?}");

    // consistent_hash without a sticky key behaves as random; with one, see sticky.rs.
    let g = gate(&config(&urls, r#"policy = "consistent_hash""#)).await;
    let (c, _) = spread(&ws_url(&g, "/ws"), 60, false).await;
    assert_eq!(c.len(), 3, "consistent_hash without key {c:?}");
    assert_no_leak(&g).await;
}

#[tokio::test]
async fn warm_pool_serves_handshakes_and_refills() {
    let b = Backend::start(BackendOpts::named("a")).await;
    let g = gate(&config(
        &[&b.url],
        r#"pool = { min_idle = 2, max = 100, idle_timeout = "30s" }"#,
    ))
    .await;
    let pool = g.supervisor.pool("b").expect("pool configured");
    let backend = g.upstreams[0].backends()[0].clone();
    let (p, bk) = (pool.clone(), backend.clone());
    eventually("pool warmed", move || p.idle(&bk) == 2).await;
    let mut pooled = Vec::new();
    for _ in 0..20 {
        let (p, bk) = (pool.clone(), backend.clone());
        eventually("pool refilled", move || p.idle(&bk) >= 1).await;
        let t = Instant::now();
        let mut ws = connect(&ws_url(&g, "/ws")).await;
        pooled.push(t.elapsed());
        assert_eq!(whoami(&mut ws).await, "a");
        ws.close(None).await.unwrap();
    }
    let (hits, misses) = (pool.hits(), pool.misses());
    eprintln!(
        "pool: {hits} hits, {misses} misses, hit rate {:.2}",
        hits as f64 / (hits + misses) as f64
    );
    assert_eq!(hits, 20, "every handshake found a warm connection");
    assert_eq!(misses, 0);

    // Without a pool, for comparison (loopback: the saving is one TCP connect).
    let g2 = gate(&config(&[&b.url], "")).await;
    let mut fresh = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let mut ws = connect(&ws_url(&g2, "/ws")).await;
        fresh.push(t.elapsed());
        ws.close(None).await.unwrap();
    }
    pooled.sort();
    fresh.sort();
    eprintln!(
        "client handshake median: pooled {:?}, fresh {:?}",
        pooled[10], fresh[10]
    );

    assert_no_leak(&g).await;
}
