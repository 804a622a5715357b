//! The verification keys: loading, pinning each to its algorithms, and JWKS refresh.
//!
//! # Design
//!
//! * Every key is parsed **once** into a [`DecodingKey`] when it is loaded (startup or a
//!   JWKS refresh); a handshake only looks the key up.
//! * Every key is **pinned** to the algorithms its type allows (an RSA key to `RS*`/`PS*`,
//!   a P-256 key to `ES256`, a secret to `HS*`), narrowed further by the JWK's `alg`. A
//!   token's `alg` must be one of its key's pins, so an `HS256` token can never be checked
//!   against an RSA public key used as an HMAC secret (algorithm confusion).
//! * The table lives in an [`ArcSwap`]: a refresh builds a new table and swaps it in, so
//!   handshakes never wait for a lock while the identity provider is slow.
//! * A token whose `kid` is unknown may trigger one re-fetch of the JWKS URL, at most once
//!   per `jwks_refetch_min_interval`, so a flood of invented `kid`s costs the provider one
//!   request per interval. The `kid` is only ever a map key: `../../etc/passwd` is just an
//!   unknown key.

use std::{
    collections::HashMap,
    path::Path,
    str::FromStr,
    sync::{Arc, Weak},
    time::Duration,
};

use arc_swap::ArcSwap;
use jsonwebtoken::{
    jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyOperations, PublicKeyUse},
    Algorithm, DecodingKey,
};
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;

use super::{fetch::JwksClient, layer::JwtConfigError};

const HMAC_ALGS: &[Algorithm] = &[Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];
const RSA_ALGS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

/// How many keys a token without `kid` is tried against (signature checks are not free).
pub(crate) const MAX_KIDLESS_CANDIDATES: usize = 4;

/// One verification key and the algorithms it may verify.
pub(crate) struct VerifyKey {
    pub(crate) kid: Option<String>,
    pub(crate) algs: Vec<Algorithm>,
    pub(crate) key: DecodingKey,
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyKey")
            .field("kid", &self.kid)
            .field("algs", &self.algs)
            .finish_non_exhaustive()
    }
}

/// An immutable snapshot of the usable keys.
#[derive(Debug, Default)]
pub(crate) struct KeyTable {
    by_kid: HashMap<String, Arc<VerifyKey>>,
    /// Keys without a `kid` (a secret, a PEM file, a JWK without `kid`).
    anonymous: Vec<Arc<VerifyKey>>,
    all: Vec<Arc<VerifyKey>>,
    /// Changes whenever the keys may have changed (a new JWKS document); cached
    /// verdicts of another generation are not used.
    pub(crate) generation: u64,
    /// SHA-256 of the JWKS document the table was built from, so an unchanged document
    /// neither rebuilds the table nor invalidates the cache.
    doc_digest: Option<[u8; 32]>,
}

/// What a token's header selects in a [`KeyTable`].
#[derive(Debug)]
pub(crate) enum Lookup {
    Keys(Vec<Arc<VerifyKey>>),
    UnknownKid,
    NoKeyForAlg,
}

impl KeyTable {
    pub(crate) fn new(keys: impl IntoIterator<Item = Arc<VerifyKey>>) -> Self {
        let mut t = Self::default();
        for k in keys {
            match &k.kid {
                Some(kid) => {
                    if t.by_kid.contains_key(kid) {
                        tracing::warn!(kid = %kid, "jwt: duplicate kid in key set; first one kept");
                        continue;
                    }
                    t.by_kid.insert(kid.clone(), k.clone());
                }
                None => t.anonymous.push(k.clone()),
            }
            t.all.push(k);
        }
        t
    }

    pub(crate) fn len(&self) -> usize {
        self.all.len()
    }

