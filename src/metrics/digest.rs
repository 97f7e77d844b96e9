//! Query digests: statistics per normalized statement (`SHOW QUERY DIGEST` on the admin port).
//!
//! A statement's digest is a hash of its normalized form ([`crate::router::lexer::digest`]),
//! computed by walking the lexer's tokens without building any text. The text is built only the
//! first time a digest is seen, and kept once, in a table of texts. The totals live in one
//! table per thread (src/lanes.rs: each worker thread adds to its own, so a statement that
//! every core runs does not bounce its entry's cache lines between the cores), each behind a
//! std mutex held for a hash-map lookup and a few additions — never across an await; a
//! snapshot merges the tables. Latencies go into a
//! //! log-linear histogram (4 buckets per power of two, so a percentile is exact to within 25 %).
//! The table is bounded by `[admin] query_digest_max_entries`; past it, new statements are
//! counted in one `(other)` entry.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::lanes::{Padded, LANES};
use std::sync::Mutex;
use std::time::Duration;

use crate::router::lexer;

const BUCKETS: usize = 128;
/// The key of the entry that counts statements past the table's bound.
const OTHER: u64 = 0;

/// One normalized statement's totals.
#[derive(Clone)]
pub struct DigestEntry {
    pub text: Box<str>,
    pub count: u64,
    pub errors: u64,
    pub total_us: u64,
    pub max_us: u64,
    pub rows: u64,
    pub on_primary: u64,
    pub on_replica: u64,
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
    hist: Box<[u32; BUCKETS]>,
}

impl DigestEntry {
    fn new(text: Box<str>, now_ms: u64) -> Self {
        DigestEntry {
            text,
            count: 0,
            errors: 0,
            total_us: 0,
            max_us: 0,
            rows: 0,
            on_primary: 0,
            on_replica: 0,
            first_seen_ms: now_ms,
            last_seen_ms: now_ms,
            hist: Box::new([0; BUCKETS]),
        }
    }

    /// Adds another thread's totals for the same digest.
    fn merge(&mut self, o: &DigestEntry) {
        self.count += o.count;
        self.errors += o.errors;
        self.total_us = self.total_us.saturating_add(o.total_us);
        self.max_us = self.max_us.max(o.max_us);
        self.rows = self.rows.saturating_add(o.rows);
        self.on_primary += o.on_primary;
        self.on_replica += o.on_replica;
        self.first_seen_ms = self.first_seen_ms.min(o.first_seen_ms);
        self.last_seen_ms = self.last_seen_ms.max(o.last_seen_ms);
        for (a, b) in self.hist.iter_mut().zip(o.hist.iter()) {
            *a = a.saturating_add(*b);
        }
    }

