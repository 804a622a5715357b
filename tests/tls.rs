//! TLS both ways: wsgate terminating client TLS, and `wss://` backends with a custom CA.

mod support;

use std::{path::Path, sync::Arc};

use futures_util::SinkExt;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::{pki_types::ServerName, ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use support::*;
use tokio::net::TcpListener;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_tungstenite::tungstenite::Message;

struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// A CA and a certificate for localhost/127.0.0.1 signed by it, as PEM files.
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        let issuer = Issuer::new(ca, &ca_key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).unwrap();
        std::fs::write(dir.path().join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), key.serialize_pem()).unwrap();
        Pki { dir }
    }
    fn path(&self, f: &str) -> String {
        self.dir.path().join(f).display().to_string()
    }
    fn server_config(&self) -> ServerConfig {
        let certs = CertificateDer::pem_file_iter(self.path("cert.pem"))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(self.path("key.pem")).unwrap();
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap()
    }
    fn client_config(&self) -> ClientConfig {
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(Path::new(&self.path("ca.pem"))).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth()
    }
}

#[tokio::test]
async fn wss_backend_with_a_custom_ca() {
    let pki = Pki::new();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let acceptor = TlsAcceptor::from(Arc::new(pki.server_config()));
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let tls = acceptor.accept(s).await.unwrap();
                let mut ws = tokio_tungstenite::accept_async(tls).await.unwrap();
                while let Some(Ok(m)) = futures_util::StreamExt::next(&mut ws).await {
                    if m.is_text() {
                        ws.send(Message::text(format!("tls:{}", m.into_text().unwrap())))
                            .await
                            .unwrap();
                    }
                }
            });
        }
    });
    let toml = format!(
        r#"
[server]
listen = "{{LISTEN}}"
[[upstream]]
name = "secure"
backends = ["wss://localhost:{port}"]
ca_file = "{}"
[[route]]
path = "/ws"
upstream = "secure"
"#,
        pki.path("ca.pem")
    );
    let g = gate(&toml).await;
    let mut ws = connect(&ws_url(&g, "/ws")).await;
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(recv(&mut ws).await, Message::text("tls:hi"));

    // Without the CA the backend's certificate is not trusted: 502, not a 101.
    let g2 = gate(&toml.replace(&format!("ca_file = \"{}\"\n", pki.path("ca.pem")), "")).await;
    assert_eq!(refused_status(&ws_url(&g2, "/ws"), &[]).await, 502);
}

#[tokio::test]
async fn wsgate_terminates_client_tls() {
    let pki = Pki::new();
    let b = Backend::start(BackendOpts::named("plain")).await;
    let toml = format!(
        r#"
[server]
listen = "{{LISTEN}}"
tls = {{ cert = "{}", key = "{}" }}
[[upstream]]
name = "b"
backends = ["{}"]
[[route]]
path = "/ws"
upstream = "b"
"#,
        pki.path("cert.pem"),
        pki.path("key.pem"),
        b.url
    );
    let g = gate(&toml).await;
    let tcp = tokio::net::TcpStream::connect(g.listen[0]).await.unwrap();
    let tls = TlsConnector::from(Arc::new(pki.client_config()))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async("wss://localhost/ws", tls)
        .await
        .unwrap();
    ws.send(Message::text("whoami")).await.unwrap();
    let got = futures_util::StreamExt::next(&mut ws)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, Message::text("plain"));
    ws.close(None).await.unwrap();
    assert_no_leak(&g).await;
}

#[tokio::test]
async fn unreadable_tls_files_are_a_config_error_naming_the_key() {
    let toml = r#"
[server]
listen = "127.0.0.1:0"
tls = { cert = "/nonexistent/cert.pem", key = "/nonexistent/key.pem" }
[[upstream]]
name = "b"
backends = ["ws://127.0.0.1:1"]
[[route]]
path = "/ws"
upstream = "b"
"#;
    let cfg = wsgate::config::Config::parse(toml, "t.toml").unwrap();
    let err = wsgate::server::start(&cfg).await.unwrap_err().to_string();
    assert!(err.contains("server.tls.cert"), "{err}");
}
