//! Replays the fuzz corpus kept in `fuzz/corpus/<target>/` for Sluice's own parsers (the
//! classifier and the rule-file parser) through the same target bodies, as ordinary tests.

use std::path::Path;

use sluice::fuzzing;

#[test]
fn corpus_replays_without_panics() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
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
            let data = std::fs::read(e.unwrap().path()).unwrap();
            fuzzing::run(target, &data);
            n += 1;
        }
        assert!(n > 0, "empty corpus for {target}");
    }
}
