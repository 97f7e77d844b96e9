//! Failover, switchover, fencing and rejoining.
//!
//! - **Detection** ([`assess`]): the primary missed `down_after` probes in a row *and* every
//!   reachable replica whose link to it was healthy now reports its IO thread broken. If any
//!   replica still receives, the primary is alive and only Sluice's path to it is broken.
//! - **Coordination**: a Sluice instance acts only while it holds `GET_LOCK('sluice.failover')`
//!   on a majority of the configured servers (taken in server order, never waited for; an
//!   instance that meets a lock held by another releases its own). Two instances can never
//!   both hold a majority, so a partition cannot produce two promoters.
//! - **Choice** ([`rank`]): the replica that received the most (GTID), then `priority`, then
//!   the most applied; never `no_promote`, excluded or broken replicas. Under semi-sync the
//!   failover is refused when a replica that could hold acknowledged transactions is
//!   unreachable, or semi-sync had fallen back to asynchronous.
//! - **Promotion**: stop the IO thread, apply the relay log (bounded by `drain_timeout_ms`),
//!   `STOP SLAVE; RESET SLAVE ALL`, write generation + 1 into `sluice.cluster`, then
//!   `read_only = OFF`. The other replicas are repointed by GTID; one that cannot follow
//!   (error 1236: diverged) is excluded.
//! - **Fencing**: a writable server of an older generation is set read-only by the monitor
//!   the moment it answers, and rejoins as a replica when `auto_rejoin` allows it.

use std::time::{Duration, Instant};

use super::gtid::GtidPos;
use super::probe::{self, quote, run_sql, Flavor, LOCK_NAME};
use super::{now_ms, Monitor, MonitorError};
use crate::cluster::{FailoverRecord, MonitorState};

/// What the replicas say about a primary the monitor cannot reach.
#[derive(Debug, PartialEq, Eq)]
pub enum Assessment {
    /// These replicas' links to it broke: it is dead.
    Confirmed(Vec<usize>),
    /// These replicas still receive from it: only Sluice's path is broken.
    UnreachableFromProxy(Vec<usize>),
    /// Nothing to go on (no reachable replica had a working link).
    Unconfirmed(String),
}

/// Holistic check of a primary that misses probes.
pub fn assess(m: &Monitor, dead: usize) -> Assessment {
    let mut confirming = Vec::new();
    let mut receiving = Vec::new();
    for i in 0..m.srv.len() {
        if i == dead || !m.srv[i].healthy {
            continue;
        }
        let Some(rep) = m.srv[i].probe.as_ref().and_then(|p| p.replication.as_ref()) else {
            continue;
        };
        // An IO thread that says `Yes` on a link that shows nothing for several heartbeat
        // periods is attached to a hung or black-holed primary.
        if rep.io_yes() && m.link_silent(i).is_none() {
            receiving.push(i);
        } else if m.srv[i].io_ok {
            confirming.push(i);
        }
    }
    if !receiving.is_empty() {
        Assessment::UnreachableFromProxy(receiving)
    } else if !confirming.is_empty() {
        Assessment::Confirmed(confirming)
    } else {
        Assessment::Unconfirmed("no reachable replica had a working link to the primary".into())
    }
}

/// How a repointed server is doing right after `START SLAVE`.
#[derive(Debug, PartialEq, Eq)]
pub enum Follow {
    /// Both replication threads run.
    Following,
    /// Not connected yet (it keeps retrying on its own); why.
    Pending(String),
}

/// Why a server was not (yet) pointed at a new source.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// It cannot follow it (diverged history, SQL thread error): excluded.
    Exclude(String),
    /// Not this time (a stop that timed out, a lost connection): retried.
    Retry(String),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Exclude(e) | Refused::Retry(e) => f.write_str(e),
        }
    }
}

/// One promotion candidate's figures.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub index: usize,
    pub received: GtidPos,
    pub applied: GtidPos,
    pub priority: i32,
}

/// Best first: most received, then higher priority, then most applied, then config order.
pub fn rank(mut cands: Vec<Candidate>) -> Vec<Candidate> {
    cands.sort_by(|a, b| {
        b.received
            .advance_cmp(&a.received)
            .then(b.priority.cmp(&a.priority))
            .then(b.applied.advance_cmp(&a.applied))
            .then(a.index.cmp(&b.index))
    });
    cands
}

fn split_addr(address: &str) -> (String, u16) {
    match address.rsplit_once(':') {
        Some((h, p)) => (h.to_string(), p.parse().unwrap_or(0)),
        None => (address.to_string(), 0),
    }
}

fn same_host(a: &str, b: &str) -> bool {
    let norm = |h: &str| {
        let h = h
            .trim_matches(|c| c == '[' || c == ']')
            .to_ascii_lowercase();
        if h == "localhost" || h == "::1" {
            "127.0.0.1".to_string()
        } else {
            h
        }
    };
    norm(a) == norm(b)
}

impl Monitor {
    /// Whether replica `i` replicates from server `p` (by configured address).
    fn replicates_from(&self, i: usize, p: usize) -> bool {
        let (host, port) = split_addr(&self.config.servers[p].address);
        self.srv[i]
            .probe
            .as_ref()
            .and_then(|x| x.replication.as_ref())
            .is_some_and(|r| r.source_port == port && same_host(&r.source_host, &host))
    }

    /// For a process that has not seen a primary since it started (restarted while the
    /// primary was down, possibly in the middle of another instance's failover): the
    /// unreachable server the replicas point at, the one that most of them follow.
    pub(crate) fn primary_the_replicas_follow(&self) -> Option<usize> {
        (0..self.srv.len())
            .filter(|&k| !self.srv[k].healthy)
            .map(|k| {
                let followers = (0..self.srv.len())
                    .filter(|&i| self.srv[i].healthy && self.replicates_from(i, k))
                    .count();
                (followers, k)
            })
            .filter(|&(n, _)| n > 0)
            .max()
            .map(|(_, k)| k)
    }

