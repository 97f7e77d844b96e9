//! The admin port's statements, parsed from the query text (case-insensitive, surrounding
//! whitespace and a trailing `;` ignored). Each variant is served by its own file.

/// One admin statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminCommand {
    ShowServers,
    ShowPools,
    ShowSessions,
    ShowRules,
    ShowConfig,
    ShowStats,
    ShowFailovers,
    /// `SELECT * FROM servers [WHERE column = 'value']`.
    SelectServers {
        filter: Option<(String, String)>,
    },
    SetServer {
        name: String,
        online: bool,
    },
    Switchover {
        to: String,
    },
    FailoverAcknowledge,
    KillSession {
        id: u32,
    },
    /// Re-read the config file and rule files.
    Reload,
    /// `SELECT @@var, …` and other client start-up chatter (`SELECT DATABASE()`, …).
    Variables(Vec<String>),
    /// `SET NAMES …`, `SET var = …`, `SET [SESSION] TRANSACTION …`, `COMMIT`, `ROLLBACK`:
    /// accepted and ignored (drivers send them at connect, pools on release).
    Ignored,
    ShowQueryDigest,
    ResetQueryDigest,
    /// Statement shapes that pinned sessions, most frequent first.
    ShowPins,
    ResetPins,
    /// Accounts read from the database (`[auth] source`), without their hashes.
    ShowAccounts,
    /// Addresses blocked after failed logins.
    ShowBlockedHosts,
    /// Lift every block.
    FlushHosts,
    Empty,
    Unknown(String),
}

fn words(sql: &str) -> Vec<String> {
    sql.split_whitespace()
        .map(str::to_ascii_uppercase)
        .collect()
}

fn unquote(s: &str) -> String {
    s.trim()
        .trim_matches(|c| c == '\'' || c == '"' || c == '`')
        .to_string()
}

impl AdminCommand {
    pub fn parse(sql: &str) -> AdminCommand {
        let sql = sql.trim().trim_end_matches(';').trim();
        if sql.is_empty() {
            return AdminCommand::Empty;
        }
        let w = words(sql);
        let ws: Vec<&str> = w.iter().map(String::as_str).collect();
        match ws.as_slice() {
            ["SHOW", "SERVERS"] => AdminCommand::ShowServers,
            ["SHOW", "POOLS"] => AdminCommand::ShowPools,
            ["SHOW", "SESSIONS"] | ["SHOW", "PROCESSLIST"] => AdminCommand::ShowSessions,
            ["SHOW", "RULES"] => AdminCommand::ShowRules,
            ["SHOW", "CONFIG"] => AdminCommand::ShowConfig,
            ["SHOW", "STATS"] => AdminCommand::ShowStats,
            ["SHOW", "FAILOVERS"] => AdminCommand::ShowFailovers,
            ["SHOW", "QUERY", "DIGEST"] => AdminCommand::ShowQueryDigest,
            ["RESET", "QUERY", "DIGEST"] => AdminCommand::ResetQueryDigest,
            ["SHOW", "PINS"] => AdminCommand::ShowPins,
            ["SHOW", "ACCOUNTS"] => AdminCommand::ShowAccounts,
            ["RESET", "PINS"] => AdminCommand::ResetPins,
            ["SHOW", "BLOCKED", "HOSTS"] => AdminCommand::ShowBlockedHosts,
            ["FLUSH", "HOSTS"] => AdminCommand::FlushHosts,
            ["RELOAD"] => AdminCommand::Reload,
            ["FAILOVER", "ACKNOWLEDGE"] => AdminCommand::FailoverAcknowledge,
            ["SWITCHOVER", "TO", _] => AdminCommand::Switchover {
                to: unquote(sql.split_whitespace().nth(2).unwrap_or("")),
            },
            ["SET", "SERVER", _, state @ ("ONLINE" | "OFFLINE")] => AdminCommand::SetServer {
                name: unquote(sql.split_whitespace().nth(2).unwrap_or("")),
                online: *state == "ONLINE",
            },
            ["KILL", "SESSION", id] | ["KILL", id] => match id.parse() {
                Ok(id) => AdminCommand::KillSession { id },
                Err(_) => AdminCommand::Unknown(sql.to_string()),
            },
            ["SELECT", "*", "FROM", "SERVERS"] => AdminCommand::SelectServers { filter: None },
            ["SELECT", "*", "FROM", "SERVERS", "WHERE", ..] => {
                let cond = sql.split_whitespace().skip(5).collect::<Vec<_>>().join(" ");
                match cond.split_once('=') {
                    Some((col, val)) => AdminCommand::SelectServers {
                        filter: Some((col.trim().to_ascii_lowercase(), unquote(val))),
                    },
                    None => AdminCommand::Unknown(sql.to_string()),
                }
            }
            // What client libraries send on connect or when a pool hands a connection back
            // is accepted without effect; any other SET (a mistyped `SET SERVER db2 OFLINE`),
            // USE or BEGIN is an error, never a silent no-op.
            ["SET", "SERVER", ..] => AdminCommand::Unknown(sql.to_string()),
            ["SET", "NAMES" | "CHARACTER" | "CHARSET" | "TRANSACTION", ..]
            | ["SET", "SESSION" | "LOCAL", "TRANSACTION", ..]
            | ["COMMIT"]
            | ["ROLLBACK"] => AdminCommand::Ignored,
            ["SET", ..] if sql.contains('=') => AdminCommand::Ignored,
            ["SELECT", ..] => {
                // `SELECT @@a, @@b LIMIT 1`, `SELECT DATABASE()`, `SELECT 1`.
                let list = sql[6..]
                    .split(|c: char| c.is_ascii_whitespace())
                    .take_while(|t| !t.eq_ignore_ascii_case("limit"))
                    .collect::<Vec<_>>()
                    .join(" ");
                let items: Vec<String> = list
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect();
                let known = items.iter().all(|i| {
                    i.starts_with("@@")
                        || i.eq_ignore_ascii_case("database()")
                        || i.eq_ignore_ascii_case("version()")
                        || i.eq_ignore_ascii_case("user()")
                        || i.eq_ignore_ascii_case("connection_id()")
                        || i.parse::<i64>().is_ok()
                });
                if known && !items.is_empty() {
                    AdminCommand::Variables(items)
                } else {
                    AdminCommand::Unknown(sql.to_string())
                }
            }
            _ => AdminCommand::Unknown(sql.to_string()),
        }
    }

