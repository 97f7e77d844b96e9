//! Connection pools, one per configured server: a bound on the connections Sluice opens to
//! each server (`[proxy] max_backend_connections`), idle connections kept for reuse
//! (`[proxy] pool_max_idle`), and a fair FIFO queue of sessions waiting for a connection
//! (bounded by `[proxy] pool_wait_ms`, then the caller gets a clear error).
//!
//! With multiplexing, connections are leased per statement or per transaction. Idle
//! connections are partitioned by key (user, capabilities, login character set; the
//! capabilities every server connection asks for whatever the client did —
//! `connection::ALWAYS` — and the common character sets, which a lease sets by collation
//! id, do not split it): a
//! session takes one of its own key as it is — the lease layer then brings it to the
//! session's state — preferring one whose state already matches. A connection is returned
//! only in a known state (no response pending, no transaction); a returned connection goes
//! first to the longest-waiting session. When every slot is taken by idle connections of other
//! keys, one of them is re-authenticated (COM_CHANGE_USER). The lists are behind a std mutex
//! held only to push or pop, never across an await.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_proto::command::ChangeUser;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use super::connection::{negotiate, LOGIN_ONLY};
use super::{connect, BackendConn, BackendError, LoginParams, SessionVars};

/// Which idle connections `pop_idle` may hand out.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// Of the caller's key, opened on the caller's session loop.
    Home,
    /// Of the caller's key, on any loop.
    AnyLoop,
    /// Of any key (to be re-authenticated).
    OtherKey,
    /// Of the caller's key, on the caller's loop, already in the caller's state (nothing to
    /// run before it serves): [`ServerPool::take_ready`].
    Ready,
}

struct Idle {
    /// The connection's id, kept beside it: a lease looks for one by id without touching the
    /// connections themselves.
    id: u64,
    /// Its `home` loop, likewise.
    home: u16,
    conn: Box<BackendConn>,
    /// When it came back, in `clock::coarse_monotonic_ms` (no precise clock read per lease).
    since_ms: u64,
}

/// Whether connection `c` serves a login with `p` without re-authenticating (no allocation:
/// this runs for every lease). Login character sets that every server knows do not split
/// the key: the lease brings the connection to the session's by collation id
/// (`BackendConn::sync_to`), as a login with it would have.
fn same_key(c: &BackendConn, p: &LoginParams<'_>) -> bool {
    c.user == p.user
        && (c.charset == p.charset || (restorable(c.charset) && restorable(p.charset)))
        && c.capabilities & !LOGIN_ONLY
            == negotiate(p.capabilities, c.handshake.capabilities) & !LOGIN_ONLY
}

/// Login character sets (collation ids) that MariaDB and MySQL both know, so that `SET
/// character_set_client = cs, character_set_results = cs, collation_connection = id` (`cs` the
/// default collation of `id`'s character set) gives a connection what a login with `id` gives
/// it: latin1 (swedish_ci, bin, general_ci), ascii,
/// utf8mb3 (general_ci, bin, unicode_ci), utf8mb4 (general_ci, bin, unicode_ci), binary.
/// Another id (one a server may not know, such as MySQL 8's 255, where MariaDB falls back to
/// its own default) keeps connections of its own.
fn restorable(charset: u8) -> bool {
    matches!(
        charset,
        8 | 11 | 33 | 45 | 46 | 47 | 48 | 63 | 65 | 83 | 192 | 224
    )
}

/// Whether idle connection `c` is in the state a session logging in with `p` wants: its
/// replayable state, and its character set.
fn in_state(c: &BackendConn, p: &LoginParams<'_>, want: &SessionVars) -> bool {
    c.state == *want && c.charset == p.charset
}

struct Waiter {
    since: Instant,
    /// When it gets error 9012 (`since` + `pool_wait_ms`).
    deadline: Instant,
    tx: tokio::sync::oneshot::Sender<Handed>,
}

/// What a session waiting in line is handed.
enum Handed {
    /// A returned connection.
    Conn(Box<BackendConn>),
    /// The slot of a connection that closed: the session opens a new connection with it.
    Slot(OwnedSemaphorePermit),
}

/// A connection's place among its server's `max_backend_connections`, released when the
/// connection is dropped. Its release wakes the pool's attendant, which hands the place to the
/// first session in line (no session races the slots itself while it waits).
#[derive(Debug)]
pub struct Slot {
    permit: Option<OwnedSemaphorePermit>,
    attendant: Arc<Notify>,
}

impl Slot {
    /// The place itself, for another connection (no one else is offered it).
    fn into_permit(mut self) -> Option<OwnedSemaphorePermit> {
        self.permit.take()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(p) = self.permit.take() {
            drop(p);
            // Not the lists' lock here: a connection may be dropped while it is held.
            self.attendant.notify_one();
        }
    }
}

