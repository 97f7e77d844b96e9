//! The `sluice` command: parses the command line and calls into the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use sluice::config::{Config, LogFormat, Scheduler};
use sluice::monitor::Monitor;
use sluice::sandbox::{Topology, TopologySpec};
use sluice::server;

#[derive(Parser)]
#[command(
    name = "sluice",
    version = sluice::build_info::long_version(),
    about = "A MySQL-protocol proxy"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the proxy.
    Run {
        #[arg(long, short, default_value = "sluice.toml")]
        config: PathBuf,
    },
    /// Validate a config file and print the effective configuration (passwords masked).
    CheckConfig {
        #[arg(long, short, default_value = "sluice.toml")]
        config: PathBuf,
    },
    /// Start a local primary + replicas from the installed MariaDB binaries, and Sluice in
    /// front of them. Ctrl-C stops everything.
    Sandbox {
        /// Client listener for Sluice.
        #[arg(long, default_value = "127.0.0.1:6033")]
        listen: String,
        /// Number of replicas.
        #[arg(long, default_value_t = 2)]
        replicas: usize,
        /// Directory for the servers (default: a temporary one, removed on exit).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// An extra my.cnf line for every server (repeatable), e.g. `ssl_cert = /p/cert.pem`.
        #[arg(long = "server-cnf")]
        server_cnf: Vec<String>,
        /// Serve clients with TLS: certificate chain and key (PEM) for `[proxy.tls]`.
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// `[proxy] max_backend_connections` for the sandbox's Sluice.
        #[arg(long)]
        max_backend_connections: Option<u32>,
        /// `[proxy] max_client_connections` for the sandbox's Sluice.
        #[arg(long)]
        max_client_connections: Option<u32>,
        /// `[proxy] multiplexing` (`transaction` or `session`).
        #[arg(long)]
        multiplexing: Option<String>,
        /// `[proxy] worker_threads` for the sandbox's Sluice (0 = one per CPU).
        #[arg(long, default_value_t = 0)]
        worker_threads: u32,
        /// `[proxy] scheduler` (`per-thread` or `work-stealing`).
        #[arg(long)]
        scheduler: Option<String>,
    },
    /// Planned switchover: pause writes (in every Sluice instance), make the primary
    /// read-only, let NAME catch up, promote it, and make the others (the old primary
    /// included) replicate from it.
    Switchover {
        #[arg(long, short, default_value = "sluice.toml")]
        config: PathBuf,
        /// The replica to promote.
        #[arg(long)]
        to: String,
    },
    /// Promote a replica now, when the primary is dead (the way to fail over with
    /// `[monitor] failover = "manual"`, or after a refused or failed automatic failover).
    Failover {
        #[arg(long, short, default_value = "sluice.toml")]
        config: PathBuf,
        /// The replica to promote (default: the most advanced one).
        #[arg(long)]
        to: Option<String>,
    },
    /// Lift the anti-flap block after an automatic failover, in every Sluice instance.
    Acknowledge {
        #[arg(long, short, default_value = "sluice.toml")]
        config: PathBuf,
    },
    /// Ask a running Sluice whether it is ready (`/readyz`: it can route writes) or alive
    /// (`--live`: `/healthz`), on its metrics port. Exit 0 yes, 1 no: for container health
    /// checks and scripts (no curl needed).
    Health {
        #[arg(long, short, default_value = "sluice.toml")]
        config: PathBuf,
        /// The metrics address to ask instead of the config's `[metrics] listen`.
        #[arg(long)]
        address: Option<String>,
        /// Ask `/healthz` (the process answers) instead of `/readyz`.
        #[arg(long)]
        live: bool,
    },
}

/// Logging to stderr at `SLUICE_LOG` (default `info`), as text or JSON lines
/// (`SLUICE_LOG_FORMAT` over `[log] format`).
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let format = match std::env::var("SLUICE_LOG_FORMAT").as_deref() {
        Ok("json") => LogFormat::Json,
        Ok("text") => LogFormat::Text,
        Ok(other) => {
            eprintln!("sluice: SLUICE_LOG_FORMAT must be text or json, not {other:?}; using text");
            LogFormat::Text
        }
        Err(_) => format,
    };
    use std::io::IsTerminal as _;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr);
    // A session's span is entered only around what it logs (`sluice::logging`).
    use sluice::logging::SessionSpans;
    use tracing_subscriber::util::SubscriberInitExt as _;
    match format {
        LogFormat::Text => {
            SessionSpans::new(builder.with_ansi(std::io::stderr().is_terminal()).finish()).init()
        }
        // One object per line: timestamp, level, fields (message included) and the spans
        // (a session's id, client and user) — what a log collector indexes.
        LogFormat::Json => SessionSpans::new(
            builder
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(false)
                .finish(),
        )
        .init(),
    }
}

