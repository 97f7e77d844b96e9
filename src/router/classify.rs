//! The hot-path statement classifier: one lexical pass, no allocation. It decides what kind of
//! statement a query is and whatever routing needs to know about it (locking reads, state it
//! creates, hints). When the lexical pass cannot be sure it says so, and
//! [`super::slow_path`] (sqlparser) decides; when both are unsure, the statement is treated as
//! a write (primary).

use super::lexer::{
    emit, eq_kw, is_space, number_end, word_end, Lexer, NoNorm, NormHash, NormSink, Seen, Token,
    WORD,
};

/// What a statement is, for routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum StatementClass {
    /// A read that may run on a replica (SELECT, SHOW, DESCRIBE, EXPLAIN, HELP).
    Read,
    /// A read that must run on the primary: a locking read, or one that reads
    /// connection-local or primary-only state (LAST_INSERT_ID(), FOUND_ROWS(), sequences).
    ReadPrimary,
    /// Reads the outcome of the previous statement (SHOW WARNINGS, @@warning_count, …): runs
    /// where the previous statement ran.
    ReadPrevious,
    /// INSERT, UPDATE, DELETE, REPLACE, LOAD DATA, CALL, DO, HANDLER, SET GLOBAL, …
    Write,
    /// CREATE, ALTER, DROP, TRUNCATE, RENAME, GRANT, REVOKE, admin statements.
    Ddl,
    Begin,
    BeginReadOnly,
    Commit,
    Rollback,
    /// Session state that can be replayed on another connection: SET NAMES, SET SESSION var,
    /// SET autocommit, SET SESSION TRANSACTION …
    SessionSet,
    /// `USE db`.
    Use,
    /// Several statements in one query.
    Multi,
    /// Not recognised: primary.
    Other,
    /// Not a query: a protocol command (prepared-statement commands, ping, …).
    #[default]
    Command,
}

impl StatementClass {
    /// How many classes there are (for per-class counters).
    pub const COUNT: usize = 14;
    pub const ALL: [StatementClass; Self::COUNT] = [
        StatementClass::Read,
        StatementClass::ReadPrimary,
        StatementClass::ReadPrevious,
        StatementClass::Write,
        StatementClass::Ddl,
        StatementClass::Begin,
        StatementClass::BeginReadOnly,
        StatementClass::Commit,
        StatementClass::Rollback,
        StatementClass::SessionSet,
        StatementClass::Use,
        StatementClass::Multi,
        StatementClass::Other,
        // Commands other than COM_QUERY are counted here.
        StatementClass::Command,
    ];

    /// Index into [`StatementClass::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        match self {
            StatementClass::Command => "command",
            StatementClass::Read => "read",
            StatementClass::ReadPrimary => "read_primary",
            StatementClass::ReadPrevious => "read_previous",
            StatementClass::Write => "write",
            StatementClass::Ddl => "ddl",
            StatementClass::Begin => "begin",
            StatementClass::BeginReadOnly => "begin_read_only",
            StatementClass::Commit => "commit",
            StatementClass::Rollback => "rollback",
            StatementClass::SessionSet => "session_set",
            StatementClass::Use => "use",
            StatementClass::Multi => "multi",
            StatementClass::Other => "other",
        }
    }
}

/// State a statement leaves on its connection that cannot be replayed elsewhere: the session
/// stays on the primary while it lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PinReason {
    TempTable,
    UserVariable,
    TextPrepare,
    LockTables,
    GetLock,
    FoundRows,
    Handler,
    /// A server-side cursor is open (COM_STMT_EXECUTE with a cursor, until it is read or
    /// closed).
    Cursor,
    /// COM_STMT_SEND_LONG_DATA sent parameter data that the next execution consumes.
    LongData,
    /// `SET` of a session variable to a value Sluice cannot replay (an expression).
    SessionVariable,
    /// `SET TRANSACTION …` without `SESSION`: applies to the next transaction only.
    NextTransaction,
    /// `XA START` until `XA COMMIT` / `XA ROLLBACK`.
    Xa,
    /// Several statements in one query that change session state.
    MultiStatement,
}

impl PinReason {
    pub const COUNT: usize = 13;
    pub const ALL: [PinReason; Self::COUNT] = [
        PinReason::TempTable,
        PinReason::UserVariable,
        PinReason::TextPrepare,
        PinReason::LockTables,
        PinReason::GetLock,
        PinReason::FoundRows,
        PinReason::Handler,
        PinReason::Cursor,
        PinReason::LongData,
        PinReason::SessionVariable,
        PinReason::NextTransaction,
        PinReason::Xa,
        PinReason::MultiStatement,
    ];

    /// Bit of this reason in a pin set (`u16`).
    pub fn bit(self) -> u16 {
        1 << (self as u16)
    }

    /// The reasons in a pin set, comma-separated.
    pub fn describe(pins: u16) -> String {
        let v: Vec<&str> = Self::ALL
            .iter()
            .filter(|p| pins & p.bit() != 0)
            .map(|p| p.as_str())
            .collect();
        v.join(",")
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PinReason::TempTable => "temp_table",
            PinReason::UserVariable => "user_variable",
            PinReason::TextPrepare => "text_prepare",
            PinReason::LockTables => "lock_tables",
            PinReason::GetLock => "get_lock",
            PinReason::FoundRows => "sql_calc_found_rows",
            PinReason::Handler => "handler",
            PinReason::Cursor => "cursor",
            PinReason::LongData => "long_data",
            PinReason::SessionVariable => "session_variable",
            PinReason::NextTransaction => "next_transaction",
            PinReason::Xa => "xa",
            PinReason::MultiStatement => "multi_statement",
        }
    }
}

