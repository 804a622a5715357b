//! The sticky session cookie: its signature check, and the layer that reads it out of
//! any `Cookie` header. Only an exactly signed value is accepted (no malleable
//! encodings, no tag reuse), the cookie never reaches the backend, and every request
//! leaves with a key.
#![no_main]
use std::convert::Infallible;

use axum::body::Body;
use http::{Request, Response};
use tower::{Layer, Service, ServiceExt};
use wsgate_layers::{
    sticky::{CookieSigner, StickyLayer},
    upstream::StickyKey,
};

const SECRET: &[u8; 32] = b"fuzzing-sticky-secret-0123456789";

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let signer = CookieSigner::new(SECRET).unwrap();
    let Some((&ctl, data)) = data.split_first() else {
        return;
    };
    // 1. A genuine value, mutated at one place: only the unmutated value verifies.
    let id = &data[..data.len().min(32)];
    let genuine = signer.sign(id);
    assert_eq!(signer.verify(&genuine).as_deref(), Some(id));
    let mut mutated = genuine.clone().into_bytes();
    if !mutated.is_empty() {
        let at = usize::from(ctl) % mutated.len();
        mutated[at] = data.get(32).copied().unwrap_or(b'A');
    }
    if let Ok(m) = String::from_utf8(mutated) {
        if let Some(got) = signer.verify(&m) {
            assert_eq!(m, signer.sign(&got), "accepted a non-canonical value {m:?}");
        }
    }
    // 2. Any text as a cookie value: accepted only if it is exactly what we sign.
    if let Ok(s) = std::str::from_utf8(data) {
        if let Some(got) = signer.verify(s) {
            assert_eq!(s, signer.sign(&got), "accepted a forged value {s:?}");
        }
    }
    // 3. The layer, with the input as the Cookie header, non-ASCII bytes included
    //    (RELIABILITY.md, "Findings" 3: a non-ASCII cookie once hid the sticky one).
    let Ok(cookie) = http::HeaderValue::from_bytes(data) else {
        return;
    };
    // The first `wsgate_sticky` pair, if its value is genuine, must key the request.
    let expected = sticky_values(data)
        .next()
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| signer.verify(v));
    let layer = StickyLayer::cookie("wsgate_sticky", SECRET).unwrap();
    let mut svc = layer.layer(tower::service_fn(move |req: Request<Body>| {
        let expected = expected.clone();
        async move {
            let key = req.extensions().get::<StickyKey>().expect("no sticky key");
            if let Some(id) = &expected {
                assert_eq!(&key.0, id, "a genuine sticky cookie was not honoured");
            }
            for v in req.headers().get_all(http::header::COOKIE) {
                assert!(
                    sticky_values(v.as_bytes()).next().is_none(),
                    "the sticky cookie reached the backend: {v:?}"
                );
            }
            Ok::<_, Infallible>(Response::new(Body::empty()))
        }
    }));
    let mut req = Request::new(Body::empty());
    req.headers_mut().insert(http::header::COOKIE, cookie);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async { svc.ready().await.unwrap().call(req).await.unwrap() });
});

/// The values of the `wsgate_sticky` pairs in a `Cookie` header, in order: pairs are
/// `;`-separated, a pair without `=` is a bare name, names and values are trimmed of
/// spaces and tabs (the only whitespace a header value can hold).
fn sticky_values(header: &[u8]) -> impl Iterator<Item = &[u8]> {
    header.split(|b| *b == b';').filter_map(|p| {
        let (k, v) = match p.iter().position(|b| *b == b'=') {
            Some(i) => (&p[..i], &p[i + 1..]),
            None => (p, &b""[..]),
        };
        (k.trim_ascii() == b"wsgate_sticky").then(|| v.trim_ascii())
    })
}
