//! Read/write splitting inside a session: where each query runs, the session's replica
//! connections, and the session state replayed on them.
//!
//! The session keeps its own connection to the primary for its whole life (transactions,
//! prepared statements, pinned state all live there). Reads that the router sends to a replica
//! use a connection to that replica owned by the session, opened on first use with the
//! client's credentials and options. Session state that can be replayed (`USE`,
//! `COM_INIT_DB`, `SET NAMES`, `SET SESSION …`) is recorded once the primary accepted it, and
//! replayed on a replica connection before that connection serves a read.

use std::sync::atomic::Ordering;

use sluice_proto::command::{COM_INIT_DB, COM_QUERY};
use sluice_proto::err::ERR_HEADER;
use sluice_proto::tracker::{Progress, ResponseKind, ResponseTracker};

use super::session::Session;
use crate::backend::{BackendConn, LoginParams};
use crate::config::ReadYourWrites;
use crate::errors;
use crate::router::rules::{OnNoReplica, RuleRoute, Subject};
use crate::router::PrimaryReason;
use crate::router::{self, PinReason, Route, SessionView, StatementClass};
use sluice_proto::err::ErrPacket;

/// A session's connection to one replica, and how much of the session state it has applied.
pub struct ReplicaConn {
    pub conn: BackendConn,
    pub applied: usize,
    /// The newest GTID of this session this replica is known to have applied.
    pub seen_gtid: Option<String>,
    /// The session's statements prepared on this connection.
    pub stmts: super::statements::ReplicaStmts,
}

/// More recorded state than this and the session stays on the primary (reason `state_log`):
/// replaying it would cost more than it saves.
const MAX_STATE_LOG: usize = 256;

/// What a statement does to the session once it succeeded.
#[derive(Debug, Clone)]
pub struct Effect {
    pub class: StatementClass,
    pub pin: Option<PinReason>,
    pub unpin: Option<PinReason>,
    /// Record the command for replay on replicas.
    pub replay: bool,
    /// Answer with this error instead of running the statement (a rule denied it, or found
    /// no replica where it forbids the primary).
    pub reject: Option<ErrPacket>,
}

impl Effect {
    pub const NONE: Effect = Effect {
        class: StatementClass::Other,
        pin: None,
        unpin: None,
        replay: false,
        reject: None,
    };
}

fn pin_bit(p: PinReason) -> u8 {
    1 << PinReason::ALL.iter().position(|&x| x == p).unwrap_or(0)
}

impl Session {
    /// Decides where a command runs. Only COM_QUERY can go to a replica.
    pub(super) fn plan(&self, payload: &[u8]) -> (Route, Effect) {
        match payload.first() {
            Some(&COM_QUERY) => {}
            Some(&COM_INIT_DB) => {
                return (
                    Route::Primary,
                    Effect {
                        replay: true,
                        ..Effect::NONE
                    },
                )
            }
            _ => return (Route::Primary, Effect::NONE),
        }
        let mut c = router::classify_query(&payload[1..]);
        let (reject, strict_rule) = self.apply_rules(&payload[1..], &mut c);
        if c.hints.invalid > 0 {
            self.shared
                .counters
                .invalid_hints
                .fetch_add(u64::from(c.hints.invalid), Ordering::Relaxed);
            tracing::warn!("ignored {} invalid sluice hint(s)", c.hints.invalid);
        }
        let (route, why) = self.route_classified(&c);
        let reject = reject.or_else(|| match (why, strict_rule) {
            (Some(PrimaryReason::NoReplicaWithinBudget), Some(rule)) => Some(errors::no_replica(
                &rule,
                c.hints.max_lag_ms.unwrap_or(self.routing.max_lag_ms),
            )),
            _ => None,
        });
        let effect = Effect {
            class: c.class,
            pin: c.pin,
            unpin: c.unpin,
            replay: matches!(c.class, StatementClass::SessionSet | StatementClass::Use),
            reject,
        };
        (route, effect)
    }

