//! Connection ids as a client sees them: the greeting carries the Sluice session id, and
//! `CONNECTION_ID()`, `KILL [CONNECTION | QUERY] n` and `COM_PROCESS_KILL` use that id — never
//! a server thread id, which with multiplexing belongs to whichever session holds the
//! connection at the moment (a `KILL` forwarded as is could end an unrelated session).
//!
//! - `KILL [HARD | SOFT] [CONNECTION] n`: ends Sluice session n (its client sees the
//!   connection closed, as after a server-side kill); `n` = the caller's own id answers 1927
//!   and closes, as MariaDB does.
//! - `KILL [HARD | SOFT] QUERY n`: interrupts the statement session n is running, by sending
//!   `KILL QUERY <thread>` to the server thread serving it; nothing to do when it is idle.
//! - only sessions of the same user may be killed (1095 otherwise: Sluice has no privilege to
//!   grant the right to kill other users' sessions; the admin port's `KILL SESSION` does);
//!   an unknown id gets 1094.
//! - `KILL QUERY ID`, `KILL USER` name server-wide things that multiplexing shares among
//!   sessions: refused with 1235.
//! - The same for a prepared `KILL` (`KILL ?` binds the id at each execution; the executions
//!   are answered here, never sent to a server) and for `EXECUTE IMMEDIATE 'KILL n'`;
//!   `PREPARE s FROM 'KILL n'` is refused (the `EXECUTE s` would reach the server as is).

use std::sync::atomic::Ordering;

use sluice_proto::err::ErrPacket;

use crate::router::lexer::{eq_kw, Lexer, Token};

/// A parsed `KILL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kill {
    Connection(u64),
    Query(u64),
}

/// `None` when `sql` is not a `KILL`; `Some(Err(what))` for a form Sluice refuses. Besides
/// `KILL …` itself: `EXECUTE IMMEDIATE '<a KILL>'` is that KILL, and `PREPARE s FROM '<a
/// KILL>'` is refused (Sluice would not see the `EXECUTE s` that runs it).
pub(super) fn parse(sql: &[u8]) -> Option<Result<Kill, &'static str>> {
    // Every statement pays this test: no lexer unless the statement starts with a `K` (or
    // `E`/`P`: EXECUTE IMMEDIATE, PREPARE) or with a comment (which may hide one:
    // `/*!KILL 5*/`, `/* x */ KILL 5`).
    let first = sql.iter().find(|b| !b.is_ascii_whitespace())?;
    if !matches!(
        first,
        b'k' | b'K' | b'e' | b'E' | b'p' | b'P' | b'/' | b'-' | b'#'
    ) {
        return None;
    }
    let mut lx = Lexer::new(sql);
    match lx.next_token() {
        Some(Token::Word(w)) if eq_kw(w, b"KILL") => {
            let k = parse_rest(sql, lx)?;
            Some(k.and_then(|k| k.literal().ok_or("KILL with anything but a number")))
        }
        Some(Token::Word(w)) if eq_kw(w, b"EXECUTE") => {
            match lx.next_token() {
                Some(Token::Word(w)) if eq_kw(w, b"IMMEDIATE") => {}
                _ => return None,
            }
            let (text, rest) = string_literal(sql, &mut lx)?;
            let k = match parse_prepared(&text)? {
                Ok(k) => k,
                Err(e) => return Some(Err(e)),
            };
            // `EXECUTE IMMEDIATE 'KILL ?' USING 5`: the id is an expression.
            match (k.literal(), rest) {
                (Some(k), true) => Some(Ok(k)),
                _ => Some(Err("KILL with a parameter in EXECUTE IMMEDIATE")),
            }
        }
        Some(Token::Word(w)) if eq_kw(w, b"PREPARE") => {
            // PREPARE name FROM '<text>'
            match lx.next_token() {
                Some(Token::Word(_) | Token::Quoted(_)) => {}
                _ => return None,
            }
            match lx.next_token() {
                Some(Token::Word(w)) if eq_kw(w, b"FROM") => {}
                _ => return None,
            }
            let (text, _) = string_literal(sql, &mut lx)?;
            // Any KILL form, even one refused anyway.
            parse_prepared(&text).map(|_| Err("KILL in a text-protocol PREPARE"))
        }
        _ => None,
    }
}

