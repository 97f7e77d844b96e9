//! Accounts read from the database (`[auth] source = "database"` or `"both"`): the primary's
//! `mysql.global_priv` (MariaDB) or `mysql.user` (MySQL), read with the monitor login every
//! `[auth] refresh_ms`, and at once (at most every `lookup_interval_ms`) when a client names
//! a user Sluice does not know. Sluice keeps the stored `mysql_native_password` hashes, never
//! a password: it checks a client's token against the hash, and the token then yields the
//! value that logs in to the servers ([`sluice_proto::scramble::native_stage1`]).
//!
//! Host patterns are matched as the server matches them: `%` and `_` wildcards, `ip/mask`,
//! `localhost` for loopback clients; the most specific host wins (exact before patterns, a
//! longer literal prefix before a shorter one, `%` last). Host names other than `localhost`
//! would need DNS, which Sluice does not do: such accounts never match. Anonymous accounts
//! (`''@host`) and roles are ignored.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::Row;

use crate::config::{DbCredential, UserConfig};

/// One account as the server stores it.
#[derive(Clone, PartialEq, Eq)]
pub struct Account {
    pub user: String,
    pub host: String,
    pub plugin: String,
    /// The stored hash; `Err` when it is not one Sluice can use.
    pub stored: Result<Option<[u8; 20]>, ()>,
    pub locked: bool,
    pub expired: bool,
}

impl std::fmt::Debug for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "'{}'@'{}' ({}{}{})",
            self.user,
            self.host,
            self.plugin,
            if self.locked { ", locked" } else { "" },
            if self.expired { ", expired" } else { "" }
        )
    }
}

/// What a login finds.
#[derive(Debug)]
pub enum Found {
    /// An account Sluice can verify: a user entry with its stored hash.
    User(UserConfig),
    /// The account exists but may not log in now (checked after the password, as the
    /// server does).
    Locked(UserConfig),
    Expired(UserConfig),
    /// The account's plugin is one Sluice cannot verify (ed25519, PAM, GSSAPI, unix_socket,
    /// caching_sha2_password's stored form, …).
    Unsupported {
        account: String,
        plugin: String,
    },
    /// No account of that name matches the client's address.
    Unknown,
}

const NATIVE: &str = "mysql_native_password";

/// The accounts, shared by every session.
#[derive(Default)]
pub struct Accounts {
    table: RwLock<Arc<Vec<Account>>>,
    /// When the accounts were last read (successfully or not): the lookup throttle.
    last_attempt: tokio::sync::Mutex<Option<Instant>>,
    /// Reads of the accounts table (`sluice_auth_account_loads_total`).
    pub loads: AtomicU64,
    pub load_errors: AtomicU64,
    /// Accounts in the table now.
    pub count: AtomicU64,
    /// The last error, for `SHOW AUTH` and the log.
    pub last_error: RwLock<Option<String>>,
}

impl Accounts {
    /// The account `name` logs in as from `ip`.
    pub fn find(&self, name: &[u8], ip: IpAddr) -> Found {
        let table = self.table.read().map(|t| t.clone()).unwrap_or_default();
        let Some(a) = table
            .iter()
            .find(|a| a.user.as_bytes() == name && host_matches(&a.host, ip))
        else {
            return Found::Unknown;
        };
        if a.plugin != NATIVE && !(a.plugin.is_empty() && a.stored.is_ok()) {
            return Found::Unsupported {
                account: format!("'{}'@'{}'", a.user, a.host),
                plugin: a.plugin.clone(),
            };
        }
        let Ok(stored) = a.stored else {
            return Found::Unsupported {
                account: format!("'{}'@'{}'", a.user, a.host),
                plugin: format!("{} with a hash that is not one", a.plugin),
            };
        };
        let mut u = UserConfig::new(&a.user, "");
        u.auth_plugins = vec![NATIVE.to_string()];
        u.db = Some(DbCredential {
            stored,
            stage1: None,
        });
        if a.locked {
            Found::Locked(u)
        } else if a.expired {
            Found::Expired(u)
        } else {
            Found::User(u)
        }
    }

