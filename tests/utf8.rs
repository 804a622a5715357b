//! UTF-8 validation in the relay (`relay.validate_utf8`), over real sockets with a
//! hand-written backend, so each test sees exactly the bytes wsgate forwards: invalid
//! text never reaches the other side, both sides get 1007, valid text passes byte for
//! byte, and with the key off invalid bytes pass untouched.

mod support;

use std::time::Duration;

use support::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use wsgate::server::Running;

const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// wsgate in front of a backend listening on `l`; `relay` is the `[relay]` table, if any.
async fn gate_to(l: &TcpListener, relay: &str) -> Running {
    gate(&format!(
        r#"
[server]
listen = "{{LISTEN}}"
close_timeout = "1s"
shutdown_timeout = "200ms"

{relay}

[[upstream]]
name = "b"
backends = ["ws://{}"]

[[route]]
path = "/ws"
upstream = "b"
"#,
        l.local_addr().unwrap()
    ))
    .await
}

/// A client socket through wsgate and the backend's end of it.
async fn pair(g: &Running, l: &TcpListener) -> (TcpStream, TcpStream) {
    let (client, (backend, _)) = tokio::join!(raw_ws(g.listen[0]), accept_raw_upgrade(l, ""));
    (client, backend)
}

fn text(fin: bool, payload: &[u8]) -> Vec<u8> {
    masked_frame_with_key(if fin { 0x81 } else { 0x01 }, payload, KEY)
}

fn continuation(fin: bool, payload: &[u8]) -> Vec<u8> {
    masked_frame_with_key(if fin { 0x80 } else { 0x00 }, payload, KEY)
}

fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    [&code.to_be_bytes()[..], reason].concat()
}

/// Reads the close frame the client gets: code and reason.
async fn client_close(s: &mut TcpStream) -> (u16, String) {
    let (op, p) = read_frame(s).await;
    assert_eq!(op, 0x8, "expected a close frame, got opcode {op:#x} {p:?}");
    (
        u16::from_be_bytes([p[0], p[1]]),
        String::from_utf8(p[2..].to_vec()).expect("wsgate's reason is UTF-8"),
    )
}

/// The next frame the backend gets must be a close: its code and reason.
async fn backend_close(s: &mut TcpStream) -> (u16, String) {
    let (first, p) = read_masked_frame(s)
        .await
        .expect("the backend got no close frame");
    assert_eq!(first, 0x88, "expected a close frame, got {first:#x} {p:?}");
    (
        u16::from_be_bytes([p[0], p[1]]),
        String::from_utf8(p[2..].to_vec()).expect("wsgate's reason is UTF-8"),
    )
}

/// Reads exactly `n` bytes the backend received, within 5 s.
async fn backend_bytes(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut v))
        .await
        .expect("bytes within 5 s")
        .expect("the backend socket ended early");
    v
}

/// The backend's socket ends (EOF or reset) with no further byte.
async fn backend_ends(s: &mut TcpStream) {
    let mut b = [0u8; 64];
    match tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await {
        Ok(Ok(0)) | Ok(Err(_)) => {}
        Ok(Ok(n)) => panic!("the backend got {n} more bytes: {:x?}", &b[..n]),
        Err(_) => panic!("the backend socket stayed open"),
    }
}

#[tokio::test]
async fn invalid_utf8_in_a_text_frame_closes_both_sides_with_1007_and_never_reaches_the_backend() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let g = gate_to(&l, "").await;
    let (mut c, mut b) = pair(&g, &l).await;
    c.write_all(&text(true, "héllo".as_bytes())).await.unwrap();
    assert_eq!(
        read_masked_frame(&mut b).await,
        Some((0x81, "héllo".as_bytes().to_vec()))
    );
    c.write_all(&text(true, b"ok \xff\xfe")).await.unwrap();
    let (code, reason) = client_close(&mut c).await;
    assert_eq!(code, 1007, "{reason}");
    assert!(reason.contains("UTF-8"), "{reason}");
    // Nothing of the bad frame before the close: the next frame is wsgate's 1007.
    assert_eq!(backend_close(&mut b).await.0, 1007);
    assert_no_leak_after(&g, c, b).await;
}

