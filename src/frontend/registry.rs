//! The open client sessions, for the admin port (`SHOW SESSIONS`, `KILL SESSION`). Each
//! session publishes a few facts about itself through atomics (cheap to update on the hot
//! path) and a mutex-guarded part that changes rarely (user, default database).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::task::AbortHandle;

/// What one session shows the admin port.
pub struct SessionInfo {
    pub id: u32,
    pub client: SocketAddr,
    pub started: Instant,
    /// User and default database (changed rarely).
    pub names: Mutex<(String, Option<String>)>,
    /// A command is being handled.
    pub busy: AtomicBool,
    pub in_transaction: AtomicBool,
    /// Pin reasons (bit per `PinReason::ALL`).
    pub pins: AtomicU16,
    /// Since when, and by which statement, the session is pinned (set when the first pin
    /// starts, cleared when the last ends).
    pub pinned_by: Mutex<Option<(Instant, String)>>,
    /// Server connections the session holds now.
    pub held: AtomicUsize,
    /// Server index of the session's primary connection (`usize::MAX` = none yet).
    pub primary: AtomicUsize,
    /// Server index the last command ran on.
    pub last_server: AtomicUsize,
    /// `TLSv1_3 TLS13_AES_256_GCM_SHA384` when the client uses TLS.
    pub tls: std::sync::OnceLock<String>,
    /// The server and thread the current (or last) statement was sent to, packed
    /// (`kill::pack`; `u64::MAX` = none): what `KILL QUERY` interrupts.
    pub running: AtomicU64,
    /// The session waits for its client's next command (in its command loop).
    pub waiting: AtomicBool,
    /// A `KILL` of a waiting session: it closes itself (over TLS with a close_notify, as a
    /// server does) instead of being aborted.
    pub killed: Signal,
    /// The shutdown (drain) began: wakes the session if it waits for its client. Per
    /// session, so that waiting for a command registers with no lock shared by all sessions
    /// (a `watch::Receiver::changed` would, on every command).
    pub drain: Signal,
    /// The session's client connection is closed (or the session ended): what a `KILL` waits
    /// for before it answers, so that its victim never answers again afterwards.
    pub closed: Signal,
    abort: Mutex<Option<AbortHandle>>,
}

impl SessionInfo {
    pub fn new(id: u32, client: SocketAddr) -> Self {
        SessionInfo {
            id,
            client,
            started: Instant::now(),
            names: Mutex::new((String::new(), None)),
            busy: AtomicBool::new(false),
            in_transaction: AtomicBool::new(false),
            pins: AtomicU16::new(0),
            pinned_by: Mutex::new(None),
            held: AtomicUsize::new(0),
            primary: AtomicUsize::new(usize::MAX),
            last_server: AtomicUsize::new(usize::MAX),
            tls: std::sync::OnceLock::new(),
            running: AtomicU64::new(u64::MAX),
            waiting: AtomicBool::new(false),
            killed: Signal::default(),
            drain: Signal::default(),
            closed: Signal::default(),
            abort: Mutex::new(None),
        }
    }

    pub fn set_names(&self, user: &str, db: Option<&[u8]>) {
        if let Ok(mut n) = self.names.lock() {
            n.0 = user.to_string();
            n.1 = db.map(|d| String::from_utf8_lossy(d).into_owned());
        }
    }

    pub fn names(&self) -> (String, Option<String>) {
        self.names.lock().map(|n| n.clone()).unwrap_or_default()
    }
}

/// A one-shot signal a session waits on between commands (a KILL, the shutdown drain).
/// Lock-free and allocation-free to wait on (a flag and a waker slot): the wait is set up on
/// every command's turn.
#[derive(Default)]
pub struct Signal {
    set: AtomicBool,
    waker: futures::task::AtomicWaker,
}

