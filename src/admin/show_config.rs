//! `SHOW CONFIG`: the configuration in force, one key per row, passwords masked.

use super::{AdminCtx, Reply, ResultSet};

fn flatten(prefix: &str, v: &toml::Value, rs: &mut ResultSet) {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, rs);
            }
        }
        toml::Value::Array(a) if a.iter().all(|x| x.is_table()) => {
            for (i, x) in a.iter().enumerate() {
                flatten(&format!("{prefix}[{i}]"), x, rs);
            }
        }
        other => rs.push(vec![Some(prefix.to_string()), Some(other.to_string())]),
    }
}

pub(super) fn run(ctx: &AdminCtx) -> Reply {
    let mut rs = ResultSet::new(&["key", "value"]);
    match ctx.shared.config().to_masked_toml().parse::<toml::Value>() {
        Ok(v) => flatten("", &v, &mut rs),
        Err(e) => return Reply::error(1105, b"HY000", format!("cannot render the config: {e}")),
    }
    Reply::Rows(rs)
}
