//! Who may connect, how often, and what happens after failed logins (`[firewall]`, and
//! `allow` / `max_connections` per user).
//!
//! Checked at accept, before a greeting is sent: the address lists (`deny` wins over
//! `allow`), a block after too many interrupted or malformed handshakes (MySQL's
//! `max_connect_errors`), and a token bucket per source address. Wrong passwords never block
//! an address (one application's bad credential must not lock out the others on its host):
//! they are throttled per (user, address) with a growing delay instead.
//! Checked during the handshake, once the user name is known: the user's own address list
//! (a mismatch looks exactly like a wrong password). Checked after a successful login: the
//! user's session limit. State per source address is bounded ([`MAX_SOURCES`]); the std
//! mutex around it is held for a map lookup, never across an await.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::{Cidr, FirewallConfig, UserConfig};

/// Most source addresses tracked at once; past it, idle entries are dropped first, and an
/// address that finds no room is admitted without rate or failure tracking.
pub const MAX_SOURCES: usize = 65_536;

/// Why a connection was refused (also the `reason` label of
/// `sluice_client_connections_rejected_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `[firewall] deny` matched, or `allow` is set and did not.
    Address,
    /// Blocked after `max_connect_errors` interrupted or malformed handshakes in a row.
    Blocked { remaining_s: u64 },
    /// Over `connection_rate_per_source`.
    Rate { per_s: u32 },
}

impl Refusal {
    pub const REASONS: [&'static str; 5] = [
        "firewall_address",
        "blocked_after_login_failures",
        "connection_rate",
        "user_address",
        "user_max_connections",
    ];

    pub fn index(self) -> usize {
        match self {
            Refusal::Address => 0,
            Refusal::Blocked { .. } => 1,
            Refusal::Rate { .. } => 2,
        }
    }
}

/// Index in [`Refusal::REASONS`] of a login refused by the user's own address list.
pub const USER_ADDRESS: usize = 3;
/// Index in [`Refusal::REASONS`] of a login over the user's session limit.
pub const USER_LIMIT: usize = 4;

/// The address lists of `[firewall]`, parsed once per configuration.
#[derive(Debug, Default)]
pub struct AddressLists {
    allow: Vec<Cidr>,
    deny: Vec<Cidr>,
}

impl AddressLists {
    /// From a validated configuration (invalid entries were refused at load).
    pub fn new(cfg: &FirewallConfig) -> Self {
        AddressLists {
            allow: cfg.allow.iter().filter_map(|c| Cidr::parse(c)).collect(),
            deny: cfg.deny.iter().filter_map(|c| Cidr::parse(c)).collect(),
        }
    }

    pub fn admits(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        !self.deny.iter().any(|c| c.contains(ip))
            && (self.allow.is_empty() || self.allow.iter().any(|c| c.contains(ip)))
    }
}

/// An IPv4 client reaching an IPv6 listener shows as `::ffff:a.b.c.d`; rules are written for
/// `a.b.c.d`.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Whether `user` may log in from `ip` by its own `allow` list.
pub fn user_admits(user: &UserConfig, ip: IpAddr) -> bool {
    let ip = canonical(ip);
    user.allow.is_empty()
        || user
            .allow
            .iter()
            .filter_map(|c| Cidr::parse(c))
            .any(|c| c.contains(ip))
}

struct Source {
    tokens: f64,
    at: Instant,
    failures: u32,
    blocked_until: Option<Instant>,
}

impl Source {
    fn idle(&self, now: Instant, cfg: &FirewallConfig) -> bool {
        self.failures == 0
            && !self.blocked_until.is_some_and(|t| t > now)
            && (cfg.connection_rate_per_source == 0
                || self.tokens
                    + now.duration_since(self.at).as_secs_f64()
                        * f64::from(cfg.connection_rate_per_source)
                    >= f64::from(cfg.connection_burst_per_source.max(1)))
    }
}

/// Wrong passwords of one user from one address, for the throttle.
struct Burst {
    failures: u32,
    last: Instant,
}

/// A burst of wrong passwords ends after this long without one.
const BURST_GAP: Duration = Duration::from_secs(60);
/// Wrong passwords in a burst answered at once; later ones wait.
const FREE_FAILURES: u32 = 3;

