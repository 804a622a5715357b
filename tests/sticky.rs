//! Sticky sessions per key source, agreement between instances, key movement.

mod support;

use std::collections::{HashMap, HashSet};

use futures_util::SinkExt;
use support::*;
use tokio_tungstenite::tungstenite::Message;
use wsgate_layers::upstream::{Policy, Upstream};

const STICKY_SECRET: &str = "a sticky cookie secret that is at least 32 bytes";

fn config(backends: &[&str], upstream_extra: &str, route_extra: &str) -> String {
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
{route_extra}
"#
    )
}

async fn five() -> Vec<Backend> {
    let mut v = Vec::new();
    for i in 0..5 {
        v.push(Backend::start(BackendOpts::named(&format!("b{i}"))).await);
    }
    v
}

fn urls(bs: &[Backend]) -> Vec<&str> {
    bs.iter().map(|b| b.url.as_str()).collect()
}

async fn whoami_with(url: &str, headers: &[(&str, &str)]) -> (String, Option<String>) {
    let (mut ws, resp) = connect_with(url, headers).await.unwrap();
    let cookie = resp
        .headers()
        .get("set-cookie")
        .map(|v| v.to_str().unwrap().to_string());
    ws.send(Message::text("whoami")).await.unwrap();
    let who = recv(&mut ws).await.into_text().unwrap().to_string();
    ws.close(None).await.unwrap();
    (who, cookie)
}

fn cookie_pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().to_string()
}

#[tokio::test]
async fn cookie_is_set_on_the_101_and_keeps_the_client_on_its_backend() {
    std::env::set_var("WSGATE_TEST_STICKY_SECRET", STICKY_SECRET);
    let mut bs = five().await;
    let g = gate(&config(
        &urls(&bs),
        r#"sticky = { by = "cookie", secret_env = "WSGATE_TEST_STICKY_SECRET" }"#,
        "",
    ))
    .await;
    let url = ws_url(&g, "/ws");
    for set in sessions_stick_by_cookie(&url, 8, 5).await {
        assert!(set.starts_with("wsgate_sticky="), "{set}");
        assert!(set.contains("HttpOnly"), "{set}");
        // The value names no backend.
        for b in &bs {
            assert!(!set.contains(&b.addr.port().to_string()), "{set}");
        }
    }
    // The backend does not see wsgate's cookie, but sees the client's others.
    let (_, set) = whoami_with(&url, &[]).await;
    let cookie = format!("{}; app=1", cookie_pair(&set.unwrap()));
    let _ = whoami_with(&url, &[("cookie", &cookie)]).await;
    let mut seen_cookie = None;
    for b in &mut bs {
        while let Ok(s) = b.seen.try_recv() {
            if let Seen::Request(_, h) = s {
                if let Some(c) = h.get("cookie") {
                    seen_cookie = Some(c.to_str().unwrap().to_string());
                }
            }
        }
    }
    assert_eq!(seen_cookie.as_deref(), Some("app=1"));
    // A forged or foreign cookie is ignored and replaced.
    let (_, set) = whoami_with(&url, &[("cookie", "wsgate_sticky=AAAA.BBBB")]).await;
    assert!(set.is_some(), "forged cookie replaced");
    assert_no_leak(&g).await;
}

#[tokio::test]
async fn sticky_cookie_next_to_a_non_ascii_cookie_keeps_the_backend_and_is_not_forwarded() {
    std::env::set_var("WSGATE_TEST_STICKY_SECRET", STICKY_SECRET);
    let mut bs = five().await;
    let g = gate(&config(
        &urls(&bs),
        r#"sticky = { by = "cookie", secret_env = "WSGATE_TEST_STICKY_SECRET" }"#,
        "",
    ))
    .await;
    let url = ws_url(&g, "/ws");
    let (first, set) = whoami_with(&url, &[]).await;
    let pair = cookie_pair(&set.expect("the 101 carries Set-Cookie"));
    // A UTF-8 cookie value next to the sticky cookie, on either side.
    for cookie in [
        format!("{pair}; name=caf\u{e9}"),
        format!("name=caf\u{e9}; {pair}"),
    ] {
        for _ in 0..3 {
            let (again, set_again) = whoami_with(&url, &[("cookie", &cookie)]).await;
            assert_eq!(again, first, "stickiness lost next to a non-ASCII cookie");
            assert!(set_again.is_none(), "a valid cookie was replaced");
        }
    }
    let mut seen = Vec::new();
    for b in &mut bs {
        while let Ok(s) = b.seen.try_recv() {
            if let Seen::Request(_, h) = s {
                seen.extend(h.get_all("cookie").iter().map(|v| v.as_bytes().to_vec()));
            }
        }
    }
    assert_eq!(
        seen.len(),
        6,
        "every cookie-carrying handshake kept its other cookie"
    );
    for c in &seen {
        assert_eq!(
            c,
            "name=caf\u{e9}".as_bytes(),
            "{}",
            String::from_utf8_lossy(c)
        );
    }
    assert_no_leak(&g).await;
}

