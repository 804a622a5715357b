//! Taking one cookie out of a request's `Cookie` headers, as bytes.
//!
//! # Design note
//!
//! Browsers send cookie values that are not ASCII (`name=café` in UTF-8, or in another
//! encoding), and `HeaderValue::to_str` refuses those. A parser that works on `&str`
//! therefore has to skip such a header whole, which both hides the cookie we look for
//! (the sticky cookie, the token cookie) and forwards it to the backend. So the header
//! is split as bytes: pairs are separated by `;`, a name is an ASCII token, and a value
//! may be any bytes. Only the named pair is removed; every other pair is kept byte for
//! byte, and a header value that does not hold the named cookie is not touched at all.

use http::{header::COOKIE, HeaderMap, HeaderValue};

/// Removes every cookie `name` from `headers` and returns the raw value of the first one.
///
/// A `Cookie` header left with no pair is dropped. `None` means the cookie was absent
/// (headers untouched); `Some(b"")` means it was present with an empty value.
pub(crate) fn take_cookie(headers: &mut HeaderMap, name: &str) -> Option<Vec<u8>> {
    if !headers
        .get_all(COOKIE)
        .iter()
        .any(|v| holds(v.as_bytes(), name))
    {
        return None;
    }
    let mut found = None;
    let mut kept: Vec<HeaderValue> = Vec::new();
    for v in headers.get_all(COOKIE) {
        if !holds(v.as_bytes(), name) {
            kept.push(v.clone());
            continue;
        }
        let mut rest: Vec<&[u8]> = Vec::new();
        for (pair, key, value) in pairs(v.as_bytes()) {
            if key == name.as_bytes() {
                found.get_or_insert_with(|| value.to_vec());
            } else {
                rest.push(pair);
            }
        }
        if !rest.is_empty() {
            // The bytes all come from a valid header value and "; " is valid, so this
            // cannot fail; if it did, dropping the rest is the safe side.
            if let Ok(v) = HeaderValue::from_bytes(&rest.join(&b"; "[..])) {
                kept.push(v);
            }
        }
    }
    headers.remove(COOKIE);
    for v in kept {
        headers.append(COOKIE, v);
    }
    found
}

/// Whether the header value holds a cookie called `name`.
fn holds(value: &[u8], name: &str) -> bool {
    pairs(value).any(|(_, key, _)| key == name.as_bytes())
}

/// The non-empty `name=value` pairs of one `Cookie` header value, each as
/// `(pair, name, value)` with surrounding whitespace trimmed.
fn pairs(value: &[u8]) -> impl Iterator<Item = (&[u8], &[u8], &[u8])> {
    value
        .split(|b| *b == b';')
        .map(<[u8]>::trim_ascii)
        .filter(|p| !p.is_empty())
        .map(|pair| match pair.iter().position(|b| *b == b'=') {
            Some(i) => (pair, pair[..i].trim_ascii(), pair[i + 1..].trim_ascii()),
            None => (pair, pair, &b""[..]),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cookies(h: &HeaderMap) -> Vec<&[u8]> {
        h.get_all(COOKIE)
            .iter()
            .map(HeaderValue::as_bytes)
            .collect()
    }

    #[test]
    fn named_cookie_next_to_a_non_ascii_cookie_is_taken_out_and_the_other_kept_byte_for_byte() {
        // UTF-8 and Latin-1 (not UTF-8 at all) values.
        for other in [&b"name=caf\xc3\xa9"[..], &b"name=caf\xe9"[..]] {
            let mut header = b"wsgate_sticky=abc.def; ".to_vec();
            header.extend_from_slice(other);
            let mut h = HeaderMap::new();
            h.insert(COOKIE, HeaderValue::from_bytes(&header).unwrap());
            assert_eq!(
                take_cookie(&mut h, "wsgate_sticky").as_deref(),
                Some(&b"abc.def"[..])
            );
            assert_eq!(cookies(&h), [other]);
        }
    }

    #[test]
    fn only_the_named_cookie_is_removed_and_an_empty_header_is_dropped() {
        let mut h = HeaderMap::new();
        h.insert(COOKIE, HeaderValue::from_static("a=1; t=x=y; b=2"));
        assert_eq!(take_cookie(&mut h, "t").as_deref(), Some(&b"x=y"[..]));
        assert_eq!(cookies(&h), [&b"a=1; b=2"[..]]);

        let mut h = HeaderMap::new();
        h.insert(COOKIE, HeaderValue::from_static(" t=1 ;t=2; "));
        assert_eq!(take_cookie(&mut h, "t").as_deref(), Some(&b"1"[..]));
        assert!(!h.contains_key(COOKIE));
    }

    #[test]
    fn headers_without_the_cookie_are_left_as_they_were() {
        let mut h = HeaderMap::new();
        h.append(
            COOKIE,
            HeaderValue::from_bytes(b"x=caf\xe9 ;  y=2").unwrap(),
        );
        h.append(COOKIE, HeaderValue::from_static("t=tok; z=3"));
        assert_eq!(take_cookie(&mut h, "t").as_deref(), Some(&b"tok"[..]));
        assert_eq!(cookies(&h), [&b"x=caf\xe9 ;  y=2"[..], &b"z=3"[..]]);

        let mut h = HeaderMap::new();
        h.insert(COOKIE, HeaderValue::from_static("tt=1; a t=2"));
        assert_eq!(take_cookie(&mut h, "t"), None);
        assert_eq!(cookies(&h), [&b"tt=1; a t=2"[..]]);
    }
}
