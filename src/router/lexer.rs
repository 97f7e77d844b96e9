//! An allocation-free lexer over SQL bytes, for the hot-path classifier. It skips whitespace
//! and comments, reads executable comments (`/*! … */`, `/*M! … */`) as SQL, collects Sluice
//! hints (`/* sluice: … */`), and yields words, variables and punctuation. String literals and
//! quoted identifiers are single tokens, so keywords inside them are never seen.

/// A token. Words are returned as written; compare them with [`eq_kw`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token<'a> {
    /// A keyword or unquoted identifier (letters, digits, `_`, `$`).
    Word(&'a [u8]),
    /// A back-quoted identifier, without the quotes.
    Quoted(&'a [u8]),
    /// `@name` (user variable).
    UserVar,
    /// `@@name`, `@@session.name`, `@@global.name`: the text after `@@`.
    SysVar(&'a [u8]),
    /// A string literal.
    Str,
    Number,
    Punct(u8),
}

/// Bytes that continue a word: letters, digits, `_`, `$`, and any non-ASCII byte.
pub(super) static WORD: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        t[i] = c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80;
        i += 1;
    }
    t
};

/// Bytes that may start whitespace or a comment.
static TRIVIA: [bool; 256] = {
    let mut t = [false; 256];
    let bytes = [
        b' ', b'\t', b'\n', b'\r', 0x0B, 0x0C, b'#', b'-', b'/', b'*',
    ];
    let mut i = 0;
    while i < bytes.len() {
        t[bytes[i] as usize] = true;
        i += 1;
    }
    t
};

/// Executable comments whose version Sluice cannot decide (MySQL 5.7+/8.0 version numbers,
/// which MariaDB reads differently) make the classification unsure.
const MAX_SURE_MYSQL_VERSION: u32 = 50700;
/// MariaDB version Sluice assumes for `/*M!NNNNNN … */` (10.11).
const MARIADB_VERSION: u32 = 101100;

#[derive(Clone)]
pub struct Lexer<'a> {
    sql: &'a [u8],
    pos: usize,
    /// Depth of executable comments we are inside (their `*/` is skipped).
    in_exec_comment: u32,
    /// Set when something was seen that the lexical pass cannot judge.
    pub unsure: bool,
    /// Hint comments seen so far (the text after `sluice:`), at most a few.
    pub hints: [Option<&'a [u8]>; 4],
    /// When set, every token returned is also fed to it (one pass for the class, the digest
    /// and the `LOAD … LOCAL` test).
    pub seen: Option<Seen>,
}

impl<'a> Lexer<'a> {
    pub fn new(sql: &'a [u8]) -> Self {
        Lexer {
            sql,
            pos: 0,
            in_exec_comment: 0,
            unsure: false,
            hints: [None; 4],
            seen: None,
        }
    }

    #[inline]
    fn peek_at(&self, off: usize) -> u8 {
        self.sql.get(self.pos + off).copied().unwrap_or(0)
    }

    /// Moves to the start of the next token (past whitespace and comments), so that
    /// [`Lexer::rest`] begins with it.
    pub fn skip_to_token(&mut self) {
        self.skip_trivia();
    }

