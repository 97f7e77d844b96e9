//! Where each query runs, and what it does to the session: classification, rules, the router,
//! replayable `SET`/`USE`, pins, and read-your-writes.

use std::sync::atomic::Ordering;

use sluice_proto::command::{COM_INIT_DB, COM_QUERY};
use sluice_proto::err::ErrPacket;

use super::session::Session;
use super::session_state::{multi_changes_state, parse_set, reads_previous, Applied, Reads};
use crate::config::ReadYourWrites;
use crate::errors;
use crate::router::rules::{OnNoReplica, RuleRoute, Subject};
use crate::router::PrimaryReason;
use crate::router::{self, PinReason, Route, SessionView, StatementClass};

/// What routing needs of a prepared statement's classification, kept from its PREPARE (when
/// it has no `server=` hint, which borrows the text).
#[derive(Debug, Clone, Copy)]
pub struct CachedClass {
    pub class: StatementClass,
    pub pin: Option<PinReason>,
    pub unpin: Option<PinReason>,
    pub primary: Option<bool>,
    pub max_lag_ms: Option<u64>,
}

impl CachedClass {
    pub fn of(sql: &[u8]) -> Option<CachedClass> {
        let c = router::classify_query(sql);
        (c.hints.server.is_none() && c.hints.invalid == 0).then_some(CachedClass {
            class: c.class,
            pin: c.pin,
            unpin: c.unpin,
            primary: c.hints.primary,
            max_lag_ms: c.hints.max_lag_ms,
        })
    }
}

/// What the session decided for one command.
#[derive(Debug, Default)]
pub struct Plan {
    pub route: Route,
    pub class: StatementClass,
    /// Applied to the session if the command succeeds.
    pub applied: Applied,
    /// Answer with this error instead of running the command.
    pub reject: Option<ErrPacket>,
    pub reads: Reads,
    /// `SQL_CALC_FOUND_ROWS`: keep the connection for `FOUND_ROWS()`.
    pub found_rows: bool,
    /// The statement uses a table, so it clears the server's diagnostics area (warnings of
    /// an earlier statement stay readable across statements that do not).
    pub clears_diagnostics: bool,
    /// Runs on the connection holding earlier warnings and keeps them readable.
    pub keeps_warnings: bool,
}

impl Session {
    /// Decides where a command runs. Only queries (and prepared reads) can go to a replica.
    pub(super) fn plan(&self, payload: &[u8]) -> Plan {
        match payload.first() {
            Some(&COM_QUERY) => self.plan_sql(&payload[1..], true),
            Some(&COM_INIT_DB) => Plan {
                applied: Applied {
                    db: Some(payload[1..].to_vec()),
                    ..Applied::default()
                },
                ..Plan::default()
            },
            _ => Plan::default(),
        }
    }

    /// Plans a statement (a text query, or the text of a prepared statement when `text`
    /// is false: its state effects are not followed, only its route).
    pub(super) fn plan_sql(&self, sql: &[u8], text: bool) -> Plan {
        let c = router::classify_query(sql);
        self.plan_classified(sql, c, text)
    }

    /// Plans a prepared statement's execution from the classification made at PREPARE (no
    /// second classification), unless rules apply: they may depend on the session's schema.
    pub(super) fn plan_prepared(&self, sql: &[u8], cached: Option<CachedClass>) -> Plan {
        match cached {
            Some(cc) if self.routing.rules.is_empty() => {
                let c = router::Classified {
                    class: cc.class,
                    pin: cc.pin,
                    unpin: cc.unpin,
                    database: None,
                    hints: router::Hints {
                        primary: cc.primary,
                        max_lag_ms: cc.max_lag_ms,
                        server: None,
                        invalid: 0,
                    },
                    unsure: false,
                };
                self.plan_classified(sql, c, false)
            }
            _ => self.plan_sql(sql, false),
        }
    }