#[derive(Default)]
struct Lists {
    idle: Vec<Idle>,
    /// Sessions waiting for a connection, in line per session loop (`loops::home()`; few
    /// entries: one per loop, and one for tasks outside the loops).
    waiters: Vec<(u16, std::collections::VecDeque<Waiter>)>,
    /// When the attendant next wakes to turn away waiters whose `pool_wait_ms` has passed
    /// (`None`: only when woken).
    expire_at: Option<Instant>,
    /// When a connection of this server last broke (coarse monotonic ms; 0: never). An idle
    /// connection returned before then is looked at before reuse, however recently returned:
    /// the server may have died or restarted, and its close may reach the socket a moment
    /// after the break was seen.
    broke_at_ms: u64,
}

/// A returned connection goes to the first in line on its own session loop (whose packets then
/// wake no other thread) unless the first in line on another loop has waited this much longer.
const LOCAL_WAITER_SKIP: Duration = Duration::from_millis(20);

/// Idle connections older than this are checked for a close by the server before reuse.
const RECHECK_AFTER: Duration = Duration::from_secs(1);

/// A connection handed out by [`ServerPool::acquire`].
pub struct Acquired {
    pub conn: Box<BackendConn>,
    /// The server's OK when the connection logged in (or re-authenticated) for this lease;
    /// `None` for a reused connection.
    pub login_ok: Option<Bytes>,
    /// How long the caller waited in the queue.
    pub waited: Duration,
}

impl Acquired {
    fn at_once(conn: Box<BackendConn>, login_ok: Option<Bytes>) -> Self {
        Acquired {
            conn,
            login_ok,
            waited: Duration::ZERO,
        }
    }

    /// Handed out after `waited` in the queue.
    fn after_wait(conn: Box<BackendConn>, login_ok: Option<Bytes>, waited: Duration) -> Self {
        Acquired {
            conn,
            login_ok,
            waited,
        }
    }
}

/// Which line a connection of loop `home` goes to: the first in line on that loop, unless the
/// first in line on another loop has waited `LOCAL_WAITER_SKIP` longer (then the longest
/// waiting one): sessions are served first come first served across loops within that margin,
/// and a connection mostly stays with the sessions of its own loop.
fn next_waiter(lines: &[(u16, std::collections::VecDeque<Waiter>)], home: u16) -> Option<usize> {
    let mut own = None;
    let mut oldest: Option<(usize, Instant)> = None;
    for (n, (h, q)) in lines.iter().enumerate() {
        let Some(front) = q.front() else { continue };
        if *h == home {
            own = Some((n, front.since));
        } else if !oldest.is_some_and(|(_, since)| front.since >= since) {
            oldest = Some((n, front.since));
        }
    }
    match (own, oldest) {
        (Some((n, mine)), Some((m, other))) => Some(if other + LOCAL_WAITER_SKIP < mine {
            m
        } else {
            n
        }),
        (Some((n, _)), None) | (None, Some((n, _))) => Some(n),
        (None, None) => None,
    }
}

/// The pool of one server.
pub struct ServerPool {
    pub name: String,
    pub address: String,
    slots: Arc<Semaphore>,
    max: AtomicUsize,
    lists: Arc<Mutex<Lists>>,
    /// Wakes the attendant (`attend`): a slot came free, a waiter's deadline is earlier than
    /// its next wake-up, or the pool is gone.
    attendant: Arc<Notify>,
    /// The attendant runs (started by the first session that waits).
    attended: AtomicBool,
    max_idle: AtomicUsize,
    idle_timeout_ms: AtomicU64,
    /// `[proxy] pool_max_lifetime_ms` (0: no limit).
    max_lifetime_ms: AtomicU64,
    /// Connections closed because they reached their lifetime.
    pub expired_total: AtomicU64,
    /// Sessions that had to wait, and for how long in all (microseconds): per thread (under
    /// thousands of clients most leases wait, on every core).
    pub waits: crate::lanes::LaneCounter,
    pub wait_micros: crate::lanes::LaneCounter,
    /// The server was removed from the configuration: nothing is pooled any more.
    retired: AtomicBool,
    /// Statements one connection may keep prepared, as learned from the server's 1461
    /// answers (`usize::MAX` until then).
    pub stmt_cap: AtomicUsize,
    /// `[backend_tls]` for new connections (replaced by a reload).
    tls: std::sync::RwLock<Option<Arc<crate::tls::BackendTls>>>,
    /// `[[servers]] compress` for new connections.
    compress: AtomicBool,
    /// Every open connection's socket, to cut them all when the server is deposed.
    live: Arc<super::connection::Cuttable>,
    /// Connections cut so far.
    pub cut_total: AtomicU64,
}
/// Why a connection could not be had.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("server {server} has no free connection slot (all {max} in use) after waiting {waited_ms} ms")]
    Exhausted {
        server: String,
        max: usize,
        waited_ms: u64,
    },
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// Bounds of a pool.
#[derive(Debug, Clone, Copy)]
pub struct PoolLimits {
    pub max_connections: usize,
    pub max_idle: usize,
    pub wait: Duration,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    /// `[proxy] pool_max_lifetime_ms` (zero: no limit).
    pub max_lifetime: Duration,
}