/// A `KILL` prepared by the binary protocol (`COM_STMT_PREPARE`): as the text form, and the id
/// may be a parameter (`KILL ?`).
pub(super) fn parse_prepared(sql: &[u8]) -> Option<Result<PreparedKill, &'static str>> {
    let first = sql.iter().find(|b| !b.is_ascii_whitespace())?;
    if !matches!(first, b'k' | b'K' | b'/' | b'-' | b'#') {
        return None;
    }
    let mut lx = Lexer::new(sql);
    match lx.next_token() {
        Some(Token::Word(w)) if eq_kw(w, b"KILL") => parse_rest(sql, lx),
        _ => None,
    }
}

/// A `KILL` whose id is a literal or (prepared) the statement's one parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreparedKill {
    pub query: bool,
    /// `None`: the parameter.
    pub id: Option<u64>,
}

impl PreparedKill {
    fn literal(self) -> Option<Kill> {
        self.id.map(|id| self.with(id))
    }

    pub(super) fn with(self, id: u64) -> Kill {
        if self.query {
            Kill::Query(id)
        } else {
            Kill::Connection(id)
        }
    }
}

/// What follows the word `KILL`.
fn parse_rest(sql: &[u8], mut lx: Lexer<'_>) -> Option<Result<PreparedKill, &'static str>> {
    let mut query = false;
    let mut before = sql.len() - lx.rest().len();
    let mut t = lx.next_token();
    if matches!(t, Some(Token::Word(w)) if eq_kw(w, b"HARD") || eq_kw(w, b"SOFT")) {
        before = sql.len() - lx.rest().len();
        t = lx.next_token();
    }
    match t {
        Some(Token::Word(w)) if eq_kw(w, b"CONNECTION") => {
            before = sql.len() - lx.rest().len();
            t = lx.next_token();
        }
        Some(Token::Word(w)) if eq_kw(w, b"QUERY") => {
            query = true;
            before = sql.len() - lx.rest().len();
            t = lx.next_token();
            if matches!(t, Some(Token::Word(w)) if eq_kw(w, b"ID")) {
                return Some(Err("KILL QUERY ID"));
            }
        }
        Some(Token::Word(w)) if eq_kw(w, b"USER") => return Some(Err("KILL USER")),
        _ => {}
    }
    let id = match t {
        Some(Token::Punct(b'?')) => None,
        Some(Token::Number) => {
            let after = sql.len() - lx.rest().len();
            Some(
                std::str::from_utf8(crate::router::lexer::trim(&sql[before..after]))
                    .ok()?
                    .parse()
                    .ok()?,
            )
        }
        // An expression (`KILL CONNECTION_ID()`…): left to the server, which refuses it.
        _ => return Some(Err("KILL with anything but a number")),
    };
    loop {
        match lx.next_token() {
            None => break,
            Some(Token::Punct(b';')) => {}
            Some(_) => return Some(Err("KILL followed by more")),
        }
    }
    Some(Ok(PreparedKill { query, id }))
}

/// The text of the string literal that comes next (quotes taken off, escapes resolved), and
/// whether nothing but `;` follows it. `None`: not a plain literal.
fn string_literal(sql: &[u8], lx: &mut Lexer<'_>) -> Option<(Vec<u8>, bool)> {
    // The literal starts after any comment: `EXECUTE IMMEDIATE /* c */ 'KILL 5'`.
    lx.skip_to_token();
    let before = sql.len() - lx.rest().len();
    if lx.next_token() != Some(Token::Str) {
        return None;
    }
    let after = sql.len() - lx.rest().len();
    let raw = crate::router::lexer::trim(&sql[before..after]);
    let (&q, body) = raw.split_first()?;
    if !matches!(q, b'\'' | b'"') || body.last() != Some(&q) {
        return None;
    }
    let body = &body[..body.len() - 1];
    let mut text = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            b'\\' if i + 1 < body.len() => {
                text.push(body[i + 1]);
                i += 2;
            }
            c if c == q && body.get(i + 1) == Some(&q) => {
                text.push(q);
                i += 2;
            }
            c => {
                text.push(c);
                i += 1;
            }
        }
    }
    let mut ends = true;
    while let Some(t) = lx.next_token() {
        if t != Token::Punct(b';') {
            ends = false;
            break;
        }
    }
    Some((text, ends))
}

