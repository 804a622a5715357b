//! [`StickyLayer`]: where the sticky key comes from.

use std::sync::Arc;

use http::{header::InvalidHeaderName, Extensions, HeaderMap, HeaderName};
use tower_layer::Layer;

use super::{
    cookie::{CookieSigner, SecretError},
    service::Sticky,
};
use crate::upstream::StickyKey;

/// Derives a sticky key from a request's headers and the extensions earlier layers
/// inserted (`VerifiedClaims`, `ClientIp` …). Closures of that shape implement it.
pub trait MakeStickyKey: Send + Sync + 'static {
    /// The key for this request, or `None` to let the upstream's policy choose.
    fn make_key(&self, headers: &HeaderMap, extensions: &Extensions) -> Option<StickyKey>;
}

impl<F> MakeStickyKey for F
where
    F: Fn(&HeaderMap, &Extensions) -> Option<StickyKey> + Send + Sync + 'static,
{
    fn make_key(&self, headers: &HeaderMap, extensions: &Extensions) -> Option<StickyKey> {
        self(headers, extensions)
    }
}

// One per route, built once: the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
pub(crate) enum Source {
    Cookie {
        name: Arc<str>,
        signer: CookieSigner,
        secure: bool,
    },
    Claim(Arc<str>),
    Header(HeaderName),
    ClientIp,
    Custom(Arc<dyn MakeStickyKey>),
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cookie { name, secure, .. } => f
                .debug_struct("Cookie")
                .field("name", name)
                .field("secure", secure)
                .finish(),
            Self::Claim(c) => f.debug_tuple("Claim").field(c).finish(),
            Self::Header(h) => f.debug_tuple("Header").field(h).finish(),
            Self::ClientIp => f.write_str("ClientIp"),
            Self::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

/// Inserts a [`StickyKey`] for [`UpstreamLayer`](crate::UpstreamLayer) to hash.
///
/// Put it between the layers its source needs (the JWT layer for a claim, the
/// client-IP layer for the IP) and `UpstreamLayer`. A request without a key (no such
/// header, no such claim) is left to the upstream's policy.
#[derive(Debug, Clone)]
pub struct StickyLayer {
    // Shared: a service is cloned for every request, and a cookie source's HMAC key is
    // not cheap to copy.
    pub(crate) source: Arc<Source>,
}

impl StickyLayer {
    /// Keys by a session cookie named `name` that the layer sets on the 101 response
    /// when the client has none (or a forged one). `secret` (at least 32 bytes) signs
    /// it; instances that must agree need the same secret.
    pub fn cookie(name: impl Into<String>, secret: &[u8]) -> Result<Self, SecretError> {
        Ok(Self {
            source: Arc::new(Source::Cookie {
                name: name.into().into(),
                signer: CookieSigner::new(secret)?,
                secure: false,
            }),
        })
    }

    /// Marks the cookie `Secure` (send it over HTTPS/WSS only). No effect on other
    /// sources.
    pub fn secure(mut self, secure: bool) -> Self {
        if let Source::Cookie { secure: s, .. } = Arc::make_mut(&mut self.source) {
            *s = secure;
        }
        self
    }

    /// Keys by a claim of the verified JWT (`"sub"`, `"tenant"` …). Needs the
    /// [`JwtAuthLayer`](crate::JwtAuthLayer) outside this layer.
    pub fn claim(name: impl Into<String>) -> Self {
        Self {
            source: Arc::new(Source::Claim(name.into().into())),
        }
    }

    /// Keys by a request header (`X-Session-Id` …).
    pub fn header(name: &str) -> Result<Self, InvalidHeaderName> {
        Ok(Self {
            source: Arc::new(Source::Header(HeaderName::from_bytes(name.as_bytes())?)),
        })
    }

    /// Keys by the client IP ([`ClientIp`](crate::ClientIp), else the socket peer).
    pub fn client_ip() -> Self {
        Self {
            source: Arc::new(Source::ClientIp),
        }
    }

    /// Keys by your own function.
    pub fn from_fn(make: impl MakeStickyKey) -> Self {
        Self {
            source: Arc::new(Source::Custom(Arc::new(make))),
        }
    }
}

impl<S> Layer<S> for StickyLayer {
    type Service = Sticky<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Sticky {
            inner,
            source: self.source.clone(),
        }
    }
}