/// The firewall's state: per source address and per user.
#[derive(Default)]
pub struct Firewall {
    sources: Mutex<HashMap<IpAddr, Source>>,
    bursts: Mutex<HashMap<(IpAddr, String), Burst>>,
    /// Wrong-password answers delayed by the throttle.
    pub throttled: AtomicU64,
    users: Arc<Mutex<HashMap<String, u32>>>,
    /// Refused connections and logins, indexed like [`Refusal::REASONS`].
    pub refused: [AtomicU64; 5],
}

/// Holds one of a user's session slots; gives it back when dropped.
pub struct UserSlot {
    users: Arc<Mutex<HashMap<String, u32>>>,
    name: String,
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        if let Ok(mut m) = self.users.lock() {
            if let Some(n) = m.get_mut(&self.name) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    m.remove(&self.name);
                }
            }
        }
    }
}

impl Firewall {
    /// The checks made at accept, before any byte is sent. Takes a token from the source's
    /// bucket when it is admitted.
    pub fn admit(
        &self,
        ip: IpAddr,
        cfg: &FirewallConfig,
        lists: &AddressLists,
    ) -> Result<(), Refusal> {
        let ip = canonical(ip);
        let refused = |r: Refusal| {
            self.refused[r.index()].fetch_add(1, Ordering::Relaxed);
            Err(r)
        };
        if !lists.admits(ip) {
            return refused(Refusal::Address);
        }
        let tracking = cfg.connection_rate_per_source > 0 || cfg.max_connect_errors > 0;
        if !tracking {
            return Ok(());
        }
        let now = Instant::now();
        let Ok(mut map) = self.sources.lock() else {
            return Ok(());
        };
        let Some(src) = entry(&mut map, ip, now, cfg) else {
            return Ok(());
        };
        if let Some(until) = src.blocked_until {
            if until > now {
                let remaining_s = until.duration_since(now).as_secs().max(1);
                drop(map);
                return refused(Refusal::Blocked { remaining_s });
            }
            src.blocked_until = None;
            src.failures = 0;
        }
        if cfg.connection_rate_per_source > 0 {
            let rate = f64::from(cfg.connection_rate_per_source);
            let burst = f64::from(cfg.connection_burst_per_source.max(1));
            src.tokens = (src.tokens + now.duration_since(src.at).as_secs_f64() * rate).min(burst);
            src.at = now;
            if src.tokens < 1.0 {
                drop(map);
                return refused(Refusal::Rate {
                    per_s: cfg.connection_rate_per_source,
                });
            }
            src.tokens -= 1.0;
        }
        Ok(())
    }

    /// A wrong password (or unknown user) for `user` from `ip`: how long to wait before
    /// answering 1045. The first [`FREE_FAILURES`] of a burst are answered at once, then
    /// 100 ms doubling up to `login_throttle_max_ms`. Logged once per burst when the delay
    /// starts. Never blocks the address.
    pub fn wrong_password(&self, ip: IpAddr, user: &str, cfg: &FirewallConfig) -> Duration {
        if cfg.login_throttle_max_ms == 0 {
            return Duration::ZERO;
        }
        let ip = canonical(ip);
        let now = Instant::now();
        let Ok(mut map) = self.bursts.lock() else {
            return Duration::ZERO;
        };
        if map.len() >= MAX_SOURCES && !map.contains_key(&(ip, user.to_string())) {
            map.retain(|_, b| now.duration_since(b.last) < BURST_GAP);
            if map.len() >= MAX_SOURCES {
                // A flood of distinct names: the oldest bursts make room.
                return Duration::from_millis(cfg.login_throttle_max_ms);
            }
        }
        let b = map.entry((ip, user.to_string())).or_insert(Burst {
            failures: 0,
            last: now,
        });
        if now.duration_since(b.last) >= BURST_GAP {
            b.failures = 0;
        }
        b.failures = b.failures.saturating_add(1);
        b.last = now;
        let n = b.failures;
        drop(map);
        if n <= FREE_FAILURES {
            return Duration::ZERO;
        }
        if n == FREE_FAILURES + 1 {
            tracing::warn!(client = %ip, user, "repeated wrong passwords: answers are delayed from now on (the address is not blocked)");
        }
        self.throttled.fetch_add(1, Ordering::Relaxed);
        let ms = 100u64.saturating_mul(1u64 << (n - FREE_FAILURES - 1).min(20));
        Duration::from_millis(ms.min(cfg.login_throttle_max_ms))
    }