/// The id an execution of a prepared `KILL ?` binds: its one parameter, an integer (or a
/// string or decimal holding one), as the server converts it.
pub(super) fn bound_id(
    e: &sluice_proto::stmt::StmtExecute<'_>,
    types: &[u8],
) -> Result<u64, &'static str> {
    if e.null_bitmap.first().is_some_and(|b| b & 1 != 0) {
        return Err("KILL of a NULL id");
    }
    let (&t, unsigned) = match types {
        [t, flags] => (t, flags & 0x80 != 0),
        _ => return Err("KILL with more than one parameter"),
    };
    let v = e.values;
    let int = |n: usize| -> Option<i128> {
        let b = v.get(..n)?;
        let mut x = [0u8; 16];
        x[..n].copy_from_slice(b);
        let u = u128::from_le_bytes(x);
        Some(if unsigned {
            u as i128
        } else {
            // Sign-extend an n-byte value.
            let shift = 128 - 8 * n as u32;
            ((u << shift) as i128) >> shift
        })
    };
    let n: Option<i128> = match t {
        0x01 => int(1),
        0x02 | 0x0D => int(2),
        0x03 | 0x09 => int(4),
        0x08 => int(8),
        0x00 | 0x0F | 0xF6 | 0xFD | 0xFE | 0xFC | 0xFB | 0xFA | 0xF9 => {
            let mut r = sluice_proto::lenenc::Reader::new(v);
            r.lenenc_bytes("KILL id")
                .ok()
                .and_then(|s| std::str::from_utf8(s).ok())
                .and_then(|s| s.trim().parse::<i128>().ok())
        }
        _ => None,
    };
    match n {
        Some(n) => u64::try_from(n).map_err(|_| "KILL of a negative id"),
        None => Err("KILL with an id that is not an integer"),
    }
}

/// `COM_PROCESS_KILL`: a 4-byte connection id.
pub(super) fn parse_process_kill(payload: &[u8]) -> Option<Kill> {
    let b: [u8; 4] = payload.get(1..5)?.try_into().ok()?;
    Some(Kill::Connection(u64::from(u32::from_le_bytes(b))))
}

pub(super) fn unknown_thread(id: u64) -> ErrPacket {
    ErrPacket::new(1094, b"HY000", format!("Unknown thread id: {id}"))
}

pub(super) fn not_owner(id: u64) -> ErrPacket {
    ErrPacket::new(1095, b"HY000", format!("You are not owner of thread {id}"))
}

pub(super) fn connection_killed() -> ErrPacket {
    ErrPacket::new(1927, b"70100", "Connection was killed")
}

pub(super) fn unsupported(what: &str) -> ErrPacket {
    ErrPacket::new(
        1235,
        b"42000",
        format!(
            "Sluice does not support {what}: with multiplexing, server threads and users' connections are shared; use KILL [CONNECTION | QUERY] with the id from CONNECTION_ID()"
        ),
    )
}

/// The server index and thread id a session's statement runs on now, packed for one atomic
/// store on the hot path (`u64::MAX` = none).
pub(super) fn pack(server: usize, thread: u32) -> u64 {
    ((server as u64) << 32) | u64::from(thread)
}

pub(super) fn unpack(v: u64) -> Option<(usize, u32)> {
    (v != u64::MAX).then_some(((v >> 32) as usize, v as u32))
}

/// What `KILL n` does to the session registry; the caller answers the client.
pub(super) enum Verdict {
    /// Session n is being ended: answer once its client connection is closed
    /// (`Registry::closed`).
    Killed(std::sync::Arc<super::registry::SessionInfo>),
    /// The caller killed itself: answer 1927 and close.
    Myself,
    /// Interrupt thread `thread` on server `server`.
    Interrupt {
        server: usize,
        thread: u32,
    },
    /// `KILL QUERY` of an idle session: nothing to do.
    Idle,
    Refused(ErrPacket),
}