    /// The latency below which `q` (0..1) of the executions finished, in microseconds
    /// (the upper edge of the histogram bucket, capped at the slowest execution).
    pub fn quantile_us(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let want = ((self.count as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0u64;
        for (i, &n) in self.hist.iter().enumerate() {
            seen += u64::from(n);
            if seen >= want {
                return bucket_upper(i).min(self.max_us);
            }
        }
        self.max_us
    }

    /// Where the statement ran: `primary`, `replica` or `both`.
    pub fn route(&self) -> &'static str {
        match (self.on_primary > 0, self.on_replica > 0) {
            (true, true) => "both",
            (false, true) => "replica",
            _ => "primary",
        }
    }
}

fn bucket(us: u64) -> usize {
    if us < 4 {
        return us as usize;
    }
    let lz = 63 - us.leading_zeros() as usize;
    let sub = ((us >> (lz - 2)) & 3) as usize;
    (4 * (lz - 1) + sub).min(BUCKETS - 1)
}

fn bucket_upper(i: usize) -> u64 {
    if i < 4 {
        return i as u64;
    }
    let lz = i / 4 + 1;
    let sub = (i % 4) as u64;
    ((4 + sub + 1) << (lz - 2)) - 1
}

/// A statement about to run: its digest, and its text when the digest is new.
pub struct Pending {
    hash: u64,
    text: Option<Box<str>>,
}

/// All digests of this process.
/// Digests one session knows to be in the store (so their text need not be built).
#[derive(Default)]
pub struct KnownDigests {
    set: std::collections::HashSet<u64, DigestBuild>,
    generation: u64,
}

/// Digests a session remembers before it starts over.
const KNOWN_PER_SESSION: usize = 256;

/// Digests are already 64-bit hashes: one multiplication spreads them (src/fasthash.rs).
type DigestBuild = crate::fasthash::FastBuild;

/// One thread's totals, by digest (texts are in `Digests::texts`).
type Lane = Mutex<HashMap<u64, DigestEntry, DigestBuild>>;

pub struct Digests {
    lanes: Box<[Padded<Lane>]>,
    /// The text of every digest in the store: one per distinct statement shape, bounded by
    /// `max_entries`. Taken when a thread meets a digest for the first time, never per
    /// statement.
    texts: Mutex<HashMap<u64, Box<str>, DigestBuild>>,
    /// Raised by every reset: a session's cache of digests known to exist is then stale.
    generation: std::sync::atomic::AtomicU64,
    enabled: AtomicBool,
    max_entries: AtomicUsize,
}

impl Digests {
    pub fn new(enabled: bool, max_entries: usize) -> Self {
        Digests {
            lanes: (0..LANES).map(|_| Padded(Mutex::default())).collect(),
            texts: Mutex::default(),
            generation: Default::default(),
            enabled: AtomicBool::new(enabled),
            max_entries: AtomicUsize::new(max_entries),
        }
    }

    /// Applies `[admin] query_digest` / `query_digest_max_entries` (a reload).
    pub fn configure(&self, enabled: bool, max_entries: usize) {
        self.enabled.store(enabled, Ordering::Relaxed);
        self.max_entries.store(max_entries, Ordering::Relaxed);
    }

    /// Digests `sql` before it runs (the text is built only for a digest not seen yet).
    /// `None` when digests are off.
    pub fn begin(&self, sql: &[u8]) -> Option<Pending> {
        if !self.enabled.load(Ordering::Relaxed) {
            return None;
        }
        self.begin_hashed(lexer::digest(sql), sql)
    }

    /// Like [`Digests::begin`] with the digest already known (prepared statements).
    pub fn begin_hashed(&self, hash: u64, sql: &[u8]) -> Option<Pending> {
        self.begin_cached(hash, sql, None)
    }

    /// Like [`Digests::begin`], without taking the store's lock for a digest this session
    /// already saw stored (`known`): a statement costs one lock, in `record`.
    pub fn begin_known(&self, sql: &[u8], known: &mut KnownDigests) -> Option<Pending> {
        if !self.enabled.load(Ordering::Relaxed) {
            return None;
        }
        self.begin_cached(lexer::digest(sql), sql, Some(known))
    }

    /// [`Digests::begin_hashed`] with the session's cache of known digests.
    pub fn begin_hashed_known(
        &self,
        hash: u64,
        sql: &[u8],
        known: &mut KnownDigests,
    ) -> Option<Pending> {
        self.begin_cached(hash, sql, Some(known))
    }

    fn begin_cached(
        &self,
        hash: u64,
        sql: &[u8],
        known: Option<&mut KnownDigests>,
    ) -> Option<Pending> {
        if !self.enabled.load(Ordering::Relaxed) {
            return None;
        }
        // 0 is the `(other)` entry's key.
        let hash = hash.max(1);
        if let Some(k) = known {
            let generation = self.generation.load(Ordering::Relaxed);
            if k.generation != generation || k.set.len() >= KNOWN_PER_SESSION {
                k.set.clear();
                k.generation = generation;
            }
            if !k.set.insert(hash) {
                return Some(Pending { hash, text: None });
            }
        }
        let known = self
            .texts
            .lock()
            .map(|m| m.contains_key(&hash))
            .unwrap_or(true);
        let text = (!known).then(|| lexer::normalize(sql).into_boxed_str());
        Some(Pending { hash, text })
    }