    /// The keys to try for a token with this `alg` and `kid`.
    ///
    /// * With a `kid`: the key of that id (if pinned to `alg`); failing that, keys
    ///   without an id that allow `alg` (a single configured secret is commonly used by
    ///   issuers that still stamp a `kid`).
    /// * Without a `kid`: every key that allows `alg`, at most
    ///   [`MAX_KIDLESS_CANDIDATES`], in configuration order.
    pub(crate) fn lookup(&self, alg: Algorithm, kid: Option<&str>) -> Lookup {
        let allows = |k: &&Arc<VerifyKey>| k.algs.contains(&alg);
        match kid {
            Some(kid) => {
                if let Some(k) = self.by_kid.get(kid) {
                    return if k.algs.contains(&alg) {
                        Lookup::Keys(vec![k.clone()])
                    } else {
                        Lookup::NoKeyForAlg
                    };
                }
                let anon: Vec<_> = self
                    .anonymous
                    .iter()
                    .filter(allows)
                    .take(MAX_KIDLESS_CANDIDATES)
                    .cloned()
                    .collect();
                if anon.is_empty() {
                    Lookup::UnknownKid
                } else {
                    Lookup::Keys(anon)
                }
            }
            None => {
                let keys: Vec<_> = self
                    .all
                    .iter()
                    .filter(allows)
                    .take(MAX_KIDLESS_CANDIDATES)
                    .cloned()
                    .collect();
                if keys.is_empty() {
                    Lookup::NoKeyForAlg
                } else {
                    Lookup::Keys(keys)
                }
            }
        }
    }
}

/// An HMAC secret. Refuses empty secrets and anything that looks like a PEM key: an RSA
/// public key must never become an HMAC secret.
pub(crate) fn hmac_key(secret: &[u8], key: &str) -> Result<VerifyKey, JwtConfigError> {
    let secret = secret.trim_ascii_end();
    if secret.is_empty() {
        return Err(JwtConfigError::EmptySecret {
            key: key.to_owned(),
        });
    }
    if secret.trim_ascii_start().starts_with(b"-----BEGIN") {
        return Err(JwtConfigError::SecretIsPem {
            key: key.to_owned(),
        });
    }
    Ok(VerifyKey {
        kid: None,
        algs: HMAC_ALGS.to_vec(),
        key: DecodingKey::from_secret(secret),
    })
}

/// A PEM public key (or certificate): RSA, EC P-256/P-384 or Ed25519, detected.
pub(crate) fn pem_key(pem: &[u8], origin: &str) -> Result<VerifyKey, JwtConfigError> {
    let bad = |reason: &str| JwtConfigError::PublicKey {
        origin: origin.to_owned(),
        reason: reason.to_owned(),
    };
    let text = std::str::from_utf8(pem).map_err(|_| bad("not a PEM text file"))?;
    if text.contains("PRIVATE KEY-----") {
        return Err(bad(
            "holds a private key; configure the public key (openssl pkey -pubout)",
        ));
    }
    if !text.contains("-----BEGIN") {
        return Err(bad("not a PEM file"));
    }
    if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
        return Ok(VerifyKey {
            kid: None,
            algs: RSA_ALGS.to_vec(),
            key,
        });
    }
    if let Ok(key) = DecodingKey::from_ec_pem(pem) {
        // The uncompressed point's length tells the curve, and so the one algorithm.
        let alg = match key.as_bytes().len() {
            65 => Algorithm::ES256,
            97 => Algorithm::ES384,
            _ => return Err(bad("EC key on an unsupported curve (P-256 and P-384 only)")),
        };
        return Ok(VerifyKey {
            kid: None,
            algs: vec![alg],
            key,
        });
    }
    if let Ok(key) = DecodingKey::from_ed_pem(pem) {
        return Ok(VerifyKey {
            kid: None,
            algs: vec![Algorithm::EdDSA],
            key,
        });
    }
    Err(bad("not an RSA, EC (P-256/P-384) or Ed25519 public key"))
}

/// Parses a JWKS document. Keys that cannot verify signatures (encryption keys, unknown
/// types or curves) are skipped with a log line; a malformed document is an error.
pub(crate) fn parse_jwks(doc: &[u8]) -> Result<Vec<VerifyKey>, String> {
    #[derive(serde::Deserialize)]
    struct Doc {
        keys: Vec<serde_json::Value>,
    }
    let doc: Doc = serde_json::from_slice(doc).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut out = Vec::with_capacity(doc.keys.len());
    for (i, v) in doc.keys.into_iter().enumerate() {
        match jwk_key(v) {
            Ok(k) => out.push(k),
            Err(reason) => tracing::info!(index = i, %reason, "jwt: JWKS key skipped"),
        }
    }
    Ok(out)
}

