//! The session state a server connection carries, and bringing a connection to the state a
//! session wants before it runs the session's statement.
//!
//! With multiplexing, a server connection serves many client sessions one after another. Each
//! session keeps the state it asked for (default database, `SET NAMES`, `SET SESSION …`,
//! replayable user variables) as a [`SessionVars`]; each connection knows the state it has.
//! [`BackendConn::sync_to`] computes the difference and applies it with at most one
//! `COM_INIT_DB` and one `SET a = …, b = …` statement (a second `SET` only where a character
//! set changes before a quoted literal): assignments the session has and the connection lacks
//! are applied, assignments the connection has and the session lacks are undone (`var =
//! DEFAULT`, `@var = NULL`, the session's login character set by collation id). The
//! multi-statement option (`CLIENT_MULTI_STATEMENTS` at login, `COM_SET_OPTION` after it) is
//! state of the same kind: every server connection logs in with it, and a session without it
//! has it turned off on the connection it leases (one `COM_SET_OPTION`).

use sluice_proto::command::{COM_INIT_DB, COM_QUERY, COM_SET_OPTION};
use sluice_proto::err::ErrPacket;
use sluice_proto::tracker::ResponseKind;

use super::{BackendConn, BackendError};

/// The key of the `SET NAMES` / `SET CHARACTER SET` assignment.
pub const NAMES_KEY: &[u8] = b"names";

/// Replayable session state: what a session asked for, or what a connection has.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionVars {
    pub db: Option<Vec<u8>>,
    /// Assignments by key (lower-case variable name, `@name` for user variables, `names`),
    /// with the text that sets them (`sql_mode = 'ANSI'`), oldest first.
    pub sets: Vec<(Vec<u8>, Vec<u8>)>,
    /// The multi-statement option is off (a login without `CLIENT_MULTI_STATEMENTS`, or
    /// `COM_SET_OPTION` with `MYSQL_OPTION_MULTI_STATEMENTS_OFF`): the server refuses a query
    /// of several statements. Kept by `COM_CHANGE_USER` and `COM_RESET_CONNECTION`.
    pub single_statements: bool,
}

impl SessionVars {
    /// Records an assignment; it replaces an earlier one of the same key and moves last
    /// (assignments that touch the same server variables keep their order).
    pub fn set(&mut self, key: Vec<u8>, mut assignment: Vec<u8>) {
        if key == NAMES_KEY {
            // SET NAMES overrides the character set variables set before it.
            self.sets.retain(|(k, _)| !is_charset_var(k));
        }
        if key.first() == Some(&b'@') && assigns_null(&assignment) {
            // A user variable set to NULL keeps the type of its last value (`SET @v = 5; SET
            // @v = NULL` leaves a BIGINT NULL): that value is replayed before the NULL.
            if let Some(prev) = self.get(&key) {
                assignment = if assigns_null(prev) {
                    prev.to_vec()
                } else {
                    [prev, b", ", &assignment].concat()
                };
            }
        }
        self.sets.retain(|(k, _)| *k != key);
        self.sets.push((key, assignment));
    }

    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.sets
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_slice())
    }

    /// The `SET` statements (each without the `SET`) that take a connection in state `have`
    /// to this state; none when nothing differs. `have_charset` is the character set
    /// (collation id) the connection has where `have` sets none (its login's, or the last
    /// one restored), `charset` the session's login character set.
    ///
    /// A string literal in a `SET` is read in the character set the connection had when the
    /// statement began, not in one an earlier assignment of the same `SET` chose. So when a
    /// character set is involved (the two login character sets differ, or either side has a
    /// `SET NAMES` or a character-set variable), the connection is first brought back to the
    /// session's login character set, and the session's assignments are then replayed in the
    /// order the session made them, a new statement starting after one that changed the
    /// character set wherever a quoted literal follows: each literal is read as it was when the
    /// client sent it. Otherwise one statement applies only what differs.
    pub fn diff_from(&self, have: &SessionVars, have_charset: u8, charset: u8) -> Vec<Vec<u8>> {
        let mut out = SetStatements::default();
        if have.sets == self.sets && have_charset == charset {
            return out.done;
        }
        let involved = have_charset != charset
            || self.sets.iter().any(|(k, _)| sets_charset(k))
            || have.sets.iter().any(|(k, _)| sets_charset(k));
        // Undo first: what the connection has and the session does not. The character-set
        // variables go back to the login character set together (their `DEFAULT` would be
        // the server's global value, not the login's).
        if involved && (have_charset != charset || have.sets.iter().any(|(k, _)| sets_charset(k))) {
            let cs = primary_collation(charset);
            let restore = format!(
                "character_set_client = {cs}, character_set_results = {cs}, collation_connection = {charset}"
            );
            out.push(restore.as_bytes(), true);
        }
        for (k, _) in &have.sets {
            if self.get(k).is_some() || sets_charset(k) {
                continue;
            }
            if k.first() == Some(&b'@') {
                let mut p = k.clone();
                p.extend_from_slice(b" = NULL");
                out.push(&p, false);
            } else {
                let mut p = b"@@session.".to_vec();
                p.extend_from_slice(k);
                p.extend_from_slice(b" = DEFAULT");
                out.push(&p, false);
            }
        }
        for (k, v) in &self.sets {
            if involved || have.get(k) != Some(v.as_slice()) {
                out.push(v, sets_charset(k));
            }
        }
        out.finish()
    }
}

