//! One backend: its address and live state.

use std::{
    fmt,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
};

/// A parsed `ws://` or `wss://` backend address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendUrl {
    secure: bool,
    host: String,
    port: u16,
    path_prefix: String,
    text: String,
}

/// Why a backend address was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BackendUrlError {
    /// Not a URL at all.
    #[error("`{0}` is not a URL (expected ws://host:port or wss://host:port)")]
    Invalid(String),
    /// A scheme other than `ws`/`wss`.
    #[error("`{0}`: scheme must be ws:// or wss://")]
    Scheme(String),
    /// Query strings and user info have no meaning for a backend address.
    #[error("`{0}`: a backend address takes no query or user info")]
    Extra(String),
}

impl BackendUrl {
    /// Parses `ws://host[:port][/prefix]` or `wss://…`.
    pub fn parse(s: &str) -> Result<Self, BackendUrlError> {
        let uri: http::Uri = s.parse().map_err(|_| BackendUrlError::Invalid(s.into()))?;
        let secure = match uri.scheme_str() {
            Some("ws") => false,
            Some("wss") => true,
            _ => return Err(BackendUrlError::Scheme(s.into())),
        };
        let auth = uri
            .authority()
            .ok_or_else(|| BackendUrlError::Invalid(s.into()))?;
        if auth.as_str().contains('@') || uri.query().is_some() {
            return Err(BackendUrlError::Extra(s.into()));
        }
        let host = auth.host().trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(BackendUrlError::Invalid(s.into()));
        }
        let port = auth.port_u16().unwrap_or(if secure { 443 } else { 80 });
        let path_prefix = uri.path().trim_end_matches('/').to_string();
        Ok(Self {
            secure,
            host: host.to_string(),
            port,
            path_prefix,
            text: s.to_string(),
        })
    }

    /// `true` for `wss://`.
    pub fn is_secure(&self) -> bool {
        self.secure
    }
    /// Host name or IP literal (IPv6 without brackets).
    pub fn host(&self) -> &str {
        &self.host
    }
    /// Port (80/443 when the URL names none).
    pub fn port(&self) -> u16 {
        self.port
    }
    /// Path prepended to the client's path ("" when the URL has none).
    pub fn path_prefix(&self) -> &str {
        &self.path_prefix
    }
    /// The value for the upstream `Host` header.
    pub fn authority(&self) -> String {
        let default = if self.secure { 443 } else { 80 };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == default {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

impl fmt::Display for BackendUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A backend and its live state, shared by every route that uses it.
#[derive(Debug)]
pub struct Backend {
    url: BackendUrl,
    weight: u32,
    active: AtomicUsize,
    healthy: AtomicBool,
    draining: AtomicBool,
}

impl Backend {
    /// A healthy backend with weight 1.
    pub fn new(url: BackendUrl) -> Self {
        Self::with_weight(url, 1)
    }

    /// A healthy backend with the given weight (0 is taken as 1).
    pub fn with_weight(url: BackendUrl, weight: u32) -> Self {
        Self {
            url,
            weight: weight.max(1),
            active: AtomicUsize::new(0),
            healthy: AtomicBool::new(true),
            draining: AtomicBool::new(false),
        }
    }

    /// Its address.
    pub fn url(&self) -> &BackendUrl {
        &self.url
    }
    /// Its weight for weighted policies.
    pub fn weight(&self) -> u32 {
        self.weight
    }
    /// Open WebSockets proxied to it now.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }
    /// Whether health checks currently pass.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }
    /// Marks it healthy or not; returns the previous state.
    pub fn set_healthy(&self, healthy: bool) -> bool {
        self.healthy.swap(healthy, Ordering::Relaxed)
    }
    /// Whether it is being drained (no new sockets).
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
    /// Stops new sockets going to it.
    pub fn set_draining(&self, draining: bool) {
        self.draining.store(draining, Ordering::Relaxed)
    }
    /// Healthy and not draining.
    pub fn is_available(&self) -> bool {
        self.is_healthy() && !self.is_draining()
    }

    /// Counts one open socket until the returned guard drops.
    pub fn track(self: &Arc<Self>) -> ActiveConnection {
        self.active.fetch_add(1, Ordering::Relaxed);
        ActiveConnection(self.clone())
    }
}

/// One open socket on a backend; dropping it releases the count on every path.
#[derive(Debug)]
pub struct ActiveConnection(Arc<Backend>);

impl ActiveConnection {
    /// The backend this socket is counted on.
    pub fn backend(&self) -> &Arc<Backend> {
        &self.0
    }
}

impl Drop for ActiveConnection {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ws_and_wss() {
        let u = BackendUrl::parse("ws://127.0.0.1:9001").unwrap();
        assert!(!u.is_secure());
        assert_eq!(
            (u.host(), u.port(), u.path_prefix()),
            ("127.0.0.1", 9001, "")
        );
        let u = BackendUrl::parse("wss://[::1]/base/").unwrap();
        assert!(u.is_secure());
        assert_eq!((u.host(), u.port(), u.path_prefix()), ("::1", 443, "/base"));
        assert_eq!(u.authority(), "[::1]");
    }

    #[test]
    fn refuses_other_schemes_and_garbage() {
        assert!(matches!(
            BackendUrl::parse("http://x"),
            Err(BackendUrlError::Scheme(_))
        ));
        assert!(BackendUrl::parse("not a url").is_err());
        assert!(matches!(
            BackendUrl::parse("ws://u@h:1"),
            Err(BackendUrlError::Extra(_))
        ));
    }

    #[test]
    fn guard_releases_count() {
        let b = Arc::new(Backend::new(BackendUrl::parse("ws://h:1").unwrap()));
        let g = b.track();
        assert_eq!(b.active(), 1);
        drop(g);
        assert_eq!(b.active(), 0);
    }
}
