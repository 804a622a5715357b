//! Rebalancing: after scale-out, sockets move off a backend holding far more than the mean.

mod support;

use std::{sync::Arc, time::Duration};

use futures_util::StreamExt;
use support::*;
use tokio::{sync::Mutex, task::JoinSet};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use wsgate::{config::Config, server::Running};

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
close_timeout = "1s"

[[upstream]]
name = "b"
backends = [{list}]
policy = "least_connections"
rebalance = {{ max_fraction = 0.5, window = "300ms", threshold = 1.5 }}
{extra}

[[route]]
path = "/ws"
upstream = "b"
"#
    )
}

const N: usize = 40;

/// Holds `N` clients; a client closed by wsgate records the code and reconnects, one
/// that gets a text message (a resume notice) records it.
async fn clients(
    url: String,
    stop: CancellationToken,
    closes: Arc<Mutex<Vec<(u16, String)>>>,
    notices: Arc<Mutex<Vec<String>>>,
) -> JoinSet<()> {
    let mut set = JoinSet::new();
    for _ in 0..N {
        let mut ws = connect(&url).await;
        let (url, stop, closes, notices) =
            (url.clone(), stop.clone(), closes.clone(), notices.clone());
        set.spawn(async move {
            loop {
                let msg = tokio::select! {
                    _ = stop.cancelled() => { let _ = ws.close(None).await; return; }
                    m = ws.next() => m,
                };
                match msg {
                    Some(Ok(Message::Close(f))) => {
                        let f = f
                            .map(|f| (u16::from(f.code), f.reason.to_string()))
                            .unwrap_or((1005, String::new()));
                        let _ = futures_util::SinkExt::flush(&mut ws).await;
                        ws = connect(&url).await;
                        // Counted once the client is back: then "20 moved and the counts
                        // sum to N" means the old sockets are released too, not that a
                        // socket is between its close and its reconnect (counted on
                        // neither backend yet, or on both).
                        closes.lock().await.push(f);
                    }
                    Some(Ok(Message::Text(t))) => notices.lock().await.push(t.to_string()),
                    Some(Ok(_)) => {}
                    other => panic!("client socket failed: {other:?}"),
                }
            }
        });
    }
    set
}

fn split(g: &Running) -> Vec<usize> {
    g.upstreams[0]
        .backends()
        .iter()
        .map(|b| b.active())
        .collect()
}

async fn scale_out_and_rebalance(
    resume: bool,
) -> (Vec<usize>, Vec<usize>, Vec<(u16, String)>, Vec<String>) {
    let a = Backend::start(BackendOpts::named("a")).await;
    let b = Backend::start(BackendOpts::named("b")).await;
    let extra = if resume {
        "resume = true\nresume_notice = \"moved\""
    } else {
        ""
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wsgate.toml");
    std::fs::write(&file, config(&[&a.url], extra)).unwrap();
    let g = wsgate::server::start(&Config::load(&file).unwrap())
        .await
        .unwrap();
    let stop = CancellationToken::new();
    let closes = Arc::new(Mutex::new(Vec::new()));
    let notices = Arc::new(Mutex::new(Vec::new()));
    let mut set = clients(
        ws_url(&g, "/ws"),
        stop.clone(),
        closes.clone(),
        notices.clone(),
    )
    .await;
    let up = g.upstreams[0].clone();
    eventually("all sockets open on a", || up.backends()[0].active() == N).await;
    let before = split(&g);

    // Scale out: b joins by reload; the next rounds move sockets to it.
    std::fs::write(&file, config(&[&a.url, &b.url], extra)).unwrap();
    g.reload(&file).await.unwrap();
    // Round one asks min(excess over the mean, max_fraction × load) = 20 sockets to
    // move, spread over the window; least_connections sends the reconnects to b.
    let (up2, c2, n2) = (up.clone(), closes.clone(), notices.clone());
    eventually("20 sockets moved and reopened", move || {
        let moved = c2.try_lock().map(|c| c.len()).unwrap_or(0)
            + n2.try_lock().map(|n| n.len()).unwrap_or(0);
        let s: Vec<usize> = up2.backends().iter().map(|b| b.active()).collect();
        moved == 20 && s.iter().sum::<usize>() == N
    })
    .await;
    let after = split(&g);
    // Two more windows: a balanced group is left alone (nothing to await but time).
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        closes.lock().await.len() + notices.lock().await.len(),
        20,
        "a balanced group is left alone"
    );
    assert_eq!(split(&g), after);
    stop.cancel();
    while set.join_next().await.is_some() {}
    assert_no_leak(&g).await;
    g.shutdown().await;
    let c = closes.lock().await.clone();
    let n = notices.lock().await.clone();
    (before, after, c, n)
}

#[tokio::test]
async fn scale_out_moves_sockets_with_1012_until_the_split_is_within_threshold() {
    let (before, after, closes, notices) = scale_out_and_rebalance(false).await;
    println!(
        "spread before: {before:?}, after: {after:?}, closed: {}",
        closes.len()
    );
    assert_eq!(before, vec![N]);
    assert!(after.iter().all(|n| (12..=28).contains(n)), "{after:?}");
    assert!(!closes.is_empty());
    assert!(
        closes.iter().all(|(c, r)| *c == 1012 && r == "rebalance"),
        "every moved client got 1012: {closes:?}"
    );
    assert!(notices.is_empty());
}

#[tokio::test]
async fn in_resume_mode_rebalancing_moves_sockets_without_closing_them() {
    let (before, after, closes, notices) = scale_out_and_rebalance(true).await;
    println!(
        "spread before: {before:?}, after: {after:?}, resumed: {}",
        notices.len()
    );
    assert_eq!(before, vec![N]);
    assert!(after.iter().all(|n| (12..=28).contains(n)), "{after:?}");
    assert!(closes.is_empty(), "no client was closed: {closes:?}");
    assert!(!notices.is_empty() && notices.iter().all(|t| t == "moved"));
}
