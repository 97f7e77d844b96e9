//! A client session as state, without sockets: transaction status, pins, the session
//! variables it asked for, what it must keep for dependent statements, and its prepared
//! statements. The session loop asks it what a command needs ([`SessionState::needs_held`],
//! [`SessionState::keep_after`]) and tells it what happened ([`SessionState::apply`]).

use std::collections::HashMap;
use std::sync::Arc;

use sluice_proto::flags::status::{SERVER_STATUS_AUTOCOMMIT, SERVER_STATUS_IN_TRANS};

use crate::backend::state::{SessionVars, NAMES_KEY};
use crate::router::lexer::{eq_kw, Lexer, Token};
use crate::router::{PinReason, Route, StatementClass};

/// One statement the client prepared (binary protocol), under Sluice's id.
pub struct Stmt {
    pub sql: Arc<[u8]>,
    /// Classification and digest, computed once at prepare.
    pub class: StatementClass,
    pub cached: Option<super::routing::CachedClass>,
    pub digest: u64,
    pub params: u16,
    /// Parameter types from the last execution that bound them (2 bytes per parameter):
    /// sent with every execution, since the server statement may be shared.
    pub types: Option<Arc<[u8]>>,
    /// A prepared `KILL`: its executions are answered by Sluice, with Sluice session ids
    /// (src/frontend/kill.rs), never sent to a server.
    pub kill: Option<super::kill::PreparedKill>,
    /// Where the statement was last found on a server connection's cache.
    pub memo: Option<crate::backend::stmt_cache::Memo>,
    /// For a client with `MARIADB_CLIENT_CACHE_METADATA`: the column definitions (packets
    /// as sent) of the statement's last execution, which the client keeps; an execution
    /// whose definitions are the same leaves them out (see `relay::Metadata`).
    pub meta: Option<Box<[u8]>>,
}

/// Why a connection is kept after a statement although nothing else needs it: the next
/// statement may read what this one left on the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// Warnings: `SHOW WARNINGS`, `@@warning_count`.
    Warnings,
    /// Rows changed: `ROW_COUNT()`.
    RowCount,
    /// `SQL_CALC_FOUND_ROWS`: `FOUND_ROWS()`.
    FoundRows,
}

/// What a successful statement did to the session, as the classifier and the response saw it.
#[derive(Debug, Default, Clone)]
pub struct Applied {
    pub pin: Option<PinReason>,
    pub unpin: Option<PinReason>,
    /// Replayable assignments to record.
    pub sets: Vec<(Vec<u8>, Vec<u8>)>,
    /// The new default database; empty for none (a server reports that after a `CALL` of a
    /// procedure of another database, which runs in that database and then leaves it, or a
    /// `DROP DATABASE` of the default one; no statement selects a database with no name).
    pub db: Option<Vec<u8>>,
    /// The multi-statement option turned off (`Some(true)`) or on (`COM_SET_OPTION`).
    pub single_statements: Option<bool>,
}

#[derive(Default)]
pub struct SessionState {
    /// Status flags of the last response.
    pub status: u16,
    /// Pinned reasons (`PinReason::bit`).
    pub pins: u16,
    /// Temporary tables and user locks held (a pin ends when its count reaches 0).
    pub temp_tables: u32,
    pub user_locks: u32,
    /// The state a leased connection must be brought to.
    pub vars: SessionVars,
    pub previous: Route,
    /// The connection is kept until the next command.
    pub hold: Option<Hold>,
    /// A write succeeded since `last_gtid` was last read.
    pub wrote: bool,
    pub last_gtid: Option<String>,
    /// The session's LAST_INSERT_ID(), as far as known (`lii_dirty`: a statement on the held
    /// connection `lii_conn` may have changed it since; `lii_ok`: the insert id that
    /// statement's OK reported).
    pub lii: u64,
    pub lii_dirty: bool,
    pub lii_conn: Option<u64>,
    pub lii_ok: u64,
    /// While `lii_dirty`: `lii_conn`'s LAST_INSERT_ID() was the session's when the first of
    /// those statements ran, so it is the session's now (the server applied to it exactly
    /// what it would have on a direct connection) — a statement held there reads it as is,
    /// and nothing runs before it that would reset `ROW_COUNT()`.
    pub lii_in_sync: bool,
    pub stmts: HashMap<u32, Stmt, crate::fasthash::FastBuild>,
    pub next_stmt: u32,
    /// The statement whose cursor is open, and the one long data was sent for.
    pub cursor: Option<u32>,
    pub long_data: Option<u32>,
    /// Changes of the default database (and resets): the session publishes its names for
    /// `SHOW SESSIONS` when this moved, instead of comparing them after every statement.
    pub names_changed: u32,
}

