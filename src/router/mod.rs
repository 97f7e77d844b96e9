//! Routing: what a statement is ([`classify`], lexical and allocation-free, with
//! [`slow_path`] behind it) and where it goes ([`route`], a pure function of the statement,
//! the session state and the topology — no sockets, unit-tested on its own).

pub mod classify;
pub mod lexer;
pub mod route;
pub mod rules;
pub mod slow_path;

pub use classify::{Classified, Hints, PinReason, StatementClass};
pub use route::{route, PrimaryReason, Route, SessionView};

/// Classifies a query: the lexical pass, then the parser when the lexical pass is unsure;
/// when both are unsure, [`StatementClass::Other`] (which routes to the primary).
pub fn classify_query(sql: &[u8]) -> Classified<'_> {
    with_slow_path(sql, classify::classify(sql))
}

/// [`classify_query`], with the digest and the `LOAD … LOCAL` test made in the same lexical
/// pass ([`classify::classify_seen`]).
pub fn classify_query_seen(sql: &[u8]) -> (Classified<'_>, lexer::Seen) {
    let (c, seen) = classify::classify_seen(sql);
    (with_slow_path(sql, c), seen)
}

fn with_slow_path<'a>(sql: &'a [u8], mut c: Classified<'a>) -> Classified<'a> {
    if c.unsure {
        c.class = match slow_path::classify(sql) {
            // A statement the lexer found odd but the parser reads as a plain read is still
            // only trusted as a read when the lexer saw nothing primary-bound in it.
            Some(StatementClass::Read) if c.pin.is_none() && c.class == StatementClass::Read => {
                StatementClass::Read
            }
            Some(StatementClass::Read) => StatementClass::Other,
            Some(k) => k,
            None => StatementClass::Other,
        };
    }
    c
}
