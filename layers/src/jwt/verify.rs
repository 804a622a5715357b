//! Checking one token: shape and header policy first (cheap), then signature, then claims.

use std::{collections::HashMap, str::FromStr, time::SystemTime};

use base64::Engine;
use jsonwebtoken::{errors::ErrorKind, Algorithm, Validation};
use serde_json::{Map, Value};

use super::{
    keys::{KeyTable, Lookup},
    rejection::JwtRejection,
};

const ALL_ALGS: [Algorithm; 12] = [
    Algorithm::HS256,
    Algorithm::HS384,
    Algorithm::HS512,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// Header parameters that carry a key or a key location. Keys are only ever taken from the
/// configured key set, so a token naming one is refused rather than silently ignored: it
/// is either an attack or a client that expects the key to be used.
const EMBEDDED_KEY_PARAMS: [&str; 4] = ["jku", "x5u", "jwk", "x5c"];

/// The claim checks of one layer.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    pub(crate) leeway: u64,
    pub(crate) max_token_size: usize,
    pub(crate) required_claims: Vec<String>,
    pub(crate) required_scopes: Vec<String>,
    validations: HashMap<Algorithm, Validation>,
}

impl Policy {
    pub(crate) fn new(
        leeway: u64,
        max_token_size: usize,
        issuers: &[String],
        audiences: &[String],
        require_exp: bool,
        required_claims: Vec<String>,
        required_scopes: Vec<String>,
    ) -> Self {
        let validations = ALL_ALGS
            .iter()
            .map(|&alg| {
                let mut v = Validation::new(alg);
                v.leeway = leeway;
                v.validate_exp = true;
                v.validate_nbf = true;
                let mut required = Vec::new();
                if require_exp {
                    required.push("exp");
                }
                if !issuers.is_empty() {
                    v.set_issuer(issuers);
                    required.push("iss");
                }
                if audiences.is_empty() {
                    // Without a configured audience `aud` is not checked (see module docs).
                    v.validate_aud = false;
                } else {
                    v.set_audience(audiences);
                    required.push("aud");
                }
                v.required_spec_claims = required.into_iter().map(str::to_owned).collect();
                (alg, v)
            })
            .collect();
        Self {
            leeway,
            max_token_size,
            required_claims,
            required_scopes,
            validations,
        }
    }
}

/// The parts of the JOSE header that select a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TokenHeader {
    pub(crate) alg: Algorithm,
    pub(crate) kid: Option<String>,
}

/// A token whose signature and claims passed.
#[derive(Debug, Clone)]
pub(crate) struct Verified {
    pub(crate) claims: Map<String, Value>,
    pub(crate) alg: Algorithm,
    pub(crate) kid: Option<String>,
}

/// The result of checking against the current key table.
#[derive(Debug)]
pub(crate) enum Outcome {
    Verified(Verified),
    Rejected(JwtRejection),
    /// The `kid` is not in the table; a JWKS re-fetch might find it.
    UnknownKid,
}

/// Shape, size and header policy: everything that needs no key. Cheap by design, so an
/// oversized or hostile token costs a length check and one small base64 decode.
pub(crate) fn inspect(token: &str, max: usize) -> Result<TokenHeader, JwtRejection> {
    if token.len() > max {
        return Err(JwtRejection::TooLarge { max });
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtRejection::Malformed(
            "expected three dot-separated segments (JWS compact form)",
        ));
    };
    if h.is_empty() || p.is_empty() {
        return Err(JwtRejection::Malformed("empty header or payload segment"));
    }
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(h)
        .map_err(|_| JwtRejection::Malformed("header is not base64url"))?;
    let header: Map<String, Value> = serde_json::from_slice(&raw)
        .map_err(|_| JwtRejection::Malformed("header is not a JSON object"))?;
    let alg = match header.get("alg") {
        Some(Value::String(a)) => a,
        _ => return Err(JwtRejection::Malformed("header has no alg")),
    };
    if alg.trim().eq_ignore_ascii_case("none") {
        return Err(JwtRejection::UnsignedToken);
    }
    let alg = Algorithm::from_str(alg).map_err(|_| JwtRejection::UnsupportedAlgorithm)?;
    if let Some(param) = EMBEDDED_KEY_PARAMS
        .iter()
        .find(|p| header.contains_key(**p))
    {
        return Err(JwtRejection::EmbeddedKey(param));
    }
    if header.contains_key("crit") {
        // No extension is understood, so any `crit` list (even an empty one, which RFC 7515
        // forbids) makes the token unacceptable.
        return Err(JwtRejection::CriticalExtension);
    }
    if s.is_empty() {
        return Err(JwtRejection::Malformed("signature segment is missing"));
    }
    let kid = match header.get("kid") {
        None | Some(Value::Null) => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(JwtRejection::Malformed("kid is not a string")),
    };
    Ok(TokenHeader { alg, kid })
}

/// Verifies `token` (already [`inspect`]ed into `header`) against `table`.
pub(crate) fn verify(
    token: &str,
    header: &TokenHeader,
    policy: &Policy,
    table: &KeyTable,
) -> Outcome {
    let keys = match table.lookup(header.alg, header.kid.as_deref()) {
        Lookup::Keys(k) => k,
        Lookup::UnknownKid => return Outcome::UnknownKid,
        Lookup::NoKeyForAlg => return Outcome::Rejected(JwtRejection::AlgorithmMismatch),
    };
    let Some(validation) = policy.validations.get(&header.alg) else {
        return Outcome::Rejected(JwtRejection::UnsupportedAlgorithm);
    };
    let mut last = JwtRejection::BadSignature;
    for key in keys {
        match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, validation) {
            Ok(data) => {
                return match check_claims(&data.claims, policy) {
                    Ok(()) => Outcome::Verified(Verified {
                        claims: data.claims,
                        alg: header.alg,
                        kid: header.kid.clone(),
                    }),
                    Err(r) => Outcome::Rejected(r),
                }
            }
            Err(e) => {
                let r = map_error(e.kind());
                // Only a signature failure may mean "wrong key, try the next one"; every
                // claim error comes after a verified signature and is final.
                if r != JwtRejection::BadSignature {
                    return Outcome::Rejected(r);
                }
                last = r;
            }
        }
    }
    Outcome::Rejected(last)
}