fn jwk_key(v: serde_json::Value) -> Result<VerifyKey, String> {
    let jwk: Jwk = serde_json::from_value(v).map_err(|e| format!("unsupported JWK: {e}"))?;
    let c = &jwk.common;
    if matches!(c.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
        return Err("use is not sig".into());
    }
    if let Some(ops) = &c.key_operations {
        if !ops.iter().any(|o| matches!(o, KeyOperations::Verify)) {
            return Err("key_ops lacks verify".into());
        }
    }
    let declared = match c.key_algorithm {
        None => None,
        Some(ka) => Some(
            Algorithm::from_str(&ka.to_string())
                .map_err(|_| format!("alg {ka} is not a signature algorithm"))?,
        ),
    };
    let family: &[Algorithm] = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => RSA_ALGS,
        AlgorithmParameters::OctetKey(_) => HMAC_ALGS,
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => &[Algorithm::ES256],
            EllipticCurve::P384 => &[Algorithm::ES384],
            _ => return Err("unsupported EC curve".into()),
        },
        AlgorithmParameters::OctetKeyPair(p) => match p.curve {
            EllipticCurve::Ed25519 => &[Algorithm::EdDSA],
            _ => return Err("unsupported OKP curve".into()),
        },
    };
    let algs = match declared {
        Some(a) if family.contains(&a) => vec![a],
        Some(a) => return Err(format!("alg {a:?} does not fit the key type")),
        None => family.to_vec(),
    };
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| format!("bad key material: {e}"))?;
    if algs.iter().all(|a| HMAC_ALGS.contains(a)) && key.as_bytes().is_empty() {
        return Err("empty oct key".into());
    }
    Ok(VerifyKey {
        kid: c.key_id.clone(),
        algs,
        key,
    })
}

/// Reads a file for a config key, naming the key in the error.
pub(crate) async fn read_file(path: &Path, key: &str) -> Result<Vec<u8>, JwtConfigError> {
    tokio::fs::read(path)
        .await
        .map_err(|source| JwtConfigError::Read {
            key: key.to_owned(),
            path: path.to_owned(),
            source,
        })
}

/// The remote half of a key set: a JWKS URL.
#[derive(Debug)]
pub(crate) struct Remote {
    pub(crate) url: String,
    pub(crate) client: JwksClient,
    pub(crate) refetch_min: Duration,
    /// When an unknown `kid` last triggered a fetch.
    refetch_last: tokio::sync::Mutex<Option<Instant>>,
    /// Serialises fetches so an older answer never overwrites a newer one.
    fetch_lock: tokio::sync::Mutex<()>,
}

impl Remote {
    pub(crate) fn new(url: String, client: JwksClient, refetch_min: Duration) -> Self {
        Self {
            url,
            client,
            refetch_min,
            refetch_last: tokio::sync::Mutex::new(None),
            fetch_lock: tokio::sync::Mutex::new(()),
        }
    }
}

/// The keys of one layer: static ones plus, optionally, a refreshed JWKS URL.
#[derive(Debug)]
pub(crate) struct KeySet {
    static_keys: Vec<Arc<VerifyKey>>,
    table: ArcSwap<KeyTable>,
    remote: Option<Remote>,
}

impl KeySet {
    pub(crate) fn new(static_keys: Vec<VerifyKey>, remote: Option<Remote>) -> Self {
        let static_keys: Vec<_> = static_keys.into_iter().map(Arc::new).collect();
        let table = KeyTable::new(static_keys.iter().cloned());
        Self {
            static_keys,
            table: ArcSwap::from_pointee(table),
            remote,
        }
    }

    /// The current snapshot (lock-free).
    pub(crate) fn table(&self) -> arc_swap::Guard<Arc<KeyTable>> {
        self.table.load()
    }

    pub(crate) fn has_remote(&self) -> bool {
        self.remote.is_some()
    }

    /// Fetches the JWKS URL and swaps in the new table; the old keys stay on any failure
    /// (including a document with no usable key, more likely a glitch than a revocation
    /// of every key).
    pub(crate) async fn refresh(&self) -> Result<usize, String> {
        let Some(remote) = &self.remote else {
            return Ok(self.table().len());
        };
        let _serial = remote.fetch_lock.lock().await;
        let doc = remote.client.get().await?;
        let digest = super::cache::sha256(&doc);
        let current = self.table();
        if current.doc_digest == Some(digest) {
            return Ok(current.len().saturating_sub(self.static_keys.len()));
        }
        let fetched = parse_jwks(&doc)?;
        if fetched.is_empty() {
            return Err("JWKS holds no usable signature key".to_owned());
        }
        let n = fetched.len();
        let mut table = KeyTable::new(
            self.static_keys
                .iter()
                .cloned()
                .chain(fetched.into_iter().map(Arc::new)),
        );
        table.generation = current.generation.wrapping_add(1);
        table.doc_digest = Some(digest);
        self.table.store(Arc::new(table));
        tracing::debug!(url = %remote.url, keys = n, "jwt: JWKS refreshed");
        Ok(n)
    }

