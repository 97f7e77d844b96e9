//! Fuzz target `rules`: see `sluice::fuzzing::rules` (the same body replays the corpus in
//! `tests/fuzz_corpus.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sluice::fuzzing::rules(data));