#[tokio::test]
async fn an_impossible_sequence_split_across_fragments_and_a_ping_is_refused_before_the_message_ends(
) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let g = gate_to(&l, "").await;
    let (mut c, mut b) = pair(&g, &l).await;
    // "a" then the first byte of a 3-byte sequence: valid so far, forwarded.
    c.write_all(&text(false, b"a\xe2")).await.unwrap();
    assert_eq!(
        read_masked_frame(&mut b).await,
        Some((0x01, b"a\xe2".to_vec()))
    );
    c.write_all(&masked_frame_with_key(0x89, b"ping", KEY))
        .await
        .unwrap();
    assert_eq!(
        read_masked_frame(&mut b).await,
        Some((0x89, b"ping".to_vec()))
    );
    // '(' cannot continue 0xe2. The fragment is not final: refused at once, not at FIN.
    c.write_all(&continuation(false, b"(more")).await.unwrap();
    assert_eq!(client_close(&mut c).await.0, 1007);
    assert_eq!(backend_close(&mut b).await.0, 1007);
    assert_no_leak_after(&g, c, b).await;
}

#[tokio::test]
async fn a_four_byte_character_split_across_fragments_reads_and_a_ping_passes_byte_for_byte() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let g = gate_to(&l, "").await;
    let (mut c, mut b) = pair(&g, &l).await;
    // U+1F600 is f0 9f 98 80: cut after one byte inside the first fragment's read, after
    // two at the fragment's end, with a ping in between.
    let first = text(false, b"x\xf0\x9f");
    let ping = masked_frame_with_key(0x89, b"", KEY);
    let last = continuation(true, b"\x98\x80y");
    let cut = first.len() - 1;
    // Each piece is awaited at the backend before the next is written, so wsgate sees
    // it in a read of its own.
    for piece in [&first[..cut], &first[cut..], &ping[..], &last[..]] {
        c.write_all(piece).await.unwrap();
        assert_eq!(
            backend_bytes(&mut b, piece.len()).await,
            piece,
            "forwarded unchanged"
        );
    }
    // The message passed; the socket still works and closes normally.
    c.write_all(&masked_frame_with_key(
        0x88,
        &close_payload(1000, b"bye"),
        KEY,
    ))
    .await
    .unwrap();
    assert_eq!(backend_close(&mut b).await, (1000, "bye".into()));
    assert_no_leak_after(&g, c, b).await;
}

#[tokio::test]
async fn a_text_message_ending_inside_a_character_is_refused_at_its_final_frame() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let g = gate_to(&l, "").await;
    for (name, frames) in [
        ("one frame", vec![text(true, b"ab\xe2\x82")]),
        (
            "two fragments",
            vec![text(false, b"ab\xe2"), continuation(true, b"\x82")],
        ),
        (
            "an empty final fragment",
            vec![text(false, b"ab\xf0\x9f\x98"), continuation(true, b"")],
        ),
    ] {
        let (mut c, mut b) = pair(&g, &l).await;
        let (last, earlier) = frames.split_last().unwrap();
        for f in earlier {
            c.write_all(f).await.unwrap();
            let (first, _) = read_masked_frame(&mut b).await.expect(name);
            assert_eq!(
                first, 0x01,
                "{name}: a fragment that could still be valid passes"
            );
        }
        c.write_all(last).await.unwrap();
        assert_eq!(client_close(&mut c).await.0, 1007, "{name}");
        assert_eq!(backend_close(&mut b).await.0, 1007, "{name}");
        assert_no_leak_after(&g, c, b).await;
    }
}

#[tokio::test]
async fn invalid_utf8_inside_a_frame_already_started_cuts_the_backend_without_a_close() {
    // The frame's header and first bytes went out in an earlier read: a close frame now
    // would land inside that frame's payload, so the backend gets a TCP shutdown.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let g = gate_to(&l, "").await;
    let (mut c, mut b) = pair(&g, &l).await;
    let frame = text(true, b"valid start, then \xc0\xaf overlong");
    let head = 2 + 4 + 6;
    c.write_all(&frame[..head]).await.unwrap();
    assert_eq!(backend_bytes(&mut b, head).await, frame[..head]);
    c.write_all(&frame[head..]).await.unwrap();
    assert_eq!(client_close(&mut c).await.0, 1007);
    backend_ends(&mut b).await;
    assert_no_leak_after(&g, c, b).await;
}