    /// An interrupted or malformed handshake from `ip` (MySQL's connect errors). Returns true
    /// when this one blocked the address.
    pub fn connect_error(&self, ip: IpAddr, cfg: &FirewallConfig) -> bool {
        if cfg.max_connect_errors == 0 {
            return false;
        }
        let ip = canonical(ip);
        let now = Instant::now();
        let Ok(mut map) = self.sources.lock() else {
            return false;
        };
        let Some(src) = entry(&mut map, ip, now, cfg) else {
            return false;
        };
        src.failures = src.failures.saturating_add(1);
        if src.failures >= cfg.max_connect_errors && src.blocked_until.is_none() {
            src.blocked_until = Some(now + Duration::from_secs(cfg.block_s));
            tracing::warn!(client = %ip, errors = src.failures, block_s = cfg.block_s, "address blocked after interrupted or malformed handshakes");
            return true;
        }
        false
    }

    /// `user` logged in from `ip`: the address's connect errors start again (as MySQL does),
    /// and so does that user's wrong-password burst from there.
    pub fn login_ok(&self, ip: IpAddr, user: &str) {
        let ip = canonical(ip);
        if let Ok(mut map) = self.sources.lock() {
            if let Some(src) = map.get_mut(&ip) {
                src.failures = 0;
            }
        }
        if let Ok(mut map) = self.bursts.lock() {
            map.remove(&(ip, user.to_string()));
        }
    }