impl ServerPool {
    pub fn new(name: &str, address: &str, limits: PoolLimits) -> Self {
        ServerPool {
            name: name.to_string(),
            address: address.to_string(),
            slots: Arc::new(Semaphore::new(limits.max_connections)),
            max: AtomicUsize::new(limits.max_connections),
            lists: Default::default(),
            attendant: Default::default(),
            attended: AtomicBool::new(false),
            max_idle: AtomicUsize::new(limits.max_idle),
            idle_timeout_ms: AtomicU64::new(limits.idle_timeout.as_millis() as u64),
            max_lifetime_ms: AtomicU64::new(limits.max_lifetime.as_millis() as u64),
            expired_total: AtomicU64::new(0),
            waits: Default::default(),
            wait_micros: Default::default(),
            retired: AtomicBool::new(false),
            stmt_cap: AtomicUsize::new(usize::MAX),
            tls: std::sync::RwLock::new(None),
            compress: AtomicBool::new(false),
            live: Default::default(),
            cut_total: AtomicU64::new(0),
        }
    }

    /// Sets the TLS and compression used by new connections (idle ones made before are
    /// closed: they must match the configuration in force).
    pub fn set_transport(&self, tls: Option<Arc<crate::tls::BackendTls>>, compress: bool) {
        if let Ok(mut t) = self.tls.write() {
            *t = tls;
        }
        self.compress.store(compress, Ordering::Relaxed);
        let old = self.lists.lock().map(|mut l| std::mem::take(&mut l.idle));
        goodbye_all(old.unwrap_or_default());
    }

    /// Applies new bounds (a reload): a larger `max_connections` adds slots at once; a smaller
    /// one takes free slots away now and the rest as busy connections come back.
    pub fn set_limits(&self, limits: &PoolLimits) {
        let old = self.max.swap(limits.max_connections, Ordering::AcqRel);
        let new = limits.max_connections;
        if new > old {
            self.slots.add_permits(new - old);
            // To the sessions in line, if any.
            self.attendant.notify_one();
        } else if new < old {
            let mut owed = old - new;
            owed -= self.slots.forget_permits(owed);
            if owed > 0 {
                // Close idle connections to give their slots back, then take the rest as
                // busy connections come back.
                let closed = self.lists.lock().map(|mut l| {
                    let n = owed.min(l.idle.len());
                    l.idle.drain(..n).collect::<Vec<_>>()
                });
                // Their slots come back when they have said goodbye (below, if not at once).
                goodbye_all(closed.unwrap_or_default());
                owed -= self.slots.forget_permits(owed);
            }
            if owed > 0 {
                let slots = self.slots.clone();
                tokio::spawn(async move {
                    if let Ok(p) = slots.acquire_many_owned(owed as u32).await {
                        p.forget();
                    }
                });
            }
        }
        self.max_idle.store(limits.max_idle, Ordering::Relaxed);
        self.idle_timeout_ms
            .store(limits.idle_timeout.as_millis() as u64, Ordering::Relaxed);
        self.max_lifetime_ms
            .store(limits.max_lifetime.as_millis() as u64, Ordering::Relaxed);
        let extra = self.lists.lock().map(|mut l| {
            let keep = limits.max_idle.min(l.idle.len());
            l.idle.split_off(keep)
        });
        goodbye_all(extra.unwrap_or_default());
    }