impl SessionState {
    /// A session that logged in with `login_db` and the capabilities `caps`.
    pub fn new(login_db: Option<Vec<u8>>, caps: u64) -> Self {
        SessionState {
            status: SERVER_STATUS_AUTOCOMMIT,
            vars: SessionVars {
                db: login_db,
                sets: Vec::new(),
                single_statements: caps & sluice_proto::flags::cap::CLIENT_MULTI_STATEMENTS == 0,
            },
            ..Default::default()
        }
    }

    pub fn in_transaction(&self) -> bool {
        self.status & SERVER_STATUS_IN_TRANS != 0
    }

    /// Whether the session must keep its primary connection between commands: a transaction
    /// is open or a pin holds it.
    pub fn needs_held(&self) -> bool {
        self.in_transaction() || self.pins != 0
    }

    /// Whether the connection is kept after a command whose response had `warnings`, that
    /// used `SQL_CALC_FOUND_ROWS`, or that `changed` rows (the held connection answers a
    /// dependent statement exactly).
    pub fn keep_after(&mut self, warnings: u16, found_rows: bool, changed: bool) {
        self.hold = if warnings > 0 {
            Some(Hold::Warnings)
        } else if found_rows {
            Some(Hold::FoundRows)
        } else if changed {
            Some(Hold::RowCount)
        } else {
            None
        };
    }

    /// Applies a successful statement's effect. Returns the pins that started.
    pub fn apply(&mut self, a: Applied) -> Option<PinReason> {
        let mut started = None;
        if let Some(p) = a.pin {
            match p {
                PinReason::TempTable => self.temp_tables = self.temp_tables.saturating_add(1),
                PinReason::GetLock => self.user_locks = self.user_locks.saturating_add(1),
                _ => {}
            }
            if self.pins & p.bit() == 0 {
                started = Some(p);
            }
            self.pins |= p.bit();
        }
        if let Some(p) = a.unpin {
            let last = match p {
                PinReason::TempTable => {
                    self.temp_tables = self.temp_tables.saturating_sub(1);
                    self.temp_tables == 0
                }
                PinReason::GetLock => {
                    self.user_locks = self.user_locks.saturating_sub(1);
                    self.user_locks == 0
                }
                _ => true,
            };
            if last {
                self.pins &= !p.bit();
            }
        }
        for (k, v) in a.sets {
            self.vars.set(k, v);
        }
        if let Some(db) = a.db {
            self.vars.db = (!db.is_empty()).then_some(db);
            self.names_changed = self.names_changed.wrapping_add(1);
        }
        if let Some(single) = a.single_statements {
            self.vars.single_statements = single;
        }
        started
    }

    /// COM_RESET_CONNECTION or COM_CHANGE_USER: the server forgot everything.
    pub fn reset(&mut self, db: Option<Vec<u8>>) {
        let stmts = std::mem::take(&mut self.stmts);
        drop(stmts);
        let single_statements = self.vars.single_statements;
        *self = SessionState {
            next_stmt: self.next_stmt,
            names_changed: self.names_changed.wrapping_add(1),
            ..SessionState::new(db, 0)
        };
        // The multi-statement option is the connection's: neither forgets it.
        self.vars.single_statements = single_statements;
    }