    /// Re-fetches the JWKS because a token named an unknown `kid`, unless one such
    /// re-fetch happened within `jwks_refetch_min_interval`. Returns whether it fetched.
    pub(crate) async fn refetch_for_unknown_kid(&self) -> bool {
        let Some(remote) = &self.remote else {
            return false;
        };
        let mut last = remote.refetch_last.lock().await;
        let now = Instant::now();
        if let Some(t) = *last {
            if now.duration_since(t) < remote.refetch_min {
                return false;
            }
        }
        *last = Some(now);
        match self.refresh().await {
            Ok(_) => true,
            Err(reason) => {
                tracing::warn!(url = %remote.url, %reason, "jwt: JWKS re-fetch failed");
                false
            }
        }
    }
}

/// Refreshes `keys` every `interval` until the key set is dropped (the task holds only a
/// `Weak`) or the returned handle is dropped (it aborts the task).
pub(crate) fn spawn_refresher(keys: &Arc<KeySet>, interval: Duration) -> AbortOnDropHandle<()> {
    let weak: Weak<KeySet> = Arc::downgrade(keys);
    AbortOnDropHandle::new(tokio::spawn(async move {
        loop {
            tokio::time::sleep(interval).await;
            let Some(keys) = weak.upgrade() else { break };
            if let Err(reason) = keys.refresh().await {
                let url = keys.remote.as_ref().map(|r| r.url.as_str()).unwrap_or("");
                tracing::warn!(%url, %reason, "jwt: JWKS refresh failed; keeping the old keys");
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(b: &[u8]) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    }

    #[test]
    fn secrets_that_look_like_pem_are_refused() {
        let pem = b"-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----\n";
        assert!(matches!(
            hmac_key(pem, "secret_file"),
            Err(JwtConfigError::SecretIsPem { .. })
        ));
        assert!(matches!(
            hmac_key(b"\n", "secret_env"),
            Err(JwtConfigError::EmptySecret { .. })
        ));
    }

    #[test]
    fn jwks_keys_are_pinned_and_unusable_ones_skipped() {
        let doc = serde_json::json!({"keys": [
            {"kty": "oct", "kid": "h", "alg": "HS384", "k": b64(b"0123456789abcdef0123456789abcdef")},
            {"kty": "oct", "kid": "any", "k": b64(b"0123456789abcdef")},
            {"kty": "oct", "kid": "enc", "use": "enc", "k": b64(b"x")},
            {"kty": "RSA", "kid": "oaep", "alg": "RSA-OAEP", "n": "AQAB", "e": "AQAB"},
            {"kty": "weird", "kid": "w"},
        ]});
        let keys = parse_jwks(doc.to_string().as_bytes()).unwrap_or_default();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].algs, vec![Algorithm::HS384]);
        assert_eq!(keys[1].algs, HMAC_ALGS.to_vec());
        assert!(parse_jwks(b"{}").is_err());
    }

    #[test]
    fn lookup_by_kid_respects_pins() {
        let doc = serde_json::json!({"keys": [
            {"kty": "oct", "kid": "h", "alg": "HS256", "k": b64(b"0123456789abcdef")},
        ]});
        let keys = parse_jwks(doc.to_string().as_bytes()).unwrap_or_default();
        let t = KeyTable::new(keys.into_iter().map(Arc::new));
        assert!(matches!(t.lookup(Algorithm::HS256, Some("h")), Lookup::Keys(k) if k.len() == 1));
        assert!(matches!(
            t.lookup(Algorithm::HS512, Some("h")),
            Lookup::NoKeyForAlg
        ));
        assert!(matches!(
            t.lookup(Algorithm::HS256, Some("../../etc/passwd")),
            Lookup::UnknownKid
        ));
        assert!(matches!(
            t.lookup(Algorithm::RS256, None),
            Lookup::NoKeyForAlg
        ));
        assert!(matches!(t.lookup(Algorithm::HS256, None), Lookup::Keys(_)));
    }
}
