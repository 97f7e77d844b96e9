//! Query digests: statistics per normalized statement (`SHOW QUERY DIGEST` on the admin port).
//!
//! A statement's digest is a hash of its normalized form ([`crate::router::lexer::digest`]),
//! computed by walking the lexer's tokens without building any text. The text is built only the
//! first time a digest is seen. Entries live in 16 shards, each behind a std mutex held for a
//! hash-map lookup and a few additions — never across an await. Latencies go into a
//! log-linear histogram (4 buckets per power of two, so a percentile is exact to within 25 %).
//! The table is bounded by `[admin] query_digest_max_entries`; past it, new statements are
//! counted in one `(other)` entry.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::router::lexer;

const SHARDS: usize = 16;
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

pub struct Digests {
    shards: Vec<Mutex<HashMap<u64, DigestEntry, DigestBuild>>>,
    /// Raised by every reset: a session's cache of digests known to exist is then stale.
    generation: std::sync::atomic::AtomicU64,
    entries: AtomicUsize,
    enabled: AtomicBool,
    max_entries: AtomicUsize,
}

impl Digests {
    pub fn new(enabled: bool, max_entries: usize) -> Self {
        Digests {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(HashMap::default()))
                .collect(),
            generation: Default::default(),
            entries: AtomicUsize::new(0),
            enabled: AtomicBool::new(enabled),
            max_entries: AtomicUsize::new(max_entries),
        }
    }

    /// Applies `[admin] query_digest` / `query_digest_max_entries` (a reload).
    pub fn configure(&self, enabled: bool, max_entries: usize) {
        self.enabled.store(enabled, Ordering::Relaxed);
        self.max_entries.store(max_entries, Ordering::Relaxed);
    }

    fn shard(&self, hash: u64) -> &Mutex<HashMap<u64, DigestEntry, DigestBuild>> {
        &self.shards[(hash >> 60) as usize % SHARDS]
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
            .shard(hash)
            .lock()
            .map(|m| m.contains_key(&hash))
            .unwrap_or(true);
        let text = (!known).then(|| lexer::normalize(sql).into_boxed_str());
        Some(Pending { hash, text })
    }

    /// Adds one execution of a statement begun with [`Digests::begin`].
    pub fn record(&self, p: Pending, took: Duration, rows: u64, replica: bool, error: bool) {
        use std::collections::hash_map::Entry;
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
        let full = self.entries.load(Ordering::Relaxed) >= self.max_entries.load(Ordering::Relaxed);
        let Ok(mut map) = self.shard(p.hash).lock() else {
            return;
        };
        let to_other = match map.entry(p.hash) {
            Entry::Occupied(o) => {
                add(o.into_mut());
                false
            }
            Entry::Vacant(v) => match (full, p.text) {
                (false, Some(text)) => {
                    self.entries.fetch_add(1, Ordering::Relaxed);
                    add(v.insert(DigestEntry::new(text, now_ms)));
                    false
                }
                // Full, or reset between begin and record: counted under `(other)`.
                _ => true,
            },
        };
        drop(map);
        if to_other {
            if let Ok(mut map) = self.shard(OTHER).lock() {
                add(map.entry(OTHER).or_insert_with(|| {
                    DigestEntry::new("(other: digest table full)".into(), now_ms)
                }));
            }
        }
    }

    /// A copy of every entry with its digest, busiest (by total time) first.
    pub fn snapshot(&self) -> Vec<(u64, DigestEntry)> {
        let mut all = Vec::new();
        for s in &self.shards {
            if let Ok(m) = s.lock() {
                all.extend(m.iter().map(|(k, v)| (*k, v.clone())));
            }
        }
        all.sort_by(|a, b| b.1.total_us.cmp(&a.1.total_us).then(a.0.cmp(&b.0)));
        all
    }

    /// Forgets every entry; returns how many there were.
    pub fn reset(&self) -> usize {
        self.generation.fetch_add(1, Ordering::Relaxed);
        let mut n = 0;
        for s in &self.shards {
            if let Ok(mut m) = s.lock() {
                n += m.len();
                m.clear();
            }
        }
        self.entries.store(0, Ordering::Relaxed);
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
