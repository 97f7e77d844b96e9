//! Per-thread lanes for what every statement writes: statement counters and the query digest
//! store. On a multi-core machine, one counter bumped by every worker thread is one cache
//! line bouncing between the cores on every statement (and the digest store's hot entries
//! likewise); with lanes, each thread writes its own line, and the rare reader (the admin
//! port, a metrics scrape) adds the lanes up.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Lanes per counter: threads beyond this share them (correct, only slower).
pub const LANES: usize = 16;

/// A value alone in its cache line (128 bytes: adjacent-line prefetchers pair lines).
#[repr(align(128))]
#[derive(Default, Debug)]
pub struct Padded<T>(pub T);

static NEXT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static LANE: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// This thread's lane (assigned at its first use, round-robin).
#[inline]
pub fn lane() -> usize {
    LANE.with(|l| {
        let v = l.get();
        if v != usize::MAX {
            return v;
        }
        let v = NEXT.fetch_add(1, Ordering::Relaxed) % LANES;
        l.set(v);
        v
    })
}

/// How many lanes have been handed out (readers need look no further).
pub fn used() -> usize {
    NEXT.load(Ordering::Relaxed).clamp(1, LANES)
}

/// A counter written per lane and read as the sum. Its methods are named like
/// `AtomicU64`'s, which it replaces where every statement counts.
#[derive(Default, Debug)]
pub struct LaneCounter([Padded<AtomicU64>; LANES]);

impl LaneCounter {
    /// Adds `n` in this thread's lane; returns that lane's previous value.
    #[inline]
    pub fn fetch_add(&self, n: u64, order: Ordering) -> u64 {
        self.0[lane()].0.fetch_add(n, order)
    }

    /// The total over every lane.
    pub fn load(&self, order: Ordering) -> u64 {
        self.0
            .iter()
            .fold(0u64, |t, l| t.wrapping_add(l.0.load(order)))
    }
}

/// Upper bounds of a [`LaneHistogram`] (the last bucket is +Inf).
pub const HIST_BOUNDS: usize = 16;

#[derive(Default)]
struct HistLane {
    buckets: [AtomicU64; HIST_BOUNDS + 1],
    sum_ns: AtomicU64,
}

/// A latency histogram written per lane (two uncontended additions per observation, where
/// a shared histogram takes four contended ones and a compare-and-swap loop). The count is
/// the sum of the buckets.
pub struct LaneHistogram {
    bounds_ns: [u64; HIST_BOUNDS],
    bounds_s: [f64; HIST_BOUNDS],
    lanes: Box<[Padded<HistLane>]>,
}

/// What a [`LaneHistogram`] holds, as Prometheus exposes it.
#[derive(Debug, PartialEq)]
pub struct HistSnapshot {
    /// `(upper bound in seconds, observations at or below it)`, the +Inf bucket excluded.
    pub cumulative: Vec<(f64, u64)>,
    pub count: u64,
    pub sum_seconds: f64,
}

impl LaneHistogram {
    /// `bounds` in seconds, ascending.
    pub fn new(bounds: [f64; HIST_BOUNDS]) -> Self {
        LaneHistogram {
            bounds_ns: bounds.map(|b| (b * 1e9).round() as u64),
            bounds_s: bounds,
            lanes: (0..LANES).map(|_| Padded(HistLane::default())).collect(),
        }
    }

    #[inline]
    pub fn observe(&self, d: std::time::Duration) {
        let ns = d.as_nanos().min(u128::from(u64::MAX)) as u64;
        let i = self.bounds_ns.partition_point(|&b| b < ns);
        let l = &self.lanes[lane()].0;
        l.buckets[i].fetch_add(1, Ordering::Relaxed);
        l.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistSnapshot {
        let mut per = [0u64; HIST_BOUNDS + 1];
        let mut sum_ns = 0u64;
        for l in self.lanes.iter() {
            for (t, b) in per.iter_mut().zip(l.0.buckets.iter()) {
                *t += b.load(Ordering::Relaxed);
            }
            sum_ns = sum_ns.wrapping_add(l.0.sum_ns.load(Ordering::Relaxed));
        }
        let mut running = 0;
        let cumulative = self
            .bounds_s
            .iter()
            .zip(per)
            .map(|(&b, n)| {
                running += n;
                (b, running)
            })
            .collect();
        HistSnapshot {
            cumulative,
            count: running + per[HIST_BOUNDS],
            sum_seconds: sum_ns as f64 / 1e9,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_counter_sums_what_every_thread_added() {
        let c = Arc::new(LaneCounter::default());
        let threads: Vec<_> = (0..LANES + 4)
            .map(|i| {
                let c = c.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        c.fetch_add(i as u64 + 1, Ordering::Relaxed);
                    }
                    lane()
                })
            })
            .collect();
        let lanes: std::collections::HashSet<usize> =
            threads.into_iter().map(|t| t.join().unwrap()).collect();
        let want: u64 = (1..=(LANES as u64 + 4)).map(|k| k * 1000).sum();
        assert_eq!(c.load(Ordering::Relaxed), want);
        // The threads were spread over the lanes, not all in one.
        assert!(lanes.len() > LANES / 2, "{} lanes used", lanes.len());
        assert_eq!(std::mem::align_of::<Padded<AtomicU64>>(), 128);
    }

    #[test]
    fn a_histogram_counts_each_observation_once_at_or_below_its_bound() {
        use std::time::Duration;
        let mut bounds = [0.0; HIST_BOUNDS];
        for (i, b) in bounds.iter_mut().enumerate() {
            *b = 0.001 * (i + 1) as f64;
        }
        let h = Arc::new(LaneHistogram::new(bounds));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let h = h.clone();
                std::thread::spawn(move || {
                    h.observe(Duration::from_micros(500)); // <= 1 ms
                    h.observe(Duration::from_millis(1)); // exactly on the bound: <= 1 ms
                    h.observe(Duration::from_micros(2500)); // <= 3 ms
                    h.observe(Duration::from_secs(1)); // +Inf
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let s = h.snapshot();
        assert_eq!(s.count, 16);
        assert_eq!(s.cumulative[0], (0.001, 8));
        assert_eq!(s.cumulative[1].1, 8);
        assert_eq!(s.cumulative[2].1, 12);
        assert_eq!(s.cumulative[HIST_BOUNDS - 1].1, 12);
        assert!((s.sum_seconds - 4.0 * (0.0005 + 0.001 + 0.0025 + 1.0)).abs() < 1e-9);
    }
}