    pub fn next_stmt_id(&mut self) -> u32 {
        loop {
            self.next_stmt = self.next_stmt.wrapping_add(1).max(1);
            if !self.stmts.contains_key(&self.next_stmt) {
                return self.next_stmt;
            }
        }
    }
}

/// The session's LAST_INSERT_ID() after statements that may have changed it, from what the
/// connection holds now (`now`), what it held before them (`before`, as Sluice last read or set
/// it) and the insert id their OK reported (`ok`). A statement that inserts an explicit id
/// reports it but leaves LAST_INSERT_ID() alone, so an unchanged value on a connection that
/// held another session's value is not ours — unless the OK reported exactly that value (a
/// generated id equal to the old one: taken as generated; see docs/routing.md).
pub fn insert_id_after(session: u64, before: u64, now: u64, ok: u64) -> u64 {
    if now != before || ok == now {
        now
    } else {
        session
    }
}

/// The replayable assignments of a `SET` statement, or `None` when any part of it cannot be
/// replayed on another connection (a value computed by an expression, a query, a scope Sluice
/// does not follow). Keys are lower-case variable names, `@name` for user variables, `names`
/// for `SET NAMES` / `SET CHARACTER SET`.
pub fn parse_set(sql: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut lx = Lexer::new(sql);
    match lx.next_token() {
        Some(Token::Word(w)) if eq_kw(w, b"SET") => {}
        _ => return None,
    }
    let body_start = sql.len() - lx.rest().len();
    // Split at top-level commas.
    let mut items = Vec::new();
    let mut start = body_start;
    let mut depth = 0i32;
    loop {
        let before = sql.len() - lx.rest().len();
        let t = lx.next_token();
        match t {
            None | Some(Token::Punct(b';')) => {
                items.push(&sql[start..before]);
                if t.is_some() {
                    // Anything after the `;` would be another statement.
                    while let Some(t) = lx.next_token() {
                        if t != Token::Punct(b';') {
                            return None;
                        }
                    }
                }
                break;
            }
            Some(Token::Punct(b'(')) => depth += 1,
            Some(Token::Punct(b')')) => depth -= 1,
            Some(Token::Punct(b',')) if depth == 0 => {
                let at = sql.len() - lx.rest().len() - 1;
                items.push(&sql[start..at]);
                start = at + 1;
            }
            _ => {}
        }
        if lx.unsure || !lx.hints.iter().all(Option::is_none) {
            return None;
        }
    }
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        out.push(parse_item(crate::router::lexer::trim(item))?);
    }
    (!out.is_empty()).then_some(out)
}

/// One assignment of a `SET` list.
fn parse_item(item: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut lx = Lexer::new(item);
    let first = lx.next_token()?;
    let key: Vec<u8> = match first {
        Token::Word(w) if eq_kw(w, b"NAMES") => {
            return names_value(&mut lx).then(|| (NAMES_KEY.to_vec(), item.to_vec()));
        }
        Token::Word(w) if eq_kw(w, b"CHARACTER") || eq_kw(w, b"CHARSET") => {
            if eq_kw(w, b"CHARACTER")
                && !matches!(lx.next_token(), Some(Token::Word(s)) if eq_kw(s, b"SET"))
            {
                return None;
            }
            return names_value(&mut lx).then(|| (NAMES_KEY.to_vec(), item.to_vec()));
        }
        Token::Word(w) if eq_kw(w, b"SESSION") || eq_kw(w, b"LOCAL") => match lx.next_token()? {
            Token::Word(t) if eq_kw(t, b"TRANSACTION") => return transaction_item(&mut lx),
            Token::Word(v) => v.to_ascii_lowercase(),
            _ => return None,
        },
        Token::Word(w) if eq_kw(w, b"GLOBAL") || eq_kw(w, b"TRANSACTION") => return None,
        Token::Word(v) => v.to_ascii_lowercase(),
        Token::SysVar(v) => {
            let lower = v.to_ascii_lowercase();
            if let Some(rest) = lower.strip_prefix(b"session.") {
                rest.to_vec()
            } else if let Some(rest) = lower.strip_prefix(b"local.") {
                rest.to_vec()
            } else if lower.contains(&b'.') {
                return None;
            } else {
                lower
            }
        }
        Token::UserVar => {
            // The name is the text between `@` and the assignment operator.
            let end = item
                .iter()
                .position(|&b| b == b'=' || b == b':')
                .unwrap_or(item.len());
            let name = crate::router::lexer::trim(&item[..end]);
            if name.len() < 2 || name.contains(&b'@') && name[1..].contains(&b'@') {
                return None;
            }
            let mut k = name.to_ascii_lowercase();
            k.retain(|&b| b != b'`' && b != b'\'' && b != b'"');
            k
        }
        _ => return None,
    };
    // `=` or `:=`, then one literal.
    match lx.next_token()? {
        Token::Punct(b'=') => {}
        Token::Punct(b':') if lx.next_token()? == Token::Punct(b'=') => {}
        _ => return None,
    }
    literal_value(&mut lx).then(|| (key, item.to_vec()))
}