/// `SET` statements being built: assignments joined by commas, a new statement where a quoted
/// literal follows an assignment that changed the character set (see
/// [`SessionVars::diff_from`]).
#[derive(Default)]
struct SetStatements {
    done: Vec<Vec<u8>>,
    current: Vec<u8>,
    /// The current statement changes the character set.
    changes_charset: bool,
}

impl SetStatements {
    fn push(&mut self, assignment: &[u8], changes_charset: bool) {
        let quoted = assignment.iter().any(|&b| b == b'\'' || b == b'"');
        if self.changes_charset && quoted {
            self.done.push(std::mem::take(&mut self.current));
            self.changes_charset = false;
        }
        if !self.current.is_empty() {
            self.current.extend_from_slice(b", ");
        }
        self.current.extend_from_slice(assignment);
        self.changes_charset |= changes_charset;
    }

    fn finish(mut self) -> Vec<Vec<u8>> {
        if !self.current.is_empty() {
            self.done.push(self.current);
        }
        self.done
    }
}

/// Whether `assignment` (`@v = NULL`, `@v:=null`) sets its variable to NULL.
fn assigns_null(assignment: &[u8]) -> bool {
    let value = match assignment.iter().rposition(|&b| b == b'=') {
        Some(i) => &assignment[i + 1..],
        None => return false,
    };
    value.trim_ascii().eq_ignore_ascii_case(b"NULL")
}

/// Whether the assignment of key `k` changes the character set: `SET NAMES` / `SET CHARACTER
/// SET`, or one of the variables they set.
fn sets_charset(k: &[u8]) -> bool {
    k == NAMES_KEY || is_charset_var(k)
}

/// The default collation of the character set of collation `id`, for `character_set_client`
/// and `character_set_results`, which take a character set: given another collation's id the
/// server refuses them (MariaDB 10.11: `character_set_client = 224` is error 1115, "Unknown
/// character set: '224'", where 224 is utf8mb4_unicode_ci). A login with `id` gives the
/// same as `SET NAMES <its character set> COLLATE <id>`. The table is MariaDB 10.11's
/// `information_schema.COLLATIONS` for ids below 256 (MySQL numbers these alike); an id not
/// listed is a default collation itself (or unknown to the server).
fn primary_collation(id: u8) -> u8 {
    match id {
        84 => 1,
        69 => 3,
        80 => 4,
        72 => 6,
        74 => 7,
        5 | 15 | 31 | 47 | 48 | 49 | 94 => 8,
        2 | 21 | 27 | 77 => 9,
        82 => 10,
        65 => 11,
        91 => 12,
        88 => 13,
        71 => 16,
        89 => 18,
        85 => 19,
        75 => 22,
        86 => 24,
        70 => 25,
        34 | 44 | 66 | 99 => 26,
        87 => 28,
        78 => 30,
        64 => 32,
        83 => 33,
        90 => 35,
        68 => 36,
        73 => 37,
        43 => 38,
        53 => 39,
        81 => 40,
        20 | 42 | 79 => 41,
        46 => 45,
        14 | 23 | 50 | 52 => 51,
        55 => 54,
        62 => 56,
        67 => 57,
        29 | 58 => 59,
        61 => 60,
        93 => 92,
        96 => 95,
        98 => 97,
        101..=124 => 54,
        128..=151 | 159 => 35,
        160..=183 => 60,
        192..=215 | 223 => 33,
        224..=247 => 45,
        _ => id,
    }
}

/// Server variables that `SET NAMES` sets.
fn is_charset_var(k: &[u8]) -> bool {
    matches!(
        k,
        b"character_set_client"
            | b"character_set_results"
            | b"character_set_connection"
            | b"collation_connection"
    )
}

/// Why a connection could not be brought to a session's state.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The server refused a statement (e.g. the database no longer exists); the connection
    /// is still usable, the session gets the error.
    #[error("server refused: {0}")]
    Refused(ErrPacket),
    /// The connection broke or misbehaved: discard it.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

