//! Commands that act through the monitor: `SET SERVER name OFFLINE|ONLINE`,
//! `SWITCHOVER TO name`, `FAILOVER ACKNOWLEDGE`.

use super::{AdminCtx, Reply};
use crate::monitor::Command;

pub(super) async fn run(ctx: &AdminCtx, cmd: Command) -> Reply {
    match ctx.monitor.send(cmd).await {
        Ok(info) => Reply::Ok(info),
        Err(e) => Reply::error(9030, b"HY000", format!("Sluice admin: {e}")),
    }
}