/// The value is a single literal (a string, a number with an optional sign, a word such as
/// `ON`, `DEFAULT`, `utf8mb4`, or a global variable), and nothing follows it.
fn literal_value(lx: &mut Lexer<'_>) -> bool {
    let mut t = lx.next_token();
    if matches!(t, Some(Token::Punct(b'-')) | Some(Token::Punct(b'+'))) {
        t = lx.next_token();
        if !matches!(t, Some(Token::Number)) {
            return false;
        }
    }
    let ok = match t {
        Some(Token::Str) | Some(Token::Number) | Some(Token::Word(_)) => true,
        Some(Token::SysVar(v)) => v.len() > 7 && v[..7].eq_ignore_ascii_case(b"global."),
        _ => false,
    };
    ok && lx.next_token().is_none()
}

/// `NAMES cs [COLLATE coll]` / `CHARACTER SET cs`: names and literals only.
fn names_value(lx: &mut Lexer<'_>) -> bool {
    let mut n = 0;
    while let Some(t) = lx.next_token() {
        match t {
            Token::Word(_) | Token::Str | Token::Quoted(_) => n += 1,
            _ => return false,
        }
    }
    (1..=3).contains(&n)
}

/// `SESSION TRANSACTION ISOLATION LEVEL …` / `READ ONLY` / `READ WRITE`, as assignments of
/// MariaDB's `tx_isolation` / `tx_read_only` (so that they combine with other assignments).
fn transaction_item(lx: &mut Lexer<'_>) -> Option<(Vec<u8>, Vec<u8>)> {
    let words: Vec<Vec<u8>> = std::iter::from_fn(|| lx.next_token())
        .map(|t| match t {
            Token::Word(w) => Some(w.to_ascii_uppercase()),
            _ => None,
        })
        .collect::<Option<_>>()?;
    let w: Vec<&[u8]> = words.iter().map(Vec::as_slice).collect();
    match w.as_slice() {
        [b"ISOLATION", b"LEVEL", level @ ..] if !level.is_empty() => {
            let level = level.join(&b'-');
            let known: [&[u8]; 4] = [
                b"READ-UNCOMMITTED",
                b"READ-COMMITTED",
                b"REPEATABLE-READ",
                b"SERIALIZABLE",
            ];
            if !known.contains(&level.as_slice()) {
                return None;
            }
            let mut a = b"tx_isolation = '".to_vec();
            a.extend_from_slice(&level);
            a.push(b'\'');
            Some((b"tx_isolation".to_vec(), a))
        }
        [b"READ", b"ONLY"] => Some((b"tx_read_only".to_vec(), b"tx_read_only = 1".to_vec())),
        [b"READ", b"WRITE"] => Some((b"tx_read_only".to_vec(), b"tx_read_only = 0".to_vec())),
        _ => None,
    }
}

/// What in a statement reads the previous statement's outcome on the same connection.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reads {
    /// `LAST_INSERT_ID()`, `@@identity`, `@@last_insert_id`.
    pub insert_id: bool,
    /// `ROW_COUNT()`, `FOUND_ROWS()`, warnings and errors.
    pub previous: bool,
}