/// Routing hints from `/* sluice: … */` comments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Hints<'a> {
    /// `route=primary` (Some(true)) or `route=replica` (Some(false)).
    pub primary: Option<bool>,
    pub max_lag_ms: Option<u64>,
    pub server: Option<&'a [u8]>,
    /// Hints that could not be understood (ignored, counted).
    pub invalid: u8,
}

/// The classifier's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Classified<'a> {
    pub class: StatementClass,
    /// Non-replayable state this statement creates.
    pub pin: Option<PinReason>,
    /// Ends a pin (`UNLOCK TABLES`, `RELEASE_LOCK`/`RELEASE_ALL_LOCKS`).
    pub unpin: Option<PinReason>,
    /// For `USE`: the database.
    pub database: Option<&'a [u8]>,
    pub hints: Hints<'a>,
    /// The lexical pass could not decide.
    pub unsure: bool,
}

impl<'a> Classified<'a> {
    fn new(class: StatementClass) -> Self {
        Classified {
            class,
            pin: None,
            unpin: None,
            database: None,
            hints: Hints::default(),
            unsure: false,
        }
    }
}

/// Classifies one query (the body of a COM_QUERY).
pub fn classify(sql: &[u8]) -> Classified<'_> {
    if let Some(c) = fast_select(sql, &mut NoNorm) {
        return c;
    }
    let mut lx = Lexer::new(sql);
    let mut c = classify_tokens(&mut lx);
    if lx.unsure {
        // An executable comment for a server version Sluice cannot judge, or an unterminated
        // quote: the parser misreads those too (it treats `/*!80000 … */` as plain SQL), so
        // the statement goes to the primary without asking it.
        c.class = StatementClass::Other;
        c.unsure = false;
    }
    c.hints = parse_hints(&lx.hints);
    c
}

/// Classifies one query as [`classify`] does, and in the same pass over its tokens learns its
/// digest and whether it loads a local file ([`Seen`]): one lexical pass where the session
/// needs all three (a text query with the query digest on) instead of three.
pub fn classify_seen(sql: &[u8]) -> (Classified<'_>, Seen) {
    let mut norm = NormHash::default();
    if let Some(c) = fast_select(sql, &mut norm) {
        return (c, Seen::hashed(norm));
    }
    let mut lx = Lexer::new(sql);
    lx.seen = Some(Seen::default());
    let mut c = classify_tokens(&mut lx);
    // What the classifier saw, before the rest is read for the digest (a hint or an odd
    // quote after the point where the class was decided does not count, as in `classify`).
    let (unsure, hints) = (lx.unsure, lx.hints);
    while lx.next_token().is_some() {}
    if unsure {
        c.class = StatementClass::Other;
        c.unsure = false;
    }
    c.hints = parse_hints(&hints);
    (c, lx.seen.unwrap_or_default())
}