/// Opens `sessions` new sessions on `url`, each coming back `repeats` times with its
/// cookie: the same backend every time, the cookie never replaced, and the sessions
/// spread over at least two backends. Returns each session's `Set-Cookie`.
async fn sessions_stick_by_cookie(url: &str, sessions: usize, repeats: usize) -> Vec<String> {
    let mut spread = HashSet::new();
    let mut sets = Vec::new();
    for _ in 0..sessions {
        let (first, set) = whoami_with(url, &[]).await;
        let set = set.expect("the 101 carries Set-Cookie");
        let cookie = cookie_pair(&set);
        for _ in 0..repeats {
            let (again, set_again) = whoami_with(url, &[("cookie", &cookie)]).await;
            assert_eq!(again, first, "same cookie, same backend");
            assert!(set_again.is_none(), "a valid cookie is not replaced");
        }
        spread.insert(first);
        sets.push(set);
    }
    assert!(
        spread.len() >= 2,
        "sessions spread over backends: {spread:?}"
    );
    sets
}

/// `sticky = { by = "cookie" }`, as the config contract writes it, works: without a
/// configured secret the cookies are signed with one of this process.
#[tokio::test]
async fn cookie_without_a_configured_secret_keeps_clients_with_a_per_process_one() {
    let bs = five().await;
    let g = gate(&config(&urls(&bs), r#"sticky = { by = "cookie" }"#, "")).await;
    let url = ws_url(&g, "/ws");
    sessions_stick_by_cookie(&url, 6, 3).await;
    // A cookie signed by another process (another secret) is not believed.
    let other = gate(&config(&urls(&bs), r#"sticky = { by = "cookie" }"#, "")).await;
    let (_, set) = whoami_with(&ws_url(&other, "/ws"), &[]).await;
    let foreign = cookie_pair(&set.expect("Set-Cookie"));
    let (_, replaced) = whoami_with(&url, &[("cookie", &foreign)]).await;
    assert!(replaced.is_some(), "another process's cookie was accepted");
    assert_no_leak(&g).await;
}

#[tokio::test]
async fn cookie_secret_shorter_than_32_bytes_is_refused_at_load() {
    let text = config(&["ws://127.0.0.1:9"], r#"sticky = { by = "cookie" }"#, "")
        .replace("{LISTEN}", "127.0.0.1:0");
    std::env::set_var("WSGATE_TEST_SHORT_SECRET", "short");
    let text = text.replace(
        r#"by = "cookie""#,
        r#"by = "cookie", secret_env = "WSGATE_TEST_SHORT_SECRET""#,
    );
    let e = wsgate::config::Config::parse(&text, "t.toml").unwrap_err();
    assert!(e.message.contains("32 bytes"), "{e}");
}

#[tokio::test]
async fn header_key_is_sticky_and_two_instances_agree() {
    let bs = five().await;
    let cfg = config(&urls(&bs), r#"sticky = { by = "header:X-Session-Id" }"#, "");
    let g1 = gate(&cfg).await;
    let g2 = gate(&cfg).await;
    let mut spread = HashSet::new();
    for k in 0..20 {
        let key = format!("session-{k}");
        let h = [("x-session-id", key.as_str())];
        let (a, _) = whoami_with(&ws_url(&g1, "/ws"), &h).await;
        let (b, _) = whoami_with(&ws_url(&g1, "/ws"), &h).await;
        let (c, _) = whoami_with(&ws_url(&g2, "/ws"), &h).await;
        assert_eq!(a, b, "{key}: same instance");
        assert_eq!(a, c, "{key}: other instance, no shared state");
        spread.insert(a);
    }
    assert!(spread.len() >= 4, "20 keys over 5 backends: {spread:?}");
}

fn token(sub: &str) -> String {
    hs256_token(HS256_SECRET, sub)
}

#[tokio::test]
async fn verified_claim_keys_the_backend() {
    let (_dir, secret) = hs256_secret_file();
    let bs = five().await;
    let g = gate(&config(
        &urls(&bs),
        r#"sticky = { by = "claim:sub" }"#,
        &format!("[route.jwt]\nsecret_file = \"{}\"\n", secret.display()),
    ))
    .await;
    let url = ws_url(&g, "/ws");
    let mut by_user: HashMap<String, String> = HashMap::new();
    for round in 0..3 {
        for u in 0..10 {
            let sub = format!("user-{u}");
            let auth = format!("Bearer {}", token(&sub));
            let (who, _) = whoami_with(&url, &[("authorization", &auth)]).await;
            if round == 0 {
                by_user.insert(sub, who);
            } else {
                assert_eq!(by_user[&sub], who, "{sub} moved");
            }
        }
    }
    let distinct: HashSet<_> = by_user.values().collect();
    assert!(distinct.len() >= 3, "{by_user:?}");
}

#[tokio::test]
async fn client_ip_keys_the_backend() {
    let bs = five().await;
    let g = gate(&config(&urls(&bs), r#"sticky = { by = "ip" }"#, "")).await;
    let url = ws_url(&g, "/ws");
    let (first, _) = whoami_with(&url, &[]).await;
    for i in 0..8 {
        // Forged forwarding headers from an untrusted client do not move it: with five
        // backends, eight invented addresses would almost surely land elsewhere.
        let ip = format!("203.0.113.{i}");
        let fwd = format!("for={ip}");
        let forged = [
            ("x-forwarded-for", ip.as_str()),
            ("x-real-ip", ip.as_str()),
            ("forwarded", fwd.as_str()),
        ];
        assert_eq!(whoami_with(&url, &forged).await.0, first, "{ip}");
    }
}

#[tokio::test]
async fn sticky_key_fails_over_in_hash_order_and_returns_on_recovery() {
    let bs = five().await;
    let g = gate(&config(
        &urls(&bs),
        r#"sticky = { by = "header:X-Session-Id" }"#,
        "",
    ))
    .await;
    let url = ws_url(&g, "/ws");
    let h = [("x-session-id", "alice")];
    let (home, _) = whoami_with(&url, &h).await;
    let idx: usize = home[1..].parse().unwrap();
    let home_backend = g.upstreams[0].backends()[idx].clone();
    home_backend.set_healthy(false);
    let (away, _) = whoami_with(&url, &h).await;
    assert_ne!(away, home);
    assert_eq!(
        whoami_with(&url, &h).await.0,
        away,
        "stays on the next in order"
    );
    home_backend.set_healthy(true);
    assert_eq!(
        whoami_with(&url, &h).await.0,
        home,
        "returns when it recovers"
    );
    home_backend.set_draining(true);
    assert_eq!(
        whoami_with(&url, &h).await.0,
        away,
        "a draining backend takes no new keys"
    );
}

#[tokio::test]
async fn bounded_load_spreads_a_hot_key() {
    let bs = five().await;
    let g = gate(&config(
        &urls(&bs),
        r#"sticky = { by = "header:X-Session-Id", bounded_load = 1.25 }"#,
        "",
    ))
    .await;
    let url = ws_url(&g, "/ws");
    let mut open = Vec::new();
    for _ in 0..20 {
        let (ws, _) = connect_with(&url, &[("x-session-id", "hot")])
            .await
            .unwrap();
        open.push(ws);
    }
    let loads: Vec<usize> = g.upstreams[0]
        .backends()
        .iter()
        .map(|b| b.active())
        .collect();
    // ceil(1.25 * 20 / 5) = 5 at most per backend, instead of 20 on one.
    assert!(loads.iter().all(|l| *l <= 5), "{loads:?}");
    assert_eq!(loads.iter().sum::<usize>(), 20);
    drop(open);
    assert_no_leak(&g).await;
}

/// The share of keys whose backend changes when one backend of `n` is removed or one
/// is added: ideally 1/n (removal) and 1/(n+1) (addition).
#[test]
fn one_backend_change_moves_about_one_nth_of_the_keys() {
    let group = |n: usize| {
        Upstream::new(
            "t",
            Policy::ConsistentHash,
            (0..n).map(|i| format!("ws://10.0.0.{}:9000", i + 1)),
        )
        .unwrap()
    };
    let keys = 100_000u32;
    for n in [5usize, 10, 20] {
        let base = group(n);
        let fewer = group(n - 1); // the last backend removed
        let more = group(n + 1); // one backend added
        let (mut removed_moves, mut added_moves) = (0u32, 0u32);
        for k in 0..keys {
            let key = format!("session-{k}");
            let home = base.candidates(Some(key.as_bytes()))[0].id();
            if fewer.candidates(Some(key.as_bytes()))[0].id() != home {
                removed_moves += 1;
            }
            if more.candidates(Some(key.as_bytes()))[0].id() != home {
                added_moves += 1;
            }
        }
        let rf = f64::from(removed_moves) / f64::from(keys);
        let af = f64::from(added_moves) / f64::from(keys);
        eprintln!(
            "N={n}: remove one moves {rf:.4} (ideal {:.4}); add one moves {af:.4} (ideal {:.4})",
            1.0 / n as f64,
            1.0 / (n + 1) as f64
        );
        assert!((rf - 1.0 / n as f64).abs() < 0.01, "remove: {rf}");
        assert!((af - 1.0 / (n + 1) as f64).abs() < 0.01, "add: {af}");
    }
}

/// The index of backend `bN` from its `whoami` answer.
fn index_of(name: &str) -> usize {
    name[1..].parse().unwrap()
}

/// Key K on its own backend A; A dies (the health check takes it out) and K goes to B;
/// A comes back (the health check takes it in again): with `return_on_recovery` K goes
/// back to A, without it K stays on B; then B dies and K follows its hash order again
/// (A), and stays there when B returns (the memory entry was forgotten).
async fn key_through_a_failover_and_a_recovery(sticky: &str, return_on_recovery: bool) {
    let mut bs = five().await;
    let g = gate(&config(
        &urls(&bs),
        &format!(
            "{sticky}\nhealth = {{ kind = \"tcp\", interval = \"50ms\", timeout = \"500ms\", rise = 1, fall = 1 }}"
        ),
        "",
    ))
    .await;
    let url = ws_url(&g, "/ws");
    let h = [("x-session-id", "alice")];
    let group = g.upstreams[0].backends();
    let home = whoami_with(&url, &h).await.0;
    let a = index_of(&home);
    let (a_addr, ba) = (bs[a].addr, group[a].clone());
    bs[a].kill();
    eventually("A marked down by its health check", || !ba.is_healthy()).await;
    let away = whoami_with(&url, &h).await.0;
    assert_ne!(away, home, "K fails over");
    assert_eq!(whoami_with(&url, &h).await.0, away);
    let b = index_of(&away);
    let (b_addr, bb) = (bs[b].addr, group[b].clone());

    bs[a] = rebind(a_addr, BackendOpts::named(&home)).await;
    eventually("A marked up again", || ba.is_healthy()).await;
    let after = whoami_with(&url, &h).await.0;
    if return_on_recovery {
        assert_eq!(after, home, "K returns to its own backend");
    } else {
        assert_eq!(after, away, "K stays where the fail-over put it");
        assert_eq!(whoami_with(&url, &h).await.0, away, "and keeps staying");
        // Other keys are untouched: they still hash to their own backends.
        for k in 0..10 {
            let key = format!("other-{k}");
            let hk = [("x-session-id", key.as_str())];
            let first = g.upstreams[0].candidates(Some(key.as_bytes()))[0]
                .url()
                .to_string();
            let who = whoami_with(&url, &hk).await.0;
            assert_eq!(bs[index_of(&who)].url, first, "{key}");
        }
    }

    bs[b].kill();
    eventually("B marked down by its health check", || !bb.is_healthy()).await;
    assert_eq!(
        whoami_with(&url, &h).await.0,
        home,
        "B gone: K takes its hash-order choice"
    );
    bs[b] = rebind(b_addr, BackendOpts::named(&away)).await;
    eventually("B marked up again", || bb.is_healthy()).await;
    assert_eq!(
        whoami_with(&url, &h).await.0,
        home,
        "K stays on its own backend once it is back there"
    );
    if let Some(m) = g.upstreams[0].failover_memory() {
        assert!(m.is_empty(), "K's entry was forgotten");
    }
    assert_no_leak(&g).await;
    g.shutdown().await;
}

#[tokio::test]
async fn key_returns_to_its_backend_after_recovery_by_default() {
    key_through_a_failover_and_a_recovery(r#"sticky = { by = "header:X-Session-Id" }"#, true).await;
}

#[tokio::test]
async fn key_stays_on_its_fail_over_backend_without_return_on_recovery() {
    key_through_a_failover_and_a_recovery(
        r#"sticky = { by = "header:X-Session-Id", return_on_recovery = false, failover_memory = 1000, failover_ttl = "1h" }"#,
        false,
    )
    .await;
}

#[test]
fn failover_memory_settings_are_checked() {
    let parse = |sticky: &str| {
        let text = config(&["ws://127.0.0.1:9"], sticky, "").replace("{LISTEN}", "127.0.0.1:0");
        wsgate::config::Config::parse(&text, "t.toml")
    };
    let e = parse(r#"sticky = { by = "ip", failover_memory = 10 }"#).unwrap_err();
    assert_eq!(e.key, "upstream[0].sticky.failover_memory", "{e}");
    let e = parse(r#"sticky = { by = "ip", failover_ttl = "1h" }"#).unwrap_err();
    assert_eq!(e.key, "upstream[0].sticky.failover_ttl", "{e}");
    let e = parse(r#"sticky = { by = "ip", return_on_recovery = false, failover_memory = 0 }"#)
        .unwrap_err();
    assert_eq!(e.key, "upstream[0].sticky.failover_memory", "{e}");
    let e = parse(r#"sticky = { by = "ip", return_on_recovery = false, failover_ttl = "0s" }"#)
        .unwrap_err();
    assert_eq!(e.key, "upstream[0].sticky.failover_ttl", "{e}");
    parse(r#"sticky = { by = "ip", return_on_recovery = false }"#).expect("defaults are fine");
}