    /// Takes the failover lock on a majority of the configured servers, or none.
    pub(crate) async fn lock_majority(&mut self) -> bool {
        let n = self.srv.len();
        // Servers a reload removed do not count (and are never connected).
        let configured = self.config.servers.iter().filter(|s| !s.removed).count();
        let need = configured / 2 + 1;
        let mut held = 0;
        let timeout = self.timeout;
        for i in 0..n {
            let sc = &mut self.srv[i].sc;
            let Some(c) = sc.conn.as_mut() else {
                continue;
            };
            if sc.locked {
                let q = format!("SELECT IS_USED_LOCK('{LOCK_NAME}') = CONNECTION_ID()");
                match probe::query_value(c, timeout, &q).await {
                    Ok(Some(v)) if v == "1" => {
                        held += 1;
                        continue;
                    }
                    _ => sc.locked = false,
                }
            }
            let q = format!("SELECT GET_LOCK('{LOCK_NAME}', 0)");
            match probe::query_value(c, timeout, &q).await {
                Ok(Some(v)) if v == "1" => {
                    sc.locked = true;
                    held += 1;
                }
                Ok(_) => {
                    // Another instance holds it here: step back so that it can win.
                    tracing::debug!(server = %self.config.servers[i].name, "failover lock held by another Sluice instance");
                    self.unlock_all().await;
                    return false;
                }
                Err(e) => {
                    tracing::debug!(server = %self.config.servers[i].name, error = %e, "cannot take the failover lock");
                    sc.reset();
                }
            }
        }
        if held >= need {
            true
        } else {
            tracing::debug!(held, need, "no majority of failover locks");
            self.unlock_all().await;
            false
        }
    }

    pub(crate) async fn unlock_all(&mut self) {
        let timeout = self.timeout;
        for sc in self.srv.iter_mut().map(|w| &mut w.sc) {
            if !sc.locked {
                continue;
            }
            sc.locked = false;
            if let Some(c) = sc.conn.as_mut() {
                let q = format!("SELECT RELEASE_LOCK('{LOCK_NAME}')");
                if probe::query_value(c, timeout, &q).await.is_err() {
                    sc.reset();
                }
            }
        }
    }

    /// A healthy writable server of the newest generation, if one exists now.
    pub(crate) fn live_primary(&self) -> Option<usize> {
        (0..self.srv.len()).find(|&i| {
            self.srv[i].healthy
                && self.srv[i]
                    .probe
                    .as_ref()
                    .is_some_and(|p| !p.read_only && p.generation() >= self.generation)
        })
    }

    /// Replicas that may be promoted, best first.
    fn candidates(&self, dead: Option<usize>) -> Vec<Candidate> {
        let cands = (0..self.srv.len())
            .filter(|&i| {
                Some(i) != dead
                    && self.srv[i].healthy
                    && self.srv[i].excluded.is_none()
                    && !self.srv[i].offline
            })
            .filter(|&i| !self.config.servers[i].no_promote)
            .filter_map(|i| {
                let p = self.srv[i].probe.as_ref()?;
                let rep = p.replication.as_ref()?;
                if !p.read_only || rep.last_sql_errno != 0 {
                    return None;
                }
                Some(Candidate {
                    index: i,
                    received: p.received_pos(),
                    applied: p.applied_pos.clone(),
                    priority: self.config.servers[i].priority,
                })
            })
            .collect();
        rank(cands)
    }

    /// Under semi-sync, whether the reachable replicas must hold every acknowledged write.
    fn semi_sync_check(&self, dead: usize) -> Result<(), MonitorError> {
        let s = &self.semi_sync;
        if !s.enabled {
            return Ok(());
        }
        if !s.active {
            return Err(format!(
                "semi-sync was enabled on {} but not active (no acknowledging replica, or \
                 commits acknowledged without one: Rpl_semi_sync_master_no_tx = {}): \
                 acknowledged transactions may exist only on the dead primary",
                self.name(dead),
                s.no_tx
            )
            .into());
        }
        for i in 0..self.srv.len() {
            if i != dead && self.srv[i].io_ok && self.srv[i].semi_slave && !self.srv[i].healthy {
                return Err(format!(
                    "semi-sync replica {} is unreachable: it may hold acknowledged transactions \
                     that no reachable candidate has",
                    self.name(i)
                )
                .into());
            }
        }
        Ok(())
    }

    fn record(&mut self, rec: FailoverRecord) {
        self.history.push(rec);
        self.history_total += 1;
        if self.history.len() > 100 {
            self.history.remove(0);
        }
    }

    /// Promotes a replica in place of the dead primary `dead`. `auto` = decided by the
    /// monitor (subject to anti-flap), else asked for by an operator.
    pub(crate) async fn failover(
        &mut self,
        dead: Option<usize>,
        target: Option<usize>,
        auto: bool,
    ) -> Result<String, MonitorError> {
        if !self.lock_majority().await {
            return Err(
                "not holding the failover lock on a majority of the servers (another \
                        Sluice instance acts, or too few servers are reachable)"
                    .into(),
            );
        }
        let r = self.failover_locked(dead, target, auto).await;
        self.unlock_all().await;
        r
    }