/// The main runtime. With `[proxy] scheduler = "work-stealing"` it runs everything, with
/// `threads` worker threads (0 = one per CPU this process may use, as tokio's default); with
/// `per-thread` the sessions run on their own loops (`sluice::loops`) and this one only
/// accepts, monitors and serves the admin and metrics ports: one thread.
fn runtime(threads: u32, scheduler: Scheduler) -> std::io::Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    b.enable_all();
    if scheduler == Scheduler::PerThread {
        b.worker_threads(1);
    } else if threads > 0 {
        b.worker_threads(threads as usize);
    }
    b.build()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `run` logs the way its config says; the other commands as SLUICE_LOG_FORMAT says.
    let log_format = match &cli.cmd {
        Cmd::Run { config } => Config::load(config)
            .map(|c| c.log.format)
            .unwrap_or_default(),
        _ => LogFormat::Text,
    };
    init_logging(log_format);
    // `[proxy] worker_threads`: the runtime's threads, fixed at start.
    let (threads, scheduler) = match &cli.cmd {
        Cmd::Run { config } => Config::load(config).map_or((0, Scheduler::PerThread), |c| {
            (c.proxy.worker_threads, c.proxy.scheduler)
        }),
        Cmd::Sandbox {
            worker_threads,
            scheduler,
            ..
        } => (
            *worker_threads,
            if scheduler.as_deref() == Some("work-stealing") {
                Scheduler::WorkStealing
            } else {
                Scheduler::PerThread
            },
        ),
        _ => (0, Scheduler::WorkStealing),
    };
    let rt = match runtime(threads, scheduler) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sluice: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.cmd {
        Cmd::CheckConfig { config } => match Config::load(&config) {
            Ok(c) => {
                println!("# {}: OK\n{}", config.display(), c.to_masked_toml());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("sluice: {e}");
                ExitCode::from(2)
            }
        },
        Cmd::Run { config } => {
            let config = match Config::load(&config) {
                Ok(c) => Arc::new(c),
                Err(e) => {
                    eprintln!("sluice: {e}");
                    return ExitCode::from(2);
                }
            };
            match rt.block_on(server::run(config, server::termination_signal())) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("sluice: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Sandbox {
            listen,
            replicas,
            dir,
            server_cnf,
            tls_cert,
            tls_key,
            max_backend_connections,
            max_client_connections,
            multiplexing,
            worker_threads,
            scheduler,
        } => {
            let tls = tls_cert.zip(tls_key);
            let limits = SandboxProxy {
                max_backend_connections,
                max_client_connections,
                multiplexing,
                worker_threads,
                scheduler,
            };
            rt.block_on(sandbox(listen, replicas, dir, server_cnf, tls, limits))
        }
        Cmd::Switchover { config, to } => operate(&rt, &config, Op::Switchover(to)),
        Cmd::Failover { config, to } => operate(&rt, &config, Op::Failover(to)),
        Cmd::Acknowledge { config } => operate(&rt, &config, Op::Acknowledge),
        Cmd::Health {
            config,
            address,
            live,
        } => health(&config, address, live),
    }
}

