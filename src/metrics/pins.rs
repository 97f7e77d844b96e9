//! Which statements pin sessions (`SHOW PINS`): per statement shape (normalized text) and
//! reason, how often, and by which users. The first pin by a shape is logged at info, so an
//! operator learns which query turns multiplexing off without searching.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::SystemTime;

use crate::router::PinReason;

/// Shapes remembered; beyond, new ones are only counted in the `(other)` row.
const MAX_SHAPES: usize = 1000;
/// Users named per shape.
const MAX_USERS: usize = 8;

/// One statement shape that pinned sessions.
#[derive(Debug, Clone)]
pub struct PinShape {
    pub reason: PinReason,
    pub text: String,
    pub count: u64,
    /// Pins by user (at most a few users are named).
    pub users: Vec<(String, u64)>,
    pub first_seen: SystemTime,
    pub last_seen: SystemTime,
}

#[derive(Default)]
pub struct PinLog {
    shapes: Mutex<HashMap<(PinReason, String), PinShape>>,
}

impl PinLog {
    /// Records a pin started by `text` (normalized) for `user`. Called when a pin starts
    /// (rare), never on the plain statement path.
    pub fn record(&self, reason: PinReason, user: &str, text: &str) {
        let Ok(mut m) = self.shapes.lock() else {
            return;
        };
        let now = SystemTime::now();
        let full = m.len() >= MAX_SHAPES;
        let key = (reason, text.to_string());
        let key = if full && !m.contains_key(&key) {
            (reason, "(other)".to_string())
        } else {
            key
        };
        let shape = m.entry(key.clone()).or_insert_with(|| {
            tracing::info!(
                reason = reason.as_str(),
                user,
                statement = %key.1,
                "a statement pinned a session to its server connection (multiplexing is off for the session while the pin lasts)"
            );
            PinShape {
                reason,
                text: key.1.clone(),
                count: 0,
                users: Vec::new(),
                first_seen: now,
                last_seen: now,
            }
        });
        shape.count += 1;
        shape.last_seen = now;
        if let Some(u) = shape.users.iter_mut().find(|(u, _)| u == user) {
            u.1 += 1;
        } else if shape.users.len() < MAX_USERS {
            shape.users.push((user.to_string(), 1));
        }
    }

    /// Every shape, most frequent first.
    pub fn list(&self) -> Vec<PinShape> {
        let mut v: Vec<PinShape> = self
            .shapes
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        v.sort_by(|a, b| b.count.cmp(&a.count).then(a.text.cmp(&b.text)));
        v
    }

    pub fn clear(&self) {
        if let Ok(mut m) = self.shapes.lock() {
            m.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_shape_and_user() {
        let log = PinLog::default();
        log.record(
            PinReason::TempTable,
            "app",
            "CREATE TEMPORARY TABLE t ( a INT )",
        );
        log.record(
            PinReason::TempTable,
            "app",
            "CREATE TEMPORARY TABLE t ( a INT )",
        );
        log.record(
            PinReason::TempTable,
            "bob",
            "CREATE TEMPORARY TABLE t ( a INT )",
        );
        log.record(PinReason::GetLock, "app", "SELECT GET_LOCK ( ? , ? )");
        let l = log.list();
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].count, 3);
        assert_eq!(l[0].users, [("app".to_string(), 2), ("bob".to_string(), 1)]);
        assert_eq!(l[1].reason, PinReason::GetLock);
        log.clear();
        assert!(log.list().is_empty());
    }
}
