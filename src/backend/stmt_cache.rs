//! The statements prepared on one server connection, shared by every session that uses the
//! connection: keyed by SQL text, bounded, least recently used evicted first (the caller
//! closes the evicted statement on the server), so that many sessions × many statements
//! cannot exhaust a server's `max_prepared_stmt_count`.
//!
//! A session remembers where it found each of its statements ([`Memo`]: connection, slot and
//! the cache's epoch). The epoch changes whenever a statement leaves the cache, so a memo of
//! an unchanged epoch still names the same statement: the session's next execution on that
//! connection finds it without hashing and comparing the SQL text.
//!
//! Each statement also remembers the parameter types last bound to it on the server (an
//! execution that carries types binds them, and the server keeps them for the executions
//! that carry none). An execution whose types are already bound goes to the server as the
//! client sent it: the server does not set its parameters up again, and Sluice does not
//! rebuild the packet to add the types.
//!
//! On a connection that negotiated `MARIADB_CLIENT_CACHE_METADATA`, each statement also keeps
//! the column definitions the server last sent for it (from the prepare answer, then from
//! every execution that sent them again): the server leaves them out of an execution whose
//! definitions did not change, and a session whose client does not hold them gets them from
//! here. The records of a connection are bounded in bytes ([`MAX_METADATA_BYTES`]); the
//! connection closes its least recently used statements when they exceed it.

use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug)]
struct Entry {
    sql: Arc<[u8]>,
    id: u32,
    used: u64,
    /// The parameter types bound on the server (`None`: unknown, send them).
    bound: Option<Arc<[u8]>>,
    /// With cached metadata: the column definitions the server last sent for the statement
    /// (framed as an execution's answer frames them, sequence ids from 2).
    meta: Option<Box<[u8]>>,
}

/// Bytes of column definitions kept per connection (see the module's documentation).
pub const MAX_METADATA_BYTES: usize = 256 << 10;

#[derive(Debug, Default)]
pub struct StmtCache {
    index: HashMap<Arc<[u8]>, usize, crate::fasthash::FastBuild>,
    slots: Vec<Option<Entry>>,
    free: Vec<usize>,
    clock: u64,
    epoch: u64,
    /// Bytes of the statements' `meta` records.
    meta_bytes: usize,
}

/// Where a session last found one of its statements on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memo {
    pub conn: u64,
    epoch: u64,
    slot: usize,
}

impl StmtCache {
    /// The server's id for `sql`, marking it used.
    pub fn get(&mut self, sql: &[u8]) -> Option<u32> {
        self.get_slot(sql).map(|(id, _)| id)
    }

    fn get_slot(&mut self, sql: &[u8]) -> Option<(u32, usize)> {
        let slot = *self.index.get(sql)?;
        self.touch(slot).map(|id| (id, slot))
    }

    fn touch(&mut self, slot: usize) -> Option<u32> {
        self.clock += 1;
        let now = self.clock;
        let e = self.slots.get_mut(slot)?.as_mut()?;
        e.used = now;
        Some(e.id)
    }

    /// The server's id for `sql` through the memo of connection `conn` (no lookup when the
    /// memo still holds), or by lookup (the memo is then renewed). Marks it used.
    pub fn get_memo(&mut self, conn: u64, sql: &[u8], memo: &mut Option<Memo>) -> Option<u32> {
        if let Some(id) = self.get_by_memo(conn, *memo) {
            return Some(id);
        }
        let (id, slot) = self.get_slot(sql)?;
        *memo = Some(Memo {
            conn,
            epoch: self.epoch,
            slot,
        });
        Some(id)
    }

    /// The memo, if it was made on connection `conn` and still holds (same epoch).
    fn holding(&self, conn: u64, memo: Option<Memo>) -> Option<Memo> {
        memo.filter(|m| m.conn == conn && m.epoch == self.epoch)
    }

    /// The entry a memo of this connection names, if the memo still holds.
    fn entry(&mut self, conn: u64, memo: Option<Memo>) -> Option<&mut Entry> {
        let m = self.holding(conn, memo)?;
        self.slots.get_mut(m.slot)?.as_mut()
    }

    /// Whether the statement the memo names has exactly `types` bound on the server.
    pub fn types_bound(&mut self, conn: u64, memo: Option<Memo>, types: &[u8]) -> bool {
        self.entry(conn, memo)
            .and_then(|e| e.bound.as_deref())
            .is_some_and(|b| b == types)
    }

    /// Records the types the server now has bound for the statement the memo names (`None`:
    /// unknown, e.g. after an error or a reset; the next execution sends them again).
    pub fn set_bound(&mut self, conn: u64, memo: Option<Memo>, types: Option<&Arc<[u8]>>) {
        if let Some(e) = self.entry(conn, memo) {
            match types {
                Some(t) if e.bound.as_deref() == Some(&t[..]) => {}
                _ => e.bound = types.cloned(),
            }
        }
    }

    /// The server's id through the memo of connection `conn` alone (`None`: the memo does
    /// not hold; look the text up). Marks it used.
    pub fn get_by_memo(&mut self, conn: u64, memo: Option<Memo>) -> Option<u32> {
        let m = self.holding(conn, memo)?;
        self.touch(m.slot)
    }