impl BackendConn {
    /// Brings this connection to `want` and to the login character set `charset` (collation
    /// id) of the session: the default database, then every assignment that differs, in one
    /// statement (more only where a character set changes before a quoted literal: see
    /// [`SessionVars::diff_from`]). `secret` re-authenticates when the session has no default database and the
    /// connection has one (no statement can unselect a database).
    pub async fn sync_to(
        &mut self,
        want: &SessionVars,
        charset: u8,
        secret: crate::config::Secret<'_>,
    ) -> Result<(), SyncError> {
        if self.state == *want && self.charset == charset {
            return Ok(());
        }
        if want.single_statements != self.state.single_statements {
            // MYSQL_OPTION_MULTI_STATEMENTS_OFF (1) or _ON (0); the answer is an EOF.
            let option = u8::from(want.single_statements);
            if let Err(e) = self
                .control(&[COM_SET_OPTION, option, 0], ResponseKind::Simple)
                .await?
            {
                return Err(SyncError::Refused(e));
            }
            self.state.single_statements = want.single_statements;
        }
        if want.db.is_none() && self.state.db.is_some() {
            self.relogin(secret).await?;
        }
        if want.db != self.state.db {
            if let Some(db) = &want.db {
                let mut p = Vec::with_capacity(db.len() + 1);
                p.push(COM_INIT_DB);
                p.extend_from_slice(db);
                if let Err(e) = self.control(&p, ResponseKind::Simple).await? {
                    return Err(SyncError::Refused(e));
                }
                self.state.db = Some(db.clone());
            }
        }
        for diff in want.diff_from(&self.state, self.charset, charset) {
            tracing::trace!(conn = self.id, server = %self.server, set = %String::from_utf8_lossy(&diff), "bringing a connection to the session's state");
            let mut p = Vec::with_capacity(diff.len() + 5);
            p.push(COM_QUERY);
            p.extend_from_slice(b"SET ");
            p.extend_from_slice(&diff);
            if let Err(e) = self.control(&p, ResponseKind::Query).await? {
                // Some assignments may have been applied: the state is unknown.
                self.state.sets.push((b"?unknown".to_vec(), Vec::new()));
                return Err(SyncError::Refused(e));
            }
        }
        self.state.sets = want.sets.clone();
        self.charset = charset;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(sets: &[(&str, &str)]) -> SessionVars {
        let mut v = SessionVars::default();
        for (k, a) in sets {
            v.set(k.as_bytes().to_vec(), a.as_bytes().to_vec());
        }
        v
    }

    /// The statements of [`SessionVars::diff_from`], separated by ` | `.
    fn diff(want: &SessionVars, have: &SessionVars) -> String {
        diff_cs(want, have, 45, 45)
    }

    fn diff_cs(want: &SessionVars, have: &SessionVars, have_cs: u8, cs: u8) -> String {
        want.diff_from(have, have_cs, cs)
            .into_iter()
            .map(|d| String::from_utf8(d).unwrap())
            .collect::<Vec<_>>()
            .join(" | ")
    }

    #[test]
    fn equal_states_need_nothing() {
        let a = vars(&[("time_zone", "time_zone = '+02:00'")]);
        assert_eq!(diff(&a, &a.clone()), "");
    }

    #[test]
    fn applies_missing_and_undoes_extra() {
        let want = vars(&[
            ("time_zone", "time_zone = '+02:00'"),
            ("@a", "@a = 1"),
            ("names", "NAMES latin1"),
        ]);
        let have = vars(&[
            ("time_zone", "time_zone = '+02:00'"),
            ("sql_mode", "sql_mode = ''"),
            ("@b", "@b = 2"),
        ]);
        assert_eq!(
            diff(&want, &have),
            "@@session.sql_mode = DEFAULT, @b = NULL, time_zone = '+02:00', @a = 1, NAMES latin1"
        );
        assert_eq!(
            diff(&SessionVars::default(), &want),
            "character_set_client = 45, character_set_results = 45, collation_connection = 45, @@session.time_zone = DEFAULT, @a = NULL"
        );
    }

    #[test]
    fn character_set_variables_are_undone_to_the_login_character_set() {
        // `DEFAULT` would be the server's global value: the login's id instead, once for all
        // of them, and the session's own character-set assignments again after it.
        let have = vars(&[
            ("character_set_results", "character_set_results = NULL"),
            ("character_set_client", "character_set_client = latin1"),
        ]);
        assert_eq!(
            diff(&SessionVars::default(), &have),
            "character_set_client = 45, character_set_results = 45, collation_connection = 45"
        );
        let want = vars(&[("character_set_results", "character_set_results = NULL")]);
        assert_eq!(
            diff(&want, &have),
            "character_set_client = 45, character_set_results = 45, collation_connection = 45, character_set_results = NULL"
        );
        let want = vars(&[("names", "NAMES latin1")]);
        assert_eq!(
            diff(&want, &have),
            "character_set_client = 45, character_set_results = 45, collation_connection = 45, NAMES latin1"
        );
        // Nothing of the connection's to undo: only what differs.
        assert_eq!(
            diff(&have, &SessionVars::default()),
            "character_set_results = NULL, character_set_client = latin1"
        );
    }

    #[test]
    fn a_login_collation_is_restored_with_its_character_sets_default() {
        for (id, primary) in [
            (224, 45),
            (45, 45),
            (46, 45),
            (5, 8),
            (8, 8),
            (52, 51),
            (83, 33),
        ] {
            assert_eq!(primary_collation(id), primary, "{id}");
        }
        let none = SessionVars::default();
        assert_eq!(
            diff_cs(&none, &none, 45, 224),
            "character_set_client = 45, character_set_results = 45, collation_connection = 224"
        );
        // The same character set on both sides: nothing to do.
        assert_eq!(diff_cs(&none, &none, 224, 224), "");
    }

    #[test]
    fn literals_are_read_in_the_character_set_they_were_sent_in() {
        // The session set a string, then changed its character set, then set another.
        let want = vars(&[
            ("@v", "@v = 'caf\u{e9}'"),
            ("names", "NAMES latin1"),
            ("@w", "@w = 'x'"),
            ("time_zone", "time_zone = '+01:00'"),
        ]);
        // From a connection of another session with latin1 names: back to the login's
        // character set, then the session's assignments in order, a statement after each
        // change of character set that a literal follows.
        let have = vars(&[("names", "NAMES latin1"), ("@o", "@o = 1")]);
        assert_eq!(
            diff(&want, &have),
            "character_set_client = 45, character_set_results = 45, collation_connection = 45, @o = NULL \
             | @v = 'caf\u{e9}', NAMES latin1 | @w = 'x', time_zone = '+01:00'"
        );
        // From a connection that logged in with another character set.
        assert_eq!(
            diff_cs(&want, &SessionVars::default(), 8, 45),
            "character_set_client = 45, character_set_results = 45, collation_connection = 45 \
             | @v = 'caf\u{e9}', NAMES latin1 | @w = 'x', time_zone = '+01:00'"
        );
        // Numbers are read alike in every character set: no statement of their own.
        let want = vars(&[("names", "NAMES latin1"), ("@n", "@n = 5")]);
        assert_eq!(diff(&want, &SessionVars::default()), "NAMES latin1, @n = 5");
        // No character set involved: only what differs, in one statement.
        let want = vars(&[("@v", "@v = 'a'"), ("time_zone", "time_zone = '+01:00'")]);
        let have = vars(&[("@v", "@v = 'a'"), ("@o", "@o = 'b'")]);
        assert_eq!(diff(&want, &have), "@o = NULL, time_zone = '+01:00'");
    }

    #[test]
    fn a_variable_set_to_null_keeps_the_type_of_its_last_value() {
        let mut v = vars(&[("@v", "@v = 5")]);
        v.set(b"@v".to_vec(), b"@v = NULL".to_vec());
        assert_eq!(v.get(b"@v"), Some(&b"@v = 5, @v = NULL"[..]));
        v.set(b"@v".to_vec(), b"@v=null".to_vec());
        assert_eq!(v.get(b"@v"), Some(&b"@v = 5, @v = NULL"[..]));
        v.set(b"@v".to_vec(), b"@v = 'x'".to_vec());
        assert_eq!(v.get(b"@v"), Some(&b"@v = 'x'"[..]));
        // Never set before: NULL alone, as on a direct connection.
        let mut w = SessionVars::default();
        w.set(b"@w".to_vec(), b"@w = NULL".to_vec());
        assert_eq!(w.get(b"@w"), Some(&b"@w = NULL"[..]));
        // 'NULL' the string is a value.
        w.set(b"@w".to_vec(), b"@w = 'NULL'".to_vec());
        assert_eq!(w.get(b"@w"), Some(&b"@w = 'NULL'"[..]));
    }

    #[test]
    fn later_assignment_replaces_earlier() {
        let mut v = vars(&[("sql_mode", "sql_mode = ''"), ("@a", "@a = 1")]);
        v.set(b"sql_mode".to_vec(), b"sql_mode = 'ANSI'".to_vec());
        assert_eq!(v.sets.len(), 2);
        assert_eq!(v.get(b"sql_mode"), Some(&b"sql_mode = 'ANSI'"[..]));
        assert_eq!(v.sets[1].0, b"sql_mode");
        v.set(
            b"character_set_results".to_vec(),
            b"character_set_results = NULL".to_vec(),
        );
        v.set(NAMES_KEY.to_vec(), b"NAMES utf8mb4".to_vec());
        assert!(v.get(b"character_set_results").is_none());
    }
}
