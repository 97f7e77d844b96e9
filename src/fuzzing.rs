//! The bodies of the fuzz targets for Sluice's own parsers (`fuzz/`), here so that the corpus
//! kept in the repository is replayed by ordinary tests (`tests/fuzz_corpus.rs`).

use crate::router;

/// The statement classifier, normalizer, digest and `LOAD DATA LOCAL` finder on arbitrary
/// bytes: no panic; the digest equals the hash of the normalized text.
pub fn classifier(data: &[u8]) {
    let c = router::classify_query(data);
    let _ = (c.class, c.pin, c.unpin, c.hints.max_lag_ms);
    let n = router::lexer::normalize(data);
    let load_local = router::lexer::mentions_load_local(data);
    // The one-pass classification (its fast path included) says what the separate passes say.
    let (one, seen) = router::classify_query_seen(data);
    assert_eq!(one, c, "one-pass class differs");
    assert_eq!(
        seen.digest(),
        router::lexer::digest(data),
        "one-pass digest differs"
    );
    assert_eq!(seen.load_local(), load_local, "one-pass LOAD LOCAL differs");
    // The digest (hashed from tokens, no text built) is the hash of the normalized text.
    if std::str::from_utf8(data).is_ok() {
        let mut h = router::lexer::NormHash::default();
        router::lexer::NormSink::put(&mut h, n.as_bytes());
        assert_eq!(
            h.hash,
            router::lexer::digest(data),
            "digest and normalize disagree"
        );
    }
    let _ = router::slow_path::tables(data);
}

/// The rule-file parser on arbitrary text: an error or rules, never a panic; rules it accepts
/// can be evaluated against the input itself.
pub fn rules(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(rules) = router::rules::parse(text, std::path::Path::new("fuzz.toml")) {
        let subject = router::rules::Subject {
            sql: data,
            class: router::StatementClass::Read,
            user: "app",
            schema: None,
            client: std::net::IpAddr::from([127, 0, 0, 1]),
        };
        let _ = router::rules::first_match(&rules, &subject);
    }
}

/// Runs the named target (for corpus replay).
pub fn run(target: &str, data: &[u8]) {
    match target {
        "classifier" => classifier(data),
        "rules" => rules(data),
        other => panic!("unknown fuzz target {other}"),
    }
}

/// The targets, by name.
pub const TARGETS: [&str; 2] = ["classifier", "rules"];
