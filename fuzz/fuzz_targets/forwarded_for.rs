//! `X-Forwarded-For` and `Forwarded` from a trusted proxy: the client IP chosen is the
//! peer or an address written in the header, never anything else.
#![no_main]
use std::{
    convert::Infallible,
    net::{IpAddr, SocketAddr},
};

use axum::body::Body;
use http::{Request, Response};
use tower::{Layer, Service, ServiceExt};
use wsgate_layers::client_ip::{ClientIp, ClientIpLayer, ForwardingHeader, PeerAddr};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&ctl, data)) = data.split_first() else {
        return;
    };
    let (header, name) = if ctl & 1 == 0 {
        (ForwardingHeader::XForwardedFor, "x-forwarded-for")
    } else {
        (ForwardingHeader::Forwarded, "forwarded")
    };
    let peer: SocketAddr = "10.0.0.1:5000".parse().unwrap();
    let layer = ClientIpLayer::new()
        .trusted_proxies(["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()])
        .forwarding_header(header);
    let mut req = Request::new(Body::empty());
    // Several header lines: split the input on '\n'.
    for line in data.split(|b| *b == b'\n') {
        if let Ok(v) = http::HeaderValue::from_bytes(line) {
            req.headers_mut().append(name, v);
        }
    }
    req.extensions_mut().insert(PeerAddr(peer));
    let text = String::from_utf8_lossy(data).to_ascii_lowercase();
    let mut svc = layer.layer(tower::service_fn(|req: Request<Body>| async move {
        let ClientIp(ip) = *req
            .extensions()
            .get::<ClientIp>()
            .expect("ClientIp inserted");
        Ok::<_, Infallible>(Response::new(Body::from(ip.to_string())))
    }));
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let resp = rt.block_on(async { svc.ready().await.unwrap().call(req).await.unwrap() });
    let body = rt.block_on(async { axum::body::to_bytes(resp.into_body(), 1024).await.unwrap() });
    let ip: IpAddr = String::from_utf8(body.to_vec()).unwrap().parse().unwrap();
    // Every address written in the header, in any of its spellings (bare, with a port,
    // bracketed IPv6, IPv4-mapped IPv6).
    let written: Vec<IpAddr> = text
        .split(|c: char| ",;\"= \t\n[]".contains(c))
        .filter_map(|t| {
            t.parse::<IpAddr>()
                .ok()
                .or_else(|| t.parse::<SocketAddr>().ok().map(|s| s.ip()))
        })
        .map(wsgate_layers::client_ip::canonical)
        .collect();
    assert!(
        ip == peer.ip() || written.contains(&ip),
        "client IP {ip} is neither the peer nor written in {text:?}"
    );
});