    /// Skips whitespace and comments.
    #[inline(always)]
    fn skip_trivia(&mut self) {
        loop {
            // Fast exit: most tokens start right after one space.
            match self.sql.get(self.pos) {
                Some(&c) if !TRIVIA[usize::from(c)] => return,
                None => return,
                _ => {}
            }
            let c = self.peek_at(0);
            match c {
                b' ' | b'\t' | b'\n' | b'\r' | 0x0B | 0x0C => {
                    let rest = &self.sql[self.pos..];
                    self.pos += rest
                        .iter()
                        .position(|c| !matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0B | 0x0C))
                        .unwrap_or(rest.len());
                }
                b'#' => self.skip_line(),
                b'-' if self.peek_at(1) == b'-'
                    && matches!(self.peek_at(2), b' ' | b'\t' | b'\n' | b'\r' | 0) =>
                {
                    self.skip_line()
                }
                b'/' if self.peek_at(1) == b'*' => self.comment(),
                b'*' if self.in_exec_comment > 0 && self.peek_at(1) == b'/' => {
                    self.in_exec_comment -= 1;
                    self.pos += 2;
                }
                _ => return,
            }
        }
    }

    fn skip_line(&mut self) {
        while self.pos < self.sql.len() && self.sql[self.pos] != b'\n' {
            self.pos += 1;
        }
    }

    fn comment(&mut self) {
        let start = self.pos + 2;
        let exec = match (self.peek_at(2), self.peek_at(3)) {
            (b'!', _) => Some(3),
            (b'M', b'!') => Some(4),
            _ => None,
        };
        if let Some(skip) = exec {
            let mariadb = skip == 4;
            self.pos += skip;
            let digits_start = self.pos;
            while self.peek_at(0).is_ascii_digit() {
                self.pos += 1;
            }
            let digits = &self.sql[digits_start..self.pos];
            let version = std::str::from_utf8(digits)
                .ok()
                .and_then(|s| s.parse::<u32>().ok());
            let runs = match (version, mariadb) {
                (None, _) => true,
                (Some(v), true) => v <= MARIADB_VERSION,
                (Some(v), false) if v < MAX_SURE_MYSQL_VERSION => true,
                (Some(_), false) => {
                    self.unsure = true;
                    true
                }
            };
            if runs {
                self.in_exec_comment += 1;
                return;
            }
            // A comment for a newer server: skip it like any comment.
        }
        let end = find(&self.sql[start..], b"*/").map_or(self.sql.len(), |i| start + i + 2);
        let body = &self.sql[start..end.saturating_sub(2).max(start)];
        let trimmed = trim(body);
        if let Some(rest) = strip_prefix_ci(trimmed, b"sluice:") {
            if let Some(slot) = self.hints.iter_mut().find(|h| h.is_none()) {
                *slot = Some(trim(rest));
            }
        }
        self.pos = end;
    }

    /// The next token, or `None` at the end.
    #[inline]
    pub fn next_token(&mut self) -> Option<Token<'a>> {
        let t = self.next_raw();
        if let (Some(t), Some(seen)) = (t, self.seen.as_mut()) {
            seen.token(t);
        }
        t
    }

    #[inline]
    fn next_raw(&mut self) -> Option<Token<'a>> {
        self.skip_trivia();
        let c = self.peek_at(0);
        if self.pos >= self.sql.len() {
            return None;
        }
        let start = self.pos;
        Some(match c {
            b'a'..=b'z' | b'A'..=b'Z' | b'_' | b'$' | 0x80..=0xFF => {
                self.eat_word();
                Token::Word(&self.sql[start..self.pos])
            }
            b'0'..=b'9' => {
                self.eat_number();
                Token::Number
            }
            b'.' if self.peek_at(1).is_ascii_digit() => {
                self.eat_number();
                Token::Number
            }
            b'`' => {
                let body = self.quoted(b'`');
                Token::Quoted(body)
            }
            b'\'' | b'"' => {
                self.quoted(c);
                Token::Str
            }
            b'@' => {
                if self.peek_at(1) == b'@' {
                    self.pos += 2;
                    let s = self.pos;
                    while matches!(self.peek_at(0), b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' | b'$')
                    {
                        self.pos += 1;
                    }
                    Token::SysVar(&self.sql[s..self.pos])
                } else {
                    self.pos += 1;
                    match self.peek_at(0) {
                        b'`' | b'\'' | b'"' => {
                            let q = self.peek_at(0);
                            self.quoted(q);
                        }
                        _ => self.eat_word(),
                    }
                    Token::UserVar
                }
            }
            _ => {
                self.pos += 1;
                Token::Punct(c)
            }
        })
    }

    /// Digits, a decimal point, an exponent, hex or binary digits: `12`, `1.5e-3`, `0x1F`.
    fn eat_number(&mut self) {
        self.pos = number_end(self.sql, self.pos);
    }

    fn eat_word(&mut self) {
        self.pos = word_end(self.sql, self.pos);
    }

    /// Consumes a quoted token (doubled quotes and backslash escapes inside); returns its body.
    fn quoted(&mut self, q: u8) -> &'a [u8] {
        self.pos += 1;
        let start = self.pos;
        while self.pos < self.sql.len() {
            let c = self.sql[self.pos];
            if c == b'\\' && q != b'`' {
                self.pos += 2;
                continue;
            }
            if c == q {
                if self.peek_at(1) == q {
                    self.pos += 2;
                    continue;
                }
                let body = &self.sql[start..self.pos];
                self.pos += 1;
                return body;
            }
            self.pos += 1;
        }
        // Unterminated: the server will reject it; the classifier says nothing more.
        self.unsure = true;
        &self.sql[start.min(self.sql.len())..]
    }

    /// The unread rest of the statement (after the current position).
    pub fn rest(&self) -> &'a [u8] {
        &self.sql[self.pos.min(self.sql.len())..]
    }
}