/// Scans a statement for functions and variables that read the previous statement's outcome.
pub fn reads_previous(sql: &[u8], class: StatementClass) -> Reads {
    let mut r = Reads {
        previous: class == StatementClass::ReadPrevious,
        ..Reads::default()
    };
    let mut lx = Lexer::new(sql);
    while let Some(t) = lx.next_token() {
        match t {
            Token::Word(w) if eq_kw(w, b"LAST_INSERT_ID") => r.insert_id = true,
            Token::Word(w) if eq_kw(w, b"ROW_COUNT") || eq_kw(w, b"FOUND_ROWS") => {
                r.previous = true
            }
            Token::SysVar(v) => {
                let name = v.rsplit(|&b| b == b'.').next().unwrap_or(v);
                if eq_kw(name, b"IDENTITY") || eq_kw(name, b"LAST_INSERT_ID") {
                    r.insert_id = true;
                } else if eq_kw(name, b"WARNING_COUNT") || eq_kw(name, b"ERROR_COUNT") {
                    r.previous = true;
                }
            }
            _ => {}
        }
    }
    r
}

/// Whether a multi-statement query may change session state Sluice follows (then the session
/// is pinned: its connection's state is no longer known).
pub fn multi_changes_state(sql: &[u8]) -> bool {
    let mut lx = Lexer::new(sql);
    let mut at_start = true;
    while let Some(t) = lx.next_token() {
        match t {
            Token::Punct(b';') => at_start = true,
            Token::Word(w) if at_start => {
                let starts = [
                    &b"SET"[..],
                    b"USE",
                    b"LOCK",
                    b"PREPARE",
                    b"HANDLER",
                    b"XA",
                    b"BEGIN",
                    b"START",
                ];
                if starts.iter().any(|k| eq_kw(w, k)) {
                    return true;
                }
                at_start = false;
            }
            Token::Word(w)
                if eq_kw(w, b"TEMPORARY") || eq_kw(w, b"GET_LOCK") || eq_kw(w, b"INTO") =>
            {
                return true
            }
            Token::UserVar => return true,
            _ => at_start = false,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(sql: &str) -> Option<Vec<(String, String)>> {
        parse_set(sql.as_bytes()).map(|v| {
            v.into_iter()
                .map(|(k, a)| (String::from_utf8(k).unwrap(), String::from_utf8(a).unwrap()))
                .collect()
        })
    }

    #[test]
    fn replayable_assignments() {
        assert_eq!(
            set("SET NAMES utf8mb4 COLLATE utf8mb4_bin").unwrap(),
            [("names".into(), "NAMES utf8mb4 COLLATE utf8mb4_bin".into())]
        );
        assert_eq!(
            set("SET sql_mode = 'ANSI', @@session.time_zone='+02:00', SESSION autocommit=0, @a := -5;")
                .unwrap(),
            [
                ("sql_mode".into(), "sql_mode = 'ANSI'".into()),
                ("time_zone".into(), "@@session.time_zone='+02:00'".into()),
                ("autocommit".into(), "SESSION autocommit=0".into()),
                ("@a".into(), "@a := -5".into()),
            ]
        );
        assert_eq!(
            set("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED").unwrap(),
            [(
                "tx_isolation".into(),
                "tx_isolation = 'READ-COMMITTED'".into()
            )]
        );
        assert_eq!(
            set("set character set latin1").unwrap()[0].0,
            "names".to_string()
        );
        assert_eq!(set("SET @`Mixed` = 'x'").unwrap()[0].0, "@mixed");
    }

    #[test]
    fn unreplayable_assignments() {
        for sql in [
            "SET sql_mode = CONCAT(@@sql_mode, ',ANSI')",
            "SET @a = (SELECT 1)",
            "SET @a = NOW()",
            "SET GLOBAL max_connections = 10",
            "SET @@global.x = 1",
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            "SET a = 1; SELECT 1",
            "SET x = 1 + 1",
            "SELECT 1",
        ] {
            assert_eq!(set(sql), None, "{sql}");
        }
    }

    #[test]
    fn dependent_reads() {
        let r = |s: &str| reads_previous(s.as_bytes(), StatementClass::Read);
        assert!(r("SELECT LAST_INSERT_ID()").insert_id);
        // Generated on a connection that held another session's 7: ours now.
        assert_eq!(insert_id_after(3, 7, 9, 9), 9);
        // An explicit id (OK says 100) left the other session's 7 in place: still our 3.
        assert_eq!(insert_id_after(3, 7, 7, 100), 3);
        // LAST_INSERT_ID(expr) in a SELECT (no OK id) changed it.
        assert_eq!(insert_id_after(3, 7, 8, 0), 8);
        // The connection already held ours: whatever happened, it is what it holds.
        assert_eq!(insert_id_after(3, 3, 3, 100), 3);
        assert!(r("select @@identity").insert_id);
        assert!(r("SELECT ROW_COUNT()").previous);
        assert!(r("SELECT @@session.warning_count").previous);
        assert_eq!(r("SELECT 'LAST_INSERT_ID()' FROM t"), Reads::default());
    }

    #[test]
    fn multi_statements_that_change_state() {
        assert!(multi_changes_state(b"SELECT 1; SET @a = 1"));
        assert!(multi_changes_state(b"INSERT INTO t VALUES (1); USE db2"));
        assert!(!multi_changes_state(b"SELECT 1; SELECT 2"));
        assert!(!multi_changes_state(b"UPDATE t SET a = 1; DELETE FROM t"));
    }

    #[test]
    fn a_reported_database_with_no_name_is_none_and_the_multi_statement_option_survives_a_reset() {
        let caps = sluice_proto::flags::cap::CLIENT_MULTI_STATEMENTS;
        let mut s = SessionState::new(Some(b"app".to_vec()), caps);
        assert!(!s.vars.single_statements);
        let db = |d: &[u8]| Applied {
            db: Some(d.to_vec()),
            ..Default::default()
        };
        s.apply(db(b"other"));
        assert_eq!(s.vars.db.as_deref(), Some(&b"other"[..]));
        // After `DROP DATABASE other`, or a `CALL` of another database's procedure from none.
        s.apply(db(b""));
        assert_eq!(s.vars.db, None);
        s.apply(Applied {
            single_statements: Some(true),
            ..Default::default()
        });
        s.reset(None);
        assert!(
            s.vars.single_statements,
            "COM_RESET_CONNECTION keeps the option"
        );
        assert!(SessionState::new(None, 0).vars.single_statements);
    }

    #[test]
    fn pins_count_temporary_tables_and_locks() {
        let mut s = SessionState::new(None, 0);
        let pin = |p| Applied {
            pin: Some(p),
            ..Default::default()
        };
        let unpin = |p| Applied {
            unpin: Some(p),
            ..Default::default()
        };
        assert_eq!(
            s.apply(pin(PinReason::TempTable)),
            Some(PinReason::TempTable)
        );
        assert_eq!(s.apply(pin(PinReason::TempTable)), None);
        s.apply(unpin(PinReason::TempTable));
        assert!(s.needs_held());
        s.apply(unpin(PinReason::TempTable));
        assert!(!s.needs_held());
        s.apply(pin(PinReason::LockTables));
        s.apply(unpin(PinReason::LockTables));
        assert_eq!(s.pins, 0);
    }

    #[test]
    fn holds_after_dependent_outcomes() {
        let mut s = SessionState::new(None, 0);
        s.keep_after(0, false, false);
        assert_eq!(s.hold, None);
        s.keep_after(2, false, false);
        assert_eq!(s.hold, Some(Hold::Warnings));
        s.keep_after(0, false, true);
        assert_eq!(s.hold, Some(Hold::RowCount));
        s.keep_after(0, true, false);
        assert_eq!(s.hold, Some(Hold::FoundRows));
    }
}