fn classify_tokens<'a>(lx: &mut Lexer<'a>) -> Classified<'a> {
    use StatementClass::*;
    // Leading parentheses: `(SELECT …) UNION (SELECT …)`.
    let mut first = lx.next_token();
    while first == Some(Token::Punct(b'(')) {
        first = lx.next_token();
    }
    let Some(Token::Word(w)) = first else {
        let mut c = Classified::new(Other);
        c.unsure = first.is_some();
        return c;
    };
    let kw = |k: &[u8]| eq_kw(w, k);
    if kw(b"SELECT") || kw(b"VALUES") || kw(b"TABLE") {
        return scan_select(lx, Read);
    }
    if kw(b"WITH") {
        return scan_select(lx, Read);
    }
    if kw(b"SHOW") {
        return scan_show(lx);
    }
    if kw(b"DESCRIBE") || kw(b"DESC") || kw(b"EXPLAIN") || kw(b"HELP") {
        // EXPLAIN never executes the statement (ANALYZE does, and is a write).
        return finish(lx, Classified::new(Read));
    }
    if kw(b"INSERT")
        || kw(b"UPDATE")
        || kw(b"DELETE")
        || kw(b"REPLACE")
        || kw(b"LOAD")
        || kw(b"CALL")
        || kw(b"IMPORT")
    {
        return scan_write(lx, Write);
    }
    if kw(b"DO") {
        return scan_write(lx, Write);
    }
    if kw(b"HANDLER") {
        // HANDLER t OPEN … keeps a cursor on the connection until HANDLER t CLOSE.
        let mut c = Classified::new(Write);
        c.pin = Some(PinReason::Handler);
        let _table = lx.next_token();
        if matches!(lx.next_token(), Some(Token::Word(w)) if eq_kw(w, b"CLOSE")) {
            c.pin = None;
            c.unpin = Some(PinReason::Handler);
        }
        return finish(lx, c);
    }
    if kw(b"BEGIN") {
        // `BEGIN NOT ATOMIC` starts a compound statement, not a transaction.
        return match lx.next_token() {
            // A compound statement contains `;` of its own: do not read it as several.
            Some(Token::Word(n)) if eq_kw(n, b"NOT") => Classified::new(Write),
            Some(Token::Word(n)) if eq_kw(n, b"WORK") => finish(lx, Classified::new(Begin)),
            Some(Token::Punct(b';')) | None => finish_after_semicolon(lx, Classified::new(Begin)),
            _ => finish(lx, Classified::new(Other)),
        };
    }
    if kw(b"START") {
        return match lx.next_token() {
            Some(Token::Word(t)) if eq_kw(t, b"TRANSACTION") => scan_start_transaction(lx),
            // START SLAVE / START REPLICA / START ALL SLAVES: administration.
            _ => finish(lx, Classified::new(Ddl)),
        };
    }
    if kw(b"COMMIT") {
        return finish(lx, Classified::new(Commit));
    }
    if kw(b"ROLLBACK") {
        // ROLLBACK [WORK] TO [SAVEPOINT] x stays inside the transaction.
        let mut t = lx.next_token();
        if matches!(t, Some(Token::Word(x)) if eq_kw(x, b"WORK")) {
            t = lx.next_token();
        }
        return match t {
            Some(Token::Word(x)) if eq_kw(x, b"TO") => finish(lx, Classified::new(Write)),
            Some(Token::Punct(b';')) | None => {
                finish_after_semicolon(lx, Classified::new(Rollback))
            }
            _ => finish(lx, Classified::new(Rollback)),
        };
    }
    if kw(b"XA") {
        // An XA transaction lives on its connection from XA START to XA COMMIT/ROLLBACK.
        let mut c = Classified::new(Write);
        match lx.next_token() {
            Some(Token::Word(w)) if eq_kw(w, b"START") || eq_kw(w, b"BEGIN") => {
                c.pin = Some(PinReason::Xa)
            }
            Some(Token::Word(w)) if eq_kw(w, b"COMMIT") || eq_kw(w, b"ROLLBACK") => {
                c.unpin = Some(PinReason::Xa)
            }
            _ => {}
        }
        return finish(lx, c);
    }
    if kw(b"SAVEPOINT") || kw(b"RELEASE") {
        return finish(lx, Classified::new(Write));
    }
    if kw(b"DROP") {
        // DROP TEMPORARY TABLE ends (one of) the session's temporary tables.
        let mut c = Classified::new(Ddl);
        if matches!(lx.next_token(), Some(Token::Word(w)) if eq_kw(w, b"TEMPORARY")) {
            c.unpin = Some(PinReason::TempTable);
        }
        return finish(lx, c);
    }
    if kw(b"SET") {
        return scan_set(lx);
    }
    if kw(b"USE") {
        let mut c = Classified::new(Use);
        c.database = match lx.next_token() {
            Some(Token::Word(d)) | Some(Token::Quoted(d)) => Some(d),
            _ => {
                c.unsure = true;
                None
            }
        };
        return finish(lx, c);
    }
    if kw(b"LOCK") {
        let mut c = Classified::new(Write);
        c.pin = Some(PinReason::LockTables);
        return finish(lx, c);
    }
    if kw(b"UNLOCK") {
        let mut c = Classified::new(Write);
        c.unpin = Some(PinReason::LockTables);
        return finish(lx, c);
    }
    if kw(b"PREPARE") || kw(b"EXECUTE") || kw(b"DEALLOCATE") {
        let mut c = Classified::new(Write);
        c.pin = Some(PinReason::TextPrepare);
        return finish(lx, c);
    }
    if kw(b"CREATE") {
        let mut c = Classified::new(Ddl);
        // CREATE [OR REPLACE] TEMPORARY TABLE
        for _ in 0..3 {
            match lx.next_token() {
                Some(Token::Word(t)) if eq_kw(t, b"TEMPORARY") => {
                    c.pin = Some(PinReason::TempTable);
                    break;
                }
                Some(Token::Word(t)) if eq_kw(t, b"OR") || eq_kw(t, b"REPLACE") => {}
                _ => break,
            }
        }
        // Routine bodies contain `;` of their own: a CREATE is one statement.
        return c;
    }
    if kw(b"FLUSH") {
        // FLUSH TABLES … WITH READ LOCK holds a lock until UNLOCK TABLES.
        let mut c = Classified::new(Ddl);
        while let Some(t) = lx.next_token() {
            if matches!(t, Token::Word(x) if eq_kw(x, b"LOCK")) {
                c.pin = Some(PinReason::LockTables);
            }
            if t == Token::Punct(b';') {
                return finish_after_semicolon(lx, c);
            }
        }
        return c;
    }
    const DDL: &[&[u8]] = &[
        b"ALTER",
        b"DROP",
        b"RENAME",
        b"TRUNCATE",
        b"GRANT",
        b"REVOKE",
        b"ANALYZE",
        b"OPTIMIZE",
        b"REPAIR",
        b"CHECK",
        b"CHECKSUM",
        b"RESET",
        b"PURGE",
        b"INSTALL",
        b"UNINSTALL",
        b"KILL",
        b"CHANGE",
        b"STOP",
        b"SHUTDOWN",
        b"BINLOG",
        b"CACHE",
        b"BACKUP",
    ];
    if DDL.iter().any(|k| kw(k)) {
        return finish(lx, Classified::new(Ddl));
    }
    let mut c = Classified::new(Other);
    c.unsure = true;
    finish(lx, c)
}