/// Where the number token starting at `start` ends (see [`Lexer`]; also the classifier's fast
/// path, which must cut tokens exactly as the lexer does).
#[inline]
pub(crate) fn number_end(sql: &[u8], start: usize) -> usize {
    let hex = sql.get(start + 1).is_some_and(|&c| c == b'x' || c == b'X');
    let mut pos = start;
    while pos < sql.len() {
        let c = sql[pos];
        let signed_exponent =
            matches!(c, b'+' | b'-') && pos > 0 && matches!(sql[pos - 1], b'e' | b'E') && !hex;
        if WORD[usize::from(c)] || c == b'.' || signed_exponent {
            pos += 1;
        } else {
            break;
        }
    }
    pos
}

/// Where the word starting at `start` ends.
#[inline]
pub(crate) fn word_end(sql: &[u8], start: usize) -> usize {
    let rest = &sql[start.min(sql.len())..];
    start.min(sql.len())
        + rest
            .iter()
            .position(|&c| !WORD[usize::from(c)])
            .unwrap_or(rest.len())
}

/// Whether the lexer skips `c` as whitespace.
#[inline]
pub(crate) fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0B | 0x0C)
}

/// A [`NormSink`] that keeps nothing (the classifier's fast path without a digest).
pub(crate) struct NoNorm;

impl NormSink for NoNorm {
    #[inline(always)]
    fn put(&mut self, _: &[u8]) {}
    #[inline(always)]
    fn last(&self) -> Option<u8> {
        None
    }
    #[inline(always)]
    fn put_upper(&mut self, _: &[u8]) {}
}

/// Where [`walk_normalized`] writes the normalized statement.
pub trait NormSink {
    fn put(&mut self, bytes: &[u8]);
    /// The last byte written, `None` while nothing was.
    fn last(&self) -> Option<u8>;
    /// Writes `bytes` with ASCII letters upper-cased.
    fn put_upper(&mut self, bytes: &[u8]) {
        let mut buf = [0u8; 64];
        for chunk in bytes.chunks(buf.len()) {
            let n = chunk.len();
            buf[..n].copy_from_slice(chunk);
            buf[..n].make_ascii_uppercase();
            self.put(&buf[..n]);
        }
    }
}

impl NormSink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
    fn last(&self) -> Option<u8> {
        <[u8]>::last(self).copied()
    }
}

/// FNV-1a over the normalized bytes: the digest of a statement, computed without building
/// its text.
#[derive(Debug, Clone, Copy)]
pub struct NormHash {
    pub hash: u64,
    last: Option<u8>,
}

impl Default for NormHash {
    fn default() -> Self {
        NormHash {
            hash: 0xcbf2_9ce4_8422_2325,
            last: None,
        }
    }
}

impl NormHash {
    #[inline(always)]
    fn byte(&mut self, b: u8) {
        self.hash ^= u64::from(b);
        self.hash = self.hash.wrapping_mul(0x0100_0000_01b3);
    }
}

impl NormSink for NormHash {
    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.byte(b);
        }
        if let Some(&b) = bytes.last() {
            self.last = Some(b);
        }
    }
    #[inline]
    fn last(&self) -> Option<u8> {
        self.last
    }
    #[inline]
    fn put_upper(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.byte(b.to_ascii_uppercase());
        }
        if let Some(&b) = bytes.last() {
            self.last = Some(b.to_ascii_uppercase());
        }
    }
}

/// What one pass over a statement's tokens learns besides its class (see
/// [`crate::router::classify::classify_seen`]): its digest, as [`digest`] computes it, and
/// whether it is a `LOAD DATA|XML … LOCAL`, as [`mentions_load_local`] says.
#[derive(Debug, Clone, Copy, Default)]
pub struct Seen {
    norm: NormHash,
    /// [`load_step`]'s state.
    load: u8,
    load_local: bool,
}

impl Seen {
    #[inline]
    fn token(&mut self, t: Token<'_>) {
        emit(&mut self.norm, t);
        self.load = load_step(self.load, t);
        self.load_local |= self.load == LOAD_LOCAL;
    }

    /// What the classifier's fast path learns: the digest, hashed as it cut the tokens, and no
    /// `LOAD … LOCAL` (it gives up on the word `LOAD`).
    pub(crate) fn hashed(norm: NormHash) -> Seen {
        Seen {
            norm,
            load: 0,
            load_local: false,
        }
    }

    /// The statement's digest ([`digest`]).
    pub fn digest(&self) -> u64 {
        self.norm.hash
    }

    /// Whether it contains a `LOAD DATA|XML … LOCAL` ([`mentions_load_local`]).
    pub fn load_local(&self) -> bool {
        self.load_local
    }
}