    /// The accounts in matching order.
    pub fn list(&self) -> Vec<Account> {
        self.table
            .read()
            .map(|t| t.as_ref().clone())
            .unwrap_or_default()
    }

    /// Replaces the table.
    pub fn set(&self, mut accounts: Vec<Account>) {
        accounts.retain(|a| !a.user.is_empty());
        // Stable: among equally specific hosts the server's order (by user) stays.
        accounts.sort_by_key(|a| std::cmp::Reverse(specificity(&a.host)));
        self.count.store(accounts.len() as u64, Ordering::Relaxed);
        if let Ok(mut t) = self.table.write() {
            *t = Arc::new(accounts);
        }
    }

    /// Reads the accounts from `address` with the monitor login and replaces the table.
    pub async fn load(&self, source: &LoadSource) -> Result<usize, String> {
        *self.last_attempt.lock().await = Some(Instant::now());
        self.loads.fetch_add(1, Ordering::Relaxed);
        match read_accounts(source).await {
            Ok(list) => {
                let n = list.len();
                self.set(list);
                if let Ok(mut e) = self.last_error.write() {
                    *e = None;
                }
                Ok(n)
            }
            Err(e) => {
                self.load_errors.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut slot) = self.last_error.write() {
                    *slot = Some(e.clone());
                }
                Err(e)
            }
        }
    }

    /// For an unknown user: reads the accounts again unless that was done less than
    /// `interval` ago (one read at a time; a burst of unknown names costs one read).
    pub async fn load_if_older(&self, source: &LoadSource, interval: Duration) {
        {
            let last = self.last_attempt.lock().await;
            if last.is_some_and(|t| t.elapsed() < interval) {
                return;
            }
        }
        if let Err(e) = self.load(source).await {
            tracing::warn!(error = %e, "account source unavailable: an unknown user is refused (1045); the accounts read before stay in force");
        }
    }

    /// Logs (at most once per `interval`) that an unknown user could not be looked up.
    pub fn unavailable(&self, why: &str, interval: Duration) {
        let Ok(mut last) = self.last_attempt.try_lock() else {
            return;
        };
        if last.is_some_and(|t| t.elapsed() < interval) {
            return;
        }
        *last = Some(Instant::now());
        tracing::warn!(reason = why, "account source unavailable: an unknown user is refused (1045); the accounts read before stay in force");
    }
}

/// Where and how to read the accounts.
pub struct LoadSource {
    pub address: String,
    pub user: String,
    pub password: String,
    pub timeout: Duration,
    /// `[backend_tls]` for this server, when it is reached over TLS.
    pub tls: Option<Arc<crate::tls::BackendTls>>,
}

async fn read_accounts(src: &LoadSource) -> Result<Vec<Account>, String> {
    let (host, port) = src
        .address
        .rsplit_once(':')
        .ok_or_else(|| format!("bad address {}", src.address))?;
    let opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname(host.to_string())
        .tcp_port(
            port.parse()
                .map_err(|_| format!("bad port in {}", src.address))?,
        )
        .user(Some(src.user.clone()))
        .pass(Some(src.password.clone()))
        .prefer_socket(false)
        .ssl_opts(src.tls.as_deref().map(crate::monitor::probe::ssl_opts));
    let work = async {
        let mut c = mysql_async::Conn::new(opts).await?;
        let now: i64 = c
            .query_first("SELECT UNIX_TIMESTAMP()")
            .await?
            .unwrap_or_default();
        // MariaDB 10.4+: one JSON document per account.
        let r: Result<Vec<Row>, _> = c
            .query(
                "SELECT User, Host, JSON_VALUE(Priv, '$.plugin'), \
                 JSON_VALUE(Priv, '$.authentication_string'), \
                 JSON_VALUE(Priv, '$.account_locked'), \
                 JSON_VALUE(Priv, '$.password_last_changed'), \
                 JSON_VALUE(Priv, '$.password_lifetime'), \
                 JSON_VALUE(Priv, '$.is_role'), @@default_password_lifetime \
                 FROM mysql.global_priv",
            )
            .await;
        let accounts = match r {
            Ok(rows) => rows
                .iter()
                .filter_map(|r| mariadb_account(r, now))
                .collect(),
            // MySQL: mysql.user has the columns.
            Err(mysql_async::Error::Server(e)) if e.code == 1146 => {
                let rows: Vec<Row> = c
                    .query(
                        "SELECT User, Host, plugin, authentication_string, account_locked, \
                         password_expired, UNIX_TIMESTAMP(password_last_changed), \
                         password_lifetime, @@default_password_lifetime FROM mysql.user",
                    )
                    .await?;
                rows.iter().filter_map(|r| mysql_account(r, now)).collect()
            }
            Err(e) => return Err(e),
        };
        let _ = c.disconnect().await;
        Ok::<_, mysql_async::Error>(accounts)
    };
    match tokio::time::timeout(src.timeout, work).await {
        Ok(Ok(a)) => Ok(a),
        Ok(Err(e)) => Err(format!("reading the accounts from {}: {e}", src.address)),
        Err(_) => Err(format!(
            "reading the accounts from {} timed out after {:?}",
            src.address, src.timeout
        )),
    }
}