/// `sluice health`: one bounded HTTP GET of `/readyz` (or `/healthz`) on the metrics port.
fn health(config: &std::path::Path, address: Option<String>, live: bool) -> ExitCode {
    let address = match address {
        Some(a) => a,
        None => match Config::load(config) {
            Ok(c) if c.metrics.listen.is_empty() => {
                eprintln!(
                    "sluice health: [metrics] listen is off in {}; pass --address",
                    config.display()
                );
                return ExitCode::from(2);
            }
            Ok(c) => c.metrics.listen,
            Err(e) => {
                eprintln!("sluice health: {e}");
                return ExitCode::from(2);
            }
        },
    };
    let path = if live { "/healthz" } else { "/readyz" };
    match sluice::metrics::http::get(&address, path, std::time::Duration::from_secs(3)) {
        Ok((200, body)) => {
            print!("{body}");
            ExitCode::SUCCESS
        }
        Ok((status, body)) => {
            eprintln!(
                "sluice health: {address}{path} answered {status}: {}",
                body.trim()
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("sluice health: {address}{path}: {e}");
            ExitCode::FAILURE
        }
    }
}

enum Op {
    Switchover(String),
    Failover(Option<String>),
    Acknowledge,
}

/// Runs one operator action against the servers of a config file.
fn operate(rt: &tokio::runtime::Runtime, config: &std::path::Path, op: Op) -> ExitCode {
    let config = match Config::load(config) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            eprintln!("sluice: {e}");
            return ExitCode::from(2);
        }
    };
    let result = rt.block_on(async {
        let mut m = Monitor::new(config, None);
        let r = match op {
            Op::Switchover(to) => match m.index_of(&to) {
                Ok(i) => m.switchover(i).await,
                Err(e) => Err(e),
            },
            Op::Failover(to) => match to.map(|n| m.index_of(&n)).transpose() {
                Ok(t) => m.manual_failover(t).await,
                Err(e) => Err(e),
            },
            Op::Acknowledge => m.acknowledge_now().await,
        };
        m.close().await;
        r
    });
    match result {
        Ok(msg) => {
            println!("{msg}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sluice: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `[proxy]` settings the sandbox command line may override.
struct SandboxProxy {
    max_backend_connections: Option<u32>,
    max_client_connections: Option<u32>,
    multiplexing: Option<String>,
    worker_threads: u32,
    scheduler: Option<String>,
}

async fn sandbox(
    listen: String,
    replicas: usize,
    dir: Option<PathBuf>,
    server_cnf: Vec<String>,
    tls: Option<(PathBuf, PathBuf)>,
    limits: SandboxProxy,
) -> ExitCode {
    let spec = TopologySpec {
        replicas,
        dir,
        extra_cnf: server_cnf,
        ..TopologySpec::default()
    };
    eprintln!("Starting a primary and {replicas} replica(s) from the installed server binaries…");
    let topo = match Topology::start(spec).await {
        Ok(t) => t,
        Err(e) => {
            eprintln!("sluice sandbox: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut config = topo.proxy_config(&listen);
    if let Some(n) = limits.max_backend_connections {
        config.proxy.max_backend_connections = n;
    }
    if let Some(n) = limits.max_client_connections {
        config.proxy.max_client_connections = n;
    }
    config.proxy.worker_threads = limits.worker_threads;
    match limits.multiplexing.as_deref() {
        None => {}
        Some("transaction") => {
            config.proxy.multiplexing = sluice::config::Multiplexing::Transaction
        }
        Some("session") => config.proxy.multiplexing = sluice::config::Multiplexing::Session,
        Some(other) => {
            eprintln!(
                "sluice sandbox: --multiplexing must be transaction or session, not {other:?}"
            );
            return ExitCode::FAILURE;
        }
    }
    match limits.scheduler.as_deref() {
        None => {}
        Some("per-thread") => config.proxy.scheduler = Scheduler::PerThread,
        Some("work-stealing") => config.proxy.scheduler = Scheduler::WorkStealing,
        Some(other) => {
            eprintln!(
                "sluice sandbox: --scheduler must be per-thread or work-stealing, not {other:?}"
            );
            return ExitCode::FAILURE;
        }
    }
    if let Some((cert, key)) = tls {
        config.proxy.tls = Some(sluice::config::ProxyTlsConfig {
            cert: cert.display().to_string(),
            key: key.display().to_string(),
            require: false,
        });
    }
    let path = topo.root().join("sluice.toml");
    // The sandbox's own throwaway passwords are written as they are, so that
    // `sluice switchover --config <this file>` works against it.
    let _ = std::fs::write(&path, topo.config_toml(&listen));
    if let Err(e) = config.validate(&path) {
        eprintln!("sluice sandbox: {e}");
        return ExitCode::FAILURE;
    }
    let running = match server::start(Arc::new(config)).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sluice sandbox: cannot listen on {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let ready = running.wait_ready(std::time::Duration::from_secs(10)).await;
    println!();
    println!("Sluice sandbox is up ({}).", topo.root().display());
    for n in &topo.nodes {
        let role = if n.replica { "replica" } else { "primary" };
        println!(
            "  {:<8} {:<4} {}  (pid {})",
            role,
            n.name,
            n.address(),
            n.pid().unwrap_or(0)
        );
    }
    let (user, pw) = &topo.spec.users[0];
    let port = running.local_addr.port();
    println!();
    println!("Connect through Sluice:");
    println!("  mariadb -h 127.0.0.1 -P {port} -u {user} -p{pw}");
    println!("  python3 -c \"import pymysql; print(pymysql.connect(host='127.0.0.1', port={port}, user='{user}', password='{pw}').server_version)\"");
    if !ready {
        println!("(warning: no primary discovered yet; see the log)");
    }
    if let Some(a) = running.admin_addr {
        println!("Admin port (SHOW SERVERS, SHOW SESSIONS, SWITCHOVER TO db2, …):");
        println!(
            "  mariadb -h 127.0.0.1 -P {} -u admin -p{}",
            a.port(),
            sluice::sandbox::ADMIN_PASSWORD
        );
    }
    if let Some(m) = running.metrics_addr {
        println!("Metrics: curl http://{m}/metrics");
    }
    println!("Config: {}", path.display());
    println!(
        "Planned switchover: sluice switchover --config {} --to db2",
        path.display()
    );
    println!("Press Ctrl-C to stop Sluice and the servers.");
    server::termination_signal().await;
    eprintln!("Stopping…");
    running.shutdown().await;
    drop(topo);
    ExitCode::SUCCESS
}