/// [`load_step`]'s state once `LOAD DATA|XML … LOCAL` was read.
const LOAD_LOCAL: u8 = 5;

/// One token of the `LOAD DATA|XML [modifiers] LOCAL` test. States: 0 nothing, 1 after
/// `LOAD`, 2..=4 after `LOAD DATA|XML` and up to 2 modifiers, [`LOAD_LOCAL`] found.
#[inline]
fn load_step(state: u8, t: Token<'_>) -> u8 {
    match (state, t) {
        (_, Token::Word(w)) if eq_kw(w, b"LOAD") => 1,
        (1, Token::Word(w)) if eq_kw(w, b"DATA") || eq_kw(w, b"XML") => 2,
        (2..=4, Token::Word(w)) if eq_kw(w, b"LOCAL") => LOAD_LOCAL,
        (2..=3, Token::Word(_)) => state + 1,
        _ => 0,
    }
}

/// Writes one token's normalized form (see [`normalize`]). Inlined: where the token's kind is
/// known (the classifier's fast path), the tests on it fold away.
#[inline(always)]
pub(crate) fn emit(out: &mut impl NormSink, t: Token<'_>) {
    let glue = matches!(t, Token::Punct(b',' | b')' | b';' | b'.'))
        || matches!(out.last(), Some(b'(' | b'.'));
    if out.last().is_some() && !glue {
        out.put(b" ");
    }
    match t {
        Token::Word(w) => out.put_upper(w),
        Token::Quoted(q) => {
            out.put(b"`");
            out.put(q);
            out.put(b"`");
        }
        Token::UserVar => out.put(b"@?"),
        Token::SysVar(v) => {
            out.put(b"@@");
            out.put_upper(v);
        }
        Token::Str | Token::Number => out.put(b"?"),
        Token::Punct(p) => out.put(&[p]),
    }
}

/// Writes the normalized form of `sql` to `out` (see [`normalize`]).
pub fn walk_normalized(sql: &[u8], out: &mut impl NormSink) {
    let mut lx = Lexer::new(sql);
    while let Some(t) = lx.next_raw() {
        emit(out, t);
    }
}

/// The normalized form of a statement, for rules and digests: comments dropped, literals
/// replaced by `?`, keywords and identifiers upper-cased (ASCII letters; quoted identifiers
/// kept as written), single spaces between tokens. `SELECT * FROM t WHERE id = 42 /* x */` →
/// `SELECT * FROM T WHERE ID = ?`.
pub fn normalize(sql: &[u8]) -> String {
    let mut out = Vec::with_capacity(sql.len().min(1024));
    walk_normalized(sql, &mut out);
    match String::from_utf8(out) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}

/// The digest of a statement: a hash of its normalized form (equal for statements that differ
/// only in literals, comments, spacing or keyword case).
pub fn digest(sql: &[u8]) -> u64 {
    let mut h = NormHash::default();
    walk_normalized(sql, &mut h);
    h.hash
}

/// Whether the text contains a `LOAD DATA … LOCAL` / `LOAD XML … LOCAL` statement (in any
/// statement of a multi-statement query): only then may a server ask the client for a local
/// file. A quick byte scan for `LOCAL` comes first, so most queries cost one pass of memchr
/// speed.
pub fn mentions_load_local(sql: &[u8]) -> bool {
    let has_local = sql.windows(5).any(|w| w.eq_ignore_ascii_case(b"LOCAL"));
    if !has_local {
        return false;
    }
    let mut lx = Lexer::new(sql);
    let mut state = 0;
    while let Some(t) = lx.next_raw() {
        state = load_step(state, t);
        if state == LOAD_LOCAL {
            return true;
        }
    }
    false
}

/// Whether the statement contains the keyword `kw` (upper case) as a word — not inside a
/// string, a quoted identifier or a comment.
pub fn has_keyword(sql: &[u8], kw: &[u8]) -> bool {
    let mut lx = Lexer::new(sql);
    while let Some(t) = lx.next_token() {
        if matches!(t, Token::Word(w) if eq_kw(w, kw)) {
            return true;
        }
    }
    false
}