/// Decides a `KILL` by session `me` (of `user`) against the registry.
pub(super) fn decide(shared: &crate::state::Shared, me: u32, user: &str, kill: Kill) -> Verdict {
    let (Kill::Connection(id) | Kill::Query(id)) = kill;
    let Some(target) = u32::try_from(id).ok().and_then(|i| shared.sessions.get(i)) else {
        return Verdict::Refused(unknown_thread(id));
    };
    if target.names().0 != user {
        return Verdict::Refused(not_owner(id));
    }
    match kill {
        Kill::Connection(_) if target.id == me => Verdict::Myself,
        Kill::Connection(_) => match shared.sessions.kill(target.id) {
            Some(victim) => {
                shared
                    .counters
                    .sessions_killed
                    .fetch_add(1, Ordering::Relaxed);
                tracing::info!(session = target.id, "session killed by KILL from its user");
                Verdict::Killed(victim)
            }
            None => Verdict::Refused(unknown_thread(id)),
        },
        Kill::Query(_) => {
            if !target.busy.load(Ordering::Relaxed) {
                return Verdict::Idle;
            }
            match unpack(target.running.load(Ordering::Relaxed)) {
                Some((server, thread)) => Verdict::Interrupt { server, thread },
                None => Verdict::Idle,
            }
        }
    }
}

/// Replaces every `CONNECTION_ID()` in a statement with the session's id (as
/// `CAST(id AS UNSIGNED)`, the function's type; a bare `SELECT CONNECTION_ID()` keeps its
/// column name through an alias). `None` when the statement does not call it.
pub(super) fn rewrite_connection_id(sql: &[u8], id: u32) -> Option<Vec<u8>> {
    // Cheap test first (every statement pays it): look only before each `(`.
    if !mentions_connection_id(sql) {
        return None;
    }
    let mut lx = Lexer::new(sql);
    let mut calls = Vec::new();
    let mut tokens = 0;
    let mut selects_only_it = false;
    loop {
        let start = sql.len() - lx.rest().len();
        let Some(t) = lx.next_token() else { break };
        tokens += 1;
        if tokens == 1 {
            selects_only_it = matches!(t, Token::Word(w) if eq_kw(w, b"SELECT"));
        }
        if let Token::Word(w) = t {
            if eq_kw(w, b"CONNECTION_ID") {
                let save = lx.clone();
                if lx.next_token() == Some(Token::Punct(b'('))
                    && lx.next_token() == Some(Token::Punct(b')'))
                {
                    let end = sql.len() - lx.rest().len();
                    // The word starts where the token does (after any blanks or comments).
                    let word_at = start
                        + sql[start..end]
                            .windows(13)
                            .position(|x| x.eq_ignore_ascii_case(b"connection_id"))?;
                    calls.push((word_at, end));
                    continue;
                }
                lx = save;
            }
        }
    }
    if calls.is_empty() || lx.unsure {
        return None;
    }
    // `SELECT CONNECTION_ID()` alone (a driver's or pool's check): keep the column name.
    let alone = selects_only_it
        && calls.len() == 1
        && {
            let rest = crate::router::lexer::trim(&sql[calls[0].1..]);
            rest.is_empty() || rest == b";"
        }
        && crate::router::lexer::trim(&sql[..calls[0].0]).eq_ignore_ascii_case(b"select");
    let mut out = Vec::with_capacity(sql.len() + 32);
    let mut at = 0;
    for (s, e) in &calls {
        out.extend_from_slice(&sql[at..*s]);
        out.extend_from_slice(format!("CAST({id} AS UNSIGNED)").as_bytes());
        if alone {
            out.extend_from_slice(b" AS `");
            out.extend_from_slice(&sql[*s..*e]);
            out.push(b'`');
        }
        at = *e;
    }
    out.extend_from_slice(&sql[at..]);
    Some(out)
}

