//! `[route.rate_limit] redis = ...`: two wsgate instances share one set of limits.
//!
//! Starts its own `redis-server` (installed by `.ci/run`); without it the test fails.

mod support;

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use support::*;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite;

struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    async fn start() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server must be installed for this test (apt-get install redis-server)");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Redis { child, port }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn two_instances_together_admit_no_more_than_the_limit() {
    let redis = Redis::start().await;
    let b = Backend::start(BackendOpts::named("a")).await;
    let limits = format!(
        "[route.rate_limit]\nper_ip = \"1/m\"\nburst = 3\nmax_connections_per_ip = 2\nredis = \"redis://127.0.0.1:{}\"\nredis_fail = \"closed\"\n",
        redis.port
    );
    let a = gate(&one_route(&[&b.url], &limits)).await;
    let c = gate(&one_route(&[&b.url], &limits)).await;
    // Connection cap of 2 per IP across both instances.
    let s1 = connect(&ws_url(&a, "/ws")).await;
    let s2 = connect(&ws_url(&c, "/ws")).await;
    assert_eq!(refused_status(&ws_url(&a, "/ws"), &[]).await, 429);
    assert_eq!(refused_status(&ws_url(&c, "/ws"), &[]).await, 429);
    drop((s1, s2));
    assert_no_leak(&a).await;
    assert_no_leak(&c).await;
    // Burst of 3 handshakes across both instances: 2 were admitted above, the refused
    // ones were refused by the connection cap after the rate check, so they counted too.
    let mut admitted = 0;
    for i in 0..6 {
        let g = if i % 2 == 0 { &a } else { &c };
        if connect_with(&ws_url(g, "/ws"), &[]).await.is_ok() {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 0, "the shared burst was already spent");
}

#[tokio::test]
async fn redis_down_with_fail_closed_refuses_with_503() {
    let redis = Redis::start().await;
    let b = Backend::start(BackendOpts::named("a")).await;
    let limits = format!(
        "[route.rate_limit]\nper_ip = \"100/s\"\nredis = \"redis://127.0.0.1:{}\"\nredis_fail = \"closed\"\n",
        redis.port
    );
    let g = gate(&one_route(&[&b.url], &limits)).await;
    let _ok = connect(&ws_url(&g, "/ws")).await;
    drop(redis);
    assert_eq!(refused_status(&ws_url(&g, "/ws"), &[]).await, 503);
}

const LEASE_TTL: Duration = Duration::from_secs(2);

fn bearer(sub: &str) -> String {
    format!("Bearer {}", hs256_token(HS256_SECRET, sub))
}

/// The `wsgate` binary as a separate process, so it can be killed hard (SIGKILL): no
/// destructor, no release message, its Redis leases simply stop being renewed.
struct WsgateProcess {
    child: tokio::process::Child,
    url: String,
}

impl WsgateProcess {
    async fn start(config: &std::path::Path) -> WsgateProcess {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_wsgate"))
            .args(["--config", config.to_str().unwrap()])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let addr = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(a) = line.strip_prefix("wsgate: proxying WebSockets on ") {
                    return a.trim().to_owned();
                }
            }
            panic!("wsgate exited before listening");
        })
        .await
        .expect("wsgate did not start within 30 s");
        // Keep reading its log so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        WsgateProcess {
            child,
            url: format!("ws://{addr}/ws"),
        }
    }

    /// SIGKILL, and wait until the process is gone.
    async fn kill_hard(&mut self) {
        self.child.start_kill().unwrap();
        self.child.wait().await.unwrap();
    }
}