    async fn failover_locked(
        &mut self,
        dead: Option<usize>,
        target: Option<usize>,
        auto: bool,
    ) -> Result<String, MonitorError> {
        let started = Instant::now();
        let started_ms = now_ms();
        // A fresh look now that this instance holds the lock: another may have acted. The
        // dead primary is not asked again (a hung one would take the whole probe timeout).
        self.probe_some(|i| Some(i) != dead).await;
        if let Some(p) = self.live_primary() {
            self.primary = Some(p);
            return Err(format!("{} is already the primary", self.name(p)).into());
        }
        if auto {
            if let Some(until_ms) = self.blocked_until() {
                self.state = MonitorState::Blocked { until_ms };
                return Err("automatic failover is blocked (anti-flap)".into());
            }
            if let Some(k) = dead {
                if !matches!(assess(self, k), Assessment::Confirmed(_)) {
                    return Err("the primary's death is no longer confirmed".into());
                }
            }
        }
        let from = dead.map_or_else(|| "(unknown)".to_string(), |k| self.name(k).to_string());
        if let Some(k) = dead {
            if let Err(why) = self.semi_sync_check(k) {
                tracing::error!(primary = %from, reason = %why, "failover refused (fail closed); automatic failover disabled until acknowledged");
                self.disabled = Some(format!("failover refused: {why}"));
                self.disabled_at = self.generation;
                self.state = MonitorState::Failed {
                    reason: format!("failover refused: {why}"),
                };
                self.record(FailoverRecord {
                    kind: "failover",
                    from,
                    to: None,
                    generation: self.generation,
                    started_ms,
                    duration_ms: started.elapsed().as_millis() as u64,
                    ok: false,
                    detail: format!("refused: {why}"),
                });
                return Err(why);
            }
        }
        let cands = self.candidates(dead);
        let chosen = match target {
            Some(t) => cands
                .iter()
                .find(|c| c.index == t)
                .cloned()
                .ok_or_else(|| {
                    format!(
                        "{} cannot be promoted (not a healthy, working replica, or no_promote)",
                        self.name(t)
                    )
                })?,
            None => cands
                .first()
                .cloned()
                .ok_or_else(|| "no replica can be promoted".to_string())?,
        };
        let c = chosen.index;
        let name = self.name(c).to_string();
        tracing::warn!(dead = %from, candidate = %name, received = %chosen.received, "failing over");
        if let Some(k) = dead {
            // Every connection to it is cut now: a statement blocked on a hung primary ends
            // with an error instead of being acknowledged when the server wakes up.
            self.srv[k].deposed += 1;
        }
        self.publish_state(MonitorState::Switching, None);
        if let Err(e) = self.drain(c).await {
            // A statement cut off by its deadline may still run on the server: the next round
            // starts from a new connection.
            self.srv[c].sc.reset();
            tracing::warn!(candidate = %name, error = %e, "candidate has not applied its relay log yet; will retry");
            self.state = MonitorState::NoPrimary;
            self.publish();
            return Err(e);
        }
        let gen = match self.promote(c, "failover", !auto, true).await {
            Ok(g) => g,
            Err(e) => {
                let reason = format!("failover to {name} failed midway: {e}");
                tracing::error!(%reason, "automatic failover disabled until acknowledged");
                self.disabled = Some(reason.clone());
                self.disabled_at = self.generation;
                self.state = MonitorState::Failed {
                    reason: reason.clone(),
                };
                self.record(FailoverRecord {
                    kind: "failover",
                    from,
                    to: Some(name),
                    generation: self.generation,
                    started_ms,
                    duration_ms: started.elapsed().as_millis() as u64,
                    ok: false,
                    detail: reason.clone(),
                });
                self.publish();
                return Err(reason.into());
            }
        };
        self.generation = gen;
        self.known_primary = Some(c);
        self.srv[c].excluded = None;
        if let Some(p) = self.srv[c].probe.as_mut() {
            p.read_only = false;
            p.replication = None;
        }
        self.publish_state(MonitorState::Ok, Some(c));
        let switched_ms = started.elapsed().as_millis() as u64;
        tracing::warn!(new_primary = %name, generation = gen, ms = switched_ms, "failover done: writes go to the new primary");
        failpoint("failover:promoted");
        let mut detail = format!("promoted {name} (received {})", chosen.received);
        for i in 0..self.srv.len() {
            if i == c || Some(i) == dead || !self.srv[i].healthy {
                continue;
            }
            self.repoint(i, c, "slave_pos", started_ms, &mut detail)
                .await;
        }
        self.detach(c).await;
        if auto {
            self.last_failover_ms = Some(now_ms());
        }
        self.record(FailoverRecord {
            kind: "failover",
            from,
            to: Some(name),
            generation: gen,
            started_ms,
            duration_ms: switched_ms,
            ok: true,
            detail: detail.clone(),
        });
        self.publish();
        Ok(detail)
    }