    /// The column definitions the server last sent for the statement the memo names (with
    /// cached metadata; `None` if the memo does not hold or nothing is kept).
    pub fn metadata(&self, conn: u64, memo: Option<Memo>) -> Option<&[u8]> {
        let m = self.holding(conn, memo)?;
        self.slots.get(m.slot)?.as_ref()?.meta.as_deref()
    }

    /// Records the column definitions the server sent for the statement the memo names.
    pub fn set_metadata(&mut self, conn: u64, memo: Option<Memo>, meta: Box<[u8]>) {
        let mut delta = (0, 0);
        if let Some(e) = self.entry(conn, memo) {
            delta = (e.meta.as_ref().map_or(0, |m| m.len()), meta.len());
            e.meta = Some(meta);
        }
        self.meta_bytes = self.meta_bytes - delta.0 + delta.1;
    }

    /// Whether the kept column definitions exceed [`MAX_METADATA_BYTES`] (the connection
    /// then closes statements, least recently used first).
    pub fn metadata_over_budget(&self) -> bool {
        self.meta_bytes > MAX_METADATA_BYTES
    }

    /// Adds a statement; `meta`: the column definitions of its prepare answer, on a
    /// connection with cached metadata.
    pub fn insert(&mut self, sql: Arc<[u8]>, id: u32, meta: Option<Box<[u8]>>) {
        self.remove(&sql);
        self.clock += 1;
        self.meta_bytes += meta.as_ref().map_or(0, |m| m.len());
        let e = Entry {
            sql: sql.clone(),
            id,
            used: self.clock,
            bound: None,
            meta,
        };
        let slot = match self.free.pop() {
            Some(s) => {
                self.slots[s] = Some(e);
                s
            }
            None => {
                self.slots.push(Some(e));
                self.slots.len() - 1
            }
        };
        self.index.insert(sql, slot);
    }

    pub fn remove(&mut self, sql: &[u8]) -> Option<u32> {
        let slot = self.index.remove(sql)?;
        self.epoch += 1;
        let e = self.slots.get_mut(slot)?.take()?;
        self.free.push(slot);
        self.meta_bytes -= e.meta.as_ref().map_or(0, |m| m.len());
        Some(e.id)
    }