/// Scans the rest of a SELECT (or WITH/VALUES) for what changes its route.
fn scan_select<'a>(lx: &mut Lexer<'a>, class: StatementClass) -> Classified<'a> {
    let mut c = Classified::new(class);
    let mut prev: Option<Token<'a>> = None;
    let mut depth = 0i32;
    while let Some(t) = lx.next_token() {
        match t {
            Token::Punct(b'(') => depth += 1,
            Token::Punct(b')') => depth -= 1,
            Token::Punct(b';') => return finish_after_semicolon(lx, c),
            Token::UserVar => {
                // `@v := …` assigns; plain `@v` only reads.
                if let Some(Token::Punct(b':')) = peek_next(lx) {
                    c.pin = Some(PinReason::UserVariable);
                    c.class = StatementClass::ReadPrimary;
                }
            }
            Token::SysVar(v) => {
                let name = v.rsplit(|&b| b == b'.').next().unwrap_or(v);
                if eq_kw(name, b"WARNING_COUNT") || eq_kw(name, b"ERROR_COUNT") {
                    upgrade(&mut c, StatementClass::ReadPrevious);
                } else if eq_kw(name, b"IDENTITY")
                    || eq_kw(name, b"LAST_INSERT_ID")
                    || eq_kw(name, b"LAST_GTID")
                {
                    upgrade(&mut c, StatementClass::ReadPrimary);
                }
            }
            Token::Word(w) => match select_keyword(w) {
                None => {}
                Some(Sel::Function(f)) => {
                    // Only a call counts: `sleep` may also be a column name.
                    if matches!(peek_next(lx), Some(Token::Punct(b'('))) {
                        match f {
                            Func::GetLock => {
                                c.pin = Some(PinReason::GetLock);
                                upgrade(&mut c, StatementClass::ReadPrimary);
                            }
                            Func::ReleaseLock => {
                                c.unpin = Some(PinReason::GetLock);
                                upgrade(&mut c, StatementClass::ReadPrimary);
                            }
                            Func::RowCount => upgrade(&mut c, StatementClass::ReadPrevious),
                            Func::PrimaryOnly => upgrade(&mut c, StatementClass::ReadPrimary),
                        }
                    }
                }
                Some(Sel::CalcFoundRows) => {
                    c.pin = Some(PinReason::FoundRows);
                    upgrade(&mut c, StatementClass::ReadPrimary);
                }
                Some(Sel::Update) => {
                    // FOR UPDATE, or WITH … UPDATE
                    if matches!(prev, Some(Token::Word(p)) if eq_kw(p, b"FOR")) {
                        upgrade(&mut c, StatementClass::ReadPrimary);
                    } else if depth == 0 {
                        c.class = StatementClass::Write;
                    }
                }
                Some(Sel::Share) => {
                    if matches!(prev, Some(Token::Word(p)) if eq_kw(p, b"FOR") || eq_kw(p, b"IN")) {
                        upgrade(&mut c, StatementClass::ReadPrimary);
                    }
                }
                Some(Sel::Modify) if depth == 0 => c.class = StatementClass::Write,
                Some(Sel::Modify) => {}
                Some(Sel::NextPrevious) => {
                    // NEXT VALUE FOR seq / PREVIOUS VALUE FOR seq
                    if matches!(peek_next(lx), Some(Token::Word(v)) if eq_kw(v, b"VALUE")) {
                        upgrade(&mut c, StatementClass::ReadPrimary);
                    }
                }
                Some(Sel::Into) if depth == 0 => match peek_next(lx) {
                    Some(Token::UserVar) => {
                        c.pin = Some(PinReason::UserVariable);
                        upgrade(&mut c, StatementClass::ReadPrimary);
                    }
                    // INTO OUTFILE/DUMPFILE writes a file on the server.
                    _ => upgrade(&mut c, StatementClass::Write),
                },
                Some(Sel::Into) => {}
            },
            _ => {}
        }
        prev = Some(t);
    }
    c
}

#[derive(Clone, Copy)]
enum Func {
    GetLock,
    ReleaseLock,
    RowCount,
    PrimaryOnly,
}

/// Words that matter inside a SELECT.
#[derive(Clone, Copy)]
enum Sel {
    Function(Func),
    CalcFoundRows,
    Update,
    Share,
    /// DELETE / INSERT / REPLACE at top level (a CTE followed by a write).
    Modify,
    NextPrevious,
    Into,
}

/// Recognises the words of interest in a SELECT, by length first so that ordinary
/// identifiers cost one comparison at most (this runs for every word of every read).
fn select_keyword(w: &[u8]) -> Option<Sel> {
    let is = |k: &[u8]| eq_kw(w, k);
    let primary = Some(Sel::Function(Func::PrimaryOnly));
    match w.len() {
        4 if is(b"INTO") => Some(Sel::Into),
        4 if is(b"NEXT") => Some(Sel::NextPrevious),
        5 if is(b"SHARE") => Some(Sel::Share),
        5 if is(b"SLEEP") => primary,
        6 if is(b"UPDATE") => Some(Sel::Update),
        6 if is(b"DELETE") || is(b"INSERT") => Some(Sel::Modify),
        6 if is(b"SETVAL") => primary,
        7 if is(b"REPLACE") => Some(Sel::Modify),
        7 if is(b"NEXTVAL") || is(b"LASTVAL") => primary,
        8 if is(b"GET_LOCK") => Some(Sel::Function(Func::GetLock)),
        8 if is(b"PREVIOUS") => Some(Sel::NextPrevious),
        9 if is(b"ROW_COUNT") => Some(Sel::Function(Func::RowCount)),
        9 if is(b"BENCHMARK") => primary,
        10 if is(b"FOUND_ROWS") => primary,
        12 if is(b"RELEASE_LOCK") => Some(Sel::Function(Func::ReleaseLock)),
        12 if is(b"IS_USED_LOCK") || is(b"IS_FREE_LOCK") => primary,
        14 if is(b"LAST_INSERT_ID") => primary,
        15 if is(b"MASTER_POS_WAIT") => primary,
        16 if is(b"MASTER_GTID_WAIT") => primary,
        17 if is(b"RELEASE_ALL_LOCKS") => Some(Sel::Function(Func::ReleaseLock)),
        19 if is(b"SQL_CALC_FOUND_ROWS") => Some(Sel::CalcFoundRows),
        _ => None,
    }
}

