//! Entry points for the fuzz targets in `fuzz/` (not a public API).
//!
//! The parsers that see untrusted bytes first are crate-private; these thin wrappers let
//! the fuzz crate drive them, and each checks the invariants a fuzzer cannot see from a
//! panic alone (a chunked scan agrees with a whole scan, a forwarded request parses back
//! to what was checked). Every wrapper panics on a broken invariant, which the fuzzer
//! reports as a crash.

use http::{HeaderMap, HeaderName, HeaderValue, Method, Version};

use crate::{
    handshake::{self, Forwarding},
    relay::frame::{FrameScanner, ScanRules, Stop},
};

/// What a scan of a whole stream came to.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    forwarded: usize,
    end: String,
    messages: u64,
}

fn scan_all(rules: ScanRules, data: &[u8], chunk: usize) -> Outcome {
    let mut s = FrameScanner::new(rules);
    let (mut start, mut end) = (0usize, 0usize);
    loop {
        end = (end + chunk).min(data.len());
        let r = s.scan(&data[start..end]);
        assert!(r.forward <= end - start, "forwarded more than it was given");
        start += r.forward;
        match r.stop {
            Stop::More if end < data.len() => {}
            Stop::More => {
                return Outcome {
                    forwarded: start,
                    end: "more".into(),
                    messages: s.messages,
                }
            }
            Stop::Close(c) => {
                return Outcome {
                    forwarded: start,
                    end: format!("close {:?}", c.code),
                    messages: s.messages,
                }
            }
            Stop::Violation(v) => {
                assert!(
                    matches!(v.code, 1002 | 1007 | 1009),
                    "unexpected violation code {}",
                    v.code
                );
                return Outcome {
                    forwarded: start,
                    end: format!("violation {}", v.code),
                    messages: s.messages,
                };
            }
            other => panic!("{other:?} without a limiter or a boundary request"),
        }
    }
}

/// Scans `data` as a WebSocket byte stream. The first byte picks the rules (client or
/// server side, permessage-deflate, message limit, UTF-8 validation) and the size of the
/// reads; the whole stream scanned at once and in reads of that size must agree exactly,
/// except that invalid UTF-8 in a frame whose start an earlier read already forwarded
/// stops inside that frame (a "cut"), so more is forwarded, never less.
pub fn scan_frames(data: &[u8]) {
    let Some((&ctl, data)) = data.split_first() else {
        return;
    };
    let rules = ScanRules {
        masked: ctl & 1 != 0,
        rsv_allowed: if ctl & 2 != 0 { 0x40 } else { 0 },
        max_message: if ctl & 4 != 0 { 1 << 10 } else { 1 << 20 },
        validate_utf8: ctl & 8 != 0,
    };
    let chunk = usize::from(ctl >> 4) + 1;
    let whole = scan_all(rules, data, data.len().max(1));
    let pieces = scan_all(rules, data, chunk);
    if whole.end == "violation 1007" && pieces.end == whole.end {
        assert!(
            pieces.forwarded >= whole.forwarded && pieces.messages == whole.messages,
            "reads of {chunk} bytes: {pieces:?}, whole: {whole:?}"
        );
    } else {
        assert_eq!(whole, pieces, "scanning in reads of {chunk} bytes differs");
    }
}

/// Parses `raw` as a client's request head (httparse, as hyper does) and runs the
/// WebSocket handshake checks on it. When they pass, the request written to the
/// backend must parse back as one request whose key is the client's.
pub fn check_handshake(raw: &[u8]) {
    let mut slots = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut slots);
    let Ok(httparse::Status::Complete(_)) = req.parse(raw) else {
        return;
    };
    let (Some(method), Some(path), Some(v)) = (req.method, req.path, req.version) else {
        return;
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return;
    };
    let version = if v == 1 {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    let mut headers = HeaderMap::new();
    for h in req.headers.iter() {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) else {
            return;
        };
        headers.append(name, value);
    }
    let Ok(hs) = handshake::check_client(&method, version, &headers, false) else {
        return;
    };
    if crate::hygiene::check_path(path.split('?').next().unwrap_or("")).is_err() {
        return;
    }
    let host = headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok());
    let fwd = Forwarding {
        client_ip: "192.0.2.1".parse().unwrap(),
        trusted_peer: raw.len() % 2 == 0,
        peer: "192.0.2.1:4000".parse().unwrap(),
        tls: false,
        request_id: "fuzz",
        host,
    };
    let out = handshake::upstream_request(path, "backend:9000", &hs, &headers, &fwd);
    let mut slots = [httparse::EMPTY_HEADER; 256];
    let mut back = httparse::Request::new(&mut slots);
    match back.parse(&out) {
        Ok(httparse::Status::Complete(n)) => {
            assert_eq!(
                n,
                out.len(),
                "the forwarded request has bytes after its head"
            )
        }
        other => panic!(
            "the forwarded request does not parse ({other:?}): {:?}",
            String::from_utf8_lossy(&out)
        ),
    }
    let keys: Vec<&[u8]> = back
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("sec-websocket-key"))
        .map(|h| h.value)
        .collect();
    assert_eq!(
        keys,
        [hs.key.as_bytes()],
        "the key was not forwarded exactly once"
    );
    let hosts = back
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("host"))
        .count();
    assert_eq!(hosts, 1, "the forwarded request has {hosts} Host headers");
}