#[tokio::test]
async fn invalid_utf8_from_the_backend_closes_both_sides_with_1007() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let g = gate_to(&l, "").await;
    let (mut c, mut b) = pair(&g, &l).await;
    b.write_all(&[0x81, 0x03, b'o', b'k', 0x80]).await.unwrap();
    let (code, reason) = client_close(&mut c).await;
    assert_eq!(code, 1007);
    assert!(reason.contains("backend"), "{reason}");
    assert_eq!(backend_close(&mut b).await.0, 1007);
    assert_no_leak_after(&g, c, b).await;
}

#[tokio::test]
async fn a_close_reason_that_is_not_utf8_is_refused_with_1007() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let g = gate_to(&l, "").await;
    let (mut c, mut b) = pair(&g, &l).await;
    // Autobahn 7.5.1's reason: "κόσμε" with a UTF-16 surrogate (ed a0 80) inside.
    let reason = b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited";
    c.write_all(&masked_frame_with_key(
        0x88,
        &close_payload(1000, reason),
        KEY,
    ))
    .await
    .unwrap();
    assert_eq!(client_close(&mut c).await.0, 1007);
    // The backend gets wsgate's 1007, not the client's close.
    assert_eq!(backend_close(&mut b).await.0, 1007);
    assert_no_leak_after(&g, c, b).await;
}

#[tokio::test]
async fn close_codes_no_peer_may_send_are_refused_with_1002_and_registered_ones_pass() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let g = gate_to(&l, "").await;
    // Autobahn 7.9.x, and 1015 and 5000.
    for code in [
        0u16, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000,
    ] {
        let (mut c, mut b) = pair(&g, &l).await;
        c.write_all(&masked_frame_with_key(0x88, &code.to_be_bytes(), KEY))
            .await
            .unwrap();
        assert_eq!(client_close(&mut c).await.0, 1002, "close code {code}");
        assert_eq!(
            backend_close(&mut b).await,
            (1001, "client protocol error".into()),
            "close code {code} must not be forwarded"
        );
        assert_no_leak_after(&g, c, b).await;
    }
    for code in [1000u16, 1003, 1007, 1011, 1012, 1014, 3000, 4999] {
        let (mut c, mut b) = pair(&g, &l).await;
        c.write_all(&masked_frame_with_key(
            0x88,
            &close_payload(code, b"ok"),
            KEY,
        ))
        .await
        .unwrap();
        assert_eq!(backend_close(&mut b).await, (code, "ok".into()));
        assert_no_leak_after(&g, c, b).await;
    }
}

#[tokio::test]
async fn binary_messages_are_not_judged_as_text() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let g = gate_to(&l, "").await;
    let (mut c, mut b) = pair(&g, &l).await;
    let frame = masked_frame_with_key(0x82, b"\xff\xfe\xc0\xaf", KEY);
    c.write_all(&frame).await.unwrap();
    assert_eq!(backend_bytes(&mut b, frame.len()).await, frame);
    assert_no_leak_after(&g, c, b).await;
}

#[tokio::test]
async fn with_validate_utf8_off_invalid_text_and_reasons_reach_the_backend_untouched() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let g = gate_to(&l, "[relay]\nvalidate_utf8 = false").await;
    let (mut c, mut b) = pair(&g, &l).await;
    let bad = [
        text(false, b"ok \xe2"),
        masked_frame_with_key(0x89, b"", KEY),
        continuation(true, b"(\xff"),
    ]
    .concat();
    c.write_all(&bad).await.unwrap();
    assert_eq!(backend_bytes(&mut b, bad.len()).await, bad);
    let close = masked_frame_with_key(0x88, &close_payload(1000, b"\xed\xa0\x80"), KEY);
    c.write_all(&close).await.unwrap();
    assert_eq!(backend_bytes(&mut b, close.len()).await, close);
    assert_no_leak_after(&g, c, b).await;
}

/// Drops both test ends and checks wsgate released everything.
async fn assert_no_leak_after(g: &Running, c: TcpStream, b: TcpStream) {
    drop(c);
    drop(b);
    assert_no_leak(g).await;
}
