//! The admin port: a small MySQL-protocol server that any MySQL client can query
//! (`mariadb -h127.0.0.1 -P6032 -uadmin -p`), serving the proxy's state as tables and taking
//! operator commands. docs/admin.md lists every statement with example output.
//!
//! It is built on `sluice-proto` (the same greeting and `mysql_native_password` check as the
//! client port, with a random salt per connection) plus a text result-set writer, not on
//! `opensrv-mysql`: its newest release (0.7.0) has the pre-authentication use-after-free and
//! a constant salt. One file per statement; [`command::AdminCommand`]
//! dispatches. It starts only when `[admin] password` is set.

mod command;
mod hosts;
mod kill_session;
mod operate;
mod query_digest;
mod resultset;
mod show_config;
mod show_failovers;
mod show_pins;
mod show_pools;
mod show_rules;
mod show_servers;
mod show_sessions;
mod show_stats;
mod variables;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_proto::command::{COM_INIT_DB, COM_PING, COM_QUERY, COM_QUIT};
use sluice_proto::err::ErrPacket;
use sluice_proto::flags::status;
use sluice_proto::ok::OkPacket;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use command::AdminCommand;
pub use resultset::ResultSet;

use crate::config::UserConfig;
use crate::frontend::client::ClientConn;
use crate::frontend::handshake;
use crate::monitor::{Command, MonitorHandle};
use crate::state::Shared;

/// The version string the admin port reports.
pub const VERSION: &str = "5.5.5-10.11.0-Sluice-admin";

/// What an admin statement answers.
pub enum Reply {
    Rows(ResultSet),
    /// OK with an info message.
    Ok(String),
    Err(ErrPacket),
}

impl Reply {
    fn error(code: u16, state: &[u8; 5], msg: impl Into<String>) -> Reply {
        Reply::Err(ErrPacket::new(code, state, msg.into()))
    }
}

/// What the admin statements read and act on.
pub struct AdminCtx {
    pub shared: Arc<Shared>,
    pub monitor: MonitorHandle,
    /// For `queries_per_s` in SHOW SERVERS: the totals at the previous look.
    last_rates: Mutex<(Instant, Vec<u64>)>,
}

impl AdminCtx {
    pub fn new(shared: Arc<Shared>, monitor: MonitorHandle) -> Self {
        let n = shared.routing().slots.len();
        AdminCtx {
            shared,
            monitor,
            last_rates: Mutex::new((Instant::now(), vec![0; n])),
        }
    }

    /// Queries per second per server since the previous call (or since start).
    fn query_rates(&self) -> Vec<f64> {
        let now: Vec<u64> = self
            .shared
            .routing()
            .slots
            .iter()
            .map(|s| s.queries.load(Ordering::Relaxed))
            .collect();
        let Ok(mut last) = self.last_rates.lock() else {
            return vec![0.0; now.len()];
        };
        // Servers added by a reload start from 0.
        last.1.resize(now.len(), 0);
        let secs = last.0.elapsed().as_secs_f64().max(0.001);
        let rates = now
            .iter()
            .zip(&last.1)
            .map(|(n, l)| n.saturating_sub(*l) as f64 / secs)
            .collect();
        *last = (Instant::now(), now);
        rates
    }

    async fn execute(&self, cmd: AdminCommand) -> Reply {
        match cmd {
            AdminCommand::ShowServers => show_servers::run(self, None),
            AdminCommand::SelectServers { filter } => show_servers::run(self, filter.as_ref()),
            AdminCommand::ShowPools => show_pools::run(self),
            AdminCommand::ShowPins => show_pins::run(self),
            AdminCommand::ResetPins => show_pins::reset(self),
            AdminCommand::ShowAccounts => show_pins::accounts(self),
            AdminCommand::ShowSessions => show_sessions::run(self),
            AdminCommand::ShowRules => show_rules::run(self),
            AdminCommand::ShowConfig => show_config::run(self),
            AdminCommand::ShowStats => show_stats::run(self),
            AdminCommand::ShowFailovers => show_failovers::run(self),
            AdminCommand::SetServer { name, online } => {
                operate::run(self, Command::SetServer { name, online }).await
            }
            AdminCommand::Switchover { to } => operate::run(self, Command::Switchover { to }).await,
            AdminCommand::FailoverAcknowledge => operate::run(self, Command::Acknowledge).await,
            AdminCommand::KillSession { id } => kill_session::run(self, id).await,
            AdminCommand::Reload => {
                match crate::reload::reload(&self.shared, &self.monitor).await {
                    Ok(msg) => Reply::Ok(msg),
                    Err(e) => {
                        Reply::error(9031, b"HY000", format!("Sluice admin: reload refused: {e}"))
                    }
                }
            }
            AdminCommand::Variables(items) => variables::run(self, &items),
            AdminCommand::Ignored => Reply::Ok(String::new()),
            AdminCommand::ShowQueryDigest => query_digest::show(self),
            AdminCommand::ResetQueryDigest => query_digest::reset(self),
            AdminCommand::ShowBlockedHosts => hosts::show(self),
            AdminCommand::FlushHosts => hosts::flush(self),
            AdminCommand::Empty => Reply::error(1065, b"42000", "Query was empty"),
            AdminCommand::Unknown(sql) => {
                let shown: String = sql.chars().take(80).collect();
                Reply::error(
                    1064,
                    b"42000",
                    format!(
                        "Sluice admin: unknown statement {shown:?}; supported: {}",
                        command::HELP
                    ),
                )
            }
        }
    }
}