/// Parses `raw` as a backend's answer to an upgrade wsgate sent; a 101 that passes must
/// carry the right accept key, and the head length must lie inside `raw`.
pub fn check_upstream_response(raw: &[u8]) {
    let mut headers = HeaderMap::new();
    headers.insert(http::header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(
        http::header::CONNECTION,
        HeaderValue::from_static("Upgrade"),
    );
    headers.insert(
        http::header::SEC_WEBSOCKET_VERSION,
        HeaderValue::from_static("13"),
    );
    headers.insert(
        http::header::SEC_WEBSOCKET_KEY,
        HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="),
    );
    headers.insert(
        http::header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static("chat, v2"),
    );
    headers.insert(
        http::header::SEC_WEBSOCKET_EXTENSIONS,
        HeaderValue::from_static("permessage-deflate"),
    );
    let hs = handshake::check_client(&Method::GET, Version::HTTP_11, &headers, false)
        .expect("a valid handshake");
    match handshake::parse_upstream_response(raw, &hs) {
        Ok(Some(handshake::UpstreamAnswer::Switching {
            head_len, protocol, ..
        })) => {
            assert!(head_len <= raw.len());
            if let Some(p) = protocol {
                let p = p.to_str().unwrap().trim();
                assert!(
                    p == "chat" || p == "v2",
                    "accepted a subprotocol not offered: {p}"
                );
            }
        }
        Ok(Some(handshake::UpstreamAnswer::Refused { head_len, .. })) => {
            assert!(head_len <= raw.len())
        }
        Ok(None) | Err(_) => {}
    }
}

/// Runs `raw` through the fast path's request-head parser (`upgrade`): a head it takes
/// must be a GET/1.1 WebSocket upgrade without a body, and the request built from it
/// must carry exactly the headers parsed, each value unchanged.
pub fn check_fast_request_head(raw: &[u8]) {
    use crate::upgrade::{build_request, shape, Limits, Shape};
    let limits = Limits {
        bytes: 16 * 1024,
        headers: 100,
    };
    let Shape::Upgrade(len) = shape(raw, limits) else {
        return;
    };
    assert!(len <= raw.len(), "head longer than the input");
    assert!(len <= limits.bytes, "head over the limit");
    let buf = bytes::Bytes::copy_from_slice(raw);
    let Some(req) = build_request(&buf, len) else {
        return;
    };
    assert_eq!(req.method(), Method::GET);
    assert_eq!(req.version(), Version::HTTP_11);
    let h = req.headers();
    assert!(!h.contains_key(http::header::CONTENT_LENGTH));
    assert!(!h.contains_key(http::header::TRANSFER_ENCODING));
    assert!(handshake::header_has_token(
        h,
        http::header::UPGRADE,
        "websocket"
    ));
    let mut slots = [httparse::EMPTY_HEADER; crate::upgrade::MAX_FAST_HEADERS];
    let mut parsed = httparse::Request::new(&mut slots);
    assert!(matches!(
        parsed.parse(&raw[..len]),
        Ok(httparse::Status::Complete(_))
    ));
    assert_eq!(h.len(), parsed.headers.len(), "headers lost or added");
    for p in parsed.headers.iter() {
        assert!(
            h.get_all(p.name).iter().any(|v| v.as_bytes() == p.value),
            "header {} changed",
            p.name
        );
    }
}
