//! `[route.rate_limit] redis = ...`: two wsgate instances share one set of limits.
//!
//! Starts its own `redis-server` (installed by `.ci/run`); without it the test fails.

mod support;

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use support::*;

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