/// Retries the handshake until it is admitted, for at most 10 s; every refusal must be a
/// 429 (the subject cap). For slots freed by another task or by lease expiry, which
/// give the client no event to wait for.
async fn admitted_eventually(url: &str, auth: &str) -> Client {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match connect_with(url, &[("authorization", auth)]).await {
            Ok((ws, _)) => return ws,
            Err(tungstenite::Error::Http(r)) if r.status() == 429 => {}
            Err(e) => panic!("expected 101 or 429, got {e}"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slot never came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn subject_cap_is_shared_by_two_instances_and_a_killed_instance_frees_its_slots_after_the_lease(
) {
    let redis = Redis::start().await;
    let b = Backend::start(BackendOpts::named("a")).await;
    let (dir, secret) = hs256_secret_file();
    let route = format!(
        "[route.jwt]\nsecret_file = \"{}\"\n\n[route.rate_limit]\nmax_connections_per_subject = 2\nredis = \"redis://127.0.0.1:{}\"\nredis_fail = \"closed\"\nredis_lease_ttl = \"{}s\"\n",
        secret.display(),
        redis.port,
        LEASE_TTL.as_secs()
    );
    let text = one_route(&[&b.url], &route);
    // Instance A in this process, instance C as a child process (killed later).
    let a = gate(&text).await;
    let config = dir.path().join("wsgate.toml");
    std::fs::write(&config, text.replace("{LISTEN}", "127.0.0.1:0")).unwrap();
    let mut c = WsgateProcess::start(&config).await;
    let a_url = ws_url(&a, "/ws");
    let (alice, bob) = (bearer("alice"), bearer("bob"));
    let refused = |url: String, t: String| async move {
        refused_status(&url, &[("authorization", &t)]).await
    };

    // Two alice sockets, one through each instance; the third is refused by both.
    let (mut s1, _) = connect_with(&a_url, &[("authorization", &alice)])
        .await
        .unwrap();
    let (_s2, _) = connect_with(&c.url, &[("authorization", &alice)])
        .await
        .unwrap();
    assert_eq!(refused(a_url.clone(), alice.clone()).await, 429);
    assert_eq!(refused(c.url.clone(), alice.clone()).await, 429);
    // Another subject is not affected.
    for url in [&a_url, &c.url] {
        let (mut ws, _) = connect_with(url, &[("authorization", &bob)]).await.unwrap();
        ws.close(None).await.unwrap();
    }

    // Closing alice's socket on A frees a slot that C can use.
    s1.close(None).await.unwrap();
    while let Some(Ok(_)) = futures_util::StreamExt::next(&mut s1).await {}
    let _s3 = admitted_eventually(&c.url, &alice).await;
    assert_eq!(refused(a_url.clone(), alice.clone()).await, 429);

    // C holds both of alice's slots. Killed hard, it releases nothing: the slots stay
    // taken until their leases expire, then come back by themselves.
    c.kill_hard().await;
    let killed = tokio::time::Instant::now();
    assert_eq!(refused(a_url.clone(), alice.clone()).await, 429);
    let s4 = admitted_eventually(&a_url, &alice).await;
    let waited = killed.elapsed();
    // A lease was renewed at most a third of the TTL before the kill.
    assert!(
        waited >= LEASE_TTL / 2,
        "slots came back after {waited:?}, before the lease could expire"
    );
    let _s5 = admitted_eventually(&a_url, &alice).await;
    assert_eq!(refused(a_url.clone(), alice.clone()).await, 429);
    // A's own leases are renewed: still held well past one TTL.
    tokio::time::sleep(LEASE_TTL * 3 / 2).await;
    assert_eq!(refused(a_url.clone(), alice.clone()).await, 429);
    drop(s4);
    let _s6 = admitted_eventually(&a_url, &alice).await;
}

#[test]
fn lease_ttl_needs_redis_and_at_least_a_second() {
    let parse = |limits: &str| {
        let text = one_route(&["ws://127.0.0.1:1"], limits).replace("{LISTEN}", "127.0.0.1:0");
        wsgate::config::Config::parse(&text, "t.toml")
    };
    let e =
        parse("[route.rate_limit]\nmax_connections = 5\nredis_lease_ttl = \"5s\"\n").unwrap_err();
    assert_eq!(e.key, "route[0].rate_limit.redis_lease_ttl", "{e}");
    let e = parse("[route.rate_limit]\nmax_connections = 5\nredis = \"redis://127.0.0.1:1\"\nredis_lease_ttl = \"500ms\"\n").unwrap_err();
    assert_eq!(e.key, "route[0].rate_limit.redis_lease_ttl", "{e}");
    parse("[route.rate_limit]\nmax_connections = 5\nredis = \"redis://127.0.0.1:1\"\nredis_lease_ttl = \"5s\"\n").unwrap();
}
