//! Memory of wsgate while backends flood clients that never read (and the reverse).
//!
//! `cargo run --release --example slow_reader -- [connections] [seconds]`
//!
//! Starts wsgate in-process with raw backends on loopback that write 64 KiB frames as fast
//! as the socket takes them, opens `connections` clients that never read, and prints the
//! process's resident memory every second. With backpressure the figure is flat: each
//! stalled socket holds at most one relay buffer; the rest waits in the kernel's socket
//! buffers (not in RSS) and the backends' writes block. Then the same with clients
//! flooding backends that never read.

use std::time::{Duration, Instant};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

async fn read_head(s: &mut TcpStream) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).await?;
        head.push(b[0]);
    }
    Ok(())
}

fn frame(masked: bool) -> Vec<u8> {
    let mut f = vec![0x82u8, if masked { 0x80 | 127 } else { 127 }];
    f.extend_from_slice(&65536u64.to_be_bytes());
    if masked {
        f.extend_from_slice(&[1, 2, 3, 4]);
    }
    f.extend(std::iter::repeat_n(7u8, 65536));
    f
}

/// A backend that floods (`flood`) or never reads (`!flood`).
async fn backend(l: TcpListener, flood: bool) {
    loop {
        let Ok((mut s, _)) = l.accept().await else {
            return;
        };
        tokio::spawn(async move {
            if read_head(&mut s).await.is_err() {
                return;
            }
            let _ = s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n").await;
            if flood {
                let f = frame(false);
                while s.write_all(&f).await.is_ok() {}
            } else {
                std::future::pending::<()>().await;
            }
        });
    }
}

async fn run(direction: &str, clients_flood: bool, n: usize, secs: u64) -> anyhow::Result<()> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(backend(l, !clients_flood));
    let cfg = wsgate::config::Config::quick(
        vec!["127.0.0.1:0".parse()?],
        vec![format!("ws://{addr}")],
        "/ws",
    )?;
    let gate = wsgate::server::start(&cfg).await?;
    let before = rss_kib();
    let mut held = Vec::new();
    for _ in 0..n {
        let mut s = TcpStream::connect(gate.listen[0]).await?;
        s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").await?;
        read_head(&mut s).await?;
        if clients_flood {
            tokio::spawn(async move {
                let f = frame(true);
                while s.write_all(&f).await.is_ok() {}
            });
        } else {
            held.push(s);
        }
    }
    println!("{direction}: {n} stalled sockets; RSS before {before} KiB");
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(secs) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        println!(
            "  t={:>2}s RSS {} KiB (+{} KiB, {:.1} KiB per socket)",
            start.elapsed().as_secs(),
            rss_kib(),
            rss_kib().saturating_sub(before),
            rss_kib().saturating_sub(before) as f64 / n as f64
        );
    }
    gate.drain_now();
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(200);
    let secs: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(10);
    run("backends flood clients that never read", false, n, secs).await?;
    run("clients flood backends that never read", true, n, secs).await?;
    Ok(())
}
