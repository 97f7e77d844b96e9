//! Fuzz target `stmt_execute`: see `sluice_proto::fuzzing::stmt_execute` (the same body replays the corpus in
//! `proto/tests/fuzz_corpus.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sluice_proto::fuzzing::stmt_execute(data));