fn col(r: &Row, i: usize) -> Option<String> {
    r.get_opt::<Option<String>, _>(i)
        .and_then(Result::ok)
        .flatten()
}

fn num(r: &Row, i: usize) -> Option<i64> {
    col(r, i).and_then(|s| s.trim().parse::<f64>().ok().map(|f| f as i64))
}

/// Expired by age: `lifetime` days (-1 or NULL = the server's default, 0 = never).
fn aged(now: i64, last_changed: Option<i64>, lifetime: Option<i64>, default: Option<i64>) -> bool {
    let days = match lifetime {
        Some(d) if d >= 0 => d,
        _ => default.unwrap_or(0),
    };
    match last_changed {
        Some(t) if days > 0 => t + days * 86_400 < now,
        _ => false,
    }
}

fn mariadb_account(r: &Row, now: i64) -> Option<Account> {
    if col(r, 7).is_some_and(|v| v == "true" || v == "1") {
        return None;
    }
    let plugin = col(r, 2).unwrap_or_default();
    let auth = col(r, 3).unwrap_or_default();
    let last_changed = num(r, 5);
    Some(Account {
        user: col(r, 0)?,
        host: col(r, 1)?,
        stored: if plugin == NATIVE || plugin.is_empty() {
            sluice_proto::scramble::parse_native_hash(&auth).map_err(|_| ())
        } else {
            Err(())
        },
        plugin: if plugin.is_empty() {
            NATIVE.into()
        } else {
            plugin
        },
        locked: col(r, 4).is_some_and(|v| v == "true" || v == "1"),
        // `PASSWORD EXPIRE` sets the last change to 0.
        expired: last_changed == Some(0) || aged(now, last_changed, num(r, 6), num(r, 8)),
    })
}

fn mysql_account(r: &Row, now: i64) -> Option<Account> {
    let plugin = col(r, 2).unwrap_or_default();
    let auth = col(r, 3).unwrap_or_default();
    Some(Account {
        user: col(r, 0)?,
        host: col(r, 1)?,
        stored: if plugin == NATIVE {
            sluice_proto::scramble::parse_native_hash(&auth).map_err(|_| ())
        } else {
            Err(())
        },
        plugin,
        locked: col(r, 4).is_some_and(|v| v == "Y"),
        expired: col(r, 5).is_some_and(|v| v == "Y") || aged(now, num(r, 6), num(r, 7), num(r, 8)),
    })
}

/// How specific a host pattern is (higher first): an exact host or IP, then `ip/mask`, then
/// patterns by the length of their literal prefix, `%` (or empty) last.
fn specificity(host: &str) -> (u8, usize) {
    match host.find(['%', '_']) {
        None if host.contains('/') => (2, host.len()),
        None => (3, host.len()),
        Some(0) => (0, 0),
        Some(i) => (1, i),
    }
}