/// ASCII case-insensitive comparison with an upper-case keyword.
#[inline]
pub fn eq_kw(word: &[u8], kw: &[u8]) -> bool {
    // `| 0x20` folds ASCII letters to lower case; keywords hold only letters, digits and `_`
    // (which the fold leaves distinct), so this is exact for them.
    word.len() == kw.len() && word.iter().zip(kw).all(|(a, b)| a | 0x20 == b | 0x20)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

pub fn trim(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &s[start..end]
}

pub fn strip_prefix_ci<'a>(s: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    (s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix))
        .then(|| &s[prefix.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(sql: &str) -> Vec<String> {
        let mut l = Lexer::new(sql.as_bytes());
        let mut out = Vec::new();
        while let Some(t) = l.next_token() {
            out.push(match t {
                Token::Word(w) => String::from_utf8_lossy(w).to_uppercase(),
                Token::Quoted(q) => format!("`{}`", String::from_utf8_lossy(q)),
                Token::UserVar => "@".into(),
                Token::SysVar(v) => format!("@@{}", String::from_utf8_lossy(v)),
                Token::Str => "'".into(),
                Token::Number => "N".into(),
                Token::Punct(p) => (p as char).to_string(),
            });
        }
        out
    }

    #[test]
    fn comments_and_strings() {
        assert_eq!(
            words("/* x */ SELECT -- c\n 'for update' # z\n, `t` "),
            ["SELECT", "'", ",", "`t`"]
        );
        assert_eq!(
            words("/*!40101 SET NAMES utf8 */;"),
            ["SET", "NAMES", "UTF8", ";"]
        );
        assert_eq!(words("/*M!100100 SELECT */ 1"), ["SELECT", "N"]);
        assert_eq!(
            words("/*M!999999 DROP TABLE t */ SELECT 1"),
            ["SELECT", "N"]
        );
        assert_eq!(
            words("SELECT 'it''s', \"a\\\"b\" FROM t"),
            ["SELECT", "'", ",", "'", "FROM", "T"]
        );
        assert_eq!(
            words("SET @@session.x=1, @y:=2"),
            ["SET", "@@session.x", "=", "N", ",", "@", ":", "=", "N"]
        );
        assert_eq!(words("SELECT 1--x"), ["SELECT", "N", "-", "-", "X"]);
        assert_eq!(words("SELECT 1-- x"), ["SELECT", "N"]);
    }

    #[test]
    fn finds_load_local() {
        assert!(mentions_load_local(
            b"LOAD DATA LOCAL INFILE 'x' INTO TABLE t"
        ));
        assert!(mentions_load_local(
            b"load data concurrent local infile 'x' into table t"
        ));
        assert!(mentions_load_local(
            b"SELECT 1; LOAD XML LOW_PRIORITY LOCAL INFILE 'x' INTO TABLE t"
        ));
        assert!(!mentions_load_local(b"LOAD DATA INFILE 'x' INTO TABLE t"));
        assert!(!mentions_load_local(b"SELECT 'LOAD DATA LOCAL INFILE'"));
        assert!(!mentions_load_local(b"SELECT local FROM t"));
        assert!(!mentions_load_local(b"/* LOAD DATA LOCAL */ SELECT 1"));
    }

    #[test]
    fn digest_matches_normalized_text() {
        let a = digest(b"select * from t where id = 42 /* x */");
        let b = digest(b"SELECT *  FROM t WHERE id=7");
        assert_eq!(a, b);
        assert_ne!(a, digest(b"SELECT * FROM t WHERE id = 7 AND x = 1"));
        let mut h = NormHash::default();
        h.put(normalize(b"select a, b from t where c in (1, 2)").as_bytes());
        assert_eq!(h.hash, digest(b"select a, b from t where c in (1, 2)"));
    }

    #[test]
    fn normalizes() {
        assert_eq!(
            normalize(b"select * from t where id = 42 /* x */"),
            "SELECT * FROM T WHERE ID = ?"
        );
        assert_eq!(
            normalize(b"INSERT INTO `t` (a, b) VALUES ('x', 1.5)"),
            "INSERT INTO `t` (A, B) VALUES (?, ?)"
        );
        assert_eq!(
            normalize(b"SELECT db.t.c FROM db.t"),
            "SELECT DB.T.C FROM DB.T"
        );
        assert_eq!(
            normalize(b"SELECT 1e-3, .5, 0x1F, -2"),
            "SELECT ?, ?, ?, - ?"
        );
    }

    #[test]
    fn version_comments_for_newer_mysql_are_unsure() {
        let mut l = Lexer::new(b"/*!80000 SELECT */ 1");
        while l.next_token().is_some() {}
        assert!(l.unsure);
    }

    #[test]
    fn hints() {
        let mut l = Lexer::new(b"SELECT /* sluice: route=primary */ 1 /*sluice:max_lag=50*/");
        while l.next_token().is_some() {}
        assert_eq!(l.hints[0], Some(&b"route=primary"[..]));
        assert_eq!(l.hints[1], Some(&b"max_lag=50"[..]));
    }
}
