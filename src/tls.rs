//! TLS termination for the client listeners: certificates by SNI, reloaded on change.
//!
//! The certificate set sits behind an [`ArcSwap`]: a handshake loads it without a lock,
//! and a reload swaps it whole. Sockets already open keep the session they negotiated,
//! so a renewed certificate never drops a connection.

use std::{
    collections::HashMap,
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use arc_swap::ArcSwap;
use rustls::{
    crypto::CryptoProvider,
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
    ServerConfig,
};
use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::TlsConfig;

/// One certificate and the names it is served for (empty: the default).
#[derive(Debug, Clone)]
struct CertFiles {
    names: Vec<String>,
    cert: PathBuf,
    key: PathBuf,
    /// The config key, for error messages.
    key_name: String,
}

struct CertSet {
    default: Arc<CertifiedKey>,
    by_name: HashMap<String, Arc<CertifiedKey>>,
}

/// Certificates chosen by SNI, swappable at run time.
pub struct CertStore {
    files: Vec<CertFiles>,
    provider: Arc<CryptoProvider>,
    current: ArcSwap<CertSet>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore")
            .field("files", &self.files)
            .finish()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let set = self.current.load();
        let Some(name) = hello.server_name() else {
            return Some(set.default.clone());
        };
        let name = name.to_ascii_lowercase();
        if let Some(k) = set.by_name.get(&name) {
            return Some(k.clone());
        }
        // One wildcard level, as certificates allow: a.example.com -> *.example.com.
        if let Some((_, parent)) = name.split_once('.') {
            if let Some(k) = set.by_name.get(&format!("*.{parent}")) {
                return Some(k.clone());
            }
        }
        Some(set.default.clone())
    }
}

impl CertStore {
    /// Loads every certificate of `cfg`; errors name the config key and the file.
    pub fn load(cfg: &TlsConfig) -> Result<Self, String> {
        let mut files = vec![CertFiles {
            names: Vec::new(),
            cert: cfg.cert.clone(),
            key: cfg.key.clone(),
            key_name: "server.tls".into(),
        }];
        for (i, s) in cfg.sni.iter().enumerate() {
            if s.names.is_empty() {
                return Err(format!("server.tls.sni[{i}].names: at least one name"));
            }
            files.push(CertFiles {
                names: s.names.iter().map(|n| n.to_ascii_lowercase()).collect(),
                cert: s.cert.clone(),
                key: s.key.clone(),
                key_name: format!("server.tls.sni[{i}]"),
            });
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let set = build(&files, &provider)?;
        Ok(Self {
            files,
            provider,
            current: ArcSwap::from_pointee(set),
        })
    }

    /// Re-reads the files; on error the current certificates stay.
    pub fn reload(&self) -> Result<(), String> {
        let set = build(&self.files, &self.provider)?;
        self.current.store(Arc::new(set));
        Ok(())
    }

    fn modified(&self) -> Vec<Option<SystemTime>> {
        self.files
            .iter()
            .flat_map(|f| [&f.cert, &f.key])
            .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
            .collect()
    }

    /// Reloads whenever a file's modification time changes, until `stop`.
    pub async fn watch(self: Arc<Self>, every: Duration, stop: CancellationToken) {
        let mut seen = self.modified();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            let now = self.modified();
            if now == seen {
                continue;
            }
            match self.reload() {
                Ok(()) => {
                    info!("TLS certificates reloaded");
                    seen = now;
                }
                // Half-written files (a renewal in progress) fail here; the old
                // certificates stay and the next change is tried again.
                Err(e) => warn!(error = %e, "TLS reload failed; keeping the current certificates"),
            }
        }
    }

    /// A TLS acceptor serving these certificates (ALPN: h2, then HTTP/1.1).
    pub fn acceptor(self: &Arc<Self>) -> Result<TlsAcceptor, String> {
        let mut cfg = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("server.tls: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        // h2 first: browsers then multiplex WebSockets over one connection (RFC 8441).
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(cfg)))
    }
}

fn build(files: &[CertFiles], provider: &CryptoProvider) -> Result<CertSet, String> {
    let mut default = None;
    let mut by_name = HashMap::new();
    for f in files {
        let key = load_key(f, provider)?;
        if f.names.is_empty() {
            default = Some(key);
        } else {
            for n in &f.names {
                by_name.insert(n.clone(), key.clone());
            }
        }
    }
    let default = default.ok_or("server.tls: no default certificate")?;
    Ok(CertSet { default, by_name })
}

fn load_key(f: &CertFiles, provider: &CryptoProvider) -> Result<Arc<CertifiedKey>, String> {
    let certs = read_certs(&f.cert).map_err(|e| format!("{}.cert: {e}", f.key_name))?;
    let key = PrivateKeyDer::from_pem_file(&f.key)
        .map_err(|e| format!("{}.key: {}: {e}", f.key_name, f.key.display()))?;
    CertifiedKey::from_der(certs, key, provider)
        .map(Arc::new)
        .map_err(|e| format!("{}: certificate and key do not fit: {e}", f.key_name))
}

/// Reads the PEM certificates of a file (at least one).
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(certs)
}
