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

    /// Ends a session at once: its task is aborted, its connections are closed (never
    /// returned to a pool). Returns whether it existed.
    pub fn kill(&self, id: u32) -> bool {
        let Some(info) = self.get(id) else {
            return false;
        };
        let h = info.abort.lock().ok().and_then(|mut a| a.take());
        match h {
            Some(h) => {
                h.abort();
                self.remove(id);
                true
            }
            None => false,
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
    pub id: u32,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.shared.sessions.remove(self.id);
        self.shared.clients.fetch_sub(1, Ordering::Relaxed);
    }
}
