//! Property of the relay, over real sockets: any sequence of frames, cut into any write
//! sizes, arrives byte for byte unchanged in both directions (payloads, fragmentation,
//! interleaved control frames, masks), and the close codes of both sides arrive intact.

mod support;

use std::{net::SocketAddr, time::Duration};

use base64::{engine::general_purpose::STANDARD, Engine};
use proptest::prelude::*;
use sha1::{Digest, Sha1};
use support::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const PATIENCE: Duration = Duration::from_secs(10);

/// One message: binary or text, its payload, how many fragments, and a ping between
/// fragments.
#[derive(Debug, Clone)]
struct Msg {
    text: bool,
    payload: Vec<u8>,
    fragments: usize,
    ping_inside: Option<Vec<u8>>,
}

fn msg() -> impl Strategy<Value = Msg> {
    (
        any::<bool>(),
        prop_oneof![
            4 => proptest::collection::vec(any::<u8>(), 0..200),
            2 => proptest::collection::vec(any::<u8>(), 120..70_000),
        ],
        1usize..5,
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..=125)),
    )
        .prop_map(|(text, payload, fragments, ping_inside)| Msg {
            // Text payloads are valid UTF-8 (ASCII), so a validating peer could read them.
            payload: if text {
                payload.iter().map(|b| b'a' + b % 26).collect()
            } else {
                payload
            },
            text,
            fragments,
            ping_inside,
        })
}

fn close_code() -> impl Strategy<Value = u16> {
    prop_oneof![
        Just(1000u16),
        Just(1001),
        Just(1002),
        Just(1003),
        Just(1007),
        Just(1008),
        Just(1009),
        Just(1011),
        3000u16..5000,
    ]
}

fn frame(first: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let m = if mask.is_some() { 0x80 } else { 0 };
    let mut v = vec![first];
    match payload.len() {
        n if n < 126 => v.push(m | n as u8),
        n if n < 65536 => {
            v.push(m | 126);
            v.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            v.push(m | 127);
            v.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(k) => {
            v.extend_from_slice(&k);
            v.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
        }
        None => v.extend_from_slice(payload),
    }
    v
}

/// The wire bytes of `msgs` (masked from a client, with a fresh key per frame).
fn wire(msgs: &[Msg], masked: bool, seed: u32) -> Vec<u8> {
    let mut out = Vec::new();
    let mut k = seed;
    let mut key = || {
        k = k.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        masked.then_some(k.to_be_bytes())
    };
    for m in msgs {
        let n = m.fragments.min(m.payload.len().max(1));
        let size = m.payload.len().div_ceil(n).max(1);
        let chunks: Vec<&[u8]> = if m.payload.is_empty() {
            vec![&[]]
        } else {
            m.payload.chunks(size).collect()
        };
        for (i, c) in chunks.iter().enumerate() {
            let fin = if i + 1 == chunks.len() { 0x80 } else { 0 };
            let op = if i > 0 {
                0
            } else if m.text {
                1
            } else {
                2
            };
            out.extend(frame(fin | op, c, key()));
            if i == 0 && chunks.len() > 1 {
                if let Some(p) = &m.ping_inside {
                    out.extend(frame(0x89, p, key()));
                }
            }
        }
    }
    out
}

fn close_frame(code: u16, reason: &[u8], masked: Option<[u8; 4]>) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason);
    frame(0x88, &p, masked)
}

/// Writes `bytes` in pieces of the given sizes (cycled), flushing each.
async fn write_in_pieces(
    s: &mut (impl tokio::io::AsyncWrite + Unpin),
    bytes: &[u8],
    sizes: &[usize],
) {
    let mut at = 0;
    let mut i = 0;
    while at < bytes.len() {
        let n = sizes[i % sizes.len()].min(bytes.len() - at);
        s.write_all(&bytes[at..at + n]).await.unwrap();
        s.flush().await.unwrap();
        at += n;
        i += 1;
        if i % 16 == 0 {
            tokio::task::yield_now().await;
        }
    }
}

