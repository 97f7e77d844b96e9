//! Connection pools, one per configured server: a bound on the connections Sluice opens to
//! each server (`[proxy] max_backend_connections`; waiting for a free slot is bounded by
//! `[proxy] pool_wait_ms`, then the caller gets a clear error), and idle connections kept for
//! reuse by later sessions (`[proxy] pool_max_idle`).
//!
//! A connection is returned to the pool only in a known state — no response pending, no
//! transaction open — and is handed out again with COM_CHANGE_USER, which re-authenticates
//! and resets everything the previous session left (variables, temporary tables, prepared
//! statements) and sets the new session's user, database and character set. The idle list is
//! behind a std mutex held only to push or pop, never across an await.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_proto::command::ChangeUser;
use tokio::sync::Semaphore;

use super::connection::{negotiate, LOGIN_ONLY};
use super::{connect, BackendConn, BackendError, LoginParams};

struct Idle {
    conn: BackendConn,
    since: Instant,
}

/// The pool of one server.
pub struct ServerPool {
    pub name: String,
    pub address: String,
    slots: Arc<Semaphore>,
    max: AtomicUsize,
    idle: Mutex<Vec<Idle>>,
    max_idle: AtomicUsize,
    idle_timeout_ms: AtomicU64,
    /// Sessions waiting for a free slot now.
    waiting: AtomicUsize,
    /// The server was removed from the configuration: nothing is pooled any more.
    retired: AtomicBool,
    /// `[backend_tls]` for new connections (replaced by a reload).
    tls: std::sync::RwLock<Option<Arc<crate::tls::BackendTls>>>,
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
}

impl ServerPool {
    pub fn new(name: &str, address: &str, limits: PoolLimits) -> Self {
        ServerPool {
            name: name.to_string(),
            address: address.to_string(),
            slots: Arc::new(Semaphore::new(limits.max_connections)),
            max: AtomicUsize::new(limits.max_connections),
            idle: Mutex::new(Vec::new()),
            max_idle: AtomicUsize::new(limits.max_idle),
            idle_timeout_ms: AtomicU64::new(limits.idle_timeout.as_millis() as u64),
            waiting: Default::default(),
            retired: AtomicBool::new(false),
            tls: std::sync::RwLock::new(None),
        }
    }

    /// Sets the TLS used by new connections (idle ones made before are closed: they must
    /// match the configuration in force).
    pub fn set_tls(&self, tls: Option<Arc<crate::tls::BackendTls>>) {
        if let Ok(mut t) = self.tls.write() {
            *t = tls;
        }
        if let Ok(mut idle) = self.idle.lock() {
            idle.clear();
        }
    }

    /// Applies new bounds (a reload): a larger `max_connections` adds slots at once; a smaller
    /// one takes free slots away now and the rest as busy connections come back.
    pub fn set_limits(&self, limits: &PoolLimits) {
        let old = self.max.swap(limits.max_connections, Ordering::AcqRel);
        let new = limits.max_connections;
        if new > old {
            self.slots.add_permits(new - old);
        } else if new < old {
            let mut owed = old - new;
            owed -= self.slots.forget_permits(owed);
            if owed > 0 {
                // Busy slots: take them back as they are released.
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
        let keep = limits.max_idle;
        if let Ok(mut idle) = self.idle.lock() {
            idle.truncate(keep);
        }
    }

    /// The server left the configuration: idle connections are closed now, busy ones when
    /// their sessions give them back.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Release);
        if let Ok(mut idle) = self.idle.lock() {
            idle.clear();
        }
    }

    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    /// The most connections this pool opens.
    pub fn max(&self) -> usize {
        self.max.load(Ordering::Relaxed)
    }

    /// Sessions waiting for a connection slot now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Connections in use and idle.
    pub fn counts(&self) -> (usize, usize) {
        let idle = self.idle.lock().map_or(0, |v| v.len());
        let max = self.max();
        (
            max.saturating_sub(self.slots.available_permits() + idle),
            idle,
        )
    }

    /// A connection logged in with `p`, reused when possible. Returns the server's OK payload.
    pub async fn acquire(
        &self,
        p: LoginParams<'_>,
        limits: &PoolLimits,
    ) -> Result<(BackendConn, Bytes), PoolError> {
        // An idle connection already holds a slot.
        while let Some(mut idle) = self.pop_idle() {
            let cu = ChangeUser {
                username: p.user.to_vec(),
                auth_response: Vec::new(),
                database: p.database.map(<[u8]>::to_vec).unwrap_or_default(),
                charset: Some(u16::from(p.charset)),
                auth_plugin: None,
                connect_attrs: p.connect_attrs.map(<[u8]>::to_vec),
            };
            // Only reuse a connection negotiated with the same capabilities (EOF mode, session
            // tracking, multi-statements… must be what this client asked for).
            if idle.capabilities & !LOGIN_ONLY
                != negotiate(p.capabilities, idle.handshake.capabilities) & !LOGIN_ONLY
            {
                idle.quit().await;
                continue;
            }
            match tokio::time::timeout(limits.connect_timeout, idle.change_user(&cu, p.password))
                .await
            {
                Ok(Ok(ok)) => return Ok((idle, ok)),
                Ok(Err(BackendError::Refused(e))) => {
                    return Err(PoolError::Backend(BackendError::Refused(e)))
                }
                _ => continue,
            }
        }
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let got = tokio::time::timeout(limits.wait, self.slots.clone().acquire_owned()).await;
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        let permit = match got {
            Ok(Ok(p)) => p,
            _ => {
                return Err(PoolError::Exhausted {
                    server: self.name.clone(),
                    max: self.max(),
                    waited_ms: limits.wait.as_millis() as u64,
                })
            }
        };
        let tls = self.tls.read().ok().and_then(|t| t.clone());
        let (mut conn, ok) = connect(
            &self.name,
            &self.address,
            p,
            limits.connect_timeout,
            tls.as_deref(),
        )
        .await?;
        conn.slot = Some(permit);
        Ok((conn, ok))
    }

    fn pop_idle(&self) -> Option<BackendConn> {
        let timeout = Duration::from_millis(self.idle_timeout_ms.load(Ordering::Relaxed));
        let mut idle = self.idle.lock().ok()?;
        while let Some(i) = idle.pop() {
            if i.since.elapsed() < timeout {
                return Some(i.conn);
            }
            // Too old: the server may have closed it (wait_timeout). Dropping closes it.
        }
        None
    }

    /// Gives back a connection in a known state; beyond `max_idle` it is closed.
    pub fn release(&self, conn: BackendConn) {
        if conn.slot.is_none() || self.is_retired() {
            return;
        }
        let max_idle = self.max_idle.load(Ordering::Relaxed);
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < max_idle {
                idle.push(Idle {
                    conn,
                    since: Instant::now(),
                });
            }
        }
    }
}