    pub(super) fn plan_classified(
        &self,
        sql: &[u8],
        mut c: router::Classified<'_>,
        text: bool,
    ) -> Plan {
        let (reject, strict_rule) = self.apply_rules(sql, &mut c);
        if c.hints.invalid > 0 {
            self.shared
                .counters
                .invalid_hints
                .fetch_add(u64::from(c.hints.invalid), Ordering::Relaxed);
            tracing::warn!("ignored {} invalid sluice hint(s)", c.hints.invalid);
        }
        let mut applied = Applied {
            pin: c.pin,
            unpin: c.unpin,
            ..Applied::default()
        };
        let mut class = c.class;
        let found_rows = applied.pin == Some(PinReason::FoundRows);
        if found_rows {
            // FOUND_ROWS() is answered by keeping the connection until the next statement.
            applied.pin = None;
        }
        if text {
            let is_set = class == StatementClass::SessionSet
                || (applied.pin == Some(PinReason::UserVariable)
                    && crate::router::lexer::strip_prefix_ci(
                        crate::router::lexer::trim(sql),
                        b"SET",
                    )
                    .is_some());
            if is_set {
                match parse_set(sql) {
                    Some(sets) => {
                        class = StatementClass::SessionSet;
                        applied.pin = None;
                        applied.sets = sets;
                    }
                    None if class == StatementClass::SessionSet => {
                        applied.pin = Some(PinReason::SessionVariable)
                    }
                    None => {}
                }
            }
            if class == StatementClass::Use {
                match c.database {
                    Some(db) => applied.db = Some(db.to_vec()),
                    None => applied.pin = Some(PinReason::SessionVariable),
                }
            }
            // Several statements (also a CREATE whose body Sluice does not split): state that
            // one of them changes is not followed, so it pins.
            if applied.pin.is_none()
                && memchr::memchr(b';', sql).is_some()
                && multi_changes_state(sql)
            {
                applied.pin = Some(PinReason::MultiStatement);
            }
        } else if class == StatementClass::SessionSet || class == StatementClass::Use {
            // A prepared SET or USE: its effect is not followed, so it pins.
            applied.pin = Some(PinReason::SessionVariable);
        }
        let reads = if class == StatementClass::Read && self.st.hold.is_none() {
            Reads::default()
        } else {
            reads_previous(sql, class)
        };
        let (route, why) = self.route_classified(&c);
        let reject = reject.or_else(|| match (why, strict_rule) {
            (Some(PrimaryReason::NoReplicaWithinBudget), Some(rule)) => Some(errors::no_replica(
                &rule,
                c.hints.max_lag_ms.unwrap_or(self.routing.max_lag_ms),
            )),
            _ => None,
        });
        let clears_diagnostics = self.st.hold.is_some()
            && (matches!(class, StatementClass::Write | StatementClass::Ddl)
                || crate::router::lexer::has_keyword(sql, b"FROM"));
        Plan {
            route,
            class,
            applied,
            reject,
            reads,
            found_rows,
            clears_diagnostics,
            keeps_warnings: false,
        }
    }

    /// Asks the router where a classified statement runs, given this session's state.
    fn route_classified(&self, c: &router::Classified<'_>) -> (Route, Option<PrimaryReason>) {
        let view = SessionView {
            in_transaction: self.st.in_transaction(),
            autocommit: self.st.status & sluice_proto::flags::status::SERVER_STATUS_AUTOCOMMIT != 0,
            pinned: self.st.pins != 0,
            previous: self.st.previous,
        };
        let topology = &self.view;
        let slots = &self.routing.slots;
        // A server this session's snapshot does not know yet (a reload is being applied)
        // looks fully loaded; the next command sees it.
        let load = |i: usize| {
            slots
                .get(i)
                .map_or(u32::MAX, |s| s.outstanding.load(Ordering::Relaxed))
        };
        // The shared turn counter (written by every core) only when replicas tie.
        let turn = || self.shared.turn.fetch_add(1, Ordering::Relaxed);
        router::route(c, &view, topology, self.routing.max_lag_ms, load, turn)
    }

    /// Applies the first matching rule to the classification (route and lag budget, unless
    /// the statement's own hint says otherwise). Returns a denial, and the name of a rule that
    /// forbids falling back to the primary.
    pub(super) fn apply_rules(
        &self,
        sql: &[u8],
        c: &mut router::Classified<'_>,
    ) -> (Option<ErrPacket>, Option<String>) {
        if self.routing.rules.is_empty() {
            return (None, None);
        }
        let subject = Subject {
            sql,
            class: c.class,
            user: &self.user.name,
            schema: self.st.vars.db.as_deref(),
            client: self.client.peer.ip(),
        };
        let Some((i, rule)) = self
            .routing
            .rules
            .iter()
            .enumerate()
            .find(|(_, r)| r.matches(&subject))
        else {
            return (None, None);
        };
        self.routing.rule_hits[i].fetch_add(1, Ordering::Relaxed);
        if rule.log_only {
            tracing::info!(rule = %rule.name, "rule matched (log_only: not applied)");
            return (None, None);
        }
        if let Some(msg) = &rule.deny {
            tracing::info!(rule = %rule.name, "statement denied by rule");
            return (Some(errors::denied_by_rule(&rule.name, msg)), None);
        }
        if c.hints.primary.is_none() {
            c.hints.primary = rule.route.map(|r| r == RuleRoute::Primary);
        }
        if c.hints.max_lag_ms.is_none() {
            c.hints.max_lag_ms = rule.max_lag_ms;
        }
        let strict = (rule.on_no_replica == OnNoReplica::Error).then(|| rule.name.clone());
        (None, strict)
    }

