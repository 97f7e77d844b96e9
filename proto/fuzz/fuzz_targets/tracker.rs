//! The response tracker fed arbitrary packet sequences, for every response kind and both EOF
//! modes: it may reject, but never panic, and never accept packets after the end.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_proto::tracker::{Progress, ResponseKind, ResponseTracker};

const KINDS: [ResponseKind; 8] = [
    ResponseKind::None,
    ResponseKind::Simple,
    ResponseKind::Statistics,
    ResponseKind::Query,
    ResponseKind::Execute,
    ResponseKind::Prepare,
    ResponseKind::FieldList,
    ResponseKind::Fetch,
];

fuzz_target!(|data: &[u8]| {
    let Some((&sel, mut rest)) = data.split_first() else { return };
    let mut t = ResponseTracker::new(KINDS[usize::from(sel & 7)], sel & 8 != 0);
    // Packets: a length byte, then that many bytes (a length of 255 means "a 16 MiB packet").
    while let Some((&n, tail)) = rest.split_first() {
        let take = usize::from(n).min(tail.len()).min(254);
        let (p, tail) = tail.split_at(take);
        rest = tail;
        let len = if n == 255 { 0xFF_FFFF } else { p.len() };
        match t.feed(len, p) {
            Ok(Progress::Done(_)) => {
                assert!(t.is_done());
                assert!(t.feed(p.len(), p).is_err());
                return;
            }
            Ok(Progress::LocalInfile) => t.local_infile_sent(),
            Ok(Progress::More) => {}
            Err(_) => return,
        }
    }
});
