//! The signed session cookie.

use aws_lc_rs::hmac;
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};

/// Shortest secret accepted: 32 bytes, the HMAC-SHA256 block of entropy it deserves.
pub const MIN_SECRET_LEN: usize = 32;

/// The secret was too short.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the sticky cookie secret must be at least {MIN_SECRET_LEN} bytes (it is {0})")]
pub struct SecretError(pub usize);

/// Signs and checks sticky session ids.
#[derive(Clone)]
pub struct CookieSigner {
    key: hmac::Key,
}

impl std::fmt::Debug for CookieSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CookieSigner(..)")
    }
}

impl CookieSigner {
    /// A signer with `secret` (at least [`MIN_SECRET_LEN`] bytes).
    pub fn new(secret: &[u8]) -> Result<Self, SecretError> {
        if secret.len() < MIN_SECRET_LEN {
            return Err(SecretError(secret.len()));
        }
        Ok(Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        })
    }

    /// A new random session id and its cookie value.
    pub fn mint(&self) -> (Vec<u8>, String) {
        let id = fastrand::u128(..).to_be_bytes().to_vec();
        let value = self.sign(&id);
        (id, value)
    }

    /// The cookie value for `id`.
    pub fn sign(&self, id: &[u8]) -> String {
        let mut value = String::new();
        self.sign_into(id, &mut value);
        value
    }

    /// A new random session id and the whole `Set-Cookie` value carrying it (`name`,
    /// the signed id, the attributes), built in one buffer.
    pub fn mint_cookie(&self, name: &str, secure: bool) -> (Vec<u8>, String) {
        let id = fastrand::u128(..).to_be_bytes().to_vec();
        let attrs = if secure {
            "; Path=/; HttpOnly; SameSite=Lax; Secure"
        } else {
            "; Path=/; HttpOnly; SameSite=Lax"
        };
        // 16-byte id and 32-byte tag: 22 + 1 + 43 characters of base64url.
        let mut cookie = String::with_capacity(name.len() + 1 + 66 + attrs.len());
        cookie.push_str(name);
        cookie.push('=');
        self.sign_into(&id, &mut cookie);
        cookie.push_str(attrs);
        (id, cookie)
    }

    /// Appends `base64url(id) "." base64url(tag)` to `out`.
    fn sign_into(&self, id: &[u8], out: &mut String) {
        let tag = hmac::sign(&self.key, id);
        URL_SAFE_NO_PAD.encode_string(id, out);
        out.push('.');
        URL_SAFE_NO_PAD.encode_string(tag.as_ref(), out);
    }

    /// The session id in a cookie value, if its signature is ours.
    pub fn verify(&self, value: &str) -> Option<Vec<u8>> {
        let (id, tag) = value.split_once('.')?;
        if id.len() > 64 || tag.len() > 64 {
            return None;
        }
        let id = URL_SAFE_NO_PAD.decode(id).ok()?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        hmac::verify(&self.key, &id, &tag).ok()?;
        Some(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_ids_verify_and_forged_ones_do_not() {
        let s = CookieSigner::new(&[7; 32]).unwrap();
        let (id, value) = s.mint();
        assert_eq!(s.verify(&value), Some(id.clone()));
        // Another id with the same tag, another secret, garbage: all refused.
        let forged = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(b"other"),
            value.split_once('.').unwrap().1
        );
        assert_eq!(s.verify(&forged), None);
        let other = CookieSigner::new(&[8; 32]).unwrap();
        assert_eq!(other.verify(&value), None);
        assert_eq!(s.verify("x"), None);
        assert_eq!(s.verify("....."), None);
        assert!(CookieSigner::new(b"short").is_err());
    }

    #[test]
    fn minted_cookie_carries_a_verifiable_value_and_the_attributes() {
        let s = CookieSigner::new(&[7; 32]).unwrap();
        let (id, cookie) = s.mint_cookie("wsgate_sticky", true);
        let value = cookie
            .strip_prefix("wsgate_sticky=")
            .and_then(|c| c.strip_suffix("; Path=/; HttpOnly; SameSite=Lax; Secure"))
            .unwrap();
        assert_eq!(value, s.sign(&id));
        assert_eq!(s.verify(value), Some(id));
        let (_, plain) = s.mint_cookie("sid", false);
        assert!(plain.ends_with("; SameSite=Lax"), "{plain}");
    }
}