    /// Whether a successful command on the primary may have written something a later read
    /// must see.
    pub(super) fn may_write(code: u8, class: StatementClass) -> bool {
        use sluice_proto::command::*;
        match code {
            COM_QUERY | COM_STMT_EXECUTE => !matches!(
                class,
                StatementClass::Read
                    | StatementClass::ReadPrevious
                    | StatementClass::SessionSet
                    | StatementClass::Use
                    | StatementClass::Begin
                    | StatementClass::BeginReadOnly
                    | StatementClass::Rollback
                    // A COMMIT writes what its transaction wrote, and each of those
                    // statements already counted: a read-only transaction's COMMIT must not
                    // make the session read the server's GTID when it gives the connection
                    // back (a round trip per transaction for nothing).
                    | StatementClass::Commit
            ),
            COM_PING | COM_STATISTICS | COM_INIT_DB | COM_FIELD_LIST | COM_STMT_PREPARE
            | COM_STMT_CLOSE | COM_STMT_RESET | COM_SET_OPTION | COM_STMT_FETCH => false,
            _ => true,
        }
    }

    /// Read-your-writes: whether replica `i` (leased by the session) has applied the session's
    /// last write, waiting for it up to the configured bound. False sends the read to the
    /// primary.
    pub(super) async fn replica_has_our_writes(&mut self, i: usize) -> bool {
        if self.routing.read_your_writes == ReadYourWrites::Off {
            return true;
        }
        let Some(gtid) = self.st.last_gtid.clone() else {
            return true;
        };
        if self.seen_gtid.get(i).and_then(Option::as_deref) == Some(gtid.as_str()) {
            return true;
        }
        let Some(rc) = self.replica.as_mut().filter(|r| r.server == i) else {
            return false;
        };
        let timeout = self.routing.read_your_writes_timeout_ms as f64 / 1000.0;
        let sql = super::gtid::wait_on_replica(rc.conn.is_mysql(), &gtid, timeout);
        match rc
            .conn
            .control_value(sql.as_bytes(), sluice_proto::tracker::ResponseKind::Query)
            .await
        {
            Ok(Ok((_, Some(v)))) if v == b"0" => {
                if self.seen_gtid.len() <= i {
                    self.seen_gtid.resize(i + 1, None);
                }
                self.seen_gtid[i] = Some(gtid);
                true
            }
            Ok(_) => {
                self.shared
                    .counters
                    .ryw_fallbacks
                    .fetch_add(1, Ordering::Relaxed);
                false
            }
            Err(e) => {
                tracing::warn!(server = %rc.conn.server, error = %e, "GTID wait failed; reading from the primary");
                self.replica = None;
                false
            }
        }
    }

    /// Before a read goes to a replica: the GTID of the session's last write must be known
    /// (read before any replica connection is taken, so that a session never holds a replica
    /// connection while it waits for a primary one). False: read from the primary.
    pub(super) async fn know_last_gtid(&mut self) -> bool {
        if self.routing.read_your_writes == ReadYourWrites::Off || !self.st.wrote {
            return true;
        }
        self.learn_last_gtid().await
    }

    /// The GTID of the session's last write: read on the held primary connection, or (its
    /// connection went back to the pool without it) the primary's binlog position, which
    /// includes it.
    async fn learn_last_gtid(&mut self) -> bool {
        let held = self.primary.is_some();
        if !held && self.lease_primary().await.is_err() {
            return false;
        }
        let Some(p) = self.primary.as_mut() else {
            return false;
        };
        let mysql = p.conn.is_mysql();
        let sql = super::gtid::read_last(mysql, held);
        match p
            .conn
            .control_value(sql, sluice_proto::tracker::ResponseKind::Query)
            .await
        {
            Ok(Ok((_, v))) => {
                self.st.last_gtid = v.and_then(|g| super::gtid::clean(&g, mysql));
                self.st.wrote = false;
                true
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot read the last GTID; reading from the primary");
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the last GTID; reading from the primary");
                self.primary = None;
                false
            }
        }
    }
}