/// Bytes after which the plain-SELECT fast path gives up and the full pass decides: comment
/// starts, variables, statement separators, backslashes, ODBC braces. (Parentheses are not
/// among them: in a SELECT they matter only around the words [`select_keyword`] knows —
/// `FOR UPDATE` in a subquery, `GET_LOCK(` — on which the fast path gives up anyway.)
static BAIL: [bool; 256] = {
    let mut t = [false; 256];
    let special = [b'#', b'-', b'/', b'@', b';', b'\\', b'{', b'}'];
    let mut i = 0;
    while i < special.len() {
        t[special[i] as usize] = true;
        i += 1;
    }
    t
};

/// The hot path's hot path: `SELECT` followed only by words, numbers, strings, quoted names,
/// spaces, parentheses and operators — no comments, variables or `;` — none of whose words
/// matter to the router. Anything else returns `None` and the full lexical pass decides, so the
/// result is always the one the full pass would give. `out` receives the normalized form of
/// every token, cut exactly as [`Lexer`] cuts them (the digest, for [`classify_seen`]), or
/// nothing ([`NoNorm`], for [`classify`]).
#[inline]
fn fast_select<S: NormSink>(sql: &[u8], out: &mut S) -> Option<Classified<'static>> {
    let start = sql.iter().position(|c| !c.is_ascii_whitespace())?;
    let rest = &sql[start..];
    if rest.len() < 7 || !eq_kw(&rest[..6], b"SELECT") || !rest[6].is_ascii_whitespace() {
        return None;
    }
    emit(out, Token::Word(&rest[..6]));
    let mut i = 7;
    while i < rest.len() {
        let c = rest[i];
        if WORD[usize::from(c)] {
            if c.is_ascii_digit() {
                i = number_end(rest, i);
                emit(out, Token::Number);
                continue;
            }
            let end = word_end(rest, i);
            let w = &rest[i..end];
            // `LOAD`: the one-pass test for `LOAD DATA … LOCAL` is the full pass's.
            if select_keyword(w).is_some() || eq_kw(w, b"LOAD") {
                return None;
            }
            emit(out, Token::Word(w));
            i = end;
            continue;
        }
        match c {
            // A quoted name or a string: its content never matters; skip to its end.
            b'`' => {
                let end = skip_quoted(rest, i)?;
                emit(out, Token::Quoted(&rest[i + 1..end - 1]));
                i = end;
            }
            b'\'' | b'"' => {
                i = skip_quoted(rest, i)?;
                emit(out, Token::Str);
            }
            b'.' if rest.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                i = number_end(rest, i);
                emit(out, Token::Number);
            }
            _ if BAIL[usize::from(c)] => return None,
            _ if is_space(c) => i += 1,
            _ => {
                emit(out, Token::Punct(c));
                i += 1;
            }
        }
    }
    Some(Classified::new(StatementClass::Read))
}

/// The index just past the quoted token starting at `at` (doubled quotes and, outside
/// back-quotes, backslash escapes inside); `None` if it is not terminated.
fn skip_quoted(s: &[u8], at: usize) -> Option<usize> {
    let q = s[at];
    let mut i = at + 1;
    while i < s.len() {
        let c = s[i];
        if c == b'\\' && q != b'`' {
            i += 2;
            continue;
        }
        if c == q {
            if s.get(i + 1) == Some(&q) {
                i += 2;
                continue;
            }
            return Some(i + 1);
        }
        i += 1;
    }
    None
}

/// Raises the class to a more restrictive one (Read < ReadPrevious/ReadPrimary < Write).
fn upgrade(c: &mut Classified<'_>, to: StatementClass) {
    use StatementClass::*;
    let rank = |k| match k {
        Read => 0,
        ReadPrevious => 1,
        ReadPrimary => 2,
        _ => 3,
    };
    if rank(to) > rank(c.class) {
        c.class = to;
    }
}

fn peek_next<'a>(lx: &Lexer<'a>) -> Option<Token<'a>> {
    let mut probe = Lexer::new(lx.rest());
    probe.next_token()
}

fn scan_show<'a>(lx: &mut Lexer<'a>) -> Classified<'a> {
    let mut c = Classified::new(StatementClass::Read);
    // SHOW WARNINGS / ERRORS / COUNT(*) WARNINGS / PROFILE(S) describe the previous statement.
    match lx.next_token() {
        Some(Token::Word(w))
            if eq_kw(w, b"WARNINGS")
                || eq_kw(w, b"ERRORS")
                || eq_kw(w, b"COUNT")
                || eq_kw(w, b"PROFILE")
                || eq_kw(w, b"PROFILES") =>
        {
            c.class = StatementClass::ReadPrevious
        }
        // Replication and binlog state belong to one server: the primary.
        Some(Token::Word(w))
            if eq_kw(w, b"MASTER") || eq_kw(w, b"BINARY") || eq_kw(w, b"BINLOG") =>
        {
            c.class = StatementClass::ReadPrimary
        }
        _ => {}
    }
    finish(lx, c)
}

fn scan_write<'a>(lx: &mut Lexer<'a>, class: StatementClass) -> Classified<'a> {
    let mut c = Classified::new(class);
    while let Some(t) = lx.next_token() {
        match t {
            Token::Punct(b';') => return finish_after_semicolon(lx, c),
            Token::Word(w) if eq_kw(w, b"GET_LOCK") => c.pin = Some(PinReason::GetLock),
            Token::Word(w) if eq_kw(w, b"RELEASE_LOCK") || eq_kw(w, b"RELEASE_ALL_LOCKS") => {
                c.unpin = Some(PinReason::GetLock)
            }
            _ => {}
        }
    }
    c
}

