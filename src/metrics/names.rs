//! Every metric name Sluice exports, in one place (Prometheus conventions: `sluice_` prefix,
//! base units, `_total` for counters, `_seconds` for durations; label values come from small
//! fixed sets or the configured server names). docs/metrics.md describes each.

pub const CLIENT_CONNECTIONS: &str = "sluice_client_connections";
pub const WORKER_THREADS: &str = "sluice_worker_threads";
pub const BUILD_INFO: &str = "sluice_build_info";
pub const CLIENT_CONNECTIONS_TOTAL: &str = "sluice_client_connections_total";
pub const CLIENT_CONNECTIONS_REJECTED_TOTAL: &str = "sluice_client_connections_rejected_total";
pub const CLIENT_IDLE_TIMEOUTS_TOTAL: &str = "sluice_client_idle_timeouts_total";
pub const SESSIONS_KILLED_TOTAL: &str = "sluice_sessions_killed_total";
pub const QUERY_ATTRIBUTES_TOTAL: &str = "sluice_query_attributes_commands_total";
pub const QUERIES_TOTAL: &str = "sluice_queries_total";
pub const QUERY_DURATION_SECONDS: &str = "sluice_query_duration_seconds";
pub const READS_ROUTED_TOTAL: &str = "sluice_reads_routed_total";
pub const ROUTING_FALLBACKS_TOTAL: &str = "sluice_routing_fallbacks_total";
pub const PINS_TOTAL: &str = "sluice_session_pins_total";
pub const INVALID_HINTS_TOTAL: &str = "sluice_invalid_hints_total";
pub const RULE_MATCHES_TOTAL: &str = "sluice_rule_matches_total";
pub const BACKEND_CONNECTIONS: &str = "sluice_backend_connections";
pub const BACKEND_CONNECTIONS_EXPIRED_TOTAL: &str = "sluice_backend_connections_expired_total";
pub const BACKEND_OUTSTANDING: &str = "sluice_backend_outstanding_queries";
pub const SERVER_UP: &str = "sluice_server_up";
pub const SERVER_ROLE: &str = "sluice_server_role";
pub const SERVER_EXCLUDED: &str = "sluice_server_excluded";
pub const SERVER_NOT_FOLLOWING: &str = "sluice_server_not_following";
pub const REPLICA_LAG_SECONDS: &str = "sluice_replica_lag_seconds";
pub const PRIMARY_KNOWN: &str = "sluice_primary_known";
pub const GENERATION: &str = "sluice_failover_generation";
pub const FAILOVERS_TOTAL: &str = "sluice_failovers_total";
pub const FAILOVER_DURATION_SECONDS: &str = "sluice_failover_duration_seconds";
pub const SEMI_SYNC_ACTIVE: &str = "sluice_semi_sync_active";
pub const HEARTBEAT_WRITE_FAILURES_TOTAL: &str = "sluice_heartbeat_write_failures_total";
pub const ERRORS_TOTAL: &str = "sluice_errors_total";
pub const ADMIN_COMMANDS_TOTAL: &str = "sluice_admin_commands_total";
pub const CONFIG_RELOADS_TOTAL: &str = "sluice_config_reloads_total";
pub const POOL_WAIT_SECONDS: &str = "sluice_pool_wait_seconds";
pub const SESSIONS_PINNED: &str = "sluice_sessions_pinned";
pub const MULTIPLEXING_RATIO: &str = "sluice_multiplexing_ratio";
pub const SESSIONS_HOLDING: &str = "sluice_sessions_holding_connections";
pub const LAG_BUDGET_SECONDS: &str = "sluice_lag_budget_seconds";
pub const TLS_CERT_EXPIRY: &str = "sluice_tls_certificate_expiry_timestamp_seconds";
pub const LOGIN_THROTTLED_TOTAL: &str = "sluice_login_throttled_total";