    /// Adds one execution of a statement begun with [`Digests::begin`].
    pub fn record(&self, p: Pending, took: Duration, rows: u64, replica: bool, error: bool) {
        let now_ms = crate::clock::coarse_realtime_ms();
        let us = took.as_micros().min(u128::from(u64::MAX)) as u64;
        let add = |e: &mut DigestEntry| {
            e.count += 1;
            e.errors += u64::from(error);
            e.total_us = e.total_us.saturating_add(us);
            e.max_us = e.max_us.max(us);
            e.rows = e.rows.saturating_add(rows);
            if replica {
                e.on_replica += 1;
            } else {
                e.on_primary += 1;
            }
            e.last_seen_ms = now_ms;
            let b = &mut e.hist[bucket(us)];
            *b = b.saturating_add(1);
        };
        let lane = &self.lanes[crate::lanes::lane()].0;
        {
            let Ok(mut map) = lane.lock() else {
                return;
            };
            if let Some(e) = map.get_mut(&p.hash) {
                add(e);
                return;
            }
        }
        // The first time on this thread: is the digest stored (its text kept), or new?
        let key = {
            let Ok(mut texts) = self.texts.lock() else {
                return;
            };
            if texts.contains_key(&p.hash) {
                p.hash
            } else {
                match p.text {
                    Some(text) if texts.len() < self.max_entries.load(Ordering::Relaxed) => {
                        texts.insert(p.hash, text);
                        p.hash
                    }
                    // Full, or reset between begin and record: counted under `(other)`.
                    _ => OTHER,
                }
            }
        };
        if let Ok(mut map) = lane.lock() {
            add(map
                .entry(key)
                .or_insert_with(|| DigestEntry::new(Box::default(), now_ms)));
        }
    }

    /// A copy of every entry with its digest, busiest (by total time) first.
    pub fn snapshot(&self) -> Vec<(u64, DigestEntry)> {
        let mut merged: HashMap<u64, DigestEntry, DigestBuild> = HashMap::default();
        let Ok(texts) = self.texts.lock() else {
            return Vec::new();
        };
        for lane in &self.lanes[..crate::lanes::used()] {
            let Ok(m) = lane.0.lock() else {
                continue;
            };
            for (&k, e) in m.iter() {
                // An entry whose text a reset removed meanwhile: with the rest.
                let k = if k == OTHER || texts.contains_key(&k) {
                    k
                } else {
                    OTHER
                };
                match merged.entry(k) {
                    std::collections::hash_map::Entry::Occupied(mut o) => o.get_mut().merge(e),
                    std::collections::hash_map::Entry::Vacant(v) => {
                        v.insert(e.clone());
                    }
                }
            }
        }
        let mut all: Vec<(u64, DigestEntry)> = merged
            .into_iter()
            .map(|(k, mut e)| {
                e.text = match texts.get(&k) {
                    Some(t) => t.clone(),
                    None => "(other: digest table full)".into(),
                };
                (k, e)
            })
            .collect();
        drop(texts);
        all.sort_by(|a, b| b.1.total_us.cmp(&a.1.total_us).then(a.0.cmp(&b.0)));
        all
    }