impl Signal {
    pub fn fire(&self) {
        self.set.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Resolves once `fire` was called (at once if it already was).
    pub fn fired(&self) -> impl std::future::Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if self.set.load(Ordering::Acquire) {
                return std::task::Poll::Ready(());
            }
            self.waker.register(cx.waker());
            // Fired between the check and the registration: seen here.
            if self.set.load(Ordering::Acquire) {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
    }
}

/// How long a `KILL` waits for its victim's connection to close before it answers anyway.
pub const KILL_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// All open sessions by id.
#[derive(Default)]
pub struct Registry {
    map: Mutex<HashMap<u32, Arc<SessionInfo>>>,
}

impl Registry {
    pub fn insert(&self, info: Arc<SessionInfo>) {
        if let Ok(mut m) = self.map.lock() {
            m.insert(info.id, info);
        }
    }

    pub fn set_abort(&self, id: u32, h: AbortHandle) {
        if let Some(info) = self.get(id) {
            if let Ok(mut a) = info.abort.lock() {
                *a = Some(h);
            }
        }
    }

    pub fn remove(&self, id: u32) {
        if let Ok(mut m) = self.map.lock() {
            m.remove(&id);
        }
    }

    pub fn get(&self, id: u32) -> Option<Arc<SessionInfo>> {
        self.map.lock().ok().and_then(|m| m.get(&id).cloned())
    }

    /// A snapshot, ordered by id.
    pub fn list(&self) -> Vec<Arc<SessionInfo>> {
        let mut v: Vec<_> = self
            .map
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        v.sort_by_key(|s| s.id);
        v
    }

    /// Ends a session: a session waiting for its client closes itself (TLS closed properly,
    /// held connections back to their pools); a busy one is aborted and its connections are
    /// closed (never returned to a pool). Both happen on the session's own task, maybe on
    /// another thread and later: the caller waits for [`Registry::closed`] before it reports
    /// the session ended. `None`: no such session (or already being killed).
    pub fn kill(&self, id: u32) -> Option<Arc<SessionInfo>> {
        let info = self.get(id)?;
        let h = info.abort.lock().ok().and_then(|mut a| a.take());
        match h {
            Some(h) => {
                if info.waiting.load(Ordering::Relaxed) {
                    // Idle: it closes its client connection itself, at once (the permit is
                    // kept if it just started a command: it closes after that command).
                    info.killed.fire();
                } else {
                    h.abort();
                }
                self.remove(id);
                Some(info)
            }
            None => None,
        }
    }

    /// Waits (at most `KILL_WAIT`) until a killed session's client connection is closed. An
    /// aborted task stops at its next await, which may come after it relayed a statement
    /// that had already arrived: without this wait, a client could see its `KILL` answered
    /// and then its victim answer one more statement.
    pub async fn closed(info: &SessionInfo) -> bool {
        let done = tokio::time::timeout(KILL_WAIT, info.closed.fired())
            .await
            .is_ok();
        if !done {
            tracing::warn!(
                session = info.id,
                "a killed session had not closed its client connection after {KILL_WAIT:?}"
            );
        }
        done
    }

    /// Wakes every session for the shutdown's drain (after the shutdown flag was set: a
    /// session registered later sees the flag before it waits).
    pub fn drain_all(&self) {
        for s in self.list() {
            s.drain.fire();
        }
    }

    pub fn len(&self) -> usize {
        self.map.lock().map_or(0, |m| m.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Counts a session as open while alive; removes it from the registry when dropped (also
/// when its task is aborted).
pub struct SessionGuard {
    pub shared: Arc<super::Shared>,
    pub info: Arc<SessionInfo>,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        // Dropped with the session's task (ended or aborted): its client socket is gone.
        self.info.closed.fire();
        self.shared.sessions.remove(self.info.id);
        self.shared.clients.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::Signal;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn a_kill_signal_wakes_its_waiter_and_stays_fired() {
        let k = Arc::new(Signal::default());
        // Not fired: the wait does not end.
        assert!(tokio::time::timeout(Duration::from_millis(20), k.fired())
            .await
            .is_err());
        let waiter = {
            let k = k.clone();
            tokio::spawn(async move { k.fired().await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        k.fire();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the waiter is woken")
            .unwrap();
        // Fired before a wait begins: it ends at once.
        tokio::time::timeout(Duration::from_millis(100), k.fired())
            .await
            .expect("already fired");
    }
}
