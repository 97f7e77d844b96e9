//! Replication lag, measured rather than guessed: on the primary the monitor writes Sluice's
//! clock (ms since the epoch) into `sluice.heartbeat`; on each replica it reads the replicated
//! stamp back, and lag = now − stamp. A replica whose replication threads are not both running
//! has no lag figure and serves no reads. When the heartbeat cannot be written, the fallback
//! is `Seconds_Behind_Master` (NULL = unknown, never zero).

use std::time::Duration;

use mysql_async::prelude::Queryable;

use super::error::MonitorError;
use super::probe::{bounded, Replication};
use crate::cluster::LagSource;

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Writes Sluice's clock into the heartbeat row on the primary.
pub async fn write_heartbeat(
    c: &mut mysql_async::Conn,
    timeout: Duration,
) -> Result<(), MonitorError> {
    bounded(
        timeout,
        "heartbeat write",
        c.exec_drop(
            "REPLACE INTO sluice.heartbeat (id, ts_ms) VALUES (1, ?)",
            (now_ms(),),
        ),
    )
    .await
}

/// A replica's lag: the heartbeat when it is being written, else Seconds_Behind_Master; `None`
/// when replication is not running or the figure is NULL.
pub async fn measure(
    c: &mut mysql_async::Conn,
    replication: &Replication,
    heartbeat_written: bool,
    timeout: Duration,
) -> Result<(Option<u64>, LagSource), MonitorError> {
    if !replication.io_yes() || !replication.sql_running {
        return Ok((None, LagSource::None));
    }
    if heartbeat_written {
        let stamp: Result<Option<u64>, MonitorError> = bounded(
            timeout,
            "heartbeat read",
            c.query_first("SELECT ts_ms FROM sluice.heartbeat WHERE id = 1"),
        )
        .await;
        if let Ok(Some(ts)) = stamp {
            return Ok((Some(now_ms().saturating_sub(ts)), LagSource::Heartbeat));
        }
    }
    Ok((
        replication.seconds_behind.map(|s| s * 1000),
        LagSource::SecondsBehindMaster,
    ))
}
