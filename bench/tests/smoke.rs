//! The benchmark harness works end to end: the echo backend and wsgate (in-process, on
//! loopback), every scenario for a fraction of a second, no errors. Not a speed test.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Duration,
};

use wsgate_bench::{
    echo, jwt,
    procstat::{self, Tree},
    suite::{self, Settings},
    targets::{self, Kind, Running},
};

#[test]
fn every_scenario_runs_through_wsgate_without_errors() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        procstat::raise_nofile();
        let dir = tempfile::tempdir().expect("temp dir");
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        let backend = l.local_addr().expect("backend address");
        let echo_task = tokio::spawn(echo::serve(l));

        let keys = jwt::generate_keys(&dir.path().join("keys")).expect("openssl keys");
        let tokens: Vec<_> = keys
            .iter()
            .map(|k| jwt::mint(k, 20).expect("mint"))
            .collect();
        let publics: Vec<_> = keys.iter().map(|k| k.public.clone()).collect();

        let listen = SocketAddr::from(([127, 0, 0, 1], targets::free_port().expect("port")));
        let cfg_path = dir.path().join("wsgate.toml");
        std::fs::write(
            &cfg_path,
            targets::wsgate_config(listen, backend, &publics, false, false),
        )
        .expect("write config");
        let cfg = wsgate::config::Config::load(&cfg_path).expect("config loads");
        let gate = wsgate::server::start(&cfg).await.expect("wsgate starts");

        let me = Some(Tree(std::process::id()));
        let mut targets = vec![
            Running::external(Kind::Direct, backend, None),
            Running::external(
                Kind::Wsgate {
                    log: false,
                    limits: false,
                    pool: false,
                },
                gate.listen[0],
                me,
            ),
        ];
        let settings = Settings {
            runs: 1,
            warm: Duration::from_millis(50),
            dur: Duration::from_millis(250),
            rate: 2_000.0,
            rate_conns: 4,
            idle_checkpoints: vec![50, 100],
            idle_runs: 1,
            sources: (1..=3)
                .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i)))
                .collect(),
            jwt: tokens,
            scenarios: ["msg64", "msg64k", "churn", "jwt", "idle", "rate"]
                .into_iter()
                .map(String::from)
                .collect(),
        };
        let rep = suite::run(&mut targets, None, &settings, None).await;
        assert_eq!(rep.errors(), 0, "errors: {:#?}", rep.error_summary());
        for scenario in ["msg64", "msg64k", "churn", "rate"] {
            for target in ["direct", "wsgate"] {
                let row = rep
                    .rows
                    .iter()
                    .find(|r| r.scenario == scenario && r.target == target)
                    .unwrap_or_else(|| panic!("no {scenario} row for {target}"));
                assert!(
                    row.runs.iter().all(|r| r.ops > 0),
                    "{scenario} through {target} completed nothing"
                );
            }
        }
        let jwt_rows = rep.rows.iter().filter(|r| r.scenario == "jwt").count();
        assert_eq!(jwt_rows, 6, "RS256, ES256, EdDSA × fresh, reused");
        assert!(rep
            .rows
            .iter()
            .filter(|r| r.scenario == "jwt")
            .all(|r| r.runs.iter().all(|x| x.ops > 0)));
        let idle = &rep.idle[0].runs[0];
        assert_eq!(
            idle.points.last().map(|p| p.0),
            Some(100),
            "all idle sockets up"
        );

        let names = ["direct", "wsgate"];
        let md = suite::markdown(&rep, &names, &settings);
        assert!(md.contains("### 1. 64 B messages"), "{md}");
        assert!(suite::chart(&rep, &names).starts_with("<svg"));

        gate.drain_now();
        echo_task.abort();
    });
}
