//! Answers the `SELECT @@…` queries that drivers and the `mariadb`/`mysql` clients send when
//! they connect (`@@version_comment`, `@@max_allowed_packet`, …), with plain values.

use super::{AdminCtx, Reply, ResultSet};

fn value(ctx: &AdminCtx, item: &str) -> Option<String> {
    let name = item.trim_start_matches("@@").to_ascii_lowercase();
    let name = name
        .strip_prefix("session.")
        .or_else(|| name.strip_prefix("global."))
        .unwrap_or(&name)
        .to_string();
    Some(match name.as_str() {
        "version_comment" => "Sluice admin".into(),
        "version" | "version()" => super::VERSION.into(),
        "max_allowed_packet" => ctx.shared.config().proxy.max_packet_bytes.to_string(),
        "wait_timeout" | "interactive_timeout" => "28800".into(),
        "autocommit" => "1".into(),
        "character_set_client" | "character_set_connection" | "character_set_results" => {
            "utf8mb4".into()
        }
        "collation_connection" => "utf8mb4_general_ci".into(),
        "sql_mode" => String::new(),
        "time_zone" | "system_time_zone" => "UTC".into(),
        "tx_isolation" | "transaction_isolation" => "REPEATABLE-READ".into(),
        "lower_case_table_names" => "0".into(),
        "net_write_timeout" | "net_read_timeout" => "60".into(),
        "database()" => return None,
        "user()" => format!("{}@localhost", ctx.shared.config().admin.user),
        "connection_id()" => "0".into(),
        n if n.parse::<i64>().is_ok() => n.to_string(),
        _ => return None,
    })
}

pub(super) fn run(ctx: &AdminCtx, items: &[String]) -> Reply {
    let cols: Vec<&str> = items.iter().map(String::as_str).collect();
    let mut rs = ResultSet::new(&cols);
    rs.push(items.iter().map(|i| value(ctx, i)).collect());
    Reply::Rows(rs)
}
