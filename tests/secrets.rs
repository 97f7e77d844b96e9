//! Passwords never reach the logs (at trace level), the admin port's SHOW CONFIG, or the
//! metrics: logins that succeed and fail, COM_CHANGE_USER, admin logins, a reload, a config
//! error — then every captured byte is searched for every password.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::Harness;
use mysql_async::prelude::Queryable;
use mysql_async::{ChangeUserOpts, Conn};

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_never_appear_in_logs_config_or_metrics() {
    let logs = Capture::default();
    let sink = logs.clone();
    use tracing_subscriber::util::SubscriberInitExt as _;
    // As `sluice` logs: a session's lines carry its span (client, user).
    sluice::logging::SessionSpans::new(
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("sluice=trace"))
            .with_writer(move || sink.clone())
            .with_ansi(false)
            .finish(),
    )
    .init();
    let h = Harness::start(1).await;
    let port = h.addr.port();
    let admin_port = h.proxy.as_ref().unwrap().admin_addr.unwrap().port();
    let admin_pw = sluice::sandbox::ADMIN_PASSWORD;
    let wrong = "Wr0ng-Secret-Attempt";

    let mut c = h.proxy_conn().await;
    let _: Option<u64> = c.query_first("SELECT 1").await.unwrap();
    c.change_user(
        ChangeUserOpts::default()
            .with_user(Some("other".into()))
            .with_pass(Some("other-pw".into())),
    )
    .await
    .unwrap();
    assert!(Conn::new(h.opts(port, "app", wrong)).await.is_err());
    assert!(Conn::new(h.opts(admin_port, "admin", wrong)).await.is_err());
    let mut a = Conn::new(h.opts(admin_port, "admin", admin_pw))
        .await
        .unwrap();
    let config: Vec<(String, String)> = a.query("SHOW CONFIG").await.unwrap();
    // RELOAD without a file (a config error path) and a statement the port does not know.
    let _ = a.query_drop("RELOAD").await;
    let _ = a.query_drop(format!("SET PASSWORD = '{wrong}'")).await;
    let metrics_addr = h.proxy.as_ref().unwrap().metrics_addr.unwrap();
    let metrics = common::http_get(metrics_addr, "/metrics").await.unwrap();
    drop(c);
    drop(a);
    h.shutdown().await;

    let logs = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    assert!(
        logs.contains("access denied"),
        "the failed logins were logged"
    );
    // Its session's span is on the line, with the span's fields (which must hold no secret).
    assert!(
        logs.lines()
            .any(|l| l.contains("access denied") && l.contains("session{id=")),
        "the failed login's line carries its session's span:\n{logs}"
    );
    let config = format!("{config:?}");
    assert!(metrics.contains("sluice_"), "metrics scraped");
    for secret in [
        common::PASSWORD,
        "other-pw",
        admin_pw,
        wrong,
        "sluice-monitor-pw",
        "sluice-repl-pw",
    ] {
        assert!(!logs.contains(secret), "{secret:?} in the logs");
        assert!(!config.contains(secret), "{secret:?} in SHOW CONFIG");
        assert!(!metrics.contains(secret), "{secret:?} in the metrics");
    }
}