    /// Removes the least recently used statement and returns its server id.
    pub fn pop_lru(&mut self) -> Option<u32> {
        let sql = self
            .slots
            .iter()
            .flatten()
            .min_by_key(|e| e.used)?
            .sql
            .clone();
        self.remove(&sql)
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// The server forgot every statement (COM_CHANGE_USER, COM_RESET_CONNECTION).
    pub fn clear_forgotten(&mut self) {
        self.index.clear();
        self.slots.clear();
        self.free.clear();
        self.epoch += 1;
        self.meta_bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_the_least_recently_used() {
        let mut c = StmtCache::default();
        let key = |s: &[u8]| -> Arc<[u8]> { Arc::from(s) };
        let (a, b, d) = (key(b"a"), key(b"b"), key(b"d"));
        c.insert(a.clone(), 1, None);
        c.insert(b.clone(), 2, None);
        c.insert(d.clone(), 3, None);
        assert_eq!(c.get(&a), Some(1));
        assert_eq!(c.pop_lru(), Some(2));
        assert_eq!(c.pop_lru(), Some(3));
        assert_eq!(c.len(), 1);
        assert_eq!(c.remove(&a), Some(1));
        assert!(c.is_empty());
        assert_eq!(c.pop_lru(), None);
    }

    #[test]
    fn a_memo_holds_until_a_statement_leaves_the_cache() {
        let mut c = StmtCache::default();
        let key = |s: &[u8]| -> Arc<[u8]> { Arc::from(s) };
        let (a, b, d) = (key(b"a"), key(b"b"), key(b"d"));
        c.insert(a.clone(), 1, None);
        c.insert(b.clone(), 2, None);
        let (mut ma, mut mb) = (None, None);
        assert_eq!(c.get_memo(7, &a, &mut ma), Some(1));
        assert_eq!(c.get_memo(7, &b, &mut mb), Some(2));
        assert!(ma.is_some() && mb.is_some());
        // Through the memo (the text is not even looked at), and it counts as a use: `b`,
        // used through its memo after `a`, is not the least recently used.
        assert_eq!(c.get_memo(7, b"ignored", &mut ma), Some(1));
        assert_eq!(c.get_memo(7, b"ignored", &mut mb), Some(2));
        assert_eq!(c.get_by_memo(7, ma), Some(1));
        assert_eq!(c.get_by_memo(8, ma), None);
        assert_eq!(c.get_by_memo(7, None), None);
        // A memo made on another connection is not trusted: the text is looked up.
        let mut other = mb;
        assert_eq!(c.get_memo(8, b"zzz", &mut other), None);
        assert_eq!(c.get_memo(8, &b, &mut other), Some(2));
        assert_eq!(other.map(|m| m.conn), Some(8));
        // `a` leaves (least recently used); its slot is reused by `d`: the old memos of both
        // statements are stale, and the lookups find the right ids.
        assert_eq!(c.pop_lru(), Some(1));
        c.insert(d.clone(), 3, None);
        assert_eq!(c.get_by_memo(7, ma), None);
        assert_eq!(c.get_memo(7, &a, &mut ma), None);
        assert_eq!(c.get_memo(7, &b, &mut mb), Some(2));
        let mut md = None;
        assert_eq!(c.get_memo(7, &d, &mut md), Some(3));
        // A reset forgets everything: no memo survives it.
        c.clear_forgotten();
        assert_eq!(c.get_memo(7, &d, &mut md), None);
        c.insert(b.clone(), 9, None);
        assert_eq!(c.get_memo(7, &b, &mut mb), Some(9));
        // Inserting the same text again replaces it (a new epoch: memos are renewed).
        c.insert(b.clone(), 10, None);
        assert_eq!(c.get_memo(7, &b, &mut mb), Some(10));
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn bound_types_are_known_per_statement_until_it_leaves() {
        let mut c = StmtCache::default();
        let key = |s: &[u8]| -> Arc<[u8]> { Arc::from(s) };
        let (a, b) = (key(b"a"), key(b"b"));
        let (long, int) = (key(&[8, 0]), key(&[3, 0]));
        c.insert(a.clone(), 1, None);
        c.insert(b.clone(), 2, None);
        let (mut ma, mut mb) = (None, None);
        c.get_memo(7, &a, &mut ma);
        c.get_memo(7, &b, &mut mb);
        // Nothing bound yet: the first execution sends its types.
        assert!(!c.types_bound(7, ma, &long));
        c.set_bound(7, ma, Some(&long));
        assert!(c.types_bound(7, ma, &long));
        // Other types, another statement, another connection's memo: not bound.
        assert!(!c.types_bound(7, ma, &int));
        assert!(!c.types_bound(7, mb, &long));
        assert!(!c.types_bound(8, ma, &long));
        // Forgotten after an error or a reset.
        c.set_bound(7, ma, None);
        assert!(!c.types_bound(7, ma, &long));
        c.set_bound(7, ma, Some(&int));
        assert!(c.types_bound(7, ma, &int));
        // A statement prepared again starts with nothing bound (its old memo is stale too).
        c.insert(a.clone(), 3, None);
        assert!(!c.types_bound(7, ma, &int));
        let mut ma2 = None;
        assert_eq!(c.get_memo(7, &a, &mut ma2), Some(3));
        assert!(!c.types_bound(7, ma2, &int));
        // The same after a reset of the connection.
        c.set_bound(7, ma2, Some(&int));
        assert!(c.types_bound(7, ma2, &int));
        c.clear_forgotten();
        assert!(!c.types_bound(7, ma2, &int));
    }

    #[test]
    fn column_definitions_are_kept_per_statement_within_a_byte_budget() {
        let mut c = StmtCache::default();
        let key = |s: &[u8]| -> Arc<[u8]> { Arc::from(s) };
        let (a, b) = (key(b"a"), key(b"b"));
        let defs = |n: usize, fill: u8| vec![fill; n].into_boxed_slice();
        c.insert(a.clone(), 1, Some(defs(100, 1)));
        c.insert(b.clone(), 2, None);
        let (mut ma, mut mb) = (None, None);
        c.get_memo(7, &a, &mut ma);
        c.get_memo(7, &b, &mut mb);
        assert_eq!(c.metadata(7, ma), Some(&defs(100, 1)[..]));
        assert_eq!(c.metadata(7, mb), None);
        assert_eq!(c.metadata(8, ma), None, "another connection's memo");
        // Replaced by what an execution sent; the bytes are counted once.
        c.set_metadata(7, ma, defs(200, 2));
        c.set_metadata(7, mb, defs(MAX_METADATA_BYTES - 200, 3));
        assert_eq!(c.metadata(7, ma), Some(&defs(200, 2)[..]));
        assert!(!c.metadata_over_budget());
        c.set_metadata(7, ma, defs(201, 2));
        assert!(c.metadata_over_budget());
        // Leaving the cache gives its bytes back (`a` is the least recently used).
        assert_eq!(c.pop_lru(), Some(1));
        assert!(!c.metadata_over_budget());
        assert_eq!(c.metadata(7, ma), None);
        // Inserting the same text again replaces the record, and a reset forgets them all.
        c.insert(b.clone(), 3, Some(defs(MAX_METADATA_BYTES + 1, 4)));
        assert!(c.metadata_over_budget());
        c.insert(b.clone(), 4, Some(defs(10, 4)));
        assert!(!c.metadata_over_budget());
        c.insert(a.clone(), 5, Some(defs(MAX_METADATA_BYTES, 5)));
        assert!(c.metadata_over_budget());
        c.clear_forgotten();
        assert!(!c.metadata_over_budget());
        c.insert(a.clone(), 6, Some(defs(MAX_METADATA_BYTES, 5)));
        assert!(
            !c.metadata_over_budget(),
            "nothing left over from before the reset"
        );
    }
}
