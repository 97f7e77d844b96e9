//! A fault-injecting TCP relay for tests: forwards connections to a target until cut; when cut,
//! open connections are closed and new ones are accepted and dropped at once, as if the path
//! to the target were broken. When black-holed, nothing is forwarded any more but every
//! connection stays open and new ones are accepted and left unanswered (a network black hole:
//! no reset, no answer). `restore` heals it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct FaultRelay {
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    hole: Arc<AtomicBool>,
    generation: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultRelay {
    pub async fn start(target: String) -> FaultRelay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = listener.local_addr().expect("relay address");
        let cut = Arc::new(AtomicBool::new(false));
        let (generation, gen_rx) = watch::channel(0u64);
        let hole = Arc::new(AtomicBool::new(false));
        let cut2 = cut.clone();
        let hole2 = hole.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                if cut2.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let target = target.clone();
                let mut rx = gen_rx.clone();
                // Only cuts after this connection was made close it.
                rx.borrow_and_update();
                if hole2.load(Ordering::SeqCst) {
                    // Held open, unanswered, until the next change (restore).
                    tokio::spawn(async move {
                        let _ = rx.changed().await;
                        drop(client);
                    });
                    continue;
                }
                let hole3 = hole2.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(&target).await else {
                        return;
                    };
                    let mut client = client;
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = rx.changed() => {}
                    }
                    if hole3.load(Ordering::SeqCst) {
                        // Black hole: both sockets stay open, nothing moves, until restore.
                        let _ = rx.changed().await;
                    }
                });
            }
        });
        FaultRelay {
            addr,
            cut,
            hole,
            generation,
            task,
        }
    }

    /// Breaks the path: open connections close, new ones are dropped.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    /// A black hole: open connections stop moving (they stay open), new ones are accepted
    /// and never answered.
    pub fn black_hole(&self) {
        self.hole.store(true, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
        if self.hole.swap(false, Ordering::SeqCst) {
            // Connections held in the black hole close (as a TCP timeout would end them).
            self.generation.send_modify(|g| *g += 1);
        }
    }
}

impl Drop for FaultRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}