fn scan_start_transaction<'a>(lx: &mut Lexer<'a>) -> Classified<'a> {
    let mut c = Classified::new(StatementClass::Begin);
    let mut prev_read = false;
    while let Some(t) = lx.next_token() {
        match t {
            Token::Word(w) if eq_kw(w, b"READ") => prev_read = true,
            Token::Word(w) if prev_read && eq_kw(w, b"ONLY") => {
                c.class = StatementClass::BeginReadOnly;
                prev_read = false;
            }
            Token::Word(w) if prev_read && eq_kw(w, b"WRITE") => {
                c.class = StatementClass::Begin;
                prev_read = false;
            }
            Token::Punct(b';') => return finish_after_semicolon(lx, c),
            _ => prev_read = false,
        }
    }
    c
}

fn scan_set<'a>(lx: &mut Lexer<'a>) -> Classified<'a> {
    use StatementClass::*;
    let mut c = Classified::new(SessionSet);
    let Some(first) = lx.next_token() else {
        c.class = Other;
        c.unsure = true;
        return c;
    };
    if let Token::Word(w) = first {
        if eq_kw(w, b"STATEMENT") {
            // SET STATEMENT var=value[, …] FOR <statement>: route by the statement.
            while let Some(t) = lx.next_token() {
                if matches!(t, Token::Word(f) if eq_kw(f, b"FOR")) {
                    let mut inner = classify_tokens(lx);
                    if inner.class == SessionSet || inner.class == Use {
                        inner.class = Write;
                    }
                    return inner;
                }
            }
            c.class = Other;
            c.unsure = true;
            return c;
        }
        if eq_kw(w, b"GLOBAL") || eq_kw(w, b"PASSWORD") || eq_kw(w, b"DEFAULT") {
            c.class = Write;
            return finish(lx, c);
        }
        if eq_kw(w, b"TRANSACTION") {
            // Without SESSION it applies to the next transaction only: that runs on the
            // primary, on the connection that took this statement, and it is not replayed.
            c.class = Write;
            c.pin = Some(PinReason::NextTransaction);
            return finish(lx, c);
        }
    }
    // A list of assignments. Scopes: SESSION/LOCAL/@@session./@@local./@@ (session),
    // GLOBAL/@@global. (server-wide: write), @user (user variable: pin).
    let mut t = Some(first);
    let mut expecting_target = true;
    let mut depth = 0i32;
    while let Some(tok) = t {
        match tok {
            Token::Punct(b'(') => depth += 1,
            Token::Punct(b')') => depth -= 1,
            Token::Punct(b',') if depth == 0 => expecting_target = true,
            Token::Punct(b';') => return finish_after_semicolon(lx, c),
            Token::UserVar if expecting_target => {
                c.pin = Some(PinReason::UserVariable);
                c.class = Write;
                expecting_target = false;
            }
            Token::SysVar(v) if expecting_target => {
                if v.len() >= 7 && v[..7].eq_ignore_ascii_case(b"global.") {
                    c.class = Write;
                }
                expecting_target = false;
            }
            Token::Word(w) if expecting_target => {
                if eq_kw(w, b"GLOBAL") {
                    c.class = Write;
                } else if eq_kw(w, b"SESSION") || eq_kw(w, b"LOCAL") {
                    // the scope keyword: the target follows
                    t = lx.next_token();
                    continue;
                }
                expecting_target = false;
            }
            Token::Word(w) if eq_kw(w, b"SELECT") => {
                // A value computed by a query reads data: run it on the primary, and its
                // result cannot be replayed reliably.
                c.class = Write;
                c.pin.get_or_insert(PinReason::UserVariable);
            }
            _ => {}
        }
        t = lx.next_token();
    }
    c
}

/// Consumes the rest of the statement; a further statement after `;` makes it [`Multi`].
fn finish<'a>(lx: &mut Lexer<'a>, c: Classified<'a>) -> Classified<'a> {
    while let Some(t) = lx.next_token() {
        if t == Token::Punct(b';') {
            return finish_after_semicolon(lx, c);
        }
    }
    c
}

fn finish_after_semicolon<'a>(lx: &mut Lexer<'a>, mut c: Classified<'a>) -> Classified<'a> {
    // Trailing semicolons and comments are fine; anything else is a second statement.
    while let Some(t) = lx.next_token() {
        if t != Token::Punct(b';') {
            c.class = StatementClass::Multi;
            return c;
        }
    }
    c
}

