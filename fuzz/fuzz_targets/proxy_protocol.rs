//! PROXY protocol v1 and v2 headers: a header found in `data` is found the same in any
//! longer input, and every shorter prefix of it asks for more bytes.
#![no_main]
use wsgate_layers::proxy_protocol::parse;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(Some((header, n))) = parse(data) {
        assert!(n > 0 && n <= data.len(), "length {n} outside the input");
        let _ = (header.source(), header.destination());
        for cut in [0, n / 2, n.saturating_sub(1)] {
            if cut < n {
                assert!(
                    matches!(parse(&data[..cut]), Ok(None)),
                    "a {cut}-byte prefix of a {n}-byte header is not 'need more'"
                );
            }
        }
        let mut longer = data[..n].to_vec();
        longer.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let again = parse(&longer).expect("same header with data after it");
        assert_eq!(again.map(|(_, m)| m), Some(n));
    }
});
