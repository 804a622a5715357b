//! Path and query sanitisation: what passes has no dot segment, encoded slash or
//! control byte, and stripping only ever removes whole parameters.
#![no_main]
use wsgate::hygiene::{check_path, check_query, QueryRules};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let (path, query) = s.split_once('?').unwrap_or((s, ""));
    if check_path(path).is_ok() {
        let lower = path.to_ascii_lowercase();
        assert!(!path.contains("//") && !path.contains('\\'), "{path:?}");
        assert!(!lower.contains("%2f") && !lower.contains("%5c"), "{path:?}");
        assert!(
            !path.split('/').any(|seg| seg == "." || seg == ".."),
            "{path:?}"
        );
        assert!(!path.bytes().any(|b| b < 0x20 || b == 0x7f), "{path:?}");
    }
    if check_query(query).is_ok() {
        assert!(!query.bytes().any(|b| b < 0x20 || b == 0x7f), "{query:?}");
    }
    let rules = QueryRules {
        allow: vec![],
        deny: vec!["debug".into()],
        strip: vec!["access_token".into(), "a".into()],
        max_value_len: Some(64),
    };
    if let Ok(kept) = rules.apply(query) {
        let kept = kept.unwrap_or_default();
        for pair in kept.split('&').filter(|p| !p.is_empty()) {
            assert!(
                query.split('&').any(|p| p == pair),
                "{pair:?} not in {query:?}"
            );
            let name = pair.split('=').next().unwrap();
            assert!(
                name != "access_token" && name != "a",
                "{name} was not stripped"
            );
        }
    }
});
