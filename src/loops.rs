//! Per-thread event loops for client sessions (`[proxy] scheduler = "per-thread"`, the
//! default): each thread runs its own single-threaded tokio runtime, and the listener hands
//! each accepted client to one of them in turn. A session, and the server connections it
//! opens, then stay on one thread for their whole life, as in HAProxy and ProxySQL: no work
//! stealing, no cross-thread wake-up between a client socket and its server socket, and a
//! thread that has nothing to do sleeps in its own `epoll_wait` instead of handing the
//! readiness events to another thread (measured in docs/benchmarks.md).
//!
//! The rest of the process (accepting, the monitor, the admin port, metrics) stays on the
//! main multi-thread runtime.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::Handle;

thread_local! {
    static HOME: Cell<u16> = const { Cell::new(NO_LOOP) };
}

/// `home()` on a thread that is not one of the session loops.
pub const NO_LOOP: u16 = u16::MAX;

/// The session loop this thread runs (`NO_LOOP` elsewhere): a server connection records
/// where it was opened, so that the pool hands it preferably to sessions of the same loop
/// (its readiness events arrive on that loop's thread).
#[inline]
pub fn home() -> u16 {
    HOME.with(Cell::get)
}

/// The running loops; dropping this stops them (their remaining tasks are cancelled).
pub struct SessionLoops {
    handles: Vec<Handle>,
    next: AtomicUsize,
    stop: Vec<tokio::sync::oneshot::Sender<()>>,
}

impl SessionLoops {
    /// Starts `n` loops (at least one), each on its own thread named `sluice-loop-N`.
    pub fn start(n: usize) -> std::io::Result<Self> {
        let n = n.max(1);
        let mut handles = Vec::with_capacity(n);
        let mut stop = Vec::with_capacity(n);
        for i in 0..n {
            // Sockets and timers only: no process or signal driver for the loops to look at
            // each time they park (children and signals are the main runtime's).
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .enable_time()
                .build()?;
            handles.push(rt.handle().clone());
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            stop.push(tx);
            let home = u16::try_from(i).unwrap_or(NO_LOOP - 1);
            std::thread::Builder::new()
                .name(format!("sluice-loop-{i}"))
                .spawn(move || {
                    HOME.with(|h| h.set(home));
                    // Runs until the sender is dropped; dropping the runtime here (not in an
                    // async context) cancels what is left.
                    let _ = rt.block_on(rx);
                })?;
        }
        Ok(SessionLoops {
            handles,
            next: AtomicUsize::new(0),
            stop,
        })
    }

    /// The loops' runtimes.
    pub fn handles(&self) -> &[Handle] {
        &self.handles
    }

    /// How many loops run.
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// The loop for the next session: in turn.
    pub fn next(&self) -> &Handle {
        let n = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        &self.handles[n]
    }
}

impl Drop for SessionLoops {
    fn drop(&mut self) {
        self.stop.clear();
    }
}

/// How many session loops `[proxy] worker_threads` asks for (0 = one per CPU this process may
/// use).
pub fn count(worker_threads: u32) -> usize {
    match worker_threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n as usize,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_spread_in_turn_and_know_their_loop() {
        let loops = SessionLoops::start(3).unwrap();
        assert_eq!(loops.len(), 3);
        let homes: Vec<u16> = (0..6)
            .map(|_| {
                let (tx, rx) = std::sync::mpsc::channel();
                loops.next().spawn(async move {
                    let _ = tx.send(home());
                });
                rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap()
            })
            .collect();
        assert_eq!(homes, vec![0, 1, 2, 0, 1, 2]);
        assert_eq!(home(), NO_LOOP);
    }

    #[test]
    fn dropping_stops_the_loops() {
        let loops = SessionLoops::start(1).unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        loops.next().spawn(async move {
            let _keep = tx;
            std::future::pending::<()>().await;
        });
        drop(loops);
        // The pending task is cancelled with its runtime, which drops the sender.
        assert!(rx.recv_timeout(std::time::Duration::from_secs(10)).is_err());
        assert!(matches!(
            rx.try_recv(),
            Err(std::sync::mpsc::TryRecvError::Disconnected)
        ));
    }
}
