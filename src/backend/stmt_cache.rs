//! The statements prepared on one server connection, shared by every session that uses the
//! connection: keyed by SQL text, bounded, least recently used evicted first (the caller
//! closes the evicted statement on the server), so that many sessions × many statements
//! cannot exhaust a server's `max_prepared_stmt_count`.

use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug, Default)]
pub struct StmtCache {
    map: HashMap<Arc<[u8]>, (u32, u64), crate::fasthash::FastBuild>,
    clock: u64,
}

impl StmtCache {
    /// The server's id for `sql`, marking it used.
    pub fn get(&mut self, sql: &[u8]) -> Option<u32> {
        self.clock += 1;
        let now = self.clock;
        self.map.get_mut(sql).map(|e| {
            e.1 = now;
            e.0
        })
    }

    pub fn insert(&mut self, sql: Arc<[u8]>, id: u32) {
        self.clock += 1;
        self.map.insert(sql, (id, self.clock));
    }

    pub fn remove(&mut self, sql: &[u8]) -> Option<u32> {
        self.map.remove(sql).map(|e| e.0)
    }

    /// Removes the least recently used statement and returns its server id.
    pub fn pop_lru(&mut self) -> Option<u32> {
        let key = self.map.iter().min_by_key(|(_, e)| e.1)?.0.clone();
        self.map.remove(&key).map(|e| e.0)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The server forgot every statement (COM_CHANGE_USER, COM_RESET_CONNECTION).
    pub fn clear_forgotten(&mut self) {
        self.map.clear();
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
        c.insert(a.clone(), 1);
        c.insert(b.clone(), 2);
        c.insert(d.clone(), 3);
        assert_eq!(c.get(&a), Some(1));
        assert_eq!(c.pop_lru(), Some(2));
        assert_eq!(c.pop_lru(), Some(3));
        assert_eq!(c.len(), 1);
        assert_eq!(c.remove(&a), Some(1));
        assert!(c.is_empty());
        assert_eq!(c.pop_lru(), None);
    }
}
