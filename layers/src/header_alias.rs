//! Header names a backend may read as one field.
//!
//! # Design note
//!
//! CGI-style backends (WSGI, Rack, PHP, and the frameworks on top of them) read a header
//! through an environment variable: `X-Auth-Subject` and `X_Auth_Subject` both become
//! `HTTP_X_AUTH_SUBJECT`. A gateway that removes a client's `X-Auth-Subject` but passes its
//! `X_Auth_Subject` has removed nothing (nginx drops every name with `_` by default for
//! this reason). wsgate keeps other names with `_` (they are valid HTTP), and removes the
//! ones that alias a header it sets itself: identity headers, forwarding headers.

use http::{HeaderMap, HeaderName};

/// Whether `name` is `canonical` as a CGI-style backend reads it: ASCII case ignored, and
/// `_` in `name` read as `-`.
///
/// ```
/// use wsgate_layers::header_alias::is_alias;
/// assert!(is_alias("x-auth-subject", "X_Auth_Subject"));
/// assert!(is_alias("x-auth-subject", "X-AUTH-SUBJECT"));
/// assert!(!is_alias("x-auth-subject", "x-auth-subjects"));
/// ```
pub fn is_alias(canonical: &str, name: &str) -> bool {
    canonical.len() == name.len()
        && canonical
            .bytes()
            .zip(name.bytes())
            .all(|(c, n)| c.eq_ignore_ascii_case(&n) || (c == b'-' && n == b'_'))
}

/// Removes every header whose name holds a `_` and is an alias (see [`is_alias`]) of a
/// name `reserved` accepts; `reserved` is given the name with `_` read as `-`, in lower
/// case (as [`HeaderName`]s are).
///
/// Requests without a `_` in any header name (nearly all) cost one scan of the names and
/// no allocation.
pub fn remove_underscore_aliases(headers: &mut HeaderMap, reserved: impl Fn(&str) -> bool) {
    if !headers.keys().any(|k| k.as_str().contains('_')) {
        return;
    }
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().contains('_') && reserved(&k.as_str().replace('_', "-")))
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    #[test]
    fn only_underscore_aliases_of_reserved_names_are_removed() {
        let mut h = HeaderMap::new();
        for name in [
            "x_auth_subject",
            "x-auth_subject",
            "x_other",
            "x-auth-subject",
        ] {
            h.insert(
                HeaderName::from_bytes(name.as_bytes()).unwrap_or(HeaderName::from_static("x")),
                HeaderValue::from_static("v"),
            );
        }
        remove_underscore_aliases(&mut h, |n| n == "x-auth-subject");
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        // The dashed name is not an alias: it is the header itself, the caller's to judge.
        assert_eq!(left, ["x-auth-subject", "x_other"]);
    }
}
