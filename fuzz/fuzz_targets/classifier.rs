//! Fuzz target `classifier`: see `sluice::fuzzing::classifier` (the same body replays the corpus in
//! `tests/fuzz_corpus.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sluice::fuzzing::classifier(data));
