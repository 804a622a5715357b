//! Token extraction from every source (Authorization, Sec-WebSocket-Protocol, Cookie,
//! query): random requests never reach the handler, and get a 4xx.
#![no_main]
use std::{convert::Infallible, sync::OnceLock};

use axum::body::Body;
use http::{Request, Response};
use tower::{Layer, Service, ServiceExt};
use wsgate_layers::jwt::{JwtAuthLayer, TokenSource};

fn layer() -> &'static (tokio::runtime::Runtime, JwtAuthLayer) {
    static L: OnceLock<(tokio::runtime::Runtime, JwtAuthLayer)> = OnceLock::new();
    L.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let layer = rt
            .block_on(
                JwtAuthLayer::builder()
                    .secret(b"fuzzing-secret-fuzzing-secret-32".to_vec())
                    .sources([
                        TokenSource::Header,
                        TokenSource::Protocol,
                        TokenSource::Cookie,
                        TokenSource::Query,
                    ])
                    .origin_allow_list(true)
                    .build(),
            )
            .expect("layer");
        (rt, layer)
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let (rt, layer) = layer();
    // Four fields separated by 0xff: Authorization, Sec-WebSocket-Protocol, Cookie, query.
    let mut parts = data.split(|b| *b == 0xff);
    let mut req = Request::builder();
    let query = String::from_utf8_lossy(parts.nth(3).unwrap_or_default()).into_owned();
    let mut parts = data.split(|b| *b == 0xff);
    let uri = format!("/ws?{}", query.replace(['#', ' '], ""));
    req = req.uri(
        uri.parse::<http::Uri>()
            .unwrap_or_else(|_| "/ws".parse().unwrap()),
    );
    for name in ["authorization", "sec-websocket-protocol", "cookie"] {
        if let Some(Ok(v)) = parts.next().map(http::HeaderValue::from_bytes) {
            req = req.header(name, v);
        }
    }
    let Ok(req) = req.body(Body::empty()) else {
        return;
    };
    let mut svc = layer.layer(tower::service_fn(|_req: Request<Body>| async move {
        Ok::<_, Infallible>(Response::new(Body::from("reached")))
    }));
    let resp = rt.block_on(async { svc.ready().await.unwrap().call(req).await.unwrap() });
    assert!(
        resp.status().is_client_error(),
        "a random token got {}",
        resp.status()
    );
});
