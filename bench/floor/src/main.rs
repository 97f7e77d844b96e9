//! The floor of a tokio TCP proxy, for `bench/compare.py --floor`: each client connection gets
//! one server connection and `copy_bidirectional` between them, on tokio's multi-thread
//! runtime as Sluice uses it. No parsing, no pooling, no metrics: what a proxy built on tokio
//! costs before it does anything a MySQL proxy must do.
//!
//!     sluice-bench-floor LISTEN UPSTREAM [WORKER_THREADS] [percore]
//!
//! WORKER_THREADS 0 or absent: one per CPU. `percore`: instead of one multi-thread runtime,
//! each thread runs its own single-threaded runtime (its own event loop), and the acceptor
//! hands the clients to them in turn; a client and its server connection stay on one thread.

use tokio::net::{TcpListener, TcpStream};

async fn serve(mut client: TcpStream, upstream: String) {
    let Ok(mut server) = TcpStream::connect(&upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: sluice-bench-floor LISTEN UPSTREAM [WORKER_THREADS] [percore]");
        std::process::exit(2);
    }
    let (listen, upstream) = (args[1].clone(), args[2].clone());
    let mut threads: usize = args.get(3).and_then(|v| v.parse().ok()).unwrap_or(0);
    if args.get(4).map(String::as_str) == Some("percore") {
        if threads == 0 {
            threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        }
        let handles: Vec<tokio::runtime::Handle> = (0..threads)
            .map(|_| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .build()
                    .expect("a tokio runtime");
                let h = rt.handle().clone();
                std::thread::spawn(move || rt.block_on(std::future::pending::<()>()));
                h
            })
            .collect();
        let l = std::net::TcpListener::bind(&listen).expect("the listen address");
        for (n, c) in l.incoming().enumerate() {
            let Ok(c) = c else { continue };
            let _ = c.set_nonblocking(true);
            let upstream = upstream.clone();
            handles[n % threads].spawn(async move {
                if let Ok(c) = TcpStream::from_std(c) {
                    serve(c, upstream).await;
                }
            });
        }
        return;
    }
    let mut b = tokio::runtime::Builder::new_multi_thread();
    b.enable_io();
    if threads > 0 {
        b.worker_threads(threads);
    }
    let rt = b.build().expect("a tokio runtime");
    rt.block_on(async move {
        let l = TcpListener::bind(&listen).await.expect("the listen address");
        loop {
            let Ok((client, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(serve(client, upstream.clone()));
        }
    });
}