    /// The server left the configuration: idle connections are closed now, busy ones when
    /// their sessions give them back.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Release);
        let old = self.lists.lock().map(|mut l| std::mem::take(&mut l.idle));
        goodbye_all(old.unwrap_or_default());
    }

    /// Closes every connection to this server, idle or in use (a statement in flight on one
    /// fails at once). For a deposed primary: nothing more may be acknowledged from it.
    pub fn cut_all(&self) -> usize {
        if let Ok(mut l) = self.lists.lock() {
            l.idle.clear();
        }
        let n = self.live.cut_all();
        self.cut_total.fetch_add(n as u64, Ordering::Relaxed);
        n
    }

    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    /// The most connections this pool opens.
    pub fn max(&self) -> usize {
        self.max.load(Ordering::Relaxed)
    }

    /// Sessions waiting for a connection now: those in line (counted from the line, not by
    /// each waiting session: no shared counter written per wait, and a session that stopped
    /// waiting is not counted).
    pub fn waiting(&self) -> usize {
        self.lists.lock().map_or(0, |l| {
            l.waiters
                .iter()
                .map(|(_, q)| q.iter().filter(|w| !w.tx.is_closed()).count())
                .sum()
        })
    }

    /// How long the longest-waiting session has waited so far.
    pub fn longest_wait(&self) -> Duration {
        self.lists
            .lock()
            .ok()
            .and_then(|l| {
                l.waiters
                    .iter()
                    .filter_map(|(_, q)| q.iter().find(|w| !w.tx.is_closed()))
                    .map(|w| w.since.elapsed())
                    .max()
            })
            .unwrap_or_default()
    }

    /// Connections (in use, idle).
    pub fn counts(&self) -> (usize, usize) {
        let idle = self.lists.lock().map_or(0, |l| l.idle.len());
        let max = self.max();
        (
            max.saturating_sub(self.slots.available_permits() + idle),
            idle,
        )
    }

    /// A connection for a session logging in with `p`: an idle one of the same key (`prefer`,
    /// the id of the connection the session had last, if it is idle and in state `want`; else
    /// one already in state `want`; else any), a new one while slots are free, an idle one
    /// of another key re-authenticated, or the next one returned while waiting in line.
    pub async fn acquire(
        &self,
        p: LoginParams<'_>,
        limits: &PoolLimits,
        want: &SessionVars,
        prefer: u64,
    ) -> Result<Acquired, PoolError> {
        // No clock read and no waiting time unless the caller queues (only waits are
        // observed in `sluice_pool_wait_seconds`).
        let (started, rx) = loop {
            // In line when nothing is idle and every slot is taken (thousands of clients over
            // a few connections: most leases): one look under the lock. A connection returned
            // since (pushed idle: there was nobody in line yet) is then taken instead, and so
            // is a slot freed since (offered to nobody: nobody was in line): no session waits
            // while one is to be had. A slot is released before the attendant is woken to
            // hand it out, and both this look and the attendant's hold the lock: either this
            // look sees the slot or the attendant sees this waiter. Each pass round the loop
            // takes something or returns (or another session took it first), so it ends.
            {
                let Ok(mut l) = self.lists.lock() else {
                    return Err(PoolError::Exhausted {
                        server: self.name.clone(),
                        max: self.max(),
                        waited_ms: 0,
                    });
                };
                if l.idle.is_empty() && self.slots.available_permits() == 0 {
                    break self.queue(&mut l, limits);
                }
            }
            if let Some(conn) = self.pop_idle(&p, want, Scope::Home, prefer) {
                return Ok(Acquired::at_once(conn, None));
            }
            // A new connection while slots are free, rather than one of another session loop
            // (whose every packet would wake this loop from that one's thread).
            if let Ok(permit) = self.slots.clone().try_acquire_owned() {
                return match Box::pin(self.open(p, limits, permit)).await {
                    Ok((conn, ok)) => Ok(Acquired::at_once(conn, Some(ok))),
                    // The server refuses more (its max_connections): an idle one of another
                    // loop still serves.
                    Err(e) => match self.pop_idle(&p, want, Scope::AnyLoop, 0) {
                        Some(conn) => Ok(Acquired::at_once(conn, None)),
                        None => Err(e),
                    },
                };
            }
            if let Some(conn) = self.pop_idle(&p, want, Scope::AnyLoop, 0) {
                return Ok(Acquired::at_once(conn, None));
            }
            // Every slot is taken; an idle connection of another user is better than waiting.
            if let Some(conn) = self.pop_idle(&p, want, Scope::OtherKey, 0) {
                if let Some(r) = Box::pin(self.adapt(conn, &p, limits)).await? {
                    return Ok(Acquired::at_once(r.0, Some(r.1)));
                }
                continue;
            }
            // Nothing to be had: the look above puts the session in line, or finds what came
            // free since.
        };
        // Read first: a swap would write the shared line on every wait.
        if !self.attended.load(Ordering::Acquire) && !self.attended.swap(true, Ordering::AcqRel) {
            tokio::spawn(attend(
                Arc::downgrade(&self.lists),
                self.slots.clone(),
                self.attendant.clone(),
            ));
        }
        let got = rx.await;
        // The time in line (not the re-authentication or connect that may follow).
        let waited = started.elapsed();
        self.waits.fetch_add(1, Ordering::Relaxed);
        self.wait_micros
            .fetch_add(waited.as_micros() as u64, Ordering::Relaxed);
        match got {
            // Of the session's key (the common case): used as it is.
            Ok(Handed::Conn(conn)) if same_key(&conn, &p) => {
                Ok(Acquired::after_wait(conn, None, waited))
            }
            Ok(Handed::Conn(conn)) => match Box::pin(self.adapt(conn, &p, limits)).await? {
                Some((conn, ok)) => Ok(Acquired::after_wait(conn, Some(ok), waited)),
                None => Err(PoolError::Exhausted {
                    server: self.name.clone(),
                    max: self.max(),
                    waited_ms: waited.as_millis() as u64,
                }),
            },
            Ok(Handed::Slot(permit)) => {
                let (conn, ok) = Box::pin(self.open(p, limits, permit)).await?;
                Ok(Acquired::after_wait(conn, Some(ok), waited))
            }
            // Turned away by the attendant at its deadline.
            Err(_) => Err(PoolError::Exhausted {
                server: self.name.clone(),
                max: self.max(),
                waited_ms: limits.wait.as_millis() as u64,
            }),
        }
    }

    /// Puts the caller in line (`l` is the pool's lists, locked): when it started waiting and
    /// where it is handed a connection or a slot.
    fn queue(
        &self,
        l: &mut Lists,
        limits: &PoolLimits,
    ) -> (Instant, tokio::sync::oneshot::Receiver<Handed>) {
        let started = Instant::now();
        // No timer per wait: the attendant turns the session away at its deadline.
        let deadline = started + limits.wait;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let home = crate::loops::home();
        let w = Waiter {
            since: started,
            deadline,
            tx,
        };
        match l.waiters.iter_mut().find(|(h, _)| *h == home) {
            Some((_, q)) => q.push_back(w),
            None => l.waiters.push((home, [w].into())),
        }
        if l.expire_at.map_or(true, |at| deadline < at) {
            l.expire_at = Some(deadline);
            self.attendant.notify_one();
        }
        (started, rx)
    }

    /// A connection handed over while waiting: used as it is when its key matches, else
    /// re-authenticated as `p`'s user. `None` when it broke doing so (its slot is free again).
    async fn adapt(
        &self,
        mut conn: Box<BackendConn>,
        p: &LoginParams<'_>,
        limits: &PoolLimits,
    ) -> Result<Option<(Box<BackendConn>, Bytes)>, PoolError> {
        if same_key(&conn, p) {
            // Sluice writes the session's OK itself for a reused connection.
            return Ok(Some((conn, Bytes::new())));
        }
        if conn.capabilities & !LOGIN_ONLY
            != negotiate(p.capabilities, conn.handshake.capabilities) & !LOGIN_ONLY
        {
            // Capabilities are fixed at login: this one cannot serve; close it and take its
            // slot for a new connection.
            let slot = conn.slot.take().and_then(Slot::into_permit);
            conn.quit().await;
            let Some(permit) = slot else {
                return Ok(None);
            };
            return self.open(*p, limits, permit).await.map(Some);
        }
        let cu = ChangeUser {
            username: p.user.to_vec(),
            auth_response: Vec::new(),
            database: p.database.map(<[u8]>::to_vec).unwrap_or_default(),
            charset: Some(u16::from(p.charset)),
            auth_plugin: None,
            connect_attrs: p.connect_attrs.map(<[u8]>::to_vec),
        };
        match tokio::time::timeout(limits.connect_timeout, conn.change_user(&cu, p.secret)).await {
            Ok(Ok(ok)) => Ok(Some((conn, ok))),
            Ok(Err(BackendError::Refused(e))) => Err(PoolError::Backend(BackendError::Refused(e))),
            _ => Ok(None),
        }
    }

    async fn open(
        &self,
        p: LoginParams<'_>,
        limits: &PoolLimits,
        permit: OwnedSemaphorePermit,
    ) -> Result<(Box<BackendConn>, Bytes), PoolError> {
        let tls = self.tls.read().ok().and_then(|t| t.clone());
        let transport = super::connection::Transport {
            tls: tls.as_deref(),
            compress: self.compress.load(Ordering::Relaxed),
        };
        let (mut conn, ok) = connect(
            &self.name,
            &self.address,
            p,
            limits.connect_timeout,
            transport,
        )
        .await?;
        conn.slot = Some(Slot {
            permit: Some(permit),
            attendant: self.attendant.clone(),
        });
        self.live.register(&mut conn);
        // Boxed: a lease moves the connection in and out of the pool on every statement.
        Ok((Box::new(conn), ok))
    }

    /// An idle connection for `p` (see `Scope`); of its key, one already in state `want` is
    /// preferred. The most recently returned first.
    fn pop_idle(
        &self,
        p: &LoginParams<'_>,
        want: &SessionVars,
        scope: Scope,
        prefer: u64,
    ) -> Option<Box<BackendConn>> {
        let other_key = scope == Scope::OtherKey;
        let timeout = Duration::from_millis(self.idle_timeout_ms.load(Ordering::Relaxed));
        let mut l = self.lists.lock().ok()?;
        if l.idle.is_empty() {
            return None;
        }
        // One coarse clock read per lease.
        let now_ms = crate::clock::coarse_monotonic_ms();
        let timeout_ms = timeout.as_millis() as u64;
        // The oldest are at the front: too old ones may have been closed by the server
        // (wait_timeout); dropping closes them.
        let stale = l
            .idle
            .iter()
            .take_while(|i| now_ms.saturating_sub(i.since_ms) >= timeout_ms)
            .count();
        if stale > 0 {
            // Rare (a pool that sat unused): the only allocation on this path.
            let old: Vec<Idle> = l.idle.drain(..stale).collect();
            drop(l);
            goodbye_all(old);
            return self.pop_idle(p, want, scope, prefer);
        }
        // The connection the caller had last, if it is idle, fits and lives on the caller's
        // loop: its memory is likely still in this core's cache (and in no other's).
        let home = crate::loops::home();
        let ready = scope == Scope::Ready;
        let mut pick = (prefer != 0 && !other_key)
            .then(|| l.idle.iter().rposition(|i| i.id == prefer))
            .flatten()
            .filter(|&n| {
                let i = &l.idle[n];
                i.home == home && same_key(&i.conn, p) && in_state(&i.conn, p, want)
            });
        if pick.is_none() && other_key {
            pick = l.idle.len().checked_sub(1);
        }
        if pick.is_none() && !other_key {
            // Of the same key (and the caller's loop, for `Scope::Home` and `Scope::Ready`):
            // in state `want` first (no statement to sync it; only those for `Scope::Ready`),
            // then on the caller's loop; the most recently returned among equals.
            let mut best = 0u8;
            for (n, i) in l.idle.iter().enumerate().rev() {
                let here = i.home == home;
                if (scope != Scope::AnyLoop && !here) || !same_key(&i.conn, p) {
                    continue;
                }
                let same_state = in_state(&i.conn, p, want);
                if ready && !same_state {
                    continue;
                }
                let score = 1 + 2 * u8::from(same_state) + u8::from(here);
                if score > best {
                    best = score;
                    pick = Some(n);
                    if score == 4 {
                        break;
                    }
                }
            }
        }
        // `remove`, not `swap_remove`: the list stays ordered by return time.
        let idle = pick.map(|n| l.idle.remove(n))?;
        let after_break = idle.since_ms <= l.broke_at_ms;
        drop(l);
        if self.expired(&idle.conn, now_ms) {
            // It reached its lifetime while it sat idle (a reload may also have shortened it).
            self.close_expired(idle.conn);
            return self.pop_idle(p, want, scope, 0);
        }
        // A connection that sat idle a while may have been closed by the server (a restart,
        // KILL, wait_timeout): one non-blocking look before handing it out. One returned a
        // moment ago is not looked at (a syscall per statement otherwise), unless another
        // connection of this server broke since it was returned.
        if (after_break || now_ms.saturating_sub(idle.since_ms) >= RECHECK_AFTER.as_millis() as u64)
            && idle.conn.looks_closed()
        {
            return self.pop_idle(p, want, scope, 0);
        }
        Some(idle.conn)
    }

    /// An idle connection that serves a session logging in with `p` in state `want` as it is
    /// (of its key, on its loop, in its state; `prefer` first), without waiting: the common
    /// lease, taken without entering [`ServerPool::acquire`]. `None`: `acquire` decides.
    pub fn take_ready(
        &self,
        p: &LoginParams<'_>,
        want: &SessionVars,
        prefer: u64,
    ) -> Option<Box<BackendConn>> {
        self.pop_idle(p, want, Scope::Ready, prefer)
    }

    /// Closes the idle connections the server has closed (a connection of this server just
    /// broke: when the server died or restarted, every idle one is dead too, and must not be
    /// handed to the next statement). Returns how many were closed.
    pub fn drop_closed_idle(&self) -> usize {
        let closed: Vec<Idle> = match self.lists.lock() {
            Ok(mut l) => {
                l.broke_at_ms = crate::clock::coarse_monotonic_ms();
                let (dead, alive) = std::mem::take(&mut l.idle)
                    .into_iter()
                    .partition(|i| i.conn.looks_closed());
                l.idle = alive;
                dead
            }
            Err(_) => return 0,
        };
        // Closed outside the lock.
        closed.len()
    }

    /// Opens connections for `p` until `min` of its key (on this thread's session loop) are idle (`[proxy] pool_min_idle`),
    /// as far as free slots allow; nobody waits for them. Returns how many were opened.
    pub async fn fill_idle(&self, p: LoginParams<'_>, limits: &PoolLimits, min: usize) -> usize {
        if self.is_retired() || min == 0 {
            return 0;
        }
        // Of this session loop (a session takes another loop's only when its own has none).
        let home = crate::loops::home();
        let have = self.lists.lock().map_or(0, |l| {
            l.idle
                .iter()
                .filter(|i| i.home == home && same_key(&i.conn, &p))
                .count()
        });
        let mut opened = 0;
        for _ in have..min {
            let Ok(permit) = self.slots.clone().try_acquire_owned() else {
                break;
            };
            match self.open(p, limits, permit).await {
                Ok((conn, _)) => {
                    opened += 1;
                    self.release(conn);
                }
                Err(e) => {
                    tracing::debug!(server = %self.name, error = %e, "opening a warm connection failed");
                    break;
                }
            }
        }
        opened
    }

    /// Gives back a connection in a known state: to the longest-waiting session, else to the
    /// idle list (beyond `max_idle` it is closed).
    pub fn release(&self, conn: Box<BackendConn>) {
        if conn.slot.is_none() || self.is_retired() {
            return;
        }
        // One coarse clock read per return: the lifetime check and the idle list's stamp.
        let now_ms = crate::clock::coarse_monotonic_ms();
        if self.expired(&conn, now_ms) {
            // Its slot goes to the first in line, who opens a new connection with it.
            self.close_expired(conn);
            return;
        }
        let Ok(mut l) = self.lists.lock() else {
            return;
        };
        let mut conn = conn;
        while let Some(q) = next_waiter(&l.waiters, conn.home) {
            let Some(w) = l.waiters[q].1.pop_front() else {
                break;
            };
            match w.tx.send(Handed::Conn(conn)) {
                Ok(()) => return,
                Err(Handed::Conn(back)) => conn = back,
                // Never: what comes back is what was sent.
                Err(Handed::Slot(_)) => return,
            }
        }
        if l.idle.len() < self.max_idle.load(Ordering::Relaxed) {
            l.idle.push(Idle {
                id: conn.id,
                home: conn.home,
                conn,
                since_ms: now_ms,
            });
        } else {
            drop(l);
            goodbye(conn);
        }
    }
}