    /// Forgets every entry; returns how many there were.
    pub fn reset(&self) -> usize {
        self.generation.fetch_add(1, Ordering::Relaxed);
        let Ok(mut texts) = self.texts.lock() else {
            return 0;
        };
        let mut other = false;
        for lane in self.lanes.iter() {
            if let Ok(mut m) = lane.0.lock() {
                other |= m.contains_key(&OTHER);
                m.clear();
            }
        }
        let n = texts.len() + usize::from(other);
        texts.clear();
        n
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_bound_their_values() {
        let mut last = 0;
        for us in 0..100_000u64 {
            let b = bucket(us);
            assert!(b == last || b == last + 1, "gap at {us}");
            last = b;
            assert!(bucket_upper(b) >= us, "{us} above its bucket {b}");
            assert!(b == 0 || bucket_upper(b - 1) < us, "{us} belongs lower");
        }
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn same_shape_same_entry_and_percentiles() {
        let d = Digests::new(true, 100);
        for i in 0..100u64 {
            let sql = format!("SELECT * FROM t WHERE id = {i}");
            let p = d.begin(sql.as_bytes()).unwrap();
            d.record(p, Duration::from_micros(100 + i * 10), 1, i % 2 == 0, false);
        }
        let p = d.begin(b"SELECT 1").unwrap();
        d.record(p, Duration::from_micros(5), 1, false, true);
        let snap = d.snapshot();
        assert_eq!(snap.len(), 2);
        let (_, e) = &snap[0];
        assert_eq!(&*e.text, "SELECT * FROM T WHERE ID = ?");
        assert_eq!(e.count, 100);
        assert_eq!(e.rows, 100);
        assert_eq!(e.route(), "both");
        assert_eq!(e.max_us, 1090);
        let p99 = e.quantile_us(0.99);
        assert!((1080..=1090).contains(&p99), "p99 {p99}");
        let p50 = e.quantile_us(0.5);
        assert!((590..=750).contains(&p50), "p50 {p50}");
        assert_eq!(snap[1].1.errors, 1);
        assert_eq!(d.reset(), 2);
        assert!(d.snapshot().is_empty());
    }

    #[test]
    fn threads_add_to_one_entry_per_shape() {
        let d = std::sync::Arc::new(Digests::new(true, 100));
        let threads: Vec<_> = (0..6u64)
            .map(|t| {
                let d = d.clone();
                std::thread::spawn(move || {
                    let mut known = KnownDigests::default();
                    for i in 0..500u64 {
                        let sql = format!("SELECT c FROM t WHERE id = {i}");
                        let p = d.begin_known(sql.as_bytes(), &mut known).unwrap();
                        d.record(
                            p,
                            Duration::from_micros(10 + t * 100 + i),
                            2,
                            t % 2 == 0,
                            i == 7,
                        );
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let snap = d.snapshot();
        assert_eq!(snap.len(), 1, "one shape, one entry");
        let e = &snap[0].1;
        assert_eq!(&*e.text, "SELECT C FROM T WHERE ID = ?");
        assert_eq!((e.count, e.rows, e.errors), (3000, 6000, 6));
        assert_eq!((e.on_primary, e.on_replica), (1500, 1500));
        assert_eq!(e.max_us, 10 + 500 + 499);
        let total: u64 = (0..6u64)
            .flat_map(|t| (0..500u64).map(move |i| 10 + t * 100 + i))
            .sum();
        assert_eq!(e.total_us, total);
        // The merged histogram holds every execution: the median is in the middle thread's range.
        let p50 = e.quantile_us(0.5);
        assert!((250..=760).contains(&p50), "p50 {p50}");
        assert_eq!(d.reset(), 1);
        assert!(d.snapshot().is_empty());
    }

    #[test]
    fn bounded_table_counts_the_rest_as_other() {
        let d = Digests::new(true, 2);
        for t in ["a", "b", "c", "d"] {
            let sql = format!("SELECT x FROM {t}");
            let p = d.begin(sql.as_bytes()).unwrap();
            d.record(p, Duration::from_micros(1), 0, false, false);
        }
        let snap = d.snapshot();
        assert_eq!(snap.len(), 3);
        let other = snap.iter().find(|(k, _)| *k == OTHER).unwrap();
        assert_eq!(other.1.count, 2);
        assert!(Digests::new(false, 2).begin(b"SELECT 1").is_none());
    }
}