/// Whether a client at `ip` matches the account host `pattern`.
pub fn host_matches(pattern: &str, ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    let text = ip.to_string();
    if pattern.is_empty() || pattern == "%" {
        return true;
    }
    if let Some((net, mask)) = pattern.split_once('/') {
        return match (ip, net.parse::<IpAddr>(), mask.parse::<IpAddr>()) {
            (IpAddr::V4(a), Ok(IpAddr::V4(n)), Ok(IpAddr::V4(m))) => {
                u32::from(a) & u32::from(m) == u32::from(n)
            }
            _ => false,
        };
    }
    like(pattern.as_bytes(), text.as_bytes())
        || (ip.is_loopback() && like(pattern.as_bytes(), b"localhost"))
}

/// SQL `LIKE` with `%` and `_` (case-insensitive, as host names are), without recursion
/// blow-up: the classic greedy match with one backtrack point.
fn like(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && (p[pi] == b'_' || p[pi].eq_ignore_ascii_case(&s[si])) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == b'%' {
            star = Some((pi, si));
            pi += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'%')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn account(user: &str, host: &str, plugin: &str) -> Account {
        Account {
            user: user.into(),
            host: host.into(),
            plugin: plugin.into(),
            stored: Ok(Some(sluice_proto::scramble::native_hash(b"pw"))),
            locked: false,
            expired: false,
        }
    }

    #[test]
    fn host_patterns_match_as_the_server_matches_them() {
        assert!(host_matches("%", ip("10.1.2.3")));
        assert!(host_matches("10.%", ip("10.1.2.3")));
        assert!(!host_matches("10.%", ip("110.1.2.3")));
        assert!(host_matches("10.1.2._", ip("10.1.2.3")));
        assert!(!host_matches("10.1.2._", ip("10.1.2.33")));
        assert!(host_matches("10.1.0.0/255.255.0.0", ip("10.1.200.3")));
        assert!(!host_matches("10.1.0.0/255.255.0.0", ip("10.2.0.3")));
        assert!(host_matches("localhost", ip("127.0.0.1")));
        assert!(host_matches("LOCALHOST", ip("::1")));
        assert!(!host_matches("localhost", ip("10.0.0.1")));
        assert!(host_matches("127.0.0.1", ip("::ffff:127.0.0.1")));
        assert!(!host_matches("db.example.com", ip("10.0.0.1")));
        assert!(host_matches("%.%.%.%", ip("1.2.3.4")));
        assert!(!like(b"a%b%c", b"aXbY"));
        assert!(like(b"a%b%c", b"aXbYc"));
    }

    #[test]
    fn the_most_specific_host_wins_and_states_are_reported() {
        let a = Accounts::default();
        let mut locked = account("app", "127.0.0.1", NATIVE);
        locked.locked = true;
        a.set(vec![
            account("app", "%", NATIVE),
            account("app", "10.%", "ed25519"),
            locked,
            account("", "%", NATIVE),
        ]);
        assert!(matches!(a.find(b"app", ip("192.168.1.1")), Found::User(_)));
        assert!(matches!(
            a.find(b"app", ip("10.0.0.7")),
            Found::Unsupported { .. }
        ));
        assert!(matches!(a.find(b"app", ip("127.0.0.1")), Found::Locked(_)));
        assert!(matches!(a.find(b"nobody", ip("127.0.0.1")), Found::Unknown));
        assert!(matches!(a.find(b"", ip("127.0.0.1")), Found::Unknown));
        let Found::User(u) = a.find(b"app", ip("192.168.1.1")) else {
            unreachable!()
        };
        assert_eq!(u.auth_plugins, [NATIVE]);
        assert!(u.db.is_some() && u.password.is_empty());
    }

    #[test]
    fn expiry_by_age_follows_the_lifetime_and_the_default() {
        let day = 86_400;
        assert!(!aged(100 * day, Some(0), Some(0), Some(1)));
        assert!(aged(100 * day, Some(day), Some(10), None));
        assert!(!aged(100 * day, Some(95 * day), Some(10), None));
        assert!(aged(100 * day, Some(day), Some(-1), Some(30)));
        assert!(!aged(100 * day, Some(day), None, Some(0)));
    }
}