    /// Asks the router where a classified statement runs, given this session's state.
    pub(super) fn route_classified(
        &self,
        c: &router::Classified<'_>,
    ) -> (Route, Option<PrimaryReason>) {
        let view = SessionView {
            in_transaction: self.status & sluice_proto::flags::status::SERVER_STATUS_IN_TRANS != 0,
            autocommit: self.status & sluice_proto::flags::status::SERVER_STATUS_AUTOCOMMIT != 0,
            pinned: self.pins != 0 || self.state_log.len() > MAX_STATE_LOG,
            previous: self.previous,
        };
        let topology = self.shared.cluster.borrow().clone();
        let slots = &self.routing.slots;
        // A server this session's snapshot does not know yet (a reload is being applied)
        // looks fully loaded; the next command sees it.
        let load = |i: usize| {
            slots
                .get(i)
                .map_or(u32::MAX, |s| s.outstanding.load(Ordering::Relaxed))
        };
        let turn = self.shared.turn.fetch_add(1, Ordering::Relaxed);
        router::route(c, &view, &topology, self.routing.max_lag_ms, load, turn)
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
            schema: self.current_db.as_deref(),
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

    /// Applies a successful statement's effect on the session (after the primary accepted it).
    pub(super) fn apply(&mut self, effect: Effect, payload: Option<Vec<u8>>) {
        if let Some(p) = effect.pin {
            if self.pins & pin_bit(p) == 0 {
                tracing::debug!(reason = p.as_str(), "session pinned to the primary");
            }
            self.pins |= pin_bit(p);
            self.info.pins.store(self.pins, Ordering::Relaxed);
            let i = PinReason::ALL.iter().position(|&x| x == p).unwrap_or(0);
            self.shared.counters.pins[i].fetch_add(1, Ordering::Relaxed);
        }
        if let Some(p) = effect.unpin {
            self.pins &= !pin_bit(p);
            self.info.pins.store(self.pins, Ordering::Relaxed);
        }
        if let (true, Some(p)) = (effect.replay, payload) {
            match p.first() {
                Some(&COM_INIT_DB) => self.current_db = Some(p[1..].to_vec()),
                _ if effect.class == StatementClass::Use => {
                    self.current_db = router::classify_query(&p[1..]).database.map(<[u8]>::to_vec)
                }
                _ => {}
            }
            self.state_log.push(p);
            self.info
                .set_names(&self.user.name, self.current_db.as_deref());
        }
    }

    /// Whether a successful command on the primary may have written something a later read
    /// must see.
    pub(super) fn may_write(code: u8, class: StatementClass) -> bool {
        use sluice_proto::command::*;
        match code {
            COM_QUERY => !matches!(
                class,
                StatementClass::Read
                    | StatementClass::ReadPrevious
                    | StatementClass::SessionSet
                    | StatementClass::Use
                    | StatementClass::Begin
                    | StatementClass::BeginReadOnly
                    | StatementClass::Rollback
            ),
            COM_PING | COM_STATISTICS | COM_INIT_DB | COM_FIELD_LIST | COM_STMT_PREPARE
            | COM_STMT_CLOSE | COM_STMT_RESET | COM_SET_OPTION | COM_STMT_FETCH => false,
            _ => true,
        }
    }

    /// Forgets all session state (after COM_RESET_CONNECTION or COM_CHANGE_USER): replica
    /// connections are closed, since they carry the old state or the old user.
    pub(super) async fn reset_state(&mut self) {
        self.state_log.clear();
        self.current_db = self.login.database.clone();
        // The server deallocated the session's prepared statements.
        self.stmts.clear();
        self.pins = 0;
        self.info.pins.store(0, Ordering::Relaxed);
        self.info
            .set_names(&self.user.name, self.current_db.as_deref());
        for slot in self.replicas.iter_mut() {
            if let Some(rc) = slot.take() {
                rc.conn.quit().await;
            }
        }
    }

    /// Makes sure the session has a usable, up-to-date connection to replica `i`. Returns false
    /// (and the caller uses the primary) if it cannot be had.
    pub(super) async fn ensure_replica(&mut self, i: usize) -> bool {
        if i >= self.replicas.len() || i >= self.routing.slots.len() {
            return false;
        }
        if self.replicas[i]
            .as_ref()
            .is_some_and(|rc| rc.conn.looks_closed())
        {
            // The server closed it while idle.
            self.replicas[i] = None;
        }
        if self.replicas[i].is_none() {
            let routing = self.routing.clone();
            let Some(slot) = routing.slot(i) else {
                return false;
            };
            let params = self.login_params();
            match slot.pool.acquire(params, &routing.pool_limits).await {
                Ok((conn, _)) => {
                    self.replicas[i] = Some(ReplicaConn {
                        conn,
                        applied: 0,
                        seen_gtid: None,
                        stmts: Default::default(),
                    })
                }
                Err(e) => {
                    tracing::warn!(server = %slot.pool.name, error = %e, "cannot get a replica connection; reading from the primary");
                    return false;
                }
            }
        }
        let rc = self.replicas[i].as_mut().expect("set above");
        while rc.applied < self.state_log.len() {
            let cmd = &self.state_log[rc.applied];
            match replay(&mut rc.conn, cmd).await {
                Ok(()) => rc.applied += 1,
                Err(e) => {
                    tracing::warn!(server = %rc.conn.server, error = %e, "replaying session state failed; reading from the primary");
                    self.replicas[i] = None;
                    return false;
                }
            }
        }
        true
    }
}

impl Session {
    /// How this session's user logs in to a server (for replica and new-primary connections).
    pub(super) fn login_params(&self) -> LoginParams<'_> {
        LoginParams {
            user: self.user.name.as_bytes(),
            password: self.user.password.as_bytes(),
            database: self.login.database.as_deref(),
            capabilities: self.capabilities,
            charset: self.login.charset,
            max_packet: self.login.max_packet,
            connect_attrs: self.login.connect_attrs.as_deref(),
        }
    }