async fn read_exactly(
    s: &mut (impl tokio::io::AsyncRead + Unpin),
    n: usize,
    what: &str,
) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    tokio::time::timeout(PATIENCE, s.read_exact(&mut buf))
        .await
        .unwrap_or_else(|_| panic!("{what}: not all {n} bytes arrived"))
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    buf
}

async fn read_head(s: &mut TcpStream) -> Vec<u8> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tokio::time::timeout(PATIENCE, s.read_exact(&mut b))
            .await
            .expect("head in time")
            .expect("head");
        head.push(b[0]);
    }
    head
}

fn accept_key(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.as_bytes());
    h.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    STANDARD.encode(h.finalize())
}

#[derive(Debug, Clone)]
struct Case {
    from_client: Vec<Msg>,
    from_backend: Vec<Msg>,
    client_pieces: Vec<usize>,
    backend_pieces: Vec<usize>,
    client_close: u16,
    backend_close: u16,
    reason: Vec<u8>,
    seed: u32,
}

fn case() -> impl Strategy<Value = Case> {
    (
        proptest::collection::vec(msg(), 0..8),
        proptest::collection::vec(msg(), 0..8),
        proptest::collection::vec(1usize..3000, 1..8),
        proptest::collection::vec(1usize..3000, 1..8),
        close_code(),
        close_code(),
        proptest::collection::vec(b'a'..=b'z', 0..100),
        any::<u32>(),
    )
        .prop_map(|(fc, fb, cp, bp, cc, bc, reason, seed)| Case {
            from_client: fc,
            from_backend: fb,
            client_pieces: cp,
            backend_pieces: bp,
            client_close: cc,
            backend_close: bc,
            reason,
            seed,
        })
}

/// One socket through wsgate: both directions at once, then the close handshake.
async fn run_case(gate: SocketAddr, backend: &TcpListener, c: &Case) {
    let client_bytes = [
        wire(&c.from_client, true, c.seed),
        close_frame(c.client_close, &c.reason, Some(c.seed.to_be_bytes())),
    ]
    .concat();
    let backend_data = wire(&c.from_backend, false, 0);
    let backend_close = close_frame(c.backend_close, &c.reason, None);

    let mut client = TcpStream::connect(gate).await.unwrap();
    client
        .write_all(format!("GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let (mut up, _) = tokio::time::timeout(PATIENCE, backend.accept())
        .await
        .expect("wsgate connects to the backend")
        .unwrap();
    read_head(&mut up).await;
    up.write_all(format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n", accept_key(KEY)).as_bytes())
        .await
        .unwrap();
    assert!(read_head(&mut client).await.starts_with(b"HTTP/1.1 101"));

    let (mut cr, mut cw) = client.into_split();
    let (mut ur, mut uw) = up.into_split();
    let (client_got_all, client_may_close) = tokio::sync::oneshot::channel::<()>();
    let (backend_got_all, backend_may_close) = tokio::sync::oneshot::channel::<()>();
    let client_close = &client_bytes[client_bytes.len() - (6 + 2 + c.reason.len())..];
    let client_data = &client_bytes[..client_bytes.len() - client_close.len()];
    let client_writer = async {
        write_in_pieces(&mut cw, client_data, &c.client_pieces).await;
        // The close goes once the backend's data is in: data after a close is not
        // forwardable, so the test does not race the two.
        client_may_close.await.unwrap();
        cw.write_all(client_close).await.unwrap();
        // Nothing may follow a close frame: the client half-closes its TCP, as a
        // client that is done sending does; the backend's close must still come back.
        cw.shutdown().await.unwrap();
    };
    let backend_writer = async {
        write_in_pieces(&mut uw, &backend_data, &c.backend_pieces).await;
        backend_may_close.await.unwrap();
        uw.write_all(&backend_close).await.unwrap();
        uw.shutdown().await.unwrap();
    };
    let client_reader = async {
        let got = read_exactly(&mut cr, backend_data.len(), "backend to client").await;
        assert!(got == backend_data, "backend to client: bytes changed");
        client_got_all.send(()).unwrap();
        let got = read_exactly(&mut cr, backend_close.len(), "backend close").await;
        assert_eq!(got, backend_close, "the backend's close frame changed");
        // Then the socket ends: no half-open socket.
        let mut rest = Vec::new();
        tokio::time::timeout(PATIENCE, cr.read_to_end(&mut rest))
            .await
            .expect("wsgate left the client socket open after the close handshake")
            .unwrap();
        assert!(rest.is_empty(), "bytes after the close: {rest:?}");
    };
    let backend_reader = async {
        let got = read_exactly(&mut ur, client_bytes.len(), "client to backend").await;
        assert!(got == client_bytes, "client to backend: bytes changed");
        backend_got_all.send(()).unwrap();
        let mut rest = Vec::new();
        tokio::time::timeout(PATIENCE, ur.read_to_end(&mut rest))
            .await
            .expect("wsgate left the backend socket open after the close handshake")
            .unwrap();
        assert!(rest.is_empty(), "bytes after the close: {rest:?}");
    };
    tokio::join!(client_writer, backend_writer, client_reader, backend_reader);
}

#[test]
fn any_frames_in_any_write_sizes_cross_the_relay_unchanged_with_their_close_codes() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (g, backend) = rt.block_on(async {
        let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}", backend.local_addr().unwrap());
        let g = gate(&format!(
            r#"
[server]
listen = "{{LISTEN}}"
close_timeout = "5s"
shutdown_timeout = "200ms"

[[upstream]]
name = "b"
backends = ["{url}"]

[[route]]
path = "/ws"
upstream = "b"
"#
        ))
        .await;
        (g, backend)
    });
    let addr = g.listen[0];
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(64));
    runner
        .run(&case(), |c| {
            rt.block_on(run_case(addr, &backend, &c));
            Ok(())
        })
        .unwrap();
    rt.block_on(assert_no_leak(&g));
}