    /// Takes one of `user`'s session slots, or `None` when `max_connections` are open.
    pub fn user_slot(&self, user: &UserConfig) -> Option<UserSlot> {
        let mut m = self.users.lock().ok()?;
        let n = m.entry(user.name.clone()).or_insert(0);
        if user.max_connections > 0 && *n >= user.max_connections {
            self.refused[USER_LIMIT].fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *n += 1;
        Some(UserSlot {
            users: self.users.clone(),
            name: user.name.clone(),
        })
    }

    /// Lifts every block (admin `FLUSH HOSTS`); returns how many addresses were blocked.
    pub fn flush_hosts(&self) -> usize {
        let now = Instant::now();
        let Ok(mut map) = self.sources.lock() else {
            return 0;
        };
        let mut n = 0;
        for s in map.values_mut() {
            if s.blocked_until.is_some_and(|t| t > now) {
                n += 1;
            }
            s.blocked_until = None;
            s.failures = 0;
        }
        n
    }

    /// Addresses blocked now, with seconds left and failures counted.
    pub fn blocked(&self) -> Vec<(IpAddr, u64, u32)> {
        let now = Instant::now();
        let Ok(map) = self.sources.lock() else {
            return Vec::new();
        };
        let mut v: Vec<_> = map
            .iter()
            .filter_map(|(ip, s)| {
                s.blocked_until
                    .filter(|t| *t > now)
                    .map(|t| (*ip, t.duration_since(now).as_secs().max(1), s.failures))
            })
            .collect();
        v.sort();
        v
    }
}

/// The state of `ip`, created when missing (with a full bucket); `None` when the table is
/// full even after dropping idle entries.
fn entry<'m>(
    map: &'m mut HashMap<IpAddr, Source>,
    ip: IpAddr,
    now: Instant,
    cfg: &FirewallConfig,
) -> Option<&'m mut Source> {
    if !map.contains_key(&ip) {
        if map.len() >= MAX_SOURCES {
            map.retain(|_, s| !s.idle(now, cfg));
            if map.len() >= MAX_SOURCES {
                return None;
            }
        }
        map.insert(
            ip,
            Source {
                tokens: f64::from(cfg.connection_burst_per_source.max(1)),
                at: now,
                failures: 0,
                blocked_until: None,
            },
        );
    }
    map.get_mut(&ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> FirewallConfig {
        FirewallConfig::default()
    }

    #[test]
    fn lists_deny_wins_and_mapped_v4_matches() {
        let mut c = cfg();
        c.allow = vec!["127.0.0.0/8".into(), "fd00::/8".into()];
        c.deny = vec!["127.0.0.2".into()];
        let l = AddressLists::new(&c);
        assert!(l.admits("127.0.0.1".parse().unwrap()));
        assert!(!l.admits("127.0.0.2".parse().unwrap()));
        assert!(!l.admits("::ffff:127.0.0.2".parse().unwrap()));
        assert!(l.admits("::ffff:127.0.0.9".parse().unwrap()));
        assert!(!l.admits("10.0.0.1".parse().unwrap()));
        assert!(l.admits("fd00::1".parse().unwrap()));
        assert!(AddressLists::new(&cfg()).admits("192.0.2.7".parse().unwrap()));
    }

    #[test]
    fn rate_limit_spends_the_burst_then_refuses() {
        let mut c = cfg();
        c.connection_rate_per_source = 1;
        c.connection_burst_per_source = 3;
        let f = Firewall::default();
        let l = AddressLists::default();
        let a: IpAddr = "127.0.0.5".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(f.admit(a, &c, &l), Ok(()));
        }
        assert_eq!(f.admit(a, &c, &l), Err(Refusal::Rate { per_s: 1 }));
        // Another source has its own bucket.
        assert_eq!(f.admit("127.0.0.6".parse().unwrap(), &c, &l), Ok(()));
    }

    #[test]
    fn connect_errors_block_then_flush_unblocks() {
        let mut c = cfg();
        c.max_connect_errors = 3;
        let f = Firewall::default();
        let l = AddressLists::default();
        let a: IpAddr = "127.0.0.5".parse().unwrap();
        assert!(!f.connect_error(a, &c));
        f.login_ok(a, "app");
        assert!(!f.connect_error(a, &c));
        assert!(!f.connect_error(a, &c));
        assert!(f.connect_error(a, &c));
        assert!(matches!(f.admit(a, &c, &l), Err(Refusal::Blocked { .. })));
        assert_eq!(f.blocked().len(), 1);
        assert_eq!(f.flush_hosts(), 1);
        assert_eq!(f.admit(a, &c, &l), Ok(()));
    }

    #[test]
    fn user_slots_are_bounded_and_given_back() {
        let f = Firewall::default();
        let mut u = UserConfig::new("app", "pw");
        u.max_connections = 2;
        let a = f.user_slot(&u).unwrap();
        let _b = f.user_slot(&u).unwrap();
        assert!(f.user_slot(&u).is_none());
        drop(a);
        assert!(f.user_slot(&u).is_some());
        u.allow = vec!["10.0.0.0/8".into()];
        assert!(!user_admits(&u, "127.0.0.1".parse().unwrap()));
        assert!(user_admits(&u, "10.2.3.4".parse().unwrap()));
    }

    #[test]
    fn wrong_passwords_are_throttled_per_user_and_never_block() {
        let c = cfg();
        let f = Firewall::default();
        let l = AddressLists::default();
        let a: IpAddr = "127.0.0.6".parse().unwrap();
        let delays: Vec<u64> = (0..10)
            .map(|_| f.wrong_password(a, "app", &c).as_millis() as u64)
            .collect();
        assert_eq!(delays, [0, 0, 0, 100, 200, 400, 800, 1000, 1000, 1000]);
        assert_eq!(f.throttled.load(Ordering::Relaxed), 7);
        // The address is not blocked, and another user from it is not slowed.
        assert_eq!(f.admit(a, &c, &l), Ok(()));
        assert!(f.blocked().is_empty());
        assert_eq!(f.wrong_password(a, "report", &c), Duration::ZERO);
        // A successful login ends the burst.
        f.login_ok(a, "app");
        assert_eq!(f.wrong_password(a, "app", &c), Duration::ZERO);
        // Off.
        let mut off = cfg();
        off.login_throttle_max_ms = 0;
        for _ in 0..10 {
            assert_eq!(f.wrong_password(a, "x", &off), Duration::ZERO);
        }
    }
}