    /// Waits (bounded by `drain_timeout_ms`) until the candidate applied everything it
    /// received, then stops its SQL thread. Its IO thread is left alone: stopping it waits for
    /// the thread to let go of the old primary, which on a semi-sync replica attached to a hung
    /// or black-holed primary takes `rpl_semi_sync_slave_kill_conn_timeout` (1–5 s). Anything
    /// it receives from now on is never applied and is discarded by `RESET SLAVE ALL` after the
    /// promotion ([`Monitor::detach`]).
    async fn drain(&mut self, c: usize) -> Result<(), MonitorError> {
        let timeout = self.timeout;
        let flavor = self.srv[c].sc.flavor();
        let drain = self.config.monitor.drain_timeout_ms;
        let deadline = Instant::now() + Duration::from_millis(drain);
        let (start_sql, stop_sql) = match flavor {
            Flavor::MariaDb => ("START SLAVE SQL_THREAD", "STOP SLAVE SQL_THREAD"),
            Flavor::MySql => ("START REPLICA SQL_THREAD", "STOP REPLICA SQL_THREAD"),
        };
        let conn = self.srv[c]
            .sc
            .conn
            .as_mut()
            .ok_or("candidate not connected")?;
        let mut rep = probe::replication_status(conn, flavor, timeout)
            .await?
            .ok_or("candidate is no longer a replica")?;
        loop {
            if rep.last_sql_errno != 0 {
                return Err(
                    format!("candidate's SQL thread failed: {}", rep.last_sql_error).into(),
                );
            }
            if !rep.sql_running {
                run_sql(conn, timeout, &[start_sql]).await?;
            }
            let pos = rep.io_pos.clone().filter(|p| !p.is_empty());
            if let Some(pos) = &pos {
                let left = deadline.saturating_duration_since(Instant::now());
                let secs = left.as_secs_f64().max(0.001);
                let q = match flavor {
                    Flavor::MariaDb => {
                        format!("SELECT MASTER_GTID_WAIT({}, {secs:.3})", quote(&pos.text))
                    }
                    Flavor::MySql => format!(
                        "SELECT WAIT_FOR_EXECUTED_GTID_SET({}, {secs:.3})",
                        quote(&pos.text)
                    ),
                };
                let v = probe::query_value(conn, left + timeout, &q).await?;
                if v.as_deref() != Some("0") {
                    return Err(format!(
                        "relay log not applied within drain_timeout_ms ({drain} ms; wait returned {v:?})"
                    ).into());
                }
            }
            run_sql(conn, timeout, &[stop_sql]).await?;
            rep = probe::replication_status(conn, flavor, timeout)
                .await?
                .ok_or("candidate is no longer a replica")?;
            if rep.io_pos.clone().filter(|p| !p.is_empty()) == pos {
                return Ok(());
            }
            // It received more meanwhile (the source was not dead after all, or events were
            // still in flight): apply those too.
            if Instant::now() >= deadline {
                let _ = run_sql(conn, timeout, &[start_sql]).await;
                return Err(format!(
                    "the candidate kept receiving for drain_timeout_ms ({drain} ms)"
                )
                .into());
            }
        }
    }

    /// Detaches a promoted server from its old source: `STOP SLAVE; RESET SLAVE ALL` (the
    /// first can take `rpl_semi_sync_slave_kill_conn_timeout` when the old source hangs, so it
    /// runs after writes go to the new primary). Bounded; retried every round until done.
    pub(crate) async fn detach(&mut self, c: usize) {
        let timeout = self.timeout;
        let flavor = self.srv[c].sc.flavor();
        let stmts: &[&str] = match flavor {
            Flavor::MariaDb => &["STOP SLAVE", "RESET SLAVE ALL"],
            Flavor::MySql => &["STOP REPLICA", "RESET REPLICA ALL"],
        };
        let r = match self.srv[c].sc.conn.as_mut() {
            Some(conn) => run_sql(conn, timeout.max(Duration::from_secs(3)), stmts).await,
            None => Err("not connected".into()),
        };
        match r {
            Ok(()) => {
                if self.srv[c].detach_pending {
                    tracing::info!(server = %self.name(c), "the new primary no longer replicates from the old one");
                }
                self.srv[c].detach_pending = false;
            }
            Err(e) => {
                tracing::warn!(server = %self.name(c), error = %e, "cannot reset the new primary's replication yet (its SQL thread is stopped: nothing from the old primary is applied); retrying");
                self.srv[c].sc.reset();
                self.srv[c].detach_pending = true;
            }
        }
    }

    /// Makes server `c` the primary of a new generation. Returns the generation.
    /// `detach_later`: the candidate's replication is reset after the promotion
    /// ([`Monitor::detach`]; a drained candidate whose SQL thread is stopped), not before.
    async fn promote(
        &mut self,
        c: usize,
        kind: &str,
        acknowledged: bool,
        detach_later: bool,
    ) -> Result<u64, MonitorError> {
        let timeout = self.timeout;
        let flavor = self.srv[c].sc.flavor();
        let gen = self.generation + 1;
        let name = self.name(c).to_string();
        let sc = &mut self.srv[c].sc;
        let conn = sc.conn.as_mut().ok_or("candidate not connected")?;
        match flavor {
            _ if detach_later => {}
            Flavor::MariaDb => run_sql(conn, timeout, &["STOP SLAVE", "RESET SLAVE ALL"]).await?,
            Flavor::MySql => run_sql(conn, timeout, &["STOP REPLICA", "RESET REPLICA ALL"]).await?,
        }
        let row = format!(
            "INSERT INTO sluice.cluster (id, generation, primary_name, kind, changed_at_ms, \
             acknowledged, switchover_until_ms) VALUES (1, {gen}, {}, {}, {}, {}, 0) \
             ON DUPLICATE KEY UPDATE generation = VALUES(generation), \
             primary_name = VALUES(primary_name), kind = VALUES(kind), \
             changed_at_ms = VALUES(changed_at_ms), acknowledged = VALUES(acknowledged), \
             switchover_until_ms = 0",
            quote(&name),
            quote(kind),
            now_ms(),
            u8::from(acknowledged)
        );
        let writable = flavor.set_read_only(false);
        // The generation is written before the server becomes writable, so it is never
        // writable under an old generation (the monitor login may write while read-only).
        sc.schema_ready = false;
        let first = async {
            probe::ensure_schema(sc, timeout).await?;
            let conn = sc.conn.as_mut().ok_or("candidate not connected")?;
            run_sql(conn, timeout, &[row.as_str()]).await
        }
        .await;
        let conn = sc.conn.as_mut().ok_or("candidate not connected")?;
        if first.is_ok() {
            failpoint("failover:generation-written");
        }
        match first {
            Ok(()) => run_sql(conn, timeout, writable).await?,
            Err(e) if e.server_code() == Some(1290) => {
                run_sql(conn, timeout, writable).await?;
                probe::ensure_schema(sc, timeout).await?;
                let conn = sc.conn.as_mut().ok_or("candidate not connected")?;
                run_sql(conn, timeout, &[row.as_str()]).await?;
            }
            Err(e) => return Err(e),
        }
        Ok(gen)
    }