/// Bytes that are often UTF-8, often nearly so (one byte changed, cut short), and
/// sometimes anything.
fn maybe_utf8() -> impl Strategy<Value = Vec<u8>> {
    let text = any::<String>().prop_map(String::into_bytes);
    prop_oneof![
        3 => text.clone(),
        3 => (text.clone(), any::<prop::sample::Index>(), any::<u8>()).prop_map(|(mut v, i, b)| {
            if !v.is_empty() {
                let i = i.index(v.len());
                v[i] = b;
            }
            v
        }),
        2 => (text, any::<prop::sample::Index>()).prop_map(|(v, i)| {
            let cut = i.index(v.len() + 1);
            v[..cut].to_vec()
        }),
        2 => proptest::collection::vec(any::<u8>(), 0..64),
    ]
}

proptest! {
    /// The relay's validator fed any split of any byte string (and, masked, with the key
    /// restarting at fragment boundaries) reaches the same verdict as `std` on the whole.
    #[test]
    fn utf8_validator_in_any_pieces_agrees_with_std_on_the_whole(
        bytes in maybe_utf8(),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
        key in any::<[u8; 4]>(),
    ) {
        use wsgate::relay::{MaskedText, Utf8Validator};
        let want = std::str::from_utf8(&bytes).is_ok();
        let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
        cuts.push(bytes.len());
        cuts.sort_unstable();

        let mut plain = Utf8Validator::new();
        let mut masked = MaskedText::default();
        let (mut plain_ok, mut masked_ok, mut from) = (true, true, 0);
        for &to in &cuts {
            let piece = &bytes[from..to];
            plain_ok = plain_ok && plain.feed(piece).is_ok();
            // Each piece a fragment of its own, masked with its own key offset.
            masked.start_frame(key);
            let wire: Vec<u8> = piece.iter().enumerate().map(|(i, b)| b ^ key[i % 4]).collect();
            masked_ok = masked_ok && masked.feed(&wire).is_ok();
            from = to;
        }
        plain_ok = plain_ok && plain.finish().is_ok();
        masked_ok = masked_ok && masked.validator.finish().is_ok();
        prop_assert_eq!(plain_ok, want);
        prop_assert_eq!(masked_ok, want);
    }
}