fn map_error(kind: &ErrorKind) -> JwtRejection {
    match kind {
        ErrorKind::InvalidSignature
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat => JwtRejection::BadSignature,
        ErrorKind::ExpiredSignature => JwtRejection::Expired,
        ErrorKind::ImmatureSignature => JwtRejection::NotYetValid,
        ErrorKind::InvalidIssuer => JwtRejection::WrongIssuer,
        ErrorKind::InvalidAudience => JwtRejection::WrongAudience,
        ErrorKind::MissingRequiredClaim(c) => JwtRejection::MissingClaim(c.clone()),
        ErrorKind::InvalidClaimFormat(c) => JwtRejection::InvalidClaim(c.clone()),
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => {
            JwtRejection::AlgorithmMismatch
        }
        ErrorKind::InvalidAlgorithmName => JwtRejection::UnsupportedAlgorithm,
        ErrorKind::Base64(_) => JwtRejection::Malformed("a segment is not base64url"),
        ErrorKind::Json(_) | ErrorKind::Utf8(_) => {
            JwtRejection::Malformed("header or payload is not the expected JSON")
        }
        ErrorKind::InvalidToken => JwtRejection::Malformed("not a JWT"),
        _ => JwtRejection::Malformed("token could not be verified"),
    }
}

/// Seconds since the epoch, as jsonwebtoken reads the clock.
pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Checks jsonwebtoken does not do: `iat` not in the future, required claims and scopes.
fn check_claims(claims: &Map<String, Value>, policy: &Policy) -> Result<(), JwtRejection> {
    if let Some(iat) = claims.get("iat") {
        let Some(iat) = iat.as_f64() else {
            return Err(JwtRejection::InvalidClaim("iat".to_owned()));
        };
        if iat > (now_secs() + policy.leeway) as f64 {
            return Err(JwtRejection::IssuedInFuture);
        }
    }
    for c in &policy.required_claims {
        if matches!(claims.get(c), None | Some(Value::Null)) {
            return Err(JwtRejection::MissingRequiredClaim(c.clone()));
        }
    }
    if !policy.required_scopes.is_empty() {
        let granted = scopes(claims);
        for s in &policy.required_scopes {
            if !granted.contains(&s.as_str()) {
                return Err(JwtRejection::InsufficientScope(s.clone()));
            }
        }
    }
    Ok(())
}

/// The scopes a token grants: `scope` (space-separated string, RFC 8693), and `scp` or
/// `scopes` (a string or an array of strings, as Azure AD, Okta and others issue them).
pub(crate) fn scopes(claims: &Map<String, Value>) -> Vec<&str> {
    let mut out = Vec::new();
    for name in ["scope", "scp", "scopes"] {
        match claims.get(name) {
            Some(Value::String(s)) => out.extend(s.split_ascii_whitespace()),
            Some(Value::Array(a)) => out.extend(a.iter().filter_map(Value::as_str)),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(v: &serde_json::Value) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    }

    fn tok(h: serde_json::Value) -> String {
        format!("{}.{}.sig", seg(&h), seg(&serde_json::json!({"sub": "x"})))
    }

    #[test]
    fn alg_none_is_refused_in_any_casing() {
        for a in ["none", "None", "NONE", "nOnE"] {
            assert_eq!(
                inspect(&tok(serde_json::json!({"alg": a})), 8192),
                Err(JwtRejection::UnsignedToken)
            );
        }
    }

    #[test]
    fn embedded_keys_and_crit_are_refused() {
        let t = tok(serde_json::json!({"alg": "RS256", "jku": "https://evil/jwks"}));
        assert_eq!(inspect(&t, 8192), Err(JwtRejection::EmbeddedKey("jku")));
        let t = tok(serde_json::json!({"alg": "RS256", "crit": ["b64"], "b64": false}));
        assert_eq!(inspect(&t, 8192), Err(JwtRejection::CriticalExtension));
    }

    #[test]
    fn shape_is_checked_before_decoding() {
        assert!(matches!(
            inspect("a.b", 8192),
            Err(JwtRejection::Malformed(_))
        ));
        assert!(matches!(
            inspect("a.b.c.d", 8192),
            Err(JwtRejection::Malformed(_))
        ));
        assert!(matches!(
            inspect("!!.b.c", 8192),
            Err(JwtRejection::Malformed(_))
        ));
        let big = "a".repeat(9000);
        assert_eq!(
            inspect(&big, 8192),
            Err(JwtRejection::TooLarge { max: 8192 })
        );
        let t = tok(serde_json::json!({"alg": "HS256", "kid": "k"}));
        assert_eq!(
            inspect(&t, 8192),
            Ok(TokenHeader {
                alg: Algorithm::HS256,
                kid: Some("k".to_owned())
            })
        );
    }

    #[test]
    fn scopes_are_read_from_scope_scp_and_scopes() {
        let c = serde_json::json!({"scope": "a b", "scp": ["c"], "scopes": "d"});
        let m = c.as_object().cloned().unwrap_or_default();
        assert_eq!(scopes(&m), vec!["a", "b", "c", "d"]);
    }
}