    /// [`Monitor::change_source`] after a promotion: the outcome goes into `detail`; a server
    /// whose history diverged is excluded; one that does not follow yet (its `STOP SLAVE` is
    /// stuck on a hung old primary, the new primary is slow to accept it) is retried every
    /// round until it holds ([`Monitor::retry_repoints`]).
    async fn repoint(
        &mut self,
        i: usize,
        to: usize,
        use_gtid: &'static str,
        record_ms: u64,
        detail: &mut String,
    ) {
        let t = Instant::now();
        let r = self.change_source(i, to, use_gtid).await;
        let ms = t.elapsed().as_millis();
        match r {
            Ok(Follow::Following) => {
                self.srv[i].repoint = None;
                detail.push_str(&format!("; {} follows ({ms} ms)", self.name(i)));
            }
            Ok(Follow::Pending(why)) | Err(Refused::Retry(why)) => {
                tracing::warn!(server = %self.name(i), status = %why, "repointed server does not follow the new primary yet; retrying every round");
                detail.push_str(&format!(
                    "; {} not following yet after {ms} ms ({why})",
                    self.name(i)
                ));
                let now = Instant::now();
                self.srv[i].repoint = Some(super::Repoint {
                    to,
                    use_gtid,
                    since: t,
                    attempts: 1,
                    last_try: now,
                    why,
                    record_ms,
                });
            }
            Err(Refused::Exclude(e)) => {
                tracing::error!(server = %self.name(i), error = %e, "server cannot follow the new primary; excluded");
                detail.push_str(&format!("; {} excluded: {e}", self.name(i)));
                self.srv[i].repoint = None;
                self.srv[i].excluded = Some(e);
            }
        }
    }

    /// Retries the repoints that did not hold (at most every 500 ms each); an outcome is added
    /// to the failover record it belongs to.
    pub(crate) async fn retry_repoints(&mut self, p: usize) {
        // A primary that still has replication configured with its SQL thread stopped was
        // promoted by a failover that did not finish (this instance's detach failed, or the
        // instance that ran it died before): finish it.
        let leftover = self.srv[p]
            .probe
            .as_ref()
            .and_then(|x| x.replication.as_ref())
            .is_some_and(|r| !r.sql_running);
        if leftover && !self.srv[p].detach_pending {
            tracing::warn!(server = %self.name(p), "the primary still replicates from its old source (a failover did not finish): resetting its replication");
        }
        if self.srv[p].detach_pending || leftover {
            self.detach(p).await;
        }
        for i in 0..self.srv.len() {
            let Some(rp) = self.srv[i].repoint.clone() else {
                continue;
            };
            if rp.to != p || !self.srv[i].healthy {
                if rp.to != p {
                    self.srv[i].repoint = None;
                }
                continue;
            }
            if rp.last_try.elapsed() < Duration::from_millis(500) {
                continue;
            }
            // Already pointed at it and connecting on its own: look, do not redo it (unless
            // it has been stuck for a while).
            let pointed = self.replicates_from(i, p);
            let running = self.srv[i]
                .probe
                .as_ref()
                .and_then(|x| x.replication.as_ref())
                .map(|r| (r.io_yes() && r.sql_running, r.last_io_errno));
            let r = match running {
                Some((true, _)) if pointed => Ok(Follow::Following),
                Some((false, errno))
                    if pointed
                        && errno != 1236
                        && rp.last_try.elapsed() < Duration::from_secs(5) =>
                {
                    continue;
                }
                _ => self.change_source(i, p, rp.use_gtid).await,
            };
            let attempts = rp.attempts + 1;
            let outcome = match r {
                Ok(Follow::Following) => {
                    self.srv[i].repoint = None;
                    let ms = rp.since.elapsed().as_millis();
                    tracing::warn!(server = %self.name(i), primary = %self.name(p), ms, attempts, "repointed server follows the new primary");
                    Some(format!(
                        "; {} follows after {ms} ms ({attempts} attempts)",
                        self.name(i)
                    ))
                }
                Ok(Follow::Pending(why)) | Err(Refused::Retry(why)) => {
                    self.srv[i].repoint = Some(super::Repoint {
                        attempts,
                        last_try: Instant::now(),
                        why,
                        ..rp.clone()
                    });
                    None
                }
                Err(Refused::Exclude(e)) => {
                    tracing::error!(server = %self.name(i), error = %e, "server cannot follow the new primary; excluded");
                    self.srv[i].repoint = None;
                    let line = format!("; {} excluded: {e}", self.name(i));
                    self.srv[i].excluded = Some(e);
                    Some(line)
                }
            };
            if let Some(line) = outcome {
                if let Some(rec) = self
                    .history
                    .iter_mut()
                    .rev()
                    .find(|r| r.started_ms == rp.record_ms)
                {
                    rec.detail.push_str(&line);
                }
            }
        }
    }

