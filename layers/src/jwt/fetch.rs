//! One-shot HTTP(S) GET of a JWKS document with hyper 1 and rustls (aws-lc-rs).
//!
//! Deliberately small: HTTP/1.1, one request per connection, no redirects (an IdP's JWKS
//! URL is configured exactly; a `3xx` is an error that says so), a timeout around
//! everything and a cap on the body size. `https` trusts the system roots, or only the
//! CAs of `jwks_ca_file` when one is configured.

use std::{sync::Arc, time::Duration};

use http::{header, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls_pki_types::{pem::PemObject, CertificateDer, ServerName};
use tokio::net::TcpStream;

/// The largest JWKS document accepted.
pub(crate) const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// Where and how to fetch a JWKS.
#[derive(Clone)]
pub(crate) struct JwksClient {
    uri: Uri,
    host: String,
    port: u16,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    timeout: Duration,
}

impl std::fmt::Debug for JwksClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksClient")
            .field("uri", &self.uri)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl JwksClient {
    /// Checks the URL and, for `https`, prepares the TLS client with the system roots, or
    /// with the CA certificates in `ca_pem` instead when given.
    pub(crate) fn new(url: &str, timeout: Duration, ca_pem: Option<&[u8]>) -> Result<Self, String> {
        let uri: Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err("scheme must be http or https".to_owned()),
        };
        let host = uri.host().ok_or("URL has no host")?.to_owned();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tls = if https {
            let name = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let server_name =
                ServerName::try_from(name).map_err(|e| format!("bad TLS server name: {e}"))?;
            Some((tls_connector(ca_pem)?, server_name))
        } else {
            None
        };
        Ok(Self {
            uri,
            host,
            port,
            tls,
            timeout,
        })
    }

    /// Fetches the document; errors are one-line reasons for logs.
    pub(crate) async fn get(&self) -> Result<Bytes, String> {
        match tokio::time::timeout(self.timeout, self.get_inner()).await {
            Ok(r) => r,
            Err(_) => Err(format!("timed out after {:?}", self.timeout)),
        }
    }

    async fn get_inner(&self) -> Result<Bytes, String> {
        let host = self.host.trim_start_matches('[').trim_end_matches(']');
        let tcp = TcpStream::connect((host, self.port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => self.exchange(TokioIo::new(tcp)).await,
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| format!("TLS: {e}"))?;
                self.exchange(TokioIo::new(tls)).await
            }
        }
    }

    async fn exchange<I>(&self, io: I) -> Result<Bytes, String>
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(io)
            .await
            .map_err(|e| format!("HTTP handshake: {e}"))?;
        let path = self.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let authority = self
            .uri
            .authority()
            .map(|a| a.as_str())
            .unwrap_or(&self.host);
        let req = Request::get(path)
            .header(header::HOST, authority)
            .header(header::ACCEPT, "application/json, application/jwk-set+json")
            .header(header::USER_AGENT, "wsgate-jwks/0.1")
            .body(Empty::new())
            .map_err(|e| format!("request: {e}"))?;
        let exchange = async move {
            let res = sender
                .send_request(req)
                .await
                .map_err(|e| format!("request: {e}"))?;
            if res.status().is_redirection() {
                return Err(format!(
                    "status {} (redirects are not followed; configure the final JWKS URL)",
                    res.status()
                ));
            }
            if res.status() != StatusCode::OK {
                return Err(format!("status {}", res.status()));
            }
            let body = Limited::new(res.into_body(), MAX_JWKS_BYTES)
                .collect()
                .await
                .map_err(|e| format!("body: {e}"))?;
            Ok(body.to_bytes())
        };
        // The connection future drives the I/O. Dropping it when the exchange is done
        // closes the socket. A server that answers with `Connection: close` lets the
        // connection end before the exchange has read the (already buffered) body, so a
        // clean end means "finish the exchange", which itself fails if no response came.
        tokio::pin!(exchange);
        tokio::select! {
            biased;
            r = &mut exchange => r,
            r = conn => match r {
                Ok(()) => exchange.await,
                Err(e) => Err(format!("connection: {e}")),
            },
        }
    }
}

fn tls_connector(ca_pem: Option<&[u8]>) -> Result<tokio_rustls::TlsConnector, String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_pem {
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| format!("jwks_ca_file: not a PEM certificate: {e}"))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("jwks_ca_file: unusable CA certificate: {e}"))?;
            }
            if roots.is_empty() {
                return Err("jwks_ca_file holds no certificate".to_owned());
            }
        }
        None => {
            let loaded = rustls_native_certs::load_native_certs();
            for cert in loaded.certs {
                // A single unparsable system certificate must not disable the others.
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err("no usable system root certificates for https".to_owned());
            }
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS config: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}
