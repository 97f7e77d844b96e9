//! A slow reader of a huge result set: Sluice relays with back-pressure, so its memory stays
//! flat however large the result and however slow the client. The client reads raw bytes at a
//! fixed rate (a driver would buffer rows itself); the process's RSS (Sluice runs in-process;
//! the MariaDB servers are other processes) is sampled throughout.
//!
//! In CI: 256 MiB at 32 MiB/s (8 s). The full case, 1 GiB at 1 MiB/s (17 minutes):
//! `SLUICE_SLOW_MIB=1024 SLUICE_SLOW_RATE_MIB=1 cargo nextest run --test slow_consumer`
//! (figures in docs/security.md).

mod common;

use std::time::{Duration, Instant};

use common::raw::RawConn;
use common::Harness;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// RSS growth allowed while relaying (documented in docs/security.md).
const BOUND_MIB: u64 = 64;
const ROW: usize = 1 << 20;

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_of_a_huge_result_keeps_memory_flat() {
    let mib = env("SLUICE_SLOW_MIB", 256);
    let rate = env("SLUICE_SLOW_RATE_MIB", 32) << 20;
    let h = Harness::start(0).await;
    let (mut c, ok) = RawConn::login(h.addr.port(), "app", "app-pw", 0).await;
    assert_eq!(ok[0], 0);
    // Warm up: allocations that happen once (pools, buffers) are not growth.
    let warm = c
        .command(b"\x03SELECT REPEAT('x', 1048576) FROM mysql.seq_1_to_4")
        .await;
    assert_ne!(
        warm[0].1[0],
        0xFF,
        "{:?}",
        String::from_utf8_lossy(&warm[0].1)
    );
    let baseline = rss_kib();
    let q = format!("\x03SELECT REPEAT('x', {ROW}) FROM mysql.seq_1_to_{mib}");
    let mut out = bytes::BytesMut::new();
    sluice_proto::framing::write_packet(&mut out, 0, q.as_bytes());
    c.stream.write_all(&out).await.unwrap();
    // Rows: 4-byte header, 0xFD + 3-byte length, 1 MiB of 'x'.
    let rows_bytes = mib as usize * (ROW + 8);
    let mut buf = vec![0u8; 64 << 10];
    let mut total = c.buf.len();
    c.buf.clear();
    let started = Instant::now();
    let (mut peak, mut samples) = (baseline, 0u32);
    let mut last_sample = Instant::now();
    while total < rows_bytes {
        let n = tokio::time::timeout(Duration::from_secs(30), c.stream.read(&mut buf))
            .await
            .expect("data keeps coming")
            .unwrap();
        assert!(n > 0, "closed after {total} bytes");
        total += n;
        // Hold the rate: sleep until `total` bytes are due.
        let due = Duration::from_secs_f64(total as f64 / rate as f64);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
        if last_sample.elapsed() >= Duration::from_millis(250) {
            peak = peak.max(rss_kib());
            samples += 1;
            last_sample = Instant::now();
        }
    }
    let took = started.elapsed();
    let growth_mib = peak.saturating_sub(baseline) / 1024;
    eprintln!(
        "slow consumer: {mib} MiB at {} MiB/s in {:.1} s; RSS baseline {} MiB, peak {} MiB (+{growth_mib} MiB, {samples} samples)",
        rate >> 20,
        took.as_secs_f64(),
        baseline / 1024,
        peak / 1024
    );
    assert!(samples >= 4, "too few RSS samples");
    assert!(
        growth_mib < BOUND_MIB,
        "RSS grew by {growth_mib} MiB relaying {mib} MiB to a slow reader"
    );
    // The session still works afterwards (drain the rest of the answer first).
    let _ = tokio::time::timeout(Duration::from_millis(500), c.stream.read(&mut buf)).await;
    drop(c);
    let mut m = h.proxy_conn().await;
    let v: Option<u64> = mysql_async::prelude::Queryable::query_first(&mut m, "SELECT 1")
        .await
        .unwrap();
    assert_eq!(v, Some(1));
    h.shutdown().await;
}
