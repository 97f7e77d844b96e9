//! Applying a changed configuration file without a restart (SIGHUP, admin `RELOAD`).
//!
//! The file and its rule files are read and validated whole; an invalid one changes nothing.
//! A valid one is applied in this order: the monitor takes the new server list, `[monitor]`
//! settings and credentials (it refuses, and nothing is applied, if the change would remove
//! or move the primary); servers added get a pool, removed ones have their pool retired (idle
//! connections closed now, busy ones when their session gives them back); pool bounds are
//! resized; then one new snapshot (configuration, servers, pool bounds, `[routing]`, rules)
//! replaces the old one, and each session switches to it at its next command — no client
//! connection is dropped. Listen addresses cannot move without a restart: such a change is
//! reported and the old address stays in use.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::config::{Config, ServerConfig};
use crate::monitor::{Command, MonitorHandle};
use crate::state::{pool_limits, ServerSlot, Shared};

/// Re-reads the config file the proxy was started from (and its rule files) and applies it.
/// Returns a summary, or the error (file, key, reason) when nothing was applied.
pub async fn reload(shared: &Shared, monitor: &MonitorHandle) -> Result<String, String> {
    let _one_at_a_time = shared.reload_lock.lock().await;
    let result = apply(shared, monitor).await;
    let counter = match &result {
        Ok(_) => &shared.reloads_ok,
        Err(_) => &shared.reloads_failed,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    match &result {
        Ok(msg) => tracing::info!(%msg, "configuration reloaded"),
        Err(e) => {
            tracing::error!(error = %e, "configuration reload refused; the old configuration stays in force")
        }
    }
    result
}

/// The server list after a reload: the current one (indices never change), with servers the
/// file no longer names — or names at another address — flagged `removed`, settings of kept
/// servers updated, and new servers appended. Also says what changed.
pub fn plan_servers(
    current: &[ServerConfig],
    file: &[ServerConfig],
) -> (Vec<ServerConfig>, Vec<String>) {
    let mut out = current.to_vec();
    let mut changes = Vec::new();
    let mut matched = vec![false; file.len()];
    let mut moved = Vec::new();
    for s in out.iter_mut().filter(|s| !s.removed) {
        match file.iter().position(|f| f.name == s.name) {
            Some(j) if file[j].address == s.address => {
                matched[j] = true;
                if file[j] != *s {
                    changes.push(format!("server {} updated", s.name));
                    *s = file[j].clone();
                }
            }
            Some(j) => {
                s.removed = true;
                moved.push(s.name.clone());
                changes.push(format!(
                    "server {} moved from {} to {}",
                    s.name, s.address, file[j].address
                ));
            }
            None => {
                s.removed = true;
                changes.push(format!("server {} removed", s.name));
            }
        }
    }
    for (f, _) in file.iter().zip(&matched).filter(|(_, m)| !**m) {
        if !moved.contains(&f.name) {
            changes.push(format!("server {} added", f.name));
        }
        out.push(f.clone());
    }
    (out, changes)
}

async fn apply(shared: &Shared, monitor: &MonitorHandle) -> Result<String, String> {
    let current = shared.routing();
    let old = &current.config;
    let path = old
        .source
        .as_ref()
        .ok_or("this proxy was not started from a config file: nothing to reload")?;
    let mut new = Config::load(path).map_err(|e| e.to_string())?;
    let rules =
        crate::router::rules::load(&new.routing.rules, &new.base_dir).map_err(|e| e.to_string())?;

    // Certificates are read again (a renewed one is picked up); a broken one refuses all.
    let tls = crate::tls::client_acceptor(&new).map_err(|e| format!("{}: {e}", path.display()))?;
    let backend_tls =
        crate::tls::backend_tls(&new).map_err(|e| format!("{}: {e}", path.display()))?;
    let (servers, mut applied) = plan_servers(&old.servers, &new.servers);
    new.servers = servers;
    let mut restart = Vec::new();
    if new.proxy.listen != old.proxy.listen {
        restart.push("[proxy] listen");
    }
    if new.proxy.worker_threads != old.proxy.worker_threads {
        restart.push("[proxy] worker_threads");
    }
    if new.proxy.scheduler != old.proxy.scheduler {
        restart.push("[proxy] scheduler");
    }
    if new.admin.listen != old.admin.listen
        || new.admin.allow_remote_plaintext != old.admin.allow_remote_plaintext
        || new.admin.password.is_some() != old.admin.password.is_some()
    {
        restart.push("[admin] listen/allow_remote_plaintext/turning the port on or off");
    }
    if new.metrics != old.metrics {
        restart.push("[metrics] listen");
    }
    // Keep what cannot change in place as it is, so that the snapshot tells the truth.
    new.proxy.listen = old.proxy.listen.clone();
    new.proxy.worker_threads = old.proxy.worker_threads;
    new.proxy.scheduler = old.proxy.scheduler;
    new.admin.listen = old.admin.listen.clone();
    new.admin.allow_remote_plaintext = old.admin.allow_remote_plaintext;
    if new.admin.password.is_some() != old.admin.password.is_some() {
        new.admin.password = old.admin.password.clone();
    }
    new.metrics = old.metrics.clone();
    if new.proxy != old.proxy {
        applied.push("[proxy] settings".into());
    }
    if new.users != old.users {
        applied.push("[[users]]".into());
    }
    if new.auth != old.auth {
        // The account reader picks the new settings up at its next round.
        applied.push("[auth]".into());
    }
    if new.admin != old.admin {
        applied.push("[admin] settings".into());
    }
    let new = Arc::new(new);

    // The monitor first: it refuses a change that would remove the primary.
    let monitor_said = monitor
        .send(Command::Reconfigure(new.clone()))
        .await
        .map_err(|e| format!("{}: {e}", path.display()))?;

    let limits = pool_limits(&new);
    let mut slots = current.slots.clone();
    let tls_changed = new.backend_tls != old.backend_tls;
    if tls_changed {
        applied.push("[backend_tls]".into());
    }
    for (i, (slot, s)) in slots.iter().zip(&new.servers).enumerate() {
        // New connections use the new TLS and compression settings; idle ones made with the
        // old are closed.
        if tls_changed
            || old
                .servers
                .get(i)
                .is_some_and(|o| o.tls != s.tls || o.compress != s.compress)
        {
            slot.pool
                .set_transport(crate::tls::for_server(backend_tls.as_ref(), s), s.compress);
        }
    }
    for s in &new.servers[slots.len()..] {
        let slot = ServerSlot::new(s, limits);
        slot.pool
            .set_transport(crate::tls::for_server(backend_tls.as_ref(), s), s.compress);
        slots.push(Arc::new(slot));
    }
    if limits.max_connections != current.pool_limits.max_connections
        || limits.max_idle != current.pool_limits.max_idle
        || limits.idle_timeout != current.pool_limits.idle_timeout
    {
        for slot in &slots {
            slot.pool.set_limits(&limits);
        }
    }
    for (slot, s) in slots.iter().zip(&new.servers) {
        if s.removed && !slot.pool.is_retired() {
            slot.pool.retire();
        }
    }
    shared
        .digests
        .configure(new.admin.query_digest, new.admin.query_digest_max_entries);
    let n = rules.len();
    let gen = shared.set_routing(new.clone(), slots, rules, tls);
    let mut msg = format!(
        "{}: applied (routing generation {gen}): [routing] max_lag_ms = {}, read_your_writes = {:?}, {n} rule(s)",
        path.display(),
        new.routing.max_lag_ms,
        new.routing.read_your_writes
    );
    if !applied.is_empty() {
        msg.push_str(&format!("; {}", applied.join(", ")));
    }
    if !monitor_said.is_empty() {
        msg.push_str(&format!("; monitor: {monitor_said}"));
    }
    if !restart.is_empty() {
        msg.push_str(&format!(
            "; changed but NOT applied (need a restart): {}",
            restart.join(", ")
        ));
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(name: &str, address: &str) -> ServerConfig {
        ServerConfig {
            name: name.into(),
            address: address.into(),
            weight: 1,
            no_promote: false,
            priority: 0,
            tls: None,
            compress: false,
            removed: false,
        }
    }

    #[test]
    fn indices_stay_put_across_plans() {
        let current = vec![server("a", "h:1"), server("b", "h:2"), server("c", "h:3")];
        let mut b2 = server("b", "h:2");
        b2.weight = 5;
        let file = vec![server("d", "h:4"), b2.clone(), server("a", "h:9")];
        let (out, changes) = plan_servers(&current, &file);
        let names: Vec<(&str, &str, bool)> = out
            .iter()
            .map(|s| (s.name.as_str(), s.address.as_str(), s.removed))
            .collect();
        assert_eq!(
            names,
            [
                ("a", "h:1", true),
                ("b", "h:2", false),
                ("c", "h:3", true),
                ("d", "h:4", false),
                ("a", "h:9", false),
            ]
        );
        assert_eq!(out[1].weight, 5);
        assert_eq!(changes.len(), 4, "{changes:?}");
        // Unchanged file: nothing changes, removed servers stay removed.
        let live: Vec<ServerConfig> = out.iter().filter(|s| !s.removed).cloned().collect();
        let (again, changes) = plan_servers(&out, &live);
        assert_eq!(again, out);
        assert!(changes.is_empty(), "{changes:?}");
    }
}