    /// Short name, for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            AdminCommand::ShowServers => "show_servers",
            AdminCommand::ShowPools => "show_pools",
            AdminCommand::ShowSessions => "show_sessions",
            AdminCommand::ShowRules => "show_rules",
            AdminCommand::ShowConfig => "show_config",
            AdminCommand::ShowStats => "show_stats",
            AdminCommand::ShowFailovers => "show_failovers",
            AdminCommand::SelectServers { .. } => "select_servers",
            AdminCommand::SetServer { .. } => "set_server",
            AdminCommand::Switchover { .. } => "switchover",
            AdminCommand::FailoverAcknowledge => "failover_acknowledge",
            AdminCommand::KillSession { .. } => "kill_session",
            AdminCommand::Reload => "reload",
            AdminCommand::Variables(_) => "variables",
            AdminCommand::Ignored => "ignored",
            AdminCommand::ShowQueryDigest => "show_query_digest",
            AdminCommand::ResetQueryDigest => "reset_query_digest",
            AdminCommand::ShowPins => "show_pins",
            AdminCommand::ResetPins => "reset_pins",
            AdminCommand::ShowAccounts => "show_accounts",
            AdminCommand::ShowBlockedHosts => "show_blocked_hosts",
            AdminCommand::FlushHosts => "flush_hosts",
            AdminCommand::Empty => "empty",
            AdminCommand::Unknown(_) => "unknown",
        }
    }
}

/// What the admin port understands, for error messages.
pub const HELP: &str = "SHOW SERVERS | SHOW POOLS | SHOW SESSIONS | SHOW RULES | SHOW CONFIG | \
     SHOW STATS | SHOW QUERY DIGEST | RESET QUERY DIGEST | SHOW PINS | RESET PINS | SHOW FAILOVERS | SHOW BLOCKED HOSTS | FLUSH HOSTS | SELECT * FROM servers [WHERE col = 'v'] | \
     SET SERVER name OFFLINE|ONLINE | SWITCHOVER TO name | FAILOVER ACKNOWLEDGE | \
     KILL SESSION id | RELOAD";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_statements() {
        use AdminCommand::*;
        assert_eq!(AdminCommand::parse(" show servers ; "), ShowServers);
        assert_eq!(AdminCommand::parse("SHOW POOLS"), ShowPools);
        assert_eq!(
            AdminCommand::parse("switchover to db2"),
            Switchover { to: "db2".into() }
        );
        assert_eq!(
            AdminCommand::parse("SET SERVER 'db3' OFFLINE"),
            SetServer {
                name: "db3".into(),
                online: false
            }
        );
        assert_eq!(
            AdminCommand::parse("kill session 42"),
            KillSession { id: 42 }
        );
        assert_eq!(
            AdminCommand::parse("SELECT * FROM servers WHERE role = 'replica'"),
            SelectServers {
                filter: Some(("role".into(), "replica".into()))
            }
        );
        assert_eq!(
            AdminCommand::parse("select @@version_comment limit 1"),
            Variables(vec!["@@version_comment".into()])
        );
        assert_eq!(AdminCommand::parse("show query digest"), ShowQueryDigest);
        assert_eq!(AdminCommand::parse("RESET QUERY DIGEST;"), ResetQueryDigest);
        assert_eq!(AdminCommand::parse(";"), Empty);
        assert_eq!(AdminCommand::parse(""), Empty);
        assert!(matches!(AdminCommand::parse("DROP TABLE x"), Unknown(_)));
        assert!(matches!(
            AdminCommand::parse("\u{0}\u{1}garbage"),
            Unknown(_)
        ));
        assert!(matches!(AdminCommand::parse("KILL SESSION x"), Unknown(_)));
        // Driver chatter is accepted; typos and statements without effect here are not.
        for ok in [
            "SET NAMES utf8mb4",
            "SET NAMES 'utf8mb4' COLLATE 'utf8mb4_general_ci'",
            "set autocommit=1",
            "SET SESSION sql_mode = 'TRADITIONAL'",
            "SET @@session.time_zone='+00:00'",
            "SET character_set_results = NULL",
            "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
            "SET CHARACTER SET utf8",
            "ROLLBACK",
            "commit",
        ] {
            assert_eq!(AdminCommand::parse(ok), Ignored, "{ok}");
        }
        for bad in [
            "SET SERVER db2 OFLINE",
            "SET SERVER db2",
            "SET SEVRER db2 OFFLINE",
            "USE sluice",
            "BEGIN",
            "START TRANSACTION",
        ] {
            assert!(matches!(AdminCommand::parse(bad), Unknown(_)), "{bad}");
        }
        assert!(matches!(
            AdminCommand::parse("SELECT * FROM users"),
            Unknown(_)
        ));
    }
}