impl ServerPool {
    /// Whether `conn` has been open longer than its lifetime at `now_ms`: each connection's
    /// limit is `pool_max_lifetime_ms` less up to a tenth of it, by its id, so that connections
    /// opened together (a burst of sessions, a warm pool) are replaced over a spread of time
    /// rather than all at once.
    fn expired(&self, conn: &BackendConn, now_ms: u64) -> bool {
        let max = self.max_lifetime_ms.load(Ordering::Relaxed);
        max != 0 && now_ms.saturating_sub(conn.opened_ms) >= lifetime_of(conn.id, max)
    }

    /// Closes a connection that reached its lifetime.
    fn close_expired(&self, conn: Box<BackendConn>) {
        self.expired_total.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(server = %self.name, id = conn.id, "server connection reached pool_max_lifetime_ms: closed");
        goodbye(conn);
    }
}

/// Closes a pooled connection (in a known state, nothing pending) politely: `COM_QUIT`, so
/// that the server neither counts an aborted client (`Aborted_clients`) nor logs an aborted
/// connection, on a task of the caller's runtime (outside one it is simply closed). Its slot
/// is given back when it is gone, so the server never has more connections than the limit.
fn goodbye(conn: Box<BackendConn>) {
    if let Ok(h) = tokio::runtime::Handle::try_current() {
        h.spawn(conn.quit());
    }
}

