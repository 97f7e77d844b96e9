//! The routing decision, as a pure function: statement class + session state + topology →
//! where the statement runs. No sockets, no clocks; unit-tested on its own.

use super::classify::{Classified, StatementClass};
use crate::cluster::ClusterView;

/// The most servers a configuration may list (checked by config validation).
pub const MAX_SERVERS: usize = 64;

/// Where a statement runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Route {
    #[default]
    Primary,
    /// A replica, by its index in the configured servers.
    Replica(usize),
}

/// Why a read did not go to a replica (for logs and counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrimaryReason {
    NotARead,
    InTransaction,
    Pinned,
    Hint,
    NoReplicaWithinBudget,
}

/// What the router needs to know about the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionView {
    /// `SERVER_STATUS_IN_TRANS` from the last response.
    pub in_transaction: bool,
    /// `SERVER_STATUS_AUTOCOMMIT` from the last response.
    pub autocommit: bool,
    /// Non-replayable state keeps the session on the primary.
    pub pinned: bool,
    /// Where the previous statement ran.
    pub previous: Route,
}

/// Decides where a query runs. `load(i)` is the number of statements outstanding on server
/// `i`; among replicas within the lag budget the least loaded wins, and `turn()` picks among
/// equally loaded ones (pass a rotating counter to spread idle-time reads evenly). `turn` is
/// called only when there is such a choice: a shared counter is not written by every read in
/// a transaction, or on a server without replicas.
pub fn route(
    c: &Classified<'_>,
    session: &SessionView,
    topology: &ClusterView,
    default_max_lag_ms: u64,
    load: impl Fn(usize) -> u32,
    turn: impl FnOnce() -> usize,
) -> (Route, Option<PrimaryReason>) {
    use StatementClass::*;
    match c.class {
        ReadPrevious => return (session.previous, None),
        // A read-only transaction runs on one replica from its START to its end.
        Read | BeginReadOnly => {}
        ReadPrimary if c.hints.primary == Some(false) => {}
        _ => return (Route::Primary, Some(PrimaryReason::NotARead)),
    }
    // With autocommit off, a SELECT opens a transaction: it belongs on the primary. (An
    // explicit START TRANSACTION READ ONLY does not; but inside a transaction it would commit
    // the open one, which lives on the primary.)
    if session.in_transaction || (!session.autocommit && c.class != BeginReadOnly) {
        return (Route::Primary, Some(PrimaryReason::InTransaction));
    }
    if session.pinned {
        return (Route::Primary, Some(PrimaryReason::Pinned));
    }
    if c.hints.primary == Some(true) {
        return (Route::Primary, Some(PrimaryReason::Hint));
    }
    let budget = c.hints.max_lag_ms.unwrap_or(default_max_lag_ms);
    if budget == 0 {
        // A zero budget means "no staleness at all": only the primary guarantees that (a
        // heartbeat can read 0 ms just after it was written).
        return (Route::Primary, Some(PrimaryReason::NoReplicaWithinBudget));
    }
    let eligible = |i: usize| topology.servers[i].serves_reads_within(budget);
    if let Some(name) = c.hints.server {
        if let Some(i) = topology
            .servers
            .iter()
            .position(|s| s.name.as_bytes() == name)
        {
            if eligible(i) {
                return (Route::Replica(i), None);
            }
        }
    }
    // Least outstanding statements per unit of weight. Each load is read once: they change
    // under our feet, and two reads of one counter could disagree about which is least.
    let mut scores = [u64::MAX; MAX_SERVERS];
    let mut min = u64::MAX;
    for (i, slot) in scores.iter_mut().enumerate().take(topology.servers.len()) {
        if eligible(i) {
            *slot = u64::from(load(i)) * 1_000_000 / u64::from(topology.servers[i].weight.max(1));
            min = min.min(*slot);
        }
    }
    if min == u64::MAX {
        return (Route::Primary, Some(PrimaryReason::NoReplicaWithinBudget));
    }
    // Among the equally good, `turn` walks their weights: a weight-2 replica gets twice the
    // turns of a weight-1 one.
    let ties = || {
        scores
            .iter()
            .enumerate()
            .filter(|(_, &s)| s == min)
            .map(|(i, _)| i)
    };
    let mut candidates = ties();
    if let (Some(only), None) = (candidates.next(), candidates.next()) {
        return (Route::Replica(only), None);
    }
    let total: u64 = ties()
        .map(|i| u64::from(topology.servers[i].weight.max(1)))
        .sum();
    let mut point = turn() as u64 % total.max(1);
    for i in ties() {
        let w = u64::from(topology.servers[i].weight.max(1));
        if point < w {
            return (Route::Replica(i), None);
        }
        point -= w;
    }
    (Route::Primary, Some(PrimaryReason::NoReplicaWithinBudget))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{LagSource, Role, ServerState};
    use crate::router::classify_query;

    fn server(name: &str, role: Role, lag: Option<u64>) -> ServerState {
        ServerState {
            name: name.into(),
            address: String::new(),
            weight: 1,
            role,
            healthy: true,
            version: None,
            last_error: None,
            lag_ms: lag,
            lag_source: LagSource::Heartbeat,
            gtid_pos: String::new(),
            generation: 0,
            excluded: None,
            source: None,
            not_following: None,
            deposed: 0,
        }
    }

    fn topo(lags: &[Option<u64>]) -> ClusterView {
        let mut servers = vec![server("db1", Role::Primary, None)];
        for (i, l) in lags.iter().enumerate() {
            servers.push(server(&format!("db{}", i + 2), Role::Replica, *l));
        }
        ClusterView {
            servers,
            primary: Some(0),
            ..ClusterView::default()
        }
    }

    const IDLE: SessionView = SessionView {
        in_transaction: false,
        autocommit: true,
        pinned: false,
        previous: Route::Primary,
    };

    fn r(sql: &str, s: &SessionView, t: &ClusterView, load: &[u32]) -> Route {
        route(
            &classify_query(sql.as_bytes()),
            s,
            t,
            1000,
            |i| load.get(i).copied().unwrap_or(0),
            || 0,
        )
        .0
    }

    #[test]
    fn reads_to_the_least_loaded_replica_within_budget() {
        let t = topo(&[Some(10), Some(20)]);
        assert_eq!(r("SELECT 1", &IDLE, &t, &[0, 0, 0]), Route::Replica(1));
        assert_eq!(r("SELECT 1", &IDLE, &t, &[0, 5, 1]), Route::Replica(2));
        // Equal load: the turn rotates among them.
        let pick = |turn| {
            route(
                &classify_query(b"SELECT 1"),
                &IDLE,
                &t,
                1000,
                |_| 0,
                || turn,
            )
            .0
        };
        assert_eq!(
            (pick(0), pick(1), pick(2)),
            (Route::Replica(1), Route::Replica(2), Route::Replica(1))
        );
        // Lagging or stopped replicas are skipped.
        let t = topo(&[Some(5000), None]);
        assert_eq!(
            route(&classify_query(b"SELECT 1"), &IDLE, &t, 1000, |_| 0, || 0),
            (Route::Primary, Some(PrimaryReason::NoReplicaWithinBudget))
        );
        let t = topo(&[Some(5000), Some(200)]);
        assert_eq!(r("SELECT 1", &IDLE, &t, &[]), Route::Replica(2));
        // An unhealthy replica is skipped.
        let mut t = topo(&[Some(10)]);
        t.servers[1].healthy = false;
        assert_eq!(r("SELECT 1", &IDLE, &t, &[]), Route::Primary);
    }

    #[test]
    fn writes_locks_and_transactions_go_to_the_primary() {
        let t = topo(&[Some(0)]);
        for sql in [
            "INSERT INTO t VALUES (1)",
            "SELECT * FROM t FOR UPDATE",
            "SELECT LAST_INSERT_ID()",
            "BEGIN",
            "SET NAMES utf8",
            "CALL p()",
        ] {
            assert_eq!(r(sql, &IDLE, &t, &[]), Route::Primary, "{sql}");
        }
        let in_trans = SessionView {
            in_transaction: true,
            ..IDLE
        };
        assert_eq!(r("SELECT 1", &in_trans, &t, &[]), Route::Primary);
        let no_autocommit = SessionView {
            autocommit: false,
            ..IDLE
        };
        assert_eq!(r("SELECT 1", &no_autocommit, &t, &[]), Route::Primary);
        let pinned = SessionView {
            pinned: true,
            ..IDLE
        };
        assert_eq!(r("SELECT 1", &pinned, &t, &[]), Route::Primary);
        let prev = SessionView {
            previous: Route::Replica(1),
            ..IDLE
        };
        assert_eq!(r("SHOW WARNINGS", &prev, &t, &[]), Route::Replica(1));
        assert_eq!(r("SHOW WARNINGS", &IDLE, &t, &[]), Route::Primary);
    }

    #[test]
    fn weights() {
        let mut t = topo(&[Some(0), Some(0)]);
        t.servers[2].weight = 3;
        let pick = |t: &ClusterView, turn, load: [u32; 3]| {
            route(
                &classify_query(b"SELECT 1"),
                &IDLE,
                t,
                1000,
                |i| load[i],
                || turn,
            )
            .0
        };
        let picks: Vec<Route> = (0..8).map(|turn| pick(&t, turn, [0, 0, 0])).collect();
        let db3 = picks.iter().filter(|r| **r == Route::Replica(2)).count();
        assert_eq!(
            db3, 6,
            "weight 3 against 1 gets 3 of every 4 idle reads: {picks:?}"
        );
        // Per unit of weight: 2 outstanding on weight 3 beats 1 on weight 1.
        assert_eq!(pick(&t, 0, [0, 1, 2]), Route::Replica(2));
        t.servers[2].weight = 0;
        assert!(
            (0..4).all(|turn| pick(&t, turn, [0, 0, 0]) == Route::Replica(1)),
            "weight 0 gets no reads"
        );
    }

    #[test]
    fn loads_changing_during_the_decision_never_panic() {
        // Other sessions move the counters while the router reads them (a panic seen under
        // sysbench with 32 threads): every read of a load may differ from the last.
        let t = topo(&[Some(0), Some(0)]);
        let calls = std::cell::Cell::new(0u32);
        for turn in 0..10 {
            let (r, _) = route(
                &classify_query(b"SELECT 1"),
                &IDLE,
                &t,
                1000,
                |_| {
                    calls.set(calls.get() + 1);
                    calls.get() % 3
                },
                || turn,
            );
            assert!(matches!(r, Route::Replica(1 | 2)), "{r:?}");
        }
    }

    #[test]
    fn hints() {
        let t = topo(&[Some(300), Some(50)]);
        assert_eq!(
            r("/* sluice: route=primary */ SELECT 1", &IDLE, &t, &[]),
            Route::Primary
        );
        assert_eq!(
            r("/* sluice: max_lag=100 */ SELECT 1", &IDLE, &t, &[0, 0, 9]),
            Route::Replica(2)
        );
        assert_eq!(
            r("/* sluice: max_lag=10 */ SELECT 1", &IDLE, &t, &[]),
            Route::Primary
        );
        assert_eq!(
            r("/* sluice: server=db2 */ SELECT 1", &IDLE, &t, &[0, 9, 0]),
            Route::Replica(1)
        );
        assert_eq!(
            r(
                "/* sluice: route=replica */ SELECT * FROM t FOR UPDATE",
                &IDLE,
                &t,
                &[]
            ),
            Route::Replica(1)
        );
        // A bad hint is ignored.
        assert_eq!(
            r("/* sluice: max_lag=soon */ SELECT 1", &IDLE, &t, &[]),
            Route::Replica(1)
        );
    }
}
