//! What the warm pool saves on a handshake: sequential handshakes (one at a time, so
//! nothing queues) through wsgate to an echo backend, with `[upstream.pool]` off and on,
//! and the time from connect to the 101 at p50 / p90 / p99.
//!
//! ```sh
//! cargo run --release --example pool_latency -- 3000
//! ```
//! Loopback only. The backend and wsgate run in this process on a multi-thread runtime.

use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2000);
    let stop = CancellationToken::new();
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let backend = l.local_addr()?;
    tokio::spawn(wsgate::demo::echo_backend(l, "b".into(), stop.clone()));

    // Alternate the two configurations in rounds so drift on a shared machine hits both.
    let mut samples: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    let (mut hits, mut misses) = ([0u64; 2], [0u64; 2]);
    for round in 0..4 {
        for (i, pool) in ["", "\n[upstream.pool]\nmin_idle = 4\n"].iter().enumerate() {
            let toml = format!(
                "[server]\nlisten = \"127.0.0.1:0\"\n\n[[upstream]]\nname = \"e\"\n\
                 backends = [\"ws://{backend}\"]\n{pool}\n[[route]]\npath = \"/ws\"\nupstream = \"e\"\n"
            );
            let cfg = wsgate::config::Config::parse(&toml, "pool_latency")?;
            let gate = wsgate::server::start(&cfg).await?;
            let url = format!("ws://{}/ws", gate.listen[0]);
            // Let the pool fill before measuring (it refills in the background after use).
            tokio::time::sleep(Duration::from_millis(200)).await;
            for k in 0..n / 4 {
                let t = Instant::now();
                let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str()).await?;
                let took = t.elapsed();
                if k >= 20 || round > 0 {
                    samples[i].push(took);
                }
                ws.close(None).await?;
                // Wait for the close to finish so sockets do not pile up.
                use futures_util::StreamExt;
                while let Some(Ok(_)) = ws.next().await {}
            }
            if let Some(p) = gate.supervisor.pool("e") {
                hits[i] += p.hits();
                misses[i] += p.misses();
            }
            gate.shutdown().await;
        }
    }
    stop.cancel();
    for (i, (name, s)) in ["pool off", "pool on (min_idle = 4)"]
        .iter()
        .zip(samples.iter_mut())
        .enumerate()
    {
        s.sort();
        let q = |p: f64| s[((s.len() as f64 - 1.0) * p) as usize].as_secs_f64() * 1e6;
        println!(
            "{name:24} handshakes {:5} (pool hits {:5}, misses {:5})  p50 {:7.1} µs  p90 {:7.1} µs  p99 {:7.1} µs",
            s.len(),
            hits[i],
            misses[i],
            q(0.5),
            q(0.9),
            q(0.99)
        );
    }
    Ok(())
}