fn goodbye_all(idle: Vec<Idle>) {
    for i in idle {
        goodbye(i.conn);
    }
}

/// The lifetime of connection `id` under `pool_max_lifetime_ms` = `max` (> 0): between 90 and
/// 100 % of it, spread by the id.
fn lifetime_of(id: u64, max: u64) -> u64 {
    let spread = max / 10;
    // Consecutive ids land far apart (Fibonacci hashing).
    let h = id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
    max - h % (spread + 1)
}

impl Drop for ServerPool {
    fn drop(&mut self) {
        // The attendant ends.
        self.attendant.notify_one();
    }
}

/// The pool's attendant, one task per pool that has had a session in line: it turns away
/// the sessions whose `pool_wait_ms` has passed (error 9012) and hands the slots of closed
/// connections (and slots added by a reload) to the first in line. Waiting sessions then
/// need neither a timer each nor a race against the slots: the common wait (thousands of
/// clients over a few connections) is a place in line and a oneshot.
async fn attend(lists: Weak<Mutex<Lists>>, slots: Arc<Semaphore>, wake: Arc<Notify>) {
    loop {
        let next = match lists.upgrade() {
            Some(l) => attend_once(&l, &slots, Instant::now()),
            None => return,
        };
        match next {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(tokio::time::Instant::from_std(at)) => {}
                    _ = wake.notified() => {}
                }
            }
            None => wake.notified().await,
        }
    }
}

