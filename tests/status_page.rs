//! The admin status page in a real headless Chromium (Debian's `chromium`, installed by
//! `.ci/run`): it loads, lists the backends, and its numbers follow the open sockets.

mod support;

use std::process::Command;

use support::*;

/// Loads `url` in headless Chromium, lets its scripts run, and returns the DOM.
fn chromium_dom(url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=3000",
            &format!("--user-data-dir={}", profile.path().display()),
            "--dump-dom",
            url,
        ])
        .output()
        .expect("chromium must be installed for this test (apt-get install chromium)");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_shows_backends_and_follows_open_sockets() {
    let b1 = Backend::start(BackendOpts::named("one")).await;
    let b2 = Backend::start(BackendOpts::named("two")).await;
    let g = gate(&one_route(&[&b1.url, &b2.url], "")).await;
    let page = format!("http://{}/", g.admin.unwrap());

    let _a = connect(&ws_url(&g, "/ws")).await;
    let _b = connect(&ws_url(&g, "/ws")).await;
    let _c = connect(&ws_url(&g, "/ws")).await;
    assert_eq!(refused_status(&ws_url(&g, "/ws?x=%zz"), &[]).await, 400);
    let dom = {
        let page = page.clone();
        tokio::task::spawn_blocking(move || chromium_dom(&page))
            .await
            .unwrap()
    };
    assert!(dom.contains(r#"<b id="active">3</b>"#), "{dom}");
    assert!(dom.contains(&b1.url) && dom.contains(&b2.url), "{dom}");
    assert!(dom.contains(">healthy<"), "{dom}");

    drop((_a, _b, _c));
    assert_no_leak(&g).await;
    let dom = tokio::task::spawn_blocking(move || chromium_dom(&page))
        .await
        .unwrap();
    assert!(dom.contains(r#"<b id="active">0</b>"#), "{dom}");
}
