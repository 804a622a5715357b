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
    ca_key: KeyPair,
    ca: CertificateParams,
}

fn issuer_params() -> CertificateParams {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca
}

impl Pki {
    /// A CA and a certificate for localhost/127.0.0.1 signed by it, as PEM files.
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let ca = issuer_params();
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        let issuer = Issuer::new(ca, &ca_key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).unwrap();
        std::fs::write(dir.path().join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), key.serialize_pem()).unwrap();
        let ca = issuer_params();
        Pki { dir, ca_key, ca }
    }

    /// Issues a leaf certificate for `names` from the same CA as `{stem}.pem`/`{stem}.key`.
    fn issue(&self, names: &[&str], stem: &str) {
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let issuer = Issuer::new(self.ca.clone(), &self.ca_key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        std::fs::write(self.path(&format!("{stem}.pem")), cert.pem()).unwrap();
        std::fs::write(self.path(&format!("{stem}.key")), key.serialize_pem()).unwrap();
    }

    fn trusting_client(&self) -> TlsConnector {
        TlsConnector::from(Arc::new(self.client_config()))
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

/// Opens a TLS connection to wsgate with `sni` and returns the server's leaf certificate.
async fn served_cert(addr: std::net::SocketAddr, pki: &Pki, sni: &str) -> Vec<u8> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = pki
        .trusting_client()
        .connect(ServerName::try_from(sni.to_string()).unwrap(), tcp)
        .await
        .unwrap_or_else(|e| panic!("TLS to {sni} failed: {e}"));
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn der_of(path: &str) -> Vec<u8> {
    CertificateDer::pem_file_iter(path)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

#[tokio::test]
async fn certificates_are_chosen_by_sni_and_reloaded_without_dropping_sockets() {
    let pki = Pki::new();
    pki.issue(&["a.test"], "a");
    pki.issue(&["b.test", "*.wild.test"], "b");
    let b = Backend::start(BackendOpts::named("plain")).await;
    let toml = format!(
        r#"
[server]
listen = "{{LISTEN}}"
tls = {{ cert = "{}", key = "{}", reload_interval = "50ms", sni = [{{ names = ["a.test"], cert = "{}", key = "{}" }}, {{ names = ["b.test", "*.wild.test"], cert = "{}", key = "{}" }}] }}
[[upstream]]
name = "b"
backends = ["{}"]
[[route]]
path = "/ws"
upstream = "b"
"#,
        pki.path("cert.pem"),
        pki.path("key.pem"),
        pki.path("a.pem"),
        pki.path("a.key"),
        pki.path("b.pem"),
        pki.path("b.key"),
        b.url
    );
    let g = gate(&toml).await;
    let addr = g.listen[0];
    assert_eq!(
        served_cert(addr, &pki, "a.test").await,
        der_of(&pki.path("a.pem"))
    );
    assert_eq!(
        served_cert(addr, &pki, "b.test").await,
        der_of(&pki.path("b.pem"))
    );
    assert_eq!(
        served_cert(addr, &pki, "x.wild.test").await,
        der_of(&pki.path("b.pem"))
    );
    assert_eq!(
        served_cert(addr, &pki, "localhost").await,
        der_of(&pki.path("cert.pem"))
    );

    // An open socket over the old certificate...
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = pki
        .trusting_client()
        .connect(ServerName::try_from("a.test").unwrap(), tcp)
        .await
        .unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async("wss://a.test/ws", tls)
        .await
        .unwrap();

    // ...survives the renewal of a.test's certificate, which new handshakes then get.
    let old = der_of(&pki.path("a.pem"));
    pki.issue(&["a.test"], "a");
    let renewed = der_of(&pki.path("a.pem"));
    assert_ne!(old, renewed);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while served_cert(addr, &pki, "a.test").await != renewed {
        assert!(
            tokio::time::Instant::now() < deadline,
            "certificate never reloaded"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    ws.send(Message::text("whoami")).await.unwrap();
    let got = futures_util::StreamExt::next(&mut ws)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, Message::text("plain"));
}

#[tokio::test]
async fn mutual_tls_to_backends_presents_the_client_certificate() {
    let pki = Pki::new();
    pki.issue(&["wsgate-client"], "client");
    // A wss:// backend that requires a client certificate from our CA.
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(der_of(&pki.path("ca.pem"))))
        .unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let certs = CertificateDer::pem_file_iter(pki.path("cert.pem"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(pki.path("key.pem")).unwrap();
    let server = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(server));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(s).await else {
                    return;
                };
                let Ok(mut ws) = tokio_tungstenite::accept_async(tls).await else {
                    return;
                };
                while let Some(Ok(m)) = futures_util::StreamExt::next(&mut ws).await {
                    if m.is_text() && ws.send(Message::text("mtls-ok")).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let base = format!(
        "[server]\nlisten = \"{{LISTEN}}\"\n[[upstream]]\nname = \"s\"\nbackends = [\"wss://localhost:{port}\"]\nca_file = \"{}\"\n",
        pki.path("ca.pem")
    );
    let route = "[[route]]\npath = \"/ws\"\nupstream = \"s\"\n";
    let with_cert = format!(
        "{base}client_cert = \"{}\"\nclient_key = \"{}\"\n{route}",
        pki.path("client.pem"),
        pki.path("client.key")
    );
    let g = gate(&with_cert).await;
    let mut ws = connect(&ws_url(&g, "/ws")).await;
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(recv(&mut ws).await, Message::text("mtls-ok"));
    let without = gate(&format!("{base}{route}")).await;
    assert_eq!(refused_status(&ws_url(&without, "/ws"), &[]).await, 502);
}

/// A masked client text frame.
fn masked_text(payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let key = [0x37, 0xfa, 0x21, 0x3d];
    let mut f = vec![0x81, 0x80 | payload.len() as u8];
    f.extend_from_slice(&key);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    f
}

#[tokio::test]
async fn websockets_over_http2_extended_connect_share_one_connection() {
    let pki = Pki::new();
    let b1 = Backend::start(BackendOpts::named("one")).await;
    let b2 = Backend::start(BackendOpts::named("two")).await;
    let toml = format!(
        "[server]\nlisten = \"{{LISTEN}}\"\ntls = {{ cert = \"{}\", key = \"{}\" }}\n[[upstream]]\nname = \"b\"\nbackends = [\"{}\", \"{}\"]\n[[route]]\npath = \"/ws\"\nupstream = \"b\"\n",
        pki.path("cert.pem"),
        pki.path("key.pem"),
        b1.url,
        b2.url
    );
    let g = gate(&toml).await;
    let tcp = tokio::net::TcpStream::connect(g.listen[0]).await.unwrap();
    let mut cfg = pki.client_config();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let tls = TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (client, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while !client.is_extended_connect_protocol_enabled() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "server never enabled extended CONNECT"
        );
        client = client.ready().await.unwrap();
        tokio::task::yield_now().await;
    }
    let mut names = Vec::new();
    let mut streams = Vec::new();
    for _ in 0..2 {
        let req = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri("https://localhost/ws")
            .header("sec-websocket-version", "13")
            .extension(h2::ext::Protocol::from_static("websocket"))
            .body(())
            .unwrap();
        let (resp, mut send) = client.send_request(req, false).unwrap();
        let resp = resp.await.unwrap();
        assert_eq!(resp.status(), 200);
        assert!(resp.headers().get("sec-websocket-accept").is_none());
        let mut recv = resp.into_body();
        send.send_data(masked_text(b"whoami").into(), false)
            .unwrap();
        let mut got = Vec::new();
        while got.len() < 2 || got.len() < 2 + got[1] as usize {
            let chunk = recv.data().await.unwrap().unwrap();
            let _ = recv.flow_control().release_capacity(chunk.len());
            got.extend_from_slice(&chunk);
        }
        assert_eq!(got[0], 0x81, "an unmasked text frame");
        names.push(String::from_utf8(got[2..].to_vec()).unwrap());
        streams.push((send, recv));
    }
    names.sort();
    assert_eq!(
        names,
        ["one", "two"],
        "two sockets, one connection, round-robin"
    );
    assert_eq!(g.metrics.active(), 2);
    drop(streams);
    assert_no_leak(&g).await;
}