/// Accepts admin clients until shutdown.
pub async fn serve(listener: TcpListener, ctx: Arc<AdminCtx>, mut shutdown: watch::Receiver<bool>) {
    let mut next_id = 1u32;
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let _ = stream.set_nodelay(true);
        let ctx = ctx.clone();
        let id = next_id;
        next_id = next_id.wrapping_add(1);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let client = ClientConn::new(stream, peer, 1 << 20);
            if let Err(e) = connection(ctx, client, id, shutdown).await {
                tracing::debug!(client = %peer, error = %e, "admin connection ended");
            }
        });
    }
}

async fn connection(
    ctx: Arc<AdminCtx>,
    mut client: ClientConn,
    id: u32,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), crate::frontend::SessionError> {
    let config = ctx.shared.config();
    let admin = &config.admin;
    let users = [UserConfig::new(
        &admin.user,
        admin.password.as_deref().unwrap_or_default(),
    )];
    let timeout = Duration::from_millis(config.proxy.handshake_timeout_ms);
    let auth = match tokio::time::timeout(
        timeout,
        handshake::authenticate(
            &mut client,
            &handshake::Users::List(&users),
            id,
            None,
            &Default::default(),
            &|_| Duration::ZERO,
        ),
    )
    .await
    {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => {
            tracing::info!(client = %client.peer, error = %e, "admin login refused");
            return Ok(());
        }
        Err(_) => return Ok(()),
    };
    let caps = auth.capabilities;
    let ok = |info: &str| {
        OkPacket {
            header: 0,
            affected_rows: 0,
            last_insert_id: 0,
            status: status::SERVER_STATUS_AUTOCOMMIT,
            warnings: 0,
            info: info.as_bytes().to_vec(),
            session_state: None,
        }
        .encode(caps)
    };
    client.write_packet(auth.next_seq, &ok("")).await?;
    tracing::info!(client = %client.peer, "admin client logged in");
    loop {
        let pkt = tokio::select! {
            r = client.read_packet() => r,
            _ = shutdown.changed() => return Ok(()),
        };
        let pkt = match pkt {
            Ok(p) => p,
            Err(crate::frontend::SessionError::TooLarge(_)) => {
                let e = crate::errors::packet_too_large();
                let _ = client.send_err(1, &e).await;
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let seq = pkt.last_seq.wrapping_add(1);
        match pkt.payload.first().copied() {
            None => {
                let e = ErrPacket::new(1835, b"08S01", "Malformed communication packet");
                client.send_err(seq, &e).await?;
            }
            Some(COM_QUIT) => {
                let _ = client.stream.shutdown().await;
                return Ok(());
            }
            Some(COM_PING) | Some(COM_INIT_DB) => client.write_packet(seq, &ok("")).await?,
            Some(COM_QUERY) => {
                let sql = String::from_utf8_lossy(&pkt.payload[1..]).into_owned();
                let cmd = AdminCommand::parse(&sql);
                tracing::debug!(command = cmd.name(), "admin statement");
                ctx.shared.metrics.admin_command(cmd.name());
                match ctx.execute(cmd).await {
                    Reply::Rows(rs) => {
                        let out = rs.encode(seq, caps);
                        client.write_all(&out).await?;
                    }
                    Reply::Ok(info) => client.write_packet(seq, &ok(&info)).await?,
                    Reply::Err(e) => client.send_err(seq, &e).await?,
                }
            }
            Some(other) => {
                client
                    .send_err(seq, &crate::errors::unknown_command(other))
                    .await?
            }
        }
    }
}
