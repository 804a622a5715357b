//! Opening the upstream socket and upgrading it.

use std::{
    future::poll_fn,
    io,
    mem::MaybeUninit,
    net::{IpAddr, SocketAddr},
    path::Path,
    pin::Pin,
    sync::Arc,
    time::Duration,
};

use http::{HeaderMap, StatusCode};
use rustls::{pki_types::ServerName, ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf},
    net::{TcpSocket, TcpStream},
    time::timeout,
};
use tokio_rustls::TlsConnector;
use wsgate_layers::upstream::Backend;

use crate::{
    error::UpstreamError,
    handshake::{parse_upstream_response, ClientHandshake, UpstreamAnswer, MAX_RESPONSE_HEAD},
    relay::Stream,
};

/// Largest body of a refusal (403, 404 …) wsgate passes on to the client.
const MAX_REFUSAL_BODY: usize = 64 * 1024;

/// Opens sockets to backends.
#[derive(Clone)]
pub struct Connector {
    tls: TlsConnector,
    connect_timeout: Duration,
    handshake_timeout: Duration,
    pub(super) retry: super::failover::Retry,
    pub(super) pool: Option<Arc<super::pool::Pool>>,
    pub(super) resume: Option<Arc<super::resume::ResumeSettings>>,
    pub(super) rebalance: bool,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("connect_timeout", &self.connect_timeout)
            .field("handshake_timeout", &self.handshake_timeout)
            .finish()
    }
}

/// A backend socket after its handshake.
#[derive(Debug)]
pub(crate) enum Opened {
    /// The backend switched protocols: relay on `stream`, starting with `leftover`.
    Upgraded {
        /// The socket.
        stream: Stream,
        /// Bytes the backend sent after its 101.
        leftover: Vec<u8>,
        /// The backend's handshake answer.
        answer: UpstreamAnswer,
    },
    /// The backend answered with something else; the client gets it as it is.
    Refused {
        /// Status.
        status: StatusCode,
        /// End-to-end headers.
        headers: HeaderMap,
        /// Body (empty if larger than 64 KiB or not delimited by a length).
        body: Vec<u8>,
    },
}

