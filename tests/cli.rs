//! The `wsgate` binary as a user runs it.

use std::process::Command;

fn wsgate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_wsgate"))
}

#[test]
fn shipped_example_config_checks_clean() {
    let out = wsgate()
        .args(["--config", "examples/wsgate.toml", "--check"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok"));
}

#[test]
fn bad_config_exits_nonzero_naming_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "policy = \"round_robin\"",
            "polcy = \"round_robin\"",
            "polcy",
        ),
        (
            "policy = \"round_robin\"",
            "policy = \"fastest\"",
            "upstream[0].policy",
        ),
        (
            "upstream = \"echo\"",
            "upstream = \"missing\"",
            "route[0].upstream",
        ),
        (
            "idle_timeout = \"5m\"",
            "idle_timeout = \"5 lightyears\"",
            "idle_timeout",
        ),
        (
            "max_message = \"16MiB\"",
            "max_message = \"huge\"",
            "max_message",
        ),
        (
            "\"ws://127.0.0.1:9002\"",
            "\"http://127.0.0.1:9002\"",
            "upstream[0].backends[1]",
        ),
    ];
    let good = std::fs::read_to_string("examples/wsgate.toml").unwrap();
    for (from, to, key) in cases {
        assert!(good.contains(from), "{from}");
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, good.replacen(from, to, 1)).unwrap();
        let out = wsgate()
            .args(["--config", path.to_str().unwrap(), "--check"])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{to} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("bad.toml"), "no file named for {to}: {err}");
        assert!(err.contains(key), "no key `{key}` named for {to}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn missing_config_file_is_a_clear_error() {
    let out = wsgate()
        .args(["--config", "/nonexistent/wsgate.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nonexistent/wsgate.toml") && err.contains("cannot read"),
        "{err}"
    );
}

#[test]
fn quick_mode_checks_its_backends() {
    let ok = wsgate()
        .args(["--backend", "ws://127.0.0.1:9001", "--check"])
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let bad = wsgate()
        .args(["--backend", "tcp://127.0.0.1:9001", "--check"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("ws://"));
}
