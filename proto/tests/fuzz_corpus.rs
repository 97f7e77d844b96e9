//! Replays the fuzz corpus kept in `proto/fuzz/corpus/<target>/` (inputs found by
//! `cargo fuzz`, and every crash found, minimized) through the same target bodies, as
//! ordinary tests on stable Rust.

use std::path::Path;

use sluice_proto::fuzzing;

#[test]
fn corpus_replays_without_panics() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut total = 0;
    for target in fuzzing::TARGETS {
        let dir = root.join(target);
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (the corpus is part of the repository)",
                dir.display()
            )
        });
        let mut n = 0;
        for e in entries {
            let path = e.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            fuzzing::run(target, &data);
            n += 1;
        }
        assert!(n > 0, "empty corpus for {target}");
        total += n;
    }
    assert!(total > 0);
}