/// The TLS client settings for `wss://` backends: the system roots plus `extra_ca`, and
/// a client certificate when backends require mutual TLS.
pub fn tls_client_config(
    extra_ca: Option<&Path>,
    client_auth: Option<(&Path, &Path)>,
) -> Result<ClientConfig, String> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        // A broken system certificate should not stop wsgate from using the others.
        let _ = roots.add(cert);
    }
    if let Some(path) = extra_ca {
        let certs = crate::tls::read_certs(path).map_err(|e| format!("ca_file: {e}"))?;
        for c in certs {
            roots
                .add(c)
                .map_err(|e| format!("ca_file: {}: {e}", path.display()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let mut cfg = match client_auth {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let certs = crate::tls::read_certs(cert).map_err(|e| format!("client_cert: {e}"))?;
            let key = rustls_pki_types::PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("client_key: {}: {e}", key.display()))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| format!("client_cert/client_key: {e}"))?
        }
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

impl Connector {
    /// A connector with these TLS settings and timeouts.
    pub fn new(tls: ClientConfig, connect_timeout: Duration, handshake_timeout: Duration) -> Self {
        Self {
            tls: TlsConnector::from(Arc::new(tls)),
            connect_timeout,
            handshake_timeout,
            retry: super::failover::Retry::default(),
            pool: None,
            resume: None,
            rebalance: false,
        }
    }

    /// Connects to `backend`, sends `request` (a complete upgrade request) and reads the
    /// answer.
    pub(crate) async fn open(
        &self,
        backend: &Backend,
        request: &[u8],
        hs: &ClientHandshake,
    ) -> Result<Opened, UpstreamError> {
        let name = || backend.url().to_string();
        let warm = self.pool.as_ref().and_then(|p| p.take(backend));
        let stream = match warm {
            Some(s) => s,
            None => self.connect_timed(backend).await?,
        };
        timeout(
            self.handshake_timeout,
            upgrade(stream, request, hs, backend),
        )
        .await
        .map_err(|_| UpstreamError::Timeout {
            backend: name(),
            after: self.handshake_timeout,
        })?
    }

    /// A TCP (and TLS) connection to `backend` within the connect timeout, not yet
    /// upgraded: for health probes and the warm pool.
    pub(crate) async fn connect_timed(&self, backend: &Backend) -> Result<Stream, UpstreamError> {
        timeout(self.connect_timeout, self.connect(backend))
            .await
            .map_err(|_| UpstreamError::Timeout {
                backend: backend.url().to_string(),
                after: self.connect_timeout,
            })?
    }

    async fn connect(&self, backend: &Backend) -> Result<Stream, UpstreamError> {
        let url = backend.url();
        let io_err = |source: io::Error| UpstreamError::Connect {
            backend: url.to_string(),
            source,
        };
        // IP literals skip the resolver; names are resolved on every connect, so a DNS
        // change takes effect for the next socket.
        let tcp = match (backend.addr(), url.host().parse::<IpAddr>()) {
            (Some(ip), _) | (None, Ok(ip)) => connect_addr((ip, url.port()).into()).await,
            (None, Err(_)) => connect_name(url.host(), url.port()).await,
        }
        .map_err(io_err)?;
        if !url.is_secure() {
            return Ok(Stream::Tcp(tcp));
        }
        let server_name =
            ServerName::try_from(url.host().to_string()).map_err(|e| UpstreamError::Tls {
                backend: url.to_string(),
                reason: e.to_string(),
            })?;
        let tls = self
            .tls
            .connect(server_name, tcp)
            .await
            .map_err(|e| UpstreamError::Tls {
                backend: url.to_string(),
                reason: e.to_string(),
            })?;
        Ok(Stream::ClientTls(Box::new(tls)))
    }
}

async fn upgrade(
    mut stream: Stream,
    request: &[u8],
    hs: &ClientHandshake,
    backend: &Backend,
) -> Result<Opened, UpstreamError> {
    let url = || backend.url().to_string();
    let io_err = |source: io::Error| UpstreamError::Connect {
        backend: url(),
        source,
    };
    stream.write_all(request).await.map_err(io_err)?;
    stream.flush().await.map_err(io_err)?;
    // The answer is parsed where it was read: a head that arrives in one read (the usual
    // case) is never copied. `held` collects a head that arrives in pieces. The read
    // buffer is left uninitialised: zeroing 2 KiB per connection was 3 % of the user-space
    // instructions of a whole connection (callgrind).
    let mut chunk = [MaybeUninit::<u8>::uninit(); 2048];
    let mut held: Vec<u8> = Vec::new();
    let (answer, rest) = loop {
        let mut read = ReadBuf::uninit(&mut chunk);
        poll_fn(|cx| Pin::new(&mut stream).poll_read(cx, &mut read))
            .await
            .map_err(io_err)?;
        let fresh = read.filled();
        if fresh.is_empty() {
            return Err(UpstreamError::Protocol {
                backend: url(),
                reason: "closed the connection before answering",
            });
        }
        let data = if held.is_empty() {
            fresh
        } else {
            held.extend_from_slice(fresh);
            &held[..]
        };
        match parse_upstream_response(data, hs) {
            Ok(Some(answer)) => {
                let head_len = match &answer {
                    UpstreamAnswer::Switching { head_len, .. }
                    | UpstreamAnswer::Refused { head_len, .. } => *head_len,
                };
                break (answer, data[head_len..].to_vec());
            }
            Ok(None) if data.len() > MAX_RESPONSE_HEAD => {
                return Err(UpstreamError::Protocol {
                    backend: url(),
                    reason: "response head too large",
                })
            }
            Ok(None) => {
                if held.is_empty() {
                    held.extend_from_slice(fresh);
                }
            }
            Err(reason) => {
                return Err(UpstreamError::Protocol {
                    backend: url(),
                    reason,
                })
            }
        }
    };
    match answer {
        UpstreamAnswer::Switching { .. } => Ok(Opened::Upgraded {
            stream,
            leftover: rest,
            answer,
        }),
        UpstreamAnswer::Refused {
            status,
            headers,
            content_length,
            ..
        } => {
            let mut body = rest;
            match content_length {
                Some(len) if len <= MAX_REFUSAL_BODY => {
                    body.reserve(len.saturating_sub(body.len()));
                    while body.len() < len {
                        if stream.read_buf(&mut body).await.map_err(io_err)? == 0 {
                            break;
                        }
                    }
                    body.truncate(len);
                }
                _ => body.clear(),
            }
            Ok(Opened::Refused {
                status,
                headers,
                body,
            })
        }
    }
}

/// Opens a TCP connection to a backend, set up before the SYN: `TCP_NODELAY` (relayed
/// frames must not wait for Nagle), and delayed ACKs so the ACK of the SYN-ACK rides on
/// the upgrade request instead of leaving as a segment of its own
/// ([`crate::sockopt::delay_acks`]).
async fn connect_addr(addr: SocketAddr) -> io::Result<TcpStream> {
    backend_socket(addr)?.connect(addr).await
}

fn backend_socket(addr: SocketAddr) -> io::Result<TcpSocket> {
    let socket = crate::sockopt::tcp_socket_for(addr)?;
    #[cfg(target_os = "linux")]
    crate::sockopt::delay_acks(&socket)?;
    Ok(socket)
}

/// [`connect_addr`] to each address `host` resolves to, in turn, until one answers.
async fn connect_name(host: &str, port: u16) -> io::Result<TcpStream> {
    let mut last = None;
    for addr in tokio::net::lookup_host((host, port)).await? {
        match connect_addr(addr).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("{host} resolved to no address"),
        )
    }))
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn backend_sockets_have_nodelay_and_delayed_acks_from_the_start() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        // Set before the SYN: the ACK of the SYN-ACK then waits to ride on the request
        // (the kernel leaves delayed-ACK mode as it does so, so this is the moment to
        // look).
        let socket = backend_socket(addr).unwrap();
        assert!(!crate::sockopt::quickack(&socket).unwrap());
        let s = socket.connect(addr).await.unwrap();
        assert!(s.nodelay().unwrap());
        let by_name = connect_name("localhost", l.local_addr().unwrap().port()).await;
        // `localhost` may resolve to ::1 first, where nothing listens: the next address
        // is tried.
        assert!(by_name.is_ok(), "{by_name:?}");
    }
}