    /// Points server `i` at server `to` by GTID and checks (bounded) that it follows.
    pub(crate) async fn change_source(
        &mut self,
        i: usize,
        to: usize,
        use_gtid: &str,
    ) -> Result<Follow, Refused> {
        let timeout = self.timeout;
        let heartbeat = format!(
            "{:.3}",
            self.config.monitor.replication_heartbeat_ms as f64 / 1000.0
        );
        let flavor = self.srv[i].sc.flavor();
        let (host, port) = split_addr(&self.config.servers[to].address);
        let m = &self.config.monitor;
        let creds = match (&m.replication_user, &m.replication_password) {
            (Some(u), p) => Some((u.clone(), p.clone().unwrap_or_default())),
            (None, _) => None,
        };
        let sql = match flavor {
            Flavor::MariaDb => {
                let mut s = format!(
                    "CHANGE MASTER TO MASTER_HOST={}, MASTER_PORT={port}",
                    quote(&host)
                );
                if let Some((u, p)) = &creds {
                    s.push_str(&format!(
                        ", MASTER_USER={}, MASTER_PASSWORD={}",
                        quote(u),
                        quote(p)
                    ));
                }
                s.push_str(&format!(
                    ", MASTER_USE_GTID={use_gtid}, MASTER_CONNECT_RETRY=1, \
                     MASTER_HEARTBEAT_PERIOD={heartbeat}"
                ));
                s
            }
            Flavor::MySql => {
                let mut s = format!(
                    "CHANGE REPLICATION SOURCE TO SOURCE_HOST={}, SOURCE_PORT={port}",
                    quote(&host)
                );
                if let Some((u, p)) = &creds {
                    s.push_str(&format!(
                        ", SOURCE_USER={}, SOURCE_PASSWORD={}",
                        quote(u),
                        quote(p)
                    ));
                }
                s.push_str(&format!(
                    ", SOURCE_AUTO_POSITION=1, SOURCE_CONNECT_RETRY=1, \
                     SOURCE_HEARTBEAT_PERIOD={heartbeat}"
                ));
                s
            }
        };
        let (stop, start) = match flavor {
            Flavor::MariaDb => ("STOP SLAVE", "START SLAVE"),
            Flavor::MySql => ("STOP REPLICA", "START REPLICA"),
        };
        let retry = |e: String| Refused::Retry(e);
        let conn = self.srv[i]
            .sc
            .conn
            .as_mut()
            .ok_or_else(|| retry("not connected".into()))?;
        // STOP SLAVE waits for the IO thread; on a semi-sync replica attached to a hung
        // primary that takes `rpl_semi_sync_slave_kill_conn_timeout` (MariaDB). Bounded: on
        // time-out the connection is dropped (the server finishes the stop on its own) and
        // the repoint is retried.
        let stop_limit = timeout.max(Duration::from_secs(3));
        if let Err(e) = run_sql(conn, stop_limit, &[stop]).await {
            self.srv[i].sc.reset();
            return Err(retry(e.to_string()));
        }
        if let Err(e) = run_sql(conn, timeout, &[sql.as_str(), start]).await {
            // The statement carries the replication password: never shown.
            let e = e.to_string().replace(&sql, "CHANGE MASTER TO …");
            self.srv[i].sc.reset();
            return Err(retry(e));
        }
        // Follows once both threads run; error 1236 means its history diverged. A replica
        // that cannot connect yet (the new source is slow, or died meanwhile) is left to
        // retry on its own: the monitor must not stall here.
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let rep = match probe::replication_status(conn, flavor, timeout).await {
                Ok(r) => r,
                Err(e) => {
                    self.srv[i].sc.reset();
                    return Err(retry(e.to_string()));
                }
            };
            if let Some(r) = &rep {
                if r.last_io_errno == 1236 {
                    let _ = run_sql(conn, timeout, &[stop]).await;
                    return Err(Refused::Exclude(format!(
                        "diverged: cannot follow {}: {} (rebuild it from the new primary)",
                        self.config.servers[to].name, r.last_io_error
                    )));
                }
                if r.last_sql_errno != 0 {
                    return Err(Refused::Exclude(format!(
                        "replication SQL error: {}",
                        r.last_sql_error
                    )));
                }
                if r.io_yes() && r.sql_running {
                    return Ok(Follow::Following);
                }
                if r.last_io_errno != 0 {
                    return Ok(Follow::Pending(format!(
                        "IO thread {} (error {}: {})",
                        r.io_running, r.last_io_errno, r.last_io_error
                    )));
                }
            }
            if Instant::now() >= deadline {
                let why = rep
                    .map(|r| format!("IO thread {}", r.io_running))
                    .unwrap_or_else(|| "replication not configured".into());
                return Ok(Follow::Pending(why));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// With `auto_rejoin`: servers left out of the topology (a fenced old primary, a replica
    /// still pointing at a dead primary) are made replicas of the primary; ones whose history
    /// diverged are excluded with a clear status.
    pub(crate) async fn rejoin_strays(&mut self) {
        let Some(p) = self.primary else {
            return;
        };
        if self.hold {
            return;
        }
        self.retry_repoints(p).await;
        for i in 0..self.srv.len() {
            if i == p || !self.srv[i].healthy || self.srv[i].repoint.is_some() {
                continue;
            }
            let Some(probe) = self.srv[i].probe.as_ref() else {
                continue;
            };
            if !probe.read_only {
                continue;
            }
            let rep = probe.replication.clone();
            let from_primary = self.replicates_from(i, p);
            if let Some(r) = &rep {
                if from_primary && r.io_yes() && r.sql_running {
                    if let Some(why) = self.srv[i].excluded.take() {
                        tracing::info!(server = %self.name(i), was = %why, "replicating from the primary again; back in service");
                    }
                    continue;
                }
                if from_primary && r.last_io_errno == 1236 {
                    if self.srv[i].excluded.is_none() {
                        tracing::error!(server = %self.name(i), error = %r.last_io_error, "replica diverged from the primary; excluded (rebuild it)");
                        self.srv[i].excluded = Some(format!("diverged: {}", r.last_io_error));
                    }
                    continue;
                }
                if r.io_yes() || from_primary {
                    // Replicating from elsewhere, or reconnecting to the primary.
                    continue;
                }
            }
            if !self.config.monitor.auto_rejoin
                || self.srv[i]
                    .excluded
                    .as_deref()
                    .is_some_and(|e| e.starts_with("diverged"))
                || self.srv[i].rejoin_after.is_some_and(|t| Instant::now() < t)
            {
                continue;
            }
            if !self.lock_majority().await {
                continue;
            }
            // A server that was a primary has no slave position of its own: start from its
            // binlog (current_pos). A replica continues from what it applied.
            let use_gtid = if rep.is_none() {
                "current_pos"
            } else {
                "slave_pos"
            };
            let r = self.change_source(i, p, use_gtid).await;
            self.unlock_all().await;
            self.srv[i].rejoin_after = Some(Instant::now() + Duration::from_secs(10));
            match r {
                Ok(Follow::Following) => {
                    tracing::warn!(server = %self.name(i), primary = %self.name(p), "rejoined as a replica of the primary");
                    self.srv[i].excluded = None;
                }
                Ok(Follow::Pending(why)) => {
                    tracing::warn!(server = %self.name(i), primary = %self.name(p), status = %why, "pointed at the primary; not replicating yet");
                }
                Err(Refused::Exclude(e)) => {
                    tracing::error!(server = %self.name(i), error = %e, "cannot rejoin; excluded");
                    self.srv[i].excluded = Some(if e.starts_with("diverged") {
                        e
                    } else {
                        format!("cannot rejoin: {e}")
                    });
                }
                Err(Refused::Retry(e)) => {
                    tracing::warn!(server = %self.name(i), error = %e, "cannot rejoin now; retrying in 10 s");
                }
            }
        }
    }

    /// Operator-requested failover: the primary must be down.
    pub async fn manual_failover(&mut self, target: Option<usize>) -> Result<String, MonitorError> {
        self.probe_all().await;
        if let Some(p) = self.live_primary() {
            return Err(format!(
                "{} is alive and writable: use switchover for a planned change",
                self.name(p)
            )
            .into());
        }
        let dead = self
            .known_primary
            .or_else(|| self.primary_the_replicas_follow());
        let receiving: Vec<&str> = (0..self.srv.len())
            .filter(|&i| {
                self.srv[i]
                    .probe
                    .as_ref()
                    .and_then(|p| p.replication.as_ref())
                    .is_some_and(|r| r.io_yes())
            })
            .map(|i| self.name(i))
            .collect();
        if !receiving.is_empty() {
            return Err(format!(
                "replicas {receiving:?} still receive from their primary: it is alive; \
                 fix Sluice's path to it, or use switchover"
            )
            .into());
        }
        let r = self.failover(dead, target, false).await;
        if r.is_ok() {
            self.disabled = None;
        }
        r
    }

    /// Planned switchover to replica `t`: writes pause in every Sluice instance, the primary
    /// turns read-only, `t` catches up and is promoted, the others (the old primary included)
    /// follow it.
    pub async fn switchover(&mut self, t: usize) -> Result<String, MonitorError> {
        self.probe_all().await;
        let p = self
            .live_primary()
            .ok_or("no live primary: use failover instead")?;
        if p == t {
            return Err(format!("{} is already the primary", self.name(t)).into());
        }
        let ok_target = self.srv[t].healthy
            && self.srv[t].excluded.is_none()
            && !self.srv[t].offline
            && !self.config.servers[t].no_promote
            && self.srv[t]
                .probe
                .as_ref()
                .and_then(|x| x.replication.as_ref())
                .is_some_and(|r| r.io_yes() && r.sql_running);
        if !ok_target {
            return Err(format!(
                "{} cannot be promoted: it must be a healthy replica with both replication threads \
                 running, not excluded and not no_promote",
                self.name(t)
            )
            .into());
        }
        if !self.lock_majority().await {
            return Err("another Sluice instance holds the failover lock".into());
        }
        let r = self.switchover_locked(p, t).await;
        self.unlock_all().await;
        self.publish();
        r
    }

    async fn switchover_locked(&mut self, p: usize, t: usize) -> Result<String, MonitorError> {
        let started = Instant::now();
        let started_ms = now_ms();
        let timeout = self.timeout;
        let (from, to) = (self.name(p).to_string(), self.name(t).to_string());
        let flavor = self.srv[p].sc.flavor();
        let hold_ms = self.config.monitor.failover_hold_ms;
        // 1. Announce: every instance stops sending new writes to the primary.
        let intent = format!(
            "INSERT INTO sluice.cluster (id, generation, primary_name, kind, changed_at_ms, \
             acknowledged, switchover_until_ms) VALUES (1, {}, {}, 'initial', {}, 1, {}) \
             ON DUPLICATE KEY UPDATE switchover_until_ms = VALUES(switchover_until_ms)",
            self.generation,
            quote(&from),
            now_ms(),
            now_ms() + hold_ms
        );
        {
            let sc = &mut self.srv[p].sc;
            probe::ensure_schema(sc, timeout).await?;
            let c = sc.conn.as_mut().ok_or("primary not connected")?;
            run_sql(c, timeout, &[intent.as_str()]).await?;
        }
        self.hold = true;
        self.publish_state(MonitorState::Switching, Some(p));
        // Other instances see the hold at their next probe; in-flight statements finish.
        tokio::time::sleep(Duration::from_millis(
            2 * self.config.monitor.interval_ms + 50,
        ))
        .await;
        // 2. Stop writes on the primary.
        let pause = Instant::now();
        let read_only = flavor.set_read_only(true);
        let pos_q = match flavor {
            Flavor::MariaDb => "SELECT @@gtid_binlog_pos",
            Flavor::MySql => "SELECT @@gtid_executed",
        };
        let pos = {
            let c = self.srv[p]
                .sc
                .conn
                .as_mut()
                .ok_or("primary not connected")?;
            run_sql(c, timeout, read_only).await?;
            probe::query_value(c, timeout, pos_q)
                .await?
                .unwrap_or_default()
        };
        // 3. The target applies everything the primary has.
        let drain = self.config.monitor.drain_timeout_ms;
        let secs = drain as f64 / 1000.0;
        let wait = match flavor {
            Flavor::MariaDb => format!("SELECT MASTER_GTID_WAIT({}, {secs})", quote(&pos)),
            Flavor::MySql => format!("SELECT WAIT_FOR_EXECUTED_GTID_SET({}, {secs})", quote(&pos)),
        };
        let caught_up = match self.srv[t].sc.conn.as_mut() {
            Some(c) => probe::query_value(c, Duration::from_millis(drain) + timeout, &wait).await,
            None => Err("target not connected".into()),
        };
        if !matches!(&caught_up, Ok(Some(v)) if v == "0") {
            // Roll back: the old primary takes writes again.
            let writable = flavor.set_read_only(false);
            if let Some(c) = self.srv[p].sc.conn.as_mut() {
                let _ = run_sql(c, timeout, writable).await;
                let _ = run_sql(
                    c,
                    timeout,
                    &["UPDATE sluice.cluster SET switchover_until_ms = 0 WHERE id = 1"],
                )
                .await;
            }
            self.hold = false;
            self.publish_state(MonitorState::Ok, Some(p));
            return Err(format!(
                "{to} did not catch up with {from} within drain_timeout_ms ({caught_up:?}); \
                 switchover abandoned, {from} is writable again"
            )
            .into());
        }
        // 4. Promote the target.
        let gen = match self.promote(t, "switchover", true, false).await {
            Ok(g) => g,
            Err(e) => {
                let reason = format!("switchover to {to} failed midway: {e}");
                tracing::error!(%reason, "automatic failover disabled until acknowledged");
                self.disabled = Some(reason.clone());
                self.disabled_at = self.generation;
                self.hold = false;
                self.publish_state(
                    MonitorState::Failed {
                        reason: reason.clone(),
                    },
                    None,
                );
                return Err(reason.into());
            }
        };
        self.generation = gen;
        self.hold = false;
        self.known_primary = Some(t);
        if let Some(x) = self.srv[t].probe.as_mut() {
            x.read_only = false;
            x.replication = None;
        }
        if let Some(x) = self.srv[p].probe.as_mut() {
            x.read_only = true;
        }
        self.publish_state(MonitorState::Ok, Some(t));
        let pause_ms = pause.elapsed().as_millis() as u64;
        tracing::warn!(from = %from, to = %to, generation = gen, read_only_ms = pause_ms, "switchover: writes go to the new primary");
        // 5. The old primary and the other replicas follow the new one.
        let mut detail =
            format!("{to} promoted; writes refused by the old primary for {pause_ms} ms");
        for i in 0..self.srv.len() {
            if i == t || !self.srv[i].healthy {
                continue;
            }
            let use_gtid = if i == p { "current_pos" } else { "slave_pos" };
            self.repoint(i, t, use_gtid, started_ms, &mut detail).await;
        }
        self.record(FailoverRecord {
            kind: "switchover",
            from,
            to: Some(to),
            generation: gen,
            started_ms,
            duration_ms: started.elapsed().as_millis() as u64,
            ok: true,
            detail: detail.clone(),
        });
        Ok(detail)
    }
}

/// Fault injection for tests: with `SLUICE_FAILPOINT=<name>` in its environment, the process
/// aborts (as a `kill -9` would end it, without cleanup) when a failover reaches that point —
/// `failover:generation-written` (the candidate has the new generation, still read-only) or
/// `failover:promoted` (the candidate is writable, the other replicas not yet repointed).
/// tests/crash_mid_failover.rs uses it; unset, it costs one lookup per failover.
fn failpoint(name: &str) {
    static POINT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    if POINT
        .get_or_init(|| std::env::var("SLUICE_FAILPOINT").ok())
        .as_deref()
        == Some(name)
    {
        tracing::error!(failpoint = name, "SLUICE_FAILPOINT reached: aborting");
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(index: usize, received: &str, applied: &str, priority: i32) -> Candidate {
        Candidate {
            index,
            received: GtidPos::parse(received).unwrap(),
            applied: GtidPos::parse(applied).unwrap(),
            priority,
        }
    }

    #[test]
    fn most_received_wins_over_priority() {
        let r = rank(vec![
            cand(1, "0-1-90", "0-1-90", 10),
            cand(2, "0-1-100", "0-1-50", 0),
        ]);
        assert_eq!(r[0].index, 2);
    }

    #[test]
    fn priority_breaks_ties_then_applied_then_order() {
        let r = rank(vec![
            cand(1, "0-1-100", "0-1-100", 0),
            cand(2, "0-1-100", "0-1-90", 5),
        ]);
        assert_eq!(r[0].index, 2);
        let r = rank(vec![
            cand(1, "0-1-100", "0-1-80", 0),
            cand(2, "0-1-100", "0-1-100", 0),
        ]);
        assert_eq!(
            r[0].index, 2,
            "the one that applied more (a lagging SQL thread loses)"
        );
        let r = rank(vec![
            cand(3, "0-1-100", "0-1-100", 0),
            cand(2, "0-1-100", "0-1-100", 0),
        ]);
        assert_eq!(r[0].index, 2);
    }

    #[test]
    fn hosts_compare_loosely() {
        assert!(same_host("localhost", "127.0.0.1"));
        assert!(same_host("DB1", "db1"));
        assert!(!same_host("db1", "db2"));
        assert_eq!(split_addr("127.0.0.1:3307"), ("127.0.0.1".into(), 3307));
    }
}