/// Whether `connection_id` (any case, blanks allowed before the parenthesis) precedes some
/// `(` in `sql`: one pass over the bytes, a 13-byte comparison only at each `(`.
fn mentions_connection_id(sql: &[u8]) -> bool {
    const NAME: &[u8] = b"connection_id";
    // memchr: most statements have no `(` at all, and this runs for every one.
    memchr::memchr_iter(b'(', sql).any(|at| {
        let mut end = at;
        while end > 0 && sql[end - 1].is_ascii_whitespace() {
            end -= 1;
        }
        end >= NAME.len() && sql[end - NAME.len()..end].eq_ignore_ascii_case(NAME)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kill_forms() {
        assert_eq!(parse(b"KILL 42"), Some(Ok(Kill::Connection(42))));
        assert_eq!(parse(b"kill connection 7;"), Some(Ok(Kill::Connection(7))));
        assert_eq!(parse(b"KILL HARD QUERY 9"), Some(Ok(Kill::Query(9))));
        assert_eq!(parse(b"KILL SOFT 3"), Some(Ok(Kill::Connection(3))));
        assert_eq!(parse(b"KILL QUERY ID 3"), Some(Err("KILL QUERY ID")));
        assert_eq!(parse(b"KILL USER app"), Some(Err("KILL USER")));
        assert!(matches!(parse(b"KILL 3; SELECT 1"), Some(Err(_))));
        assert_eq!(parse(b"SELECT 'KILL 3'"), None);
        assert_eq!(parse(b"killer"), None);
        // Whatever the lexer skips before the first word still leads to the KILL.
        assert_eq!(parse(b"  \n\tKILL 4"), Some(Ok(Kill::Connection(4))));
        assert_eq!(parse(b"/* pool */ KILL 5"), Some(Ok(Kill::Connection(5))));
        assert_eq!(parse(b"-- x\nKILL QUERY 6"), Some(Ok(Kill::Query(6))));
        assert_eq!(parse(b"# x\nkill 7"), Some(Ok(Kill::Connection(7))));
        assert_eq!(parse(b"/*!KILL 8*/"), Some(Ok(Kill::Connection(8))));
        assert_eq!(parse(b"/* KILL 9 */ SELECT 1"), None);
        assert_eq!(parse(b""), None);
        // `?` is for prepared statements only.
        assert_eq!(
            parse(b"KILL ?"),
            Some(Err("KILL with anything but a number"))
        );
        // A KILL run from a string.
        assert_eq!(
            parse(b"EXECUTE IMMEDIATE 'KILL 5'"),
            Some(Ok(Kill::Connection(5)))
        );
        assert_eq!(
            parse(b"execute immediate \"kill query 6\";"),
            Some(Ok(Kill::Query(6)))
        );
        assert_eq!(
            parse(b"EXECUTE IMMEDIATE 'KILL ?' USING 5"),
            Some(Err("KILL with a parameter in EXECUTE IMMEDIATE"))
        );
        assert_eq!(
            parse(b"EXECUTE IMMEDIATE 'KILL USER x'"),
            Some(Err("KILL USER"))
        );
        // A comment between IMMEDIATE and the text (or around it) hides nothing.
        assert_eq!(
            parse(b"EXECUTE IMMEDIATE /* c */ 'KILL 5'"),
            Some(Ok(Kill::Connection(5)))
        );
        assert_eq!(
            parse(b"EXECUTE /* a */ IMMEDIATE -- b\n 'KILL QUERY 6' /* d */"),
            Some(Ok(Kill::Query(6)))
        );
        assert_eq!(
            parse(b"PREPARE s FROM /* c */ 'KILL 5'"),
            Some(Err("KILL in a text-protocol PREPARE"))
        );
        assert_eq!(parse(b"EXECUTE IMMEDIATE 'SELECT 1'"), None);
        assert_eq!(parse(b"EXECUTE IMMEDIATE @s"), None);
        assert_eq!(parse(b"EXECUTE s"), None);
        assert_eq!(
            parse(b"PREPARE s FROM 'KILL 5'"),
            Some(Err("KILL in a text-protocol PREPARE"))
        );
        assert_eq!(
            parse(b"PREPARE `s` FROM 'KILL CONNECTION ?'"),
            Some(Err("KILL in a text-protocol PREPARE"))
        );
        assert_eq!(parse(b"PREPARE s FROM 'SELECT ''KILL 5'''"), None);
        assert_eq!(parse(b"PREPARE s FROM @q"), None);
        assert_eq!(parse(b"PERFORM"), None);
        assert_eq!(
            parse_process_kill(&[0x0c, 5, 0, 0, 0]),
            Some(Kill::Connection(5))
        );
        assert_eq!(parse_process_kill(&[0x0c, 5]), None);
        assert_eq!(unpack(pack(3, 77)), Some((3, 77)));
        assert_eq!(unpack(u64::MAX), None);
    }

    #[test]
    fn prepared_kill_forms_and_bound_ids() {
        use sluice_proto::stmt::StmtExecute;
        let k = |query, id| Some(Ok(PreparedKill { query, id }));
        assert_eq!(parse_prepared(b"KILL ?"), k(false, None));
        assert_eq!(parse_prepared(b"KILL QUERY ?"), k(true, None));
        assert_eq!(parse_prepared(b"kill hard connection 9"), k(false, Some(9)));
        assert_eq!(parse_prepared(b"KILL USER ?"), Some(Err("KILL USER")));
        assert_eq!(parse_prepared(b"SELECT ?"), None);
        assert_eq!(parse_prepared(b"EXECUTE IMMEDIATE 'KILL 5'"), None);
        // One parameter: id 1, no cursor, 1 iteration, NULL bitmap, types bound, the value.
        let exec = |null: u8, t: [u8; 2], v: &[u8]| {
            let mut b = vec![1, 0, 0, 0, 0, 1, 0, 0, 0, null, 1, t[0], t[1]];
            b.extend_from_slice(v);
            b
        };
        let id = |b: &[u8]| {
            let e = StmtExecute::parse(b, 1).unwrap();
            bound_id(&e, e.types.unwrap())
        };
        assert_eq!(id(&exec(0, [0x08, 0x80], &7u64.to_le_bytes())), Ok(7));
        assert_eq!(id(&exec(0, [0x03, 0], &12u32.to_le_bytes())), Ok(12));
        assert_eq!(
            id(&exec(0, [0x01, 0], &[0xFF])),
            Err("KILL of a negative id")
        );
        assert_eq!(id(&exec(0, [0x01, 0x80], &[0xFF])), Ok(255));
        assert_eq!(id(&exec(0, [0x02, 0], &300u16.to_le_bytes())), Ok(300));
        assert_eq!(id(&exec(0, [0xFD, 0], b"\x0242")), Ok(42));
        assert_eq!(
            id(&exec(0, [0xFD, 0], b"\x02ab")),
            Err("KILL with an id that is not an integer")
        );
        assert_eq!(id(&exec(1, [0x08, 0], b"")), Err("KILL of a NULL id"));
        assert_eq!(
            id(&exec(0, [0x05, 0], &1f64.to_le_bytes())),
            Err("KILL with an id that is not an integer")
        );
    }

    #[test]
    fn connection_id_is_the_sessions() {
        let r = |s: &str| {
            rewrite_connection_id(s.as_bytes(), 12).map(|v| String::from_utf8(v).unwrap())
        };
        assert_eq!(
            r("SELECT CONNECTION_ID()").as_deref(),
            Some("SELECT CAST(12 AS UNSIGNED) AS `CONNECTION_ID()`")
        );
        assert_eq!(
            r("select connection_id ( ) ;").as_deref(),
            Some("select CAST(12 AS UNSIGNED) AS `connection_id ( )` ;")
        );
        assert_eq!(
            r("SELECT CONNECTION_ID() AS id, NOW()").as_deref(),
            Some("SELECT CAST(12 AS UNSIGNED) AS id, NOW()")
        );
        assert_eq!(
            r("INSERT INTO t VALUES (CONNECTION_ID())").as_deref(),
            Some("INSERT INTO t VALUES (CAST(12 AS UNSIGNED))")
        );
        // In a string or a comment it is text, not a call.
        assert_eq!(r("SELECT 'CONNECTION_ID()'"), None);
        assert_eq!(r("SELECT 1 /* CONNECTION_ID() */"), None);
        assert_eq!(r("SELECT 1"), None);
        assert!(mentions_connection_id(b"select Connection_Id  ()"));
        assert!(!mentions_connection_id(b"select connection_id"));
        assert!(!mentions_connection_id(b"insert into t values (1), (2)"));
    }
}