fn parse_hints<'a>(raw: &[Option<&'a [u8]>; 4]) -> Hints<'a> {
    let mut h = Hints::default();
    for text in raw.iter().flatten() {
        for item in text
            .split(|&b| b == b' ' || b == b',' || b == b';')
            .filter(|s| !s.is_empty())
        {
            let Some(eq) = item.iter().position(|&b| b == b'=') else {
                h.invalid = h.invalid.saturating_add(1);
                continue;
            };
            let (k, v) = (&item[..eq], &item[eq + 1..]);
            if eq_kw(k, b"ROUTE") {
                if eq_kw(v, b"PRIMARY") || eq_kw(v, b"MASTER") {
                    h.primary = Some(true);
                } else if eq_kw(v, b"REPLICA") || eq_kw(v, b"SLAVE") {
                    h.primary = Some(false);
                } else {
                    h.invalid = h.invalid.saturating_add(1);
                }
            } else if eq_kw(k, b"MAX_LAG") {
                match std::str::from_utf8(v)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                {
                    Some(ms) => h.max_lag_ms = Some(ms),
                    None => h.invalid = h.invalid.saturating_add(1),
                }
            } else if eq_kw(k, b"SERVER") && !v.is_empty() {
                h.server = Some(v);
            } else {
                h.invalid = h.invalid.saturating_add(1);
            }
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::classify_query;

    /// The table of real statements in testdata/statements.tsv, each with its expected class.
    #[test]
    fn statement_table() {
        let table = include_str!("testdata/statements.tsv");
        let mut checked = 0;
        let mut wrong = Vec::new();
        for line in table
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (expected, sql) = line.split_once('\t').expect("class<TAB>statement");
            let sql = sql.replace("\\n", "\n");
            let got = classify_query(sql.as_bytes()).class.as_str();
            if got != expected {
                wrong.push(format!("{sql:?}: expected {expected}, got {got}"));
            }
            checked += 1;
        }
        assert!(checked >= 200, "only {checked} statements");
        assert!(
            wrong.is_empty(),
            "{} of {checked} misclassified:\n{}",
            wrong.len(),
            wrong.join("\n")
        );
    }

    /// The fast path never disagrees with the full pass.
    #[test]
    fn fast_path_agrees_with_the_full_pass() {
        let table = include_str!("testdata/statements.tsv");
        let mut fast = 0;
        for line in table
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let sql = line.split_once('\t').unwrap().1.replace("\\n", "\n");
            if let Some(c) = fast_select(sql.as_bytes(), &mut NoNorm) {
                fast += 1;
                let mut lx = Lexer::new(sql.as_bytes());
                let full = classify_tokens(&mut lx);
                assert_eq!(c.class, full.class, "{sql}");
                assert_eq!((c.pin, c.unpin), (full.pin, full.unpin), "{sql}");
                assert!(!lx.unsure, "{sql}");
            }
        }
        assert!(fast >= 20, "the fast path takes the plain selects ({fast})");
        // Quoted names and strings are skipped whole: keywords inside them do not count.
        assert!(fast_select(b"SELECT `update`, 'for update' FROM `t`", &mut NoNorm).is_some());
        for sql in [
            "SELECT c FROM t FOR UPDATE",
            "SELECT a INTO OUTFILE x",
            "SELECT SQL_CALC_FOUND_ROWS a FROM t",
            "SELECT 'unterminated",
            "SELECT a -- c\n",
            "SELECT a FROM t LOCK IN SHARE MODE",
        ] {
            assert!(fast_select(sql.as_bytes(), &mut NoNorm).is_none(), "{sql}");
        }
    }

    /// The fast path's digest is the full pass's: on every statement of the table and on
    /// 20,000 generated ones built from the pieces where the two could cut tokens differently
    /// (numbers with exponents and hex, `.5`, quoted names with doubled quotes, strings with
    /// escapes, runs of operators, every kind of whitespace, non-ASCII words, a NUL byte).
    #[test]
    fn fast_path_digest_agrees_with_the_full_pass() {
        fn full(sql: &[u8]) -> (Classified<'_>, bool, Seen) {
            let mut lx = Lexer::new(sql);
            lx.seen = Some(Seen::default());
            let c = classify_tokens(&mut lx);
            while lx.next_token().is_some() {}
            (c, lx.unsure, lx.seen.unwrap())
        }
        let check = |sql: &[u8]| -> bool {
            let mut norm = NormHash::default();
            let Some(c) = fast_select(sql, &mut norm) else {
                return false;
            };
            let (f, unsure, seen) = full(sql);
            let text = String::from_utf8_lossy(sql);
            assert!(!unsure, "{text:?}");
            assert_eq!(
                (c.class, c.pin, c.unpin),
                (f.class, f.pin, f.unpin),
                "{text:?}"
            );
            assert_eq!(norm.hash, seen.digest(), "{text:?}");
            assert_eq!(norm.hash, crate::router::lexer::digest(sql), "{text:?}");
            assert!(!seen.load_local(), "{text:?}");
            let (c2, seen2) = classify_seen(sql);
            assert_eq!((c2.class, seen2.digest()), (c.class, norm.hash), "{text:?}");
            true
        };
        let table = include_str!("testdata/statements.tsv");
        for line in table
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            check(
                line.split_once('\t')
                    .unwrap()
                    .1
                    .replace("\\n", "\n")
                    .as_bytes(),
            );
        }
        let pieces: &[&[u8]] = &[
            b"c",
            b"sbtest1",
            b"id",
            b"$x",
            b"_a1",
            b"\xc3\xa9t\xc3\xa9",
            b"1",
            b"42",
            b"1.5",
            b"1e+3",
            b"1E5",
            b"0x1F",
            b"0xE+1",
            b"0b101",
            b".5",
            b".5e+2",
            b"3.",
            b"1e",
            b"`a`",
            b"`a``b`",
            b"`x y`",
            b"'s'",
            b"'it''s'",
            b"'a\\'b'",
            b"\"q\"",
            b"\"\"",
            b"=",
            b"<",
            b">",
            b"!",
            b"*",
            b"+",
            b",",
            b".",
            b":",
            b"%",
            b"&",
            b"|",
            b"^",
            b"~",
            b"?",
            b"[",
            b"]",
            b" ",
            b"  ",
            b"\t",
            b"\n",
            b"\r",
            b"\x0b",
            b"\x0c",
            b"\0",
            b"FROM",
            b"WHERE",
            b"AND",
            b"t.c",
            b"db.t.c",
            b"e",
            b"E",
            b"x",
        ];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) as usize
        };
        let mut fast = 0;
        for _ in 0..20_000 {
            let mut sql = b"SELECT ".to_vec();
            for _ in 0..1 + next() % 12 {
                sql.extend_from_slice(pieces[next() % pieces.len()]);
                if next() % 3 == 0 {
                    sql.push(b' ');
                }
            }
            fast += usize::from(check(&sql));
        }
        assert!(fast > 10_000, "the fast path took only {fast} of 20,000");
    }

    /// The one-pass classification (class, digest, `LOAD … LOCAL`) says what the three
    /// separate passes say, on every statement of the table and on the cases where they could
    /// part: hints and odd quotes after the class is decided, comments, executable comments,
    /// `LOAD … LOCAL` forms, several statements.
    #[test]
    fn one_pass_agrees_with_the_three_passes() {
        use crate::router::lexer::{digest, mentions_load_local};
        let table = include_str!("testdata/statements.tsv");
        let mut sqls: Vec<String> = table
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| l.split_once('\t').unwrap().1.replace("\\n", "\n"))
            .collect();
        for extra in [
            "SELECT c FROM sbtest1 WHERE id=4711",
            "select  c from T where ID = 'x' /* sluice: route=primary */",
            "SELECT 1 /* sluice: max_lag=50 */ ; SELECT 2",
            "SELECT 1; /* sluice: route=replica */",
            "SELECT 'unterminated",
            "SELECT 1; SELECT 'unterminated",
            "/*!40101 SELECT */ a FROM t",
            "/*!80000 SELECT */ 1",
            "SELECT `a`.`b`, @x, @@session.sql_mode, f(1, 2.5e-3) FROM t -- c\n",
            "LOAD DATA LOCAL INFILE 'f' INTO TABLE t",
            "LOAD DATA LOW_PRIORITY CONCURRENT LOCAL INFILE 'f' INTO TABLE t",
            "load xml local infile 'f' into table t",
            "SELECT 1; LOAD DATA LOCAL INFILE 'f' INTO TABLE t",
            "LOAD DATA INFILE 'local' INTO TABLE t",
            "SELECT 'LOAD DATA LOCAL INFILE'",
            "",
            "   ",
            "(SELECT 1) UNION (SELECT 2)",
        ] {
            sqls.push(extra.to_string());
        }
        for sql in &sqls {
            let b = sql.as_bytes();
            let (c, seen) = crate::router::classify_query_seen(b);
            assert_eq!(c, classify_query(b), "{sql}");
            assert_eq!(seen.digest(), digest(b), "{sql}");
            assert_eq!(seen.load_local(), mentions_load_local(b), "{sql}");
        }
        assert!(mentions_load_local(
            b"LOAD DATA LOW_PRIORITY CONCURRENT LOCAL INFILE 'f' INTO TABLE t"
        ));
        assert!(!mentions_load_local(b"SELECT 'LOAD DATA LOCAL INFILE'"));
    }

    #[test]
    fn pins_and_unpins() {
        let pin = |sql: &str| classify(sql.as_bytes()).pin;
        assert_eq!(
            pin("CREATE TEMPORARY TABLE t (a INT)"),
            Some(PinReason::TempTable)
        );
        assert_eq!(pin("SET @x = 1"), Some(PinReason::UserVariable));
        assert_eq!(pin("SELECT @x := 1"), Some(PinReason::UserVariable));
        assert_eq!(
            pin("SELECT a INTO @x FROM t"),
            Some(PinReason::UserVariable)
        );
        assert_eq!(
            pin("PREPARE s FROM 'SELECT 1'"),
            Some(PinReason::TextPrepare)
        );
        assert_eq!(pin("LOCK TABLES t WRITE"), Some(PinReason::LockTables));
        assert_eq!(
            pin("FLUSH TABLES WITH READ LOCK"),
            Some(PinReason::LockTables)
        );
        assert_eq!(pin("SELECT GET_LOCK('a', 1)"), Some(PinReason::GetLock));
        assert_eq!(pin("DO GET_LOCK('a', 1)"), Some(PinReason::GetLock));
        assert_eq!(
            pin("SELECT SQL_CALC_FOUND_ROWS * FROM t"),
            Some(PinReason::FoundRows)
        );
        assert_eq!(pin("HANDLER t OPEN"), Some(PinReason::Handler));
        assert_eq!(pin("SELECT 1"), None);
        assert_eq!(pin("SET NAMES utf8"), None);
        assert_eq!(
            classify(b"UNLOCK TABLES").unpin,
            Some(PinReason::LockTables)
        );
        assert_eq!(
            classify(b"SELECT RELEASE_LOCK('a')").unpin,
            Some(PinReason::GetLock)
        );
        assert_eq!(classify(b"USE `my db`").database, Some(&b"my db"[..]));
    }

    #[test]
    fn hints() {
        let h = classify(b"SELECT /* sluice: route=primary */ 1").hints;
        assert_eq!(h.primary, Some(true));
        let h = classify(b"/* sluice: route=replica max_lag=250 */ SELECT 1").hints;
        assert_eq!((h.primary, h.max_lag_ms), (Some(false), Some(250)));
        let h = classify(b"/* sluice: server=db2 */ SELECT 1").hints;
        assert_eq!(h.server, Some(&b"db2"[..]));
        let h = classify(b"/* sluice: max_lag=soon route=sideways bogus */ SELECT 1").hints;
        assert_eq!((h.max_lag_ms, h.primary, h.invalid), (None, None, 3));
        // Not a hint: an ordinary comment mentioning sluice.
        assert_eq!(
            classify(b"/* sent via sluice */ SELECT 1").hints,
            Hints::default()
        );
    }
}
