//! The session state a server connection carries, and bringing a connection to the state a
//! session wants before it runs the session's statement.
//!
//! With multiplexing, a server connection serves many client sessions one after another. Each
//! session keeps the state it asked for (default database, `SET NAMES`, `SET SESSION …`,
//! replayable user variables) as a [`SessionVars`]; each connection knows the state it has.
//! [`BackendConn::sync_to`] computes the difference and applies it with at most one
//! `COM_INIT_DB` and one `SET a = …, b = …` statement: assignments the session has and the
//! connection lacks are applied, assignments the connection has and the session lacks are
//! undone (`var = DEFAULT`, `@var = NULL`, the login character set again). The
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
    pub fn set(&mut self, key: Vec<u8>, assignment: Vec<u8>) {
        if key == NAMES_KEY {
            // SET NAMES overrides the character set variables set before it.
            self.sets.retain(|(k, _)| !is_charset_var(k));
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

    /// The `SET` statement (without the `SET`) that takes a connection in state `have` to
    /// this state, or `None` when nothing differs. `have_charset` is the character set
    /// (collation id) the connection has where `have` sets none (its login's, or the last
    /// one restored), `charset` the session's login character set: restored when the session
    /// sets none and the connection's differs.
    pub fn diff_from(&self, have: &SessionVars, have_charset: u8, charset: u8) -> Option<Vec<u8>> {
        let mut out: Vec<u8> = Vec::new();
        let mut push = |part: &[u8]| {
            if !out.is_empty() {
                out.extend_from_slice(b", ");
            }
            out.extend_from_slice(part);
        };
        // Undo first: what the connection has and the session does not. The character-set
        // variables go back to the login character set together (their `DEFAULT` would be
        // the server's global value, not the login's); the session's own character-set
        // assignments are then applied again.
        let cs = primary_collation(charset);
        let restore = format!(
            "character_set_client = {cs}, character_set_results = {cs}, collation_connection = {charset}"
        );
        let mut restored = have_charset != charset;
        if restored {
            push(restore.as_bytes());
        }
        for (k, _) in &have.sets {
            if self.get(k).is_some() {
                continue;
            }
            if k == NAMES_KEY || is_charset_var(k) {
                if !restored {
                    restored = true;
                    push(restore.as_bytes());
                }
            } else if k.first() == Some(&b'@') {
                let mut p = k.clone();
                p.extend_from_slice(b" = NULL");
                push(&p);
            } else {
                let mut p = b"@@session.".to_vec();
                p.extend_from_slice(k);
                p.extend_from_slice(b" = DEFAULT");
                push(&p);
            }
        }
        // `SET NAMES` first, then the rest in the session's order.
        let ordered = self
            .sets
            .iter()
            .filter(|(k, _)| k == NAMES_KEY)
            .chain(self.sets.iter().filter(|(k, _)| k != NAMES_KEY));
        for (k, v) in ordered {
            let undone = restored && (k == NAMES_KEY || is_charset_var(k));
            if undone || have.get(k) != Some(v.as_slice()) {
                push(v);
            }
        }
        (!out.is_empty()).then_some(out)
    }
}

/// The default collation of the character set of collation `id`, for `character_set_client`
/// and `character_set_results`, which take a character set: given another collation's id the
/// server refuses them (MariaDB 10.11: `character_set_client = 224` is error 1115, "Unknown
/// character set: '224'", where 224 is utf8mb4_unicode_ci). A login with `id` gives the
/// same as `SET NAMES <its character set> COLLATE <id>`. The table is MariaDB 10.11's
/// `information_schema.COLLATIONS` for ids below 256 (MySQL numbers these alike); an id not
/// listed is a default collation itself (or unknown to the server).
pub fn primary_collation(id: u8) -> u8 {
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
    /// statement. `secret` re-authenticates when the session has no default database and the
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
        if let Some(diff) = want.diff_from(&self.state, self.charset, charset) {
            tracing::trace!(conn = self.id, server = %self.server, set = %String::from_utf8_lossy(&diff), "bringing a connection to the session's state");
            let mut p = Vec::with_capacity(diff.len() + 5);
            p.push(COM_QUERY);
            p.extend_from_slice(b"SET ");
            p.extend_from_slice(&diff);
            match self.control(&p, ResponseKind::Query).await? {
                Ok(_) => {
                    self.state.sets = want.sets.clone();
                    self.charset = charset;
                }
                Err(e) => {
                    // Some assignments may have been applied: the state is unknown.
                    self.state.sets.push((b"?unknown".to_vec(), Vec::new()));
                    return Err(SyncError::Refused(e));
                }
            }
        }
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

    fn diff(want: &SessionVars, have: &SessionVars) -> String {
        want.diff_from(have, 45, 45)
            .map(|d| String::from_utf8(d).unwrap())
            .unwrap_or_default()
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
            "@@session.sql_mode = DEFAULT, @b = NULL, NAMES latin1, @a = 1"
        );
        assert_eq!(
            diff(&SessionVars::default(), &want),
            "@@session.time_zone = DEFAULT, @a = NULL, character_set_client = 45, character_set_results = 45, collation_connection = 45"
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
        let d = SessionVars::default()
            .diff_from(&SessionVars::default(), 45, 224)
            .map(|d| String::from_utf8(d).unwrap());
        assert_eq!(
            d.as_deref(),
            Some(
                "character_set_client = 45, character_set_results = 45, collation_connection = 224"
            )
        );
        // The same character set on both sides: nothing to do.
        assert_eq!(
            SessionVars::default().diff_from(&SessionVars::default(), 224, 224),
            None
        );
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