    /// Read-your-writes: whether replica `i` has applied the session's last write (waiting for
    /// it up to the configured bound). False sends the read to the primary.
    pub(super) async fn replica_has_our_writes(&mut self, i: usize) -> bool {
        if self.routing.read_your_writes == ReadYourWrites::Off {
            return true;
        }
        if self.wrote {
            // The GTID of this session's last write, as the primary assigned it.
            match query_single_value(&mut self.backend, b"SELECT @@last_gtid").await {
                Ok(g) => {
                    self.last_gtid = g.filter(|g| {
                        !g.is_empty()
                            && g.bytes()
                                .all(|b| b.is_ascii_digit() || b == b'-' || b == b',')
                    });
                    self.wrote = false;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read @@last_gtid; reading from the primary");
                    return false;
                }
            }
        }
        let Some(gtid) = self.last_gtid.clone() else {
            return true;
        };
        let Some(rc) = self.replicas[i].as_mut() else {
            return false;
        };
        if rc.seen_gtid.as_deref() == Some(gtid.as_str()) {
            return true;
        }
        let timeout = self.routing.read_your_writes_timeout_ms as f64 / 1000.0;
        let sql = format!("SELECT MASTER_GTID_WAIT('{gtid}', {timeout})");
        match query_single_value(&mut rc.conn, sql.as_bytes()).await {
            Ok(Some(v)) if v == "0" => {
                rc.seen_gtid = Some(gtid);
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
                self.replicas[i] = None;
                false
            }
        }
    }
}

/// Runs a query returning one value on a connection Sluice controls; the first column of the
/// first row, as text (`None` for NULL or no row).
pub async fn query_single_value(
    conn: &mut BackendConn,
    sql: &[u8],
) -> Result<Option<String>, String> {
    let mut cmd = Vec::with_capacity(sql.len() + 1);
    cmd.push(COM_QUERY);
    cmd.extend_from_slice(sql);
    conn.write_packet(0, &cmd)
        .await
        .map_err(|e| e.to_string())?;
    let mut t = ResponseTracker::new(ResponseKind::Query, conn.deprecate_eof());
    let mut index = 0usize;
    let mut columns = 0u64;
    let mut value = None;
    loop {
        let p = conn.read_packet().await.map_err(|e| e.to_string())?;
        if index == 0 {
            if p.payload.first() == Some(&ERR_HEADER) {
                let e =
                    sluice_proto::err::ErrPacket::parse(&p.payload).map_err(|e| e.to_string())?;
                // The error ends the response: the connection is in a known state.
                return Err(e.to_string());
            }
            columns = sluice_proto::lenenc::Reader::new(&p.payload)
                .lenenc_int("column count")
                .unwrap_or(0);
        }
        // The first row follows the count, the column definitions and (classic) their EOF.
        let first_row = 1 + columns as usize + usize::from(!conn.deprecate_eof());
        if index == first_row && value.is_none() && p.payload.first() != Some(&0xFE) {
            let mut r = sluice_proto::lenenc::Reader::new(&p.payload);
            value = match r.peek() {
                Some(0xFB) => None,
                _ => r
                    .lenenc_bytes("value")
                    .ok()
                    .map(|v| String::from_utf8_lossy(v).into_owned()),
            };
        }
        index += 1;
        match t
            .feed(p.payload.len(), &p.payload)
            .map_err(|e| e.to_string())?
        {
            Progress::Done(_) => return Ok(value),
            Progress::More => {}
            Progress::LocalInfile => return Err("unexpected LOCAL INFILE".into()),
        }
    }
}

/// Runs one recorded command on a replica connection and checks it succeeded.
pub(super) async fn replay(conn: &mut BackendConn, cmd: &[u8]) -> Result<(), String> {
    conn.write_packet(0, cmd).await.map_err(|e| e.to_string())?;
    let mut t = ResponseTracker::new(ResponseKind::for_command(cmd[0]), conn.deprecate_eof());
    loop {
        let p = conn.read_packet().await.map_err(|e| e.to_string())?;
        if p.payload.first() == Some(&ERR_HEADER) {
            let e = sluice_proto::err::ErrPacket::parse(&p.payload).map_err(|e| e.to_string())?;
            return Err(e.to_string());
        }
        match t
            .feed(p.payload.len(), &p.payload)
            .map_err(|e| e.to_string())?
        {
            Progress::Done(_) => return Ok(()),
            Progress::More => {}
            Progress::LocalInfile => return Err("LOCAL INFILE during replay".into()),
        }
    }
}