/// One round of the attendant at `now`: turns away the waiters due, hands free slots to the
/// first in line, and returns when the next waiter is due.
fn attend_once(lists: &Mutex<Lists>, slots: &Arc<Semaphore>, now: Instant) -> Option<Instant> {
    let Ok(mut l) = lists.lock() else {
        return None;
    };
    // Dropping a waiter's sender ends its wait with error 9012; sessions that stopped
    // waiting (killed, closed) leave the line too.
    for (_, q) in l.waiters.iter_mut() {
        q.retain(|w| w.deadline > now && !w.tx.is_closed());
    }
    while slots.available_permits() > 0 {
        let Some(q) = next_waiter(&l.waiters, crate::loops::NO_LOOP) else {
            break;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            break;
        };
        if let Some(w) = l.waiters[q].1.pop_front() {
            // A session gone meanwhile gives the slot back (dropped) for the next.
            let _ = w.tx.send(Handed::Slot(permit));
        }
    }
    let next = l
        .waiters
        .iter()
        .filter_map(|(_, q)| q.iter().map(|w| w.deadline).min())
        .min();
    l.expire_at = next;
    next
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    #[test]
    fn lifetimes_are_spread_over_the_last_tenth() {
        let max = 3_600_000;
        let all: Vec<u64> = (1..=1_000).map(|id| lifetime_of(id, max)).collect();
        assert!(all.iter().all(|&l| (max - max / 10..=max).contains(&l)));
        // Consecutive ids (a burst of connections) do not expire together: every tenth of
        // the spread holds some of them.
        let mut deciles = [0u32; 10];
        for l in &all {
            deciles[(((max - l) * 10 / (max / 10 + 1)) as usize).min(9)] += 1;
        }
        assert!(deciles.iter().all(|&n| n > 50), "{deciles:?}");
        assert_eq!(lifetime_of(7, 5), 5, "too short to spread");
    }

    fn line(home: u16, waited_ms: &[u64]) -> (u16, VecDeque<Waiter>) {
        let now = Instant::now();
        let q = waited_ms
            .iter()
            .map(|&ms| Waiter {
                since: now - Duration::from_millis(ms),
                deadline: now,
                tx: tokio::sync::oneshot::channel().0,
            })
            .collect();
        (home, q)
    }

    #[test]
    fn a_returned_connection_goes_to_its_own_loop_unless_another_waited_much_longer() {
        // Nobody waits.
        assert_eq!(next_waiter(&[line(0, &[]), line(1, &[])], 0), None);
        // Only another loop's sessions wait: the longest waiting of them.
        assert_eq!(
            next_waiter(&[line(0, &[]), line(1, &[5]), line(2, &[9])], 0),
            Some(2)
        );
        // Its own loop's first in line, though another loop's waited a little longer.
        assert_eq!(next_waiter(&[line(1, &[15]), line(0, &[3, 1])], 0), Some(1));
        // Another loop's first in line waited 20 ms longer than this loop's: it goes first.
        assert_eq!(next_waiter(&[line(1, &[60]), line(0, &[3, 1])], 0), Some(0));
        // A connection opened outside the loops has no line of its own: the longest waiting.
        assert_eq!(
            next_waiter(&[line(0, &[3]), line(1, &[4])], crate::loops::NO_LOOP),
            Some(1)
        );
    }

    fn waiter(
        now: Instant,
        waited_ms: u64,
        due_in_ms: i64,
    ) -> (Waiter, tokio::sync::oneshot::Receiver<Handed>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let deadline = if due_in_ms >= 0 {
            now + Duration::from_millis(due_in_ms as u64)
        } else {
            now - Duration::from_millis(due_in_ms.unsigned_abs())
        };
        let since = now - Duration::from_millis(waited_ms);
        (
            Waiter {
                since,
                deadline,
                tx,
            },
            rx,
        )
    }

    #[test]
    fn the_attendant_turns_away_the_waiters_due_and_hands_free_slots_to_the_first_in_line() {
        use tokio::sync::oneshot::error::TryRecvError;
        let now = Instant::now();
        let (w1, mut r1) = waiter(now, 30, -1);
        let (w2, mut r2) = waiter(now, 20, 100);
        let (w3, mut r3) = waiter(now, 10, 50);
        let (w4, r4) = waiter(now, 40, 500);
        drop(r4);
        let lists = Mutex::new(Lists {
            waiters: vec![(0, [w1, w2].into()), (1, [w4, w3].into())],
            ..Default::default()
        });
        let slots = Arc::new(Semaphore::new(0));
        // No free slot: the one due is turned away (its wait ends: error 9012), the one gone
        // leaves the line, the others wait on; the attendant wakes next for w3.
        let next = attend_once(&lists, &slots, now);
        assert_eq!(next, Some(now + Duration::from_millis(50)));
        assert!(matches!(r1.try_recv(), Err(TryRecvError::Closed)));
        assert!(matches!(r2.try_recv(), Err(TryRecvError::Empty)));
        assert!(matches!(r3.try_recv(), Err(TryRecvError::Empty)));
        assert_eq!(lists.lock().unwrap().expire_at, next);
        // A slot comes free: the longest waiting (w2) gets it, w3 waits on.
        slots.add_permits(1);
        assert_eq!(attend_once(&lists, &slots, now), next);
        let got = r2.try_recv();
        assert!(matches!(got, Ok(Handed::Slot(_))));
        assert!(matches!(r3.try_recv(), Err(TryRecvError::Empty)));
        assert_eq!(slots.available_permits(), 0);
        drop(got);
        // Nobody in line (w3 gave up): free slots stay free, the attendant sleeps until woken.
        slots.add_permits(1);
        drop(r3);
        assert_eq!(attend_once(&lists, &slots, now), None);
        assert_eq!(slots.available_permits(), 2);
        assert!(lists
            .lock()
            .unwrap()
            .waiters
            .iter()
            .all(|(_, q)| q.is_empty()));
    }

    #[tokio::test]
    async fn a_dropped_slot_wakes_the_attendant_and_a_slot_passed_on_does_not() {
        let slots = Arc::new(Semaphore::new(2));
        let attendant = Arc::new(Notify::new());
        let slot = |s: &Arc<Semaphore>| Slot {
            permit: Some(s.clone().try_acquire_owned().unwrap()),
            attendant: attendant.clone(),
        };
        let (a, b) = (slot(&slots), slot(&slots));
        let permit = b.into_permit();
        assert!(permit.is_some());
        let woken = || tokio::time::timeout(Duration::from_millis(20), attendant.notified());
        assert!(woken().await.is_err(), "passing a slot on wakes nobody");
        drop(a);
        assert_eq!(slots.available_permits(), 1, "released before the wake");
        assert!(woken().await.is_ok(), "a dropped slot wakes the attendant");
    }
}
