//! The floor of a tokio TCP proxy, for `bench/compare.py --floor`: each client connection gets
//! one server connection and `copy_bidirectional` between them, on tokio's multi-thread
//! runtime as Sluice uses it. No parsing, no pooling, no metrics: what a proxy built on tokio
//! costs before it does anything a MySQL proxy must do.
//!
//!     sluice-bench-floor LISTEN UPSTREAM [WORKER_THREADS]   (0 or absent: one per CPU)

use tokio::net::{TcpListener, TcpStream};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: sluice-bench-floor LISTEN UPSTREAM [WORKER_THREADS]");
        std::process::exit(2);
    }
    let (listen, upstream) = (args[1].clone(), args[2].clone());
    let threads: usize = args.get(3).and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut b = tokio::runtime::Builder::new_multi_thread();
    b.enable_io();
    if threads > 0 {
        b.worker_threads(threads);
    }
    let rt = b.build().expect("a tokio runtime");
    rt.block_on(async move {
        let l = TcpListener::bind(&listen).await.expect("the listen address");
        loop {
            let Ok((mut client, _)) = l.accept().await else {
                continue;
            };
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let Ok(mut server) = TcpStream::connect(&upstream).await else {
                    return;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    });
}
