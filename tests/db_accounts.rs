//! Accounts read from the database (`[auth] source = "database"`): an account created on the
//! primary at run time logs in through Sluice (reads on the replica, writes on the primary)
//! without being declared in sluice.toml; password changes, locking, expiry and dropping take
//! effect; COM_CHANGE_USER switches to such an account; host patterns and unsupported plugins
//! are refused; a scan of unknown names cannot flood the primary with account reads.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{eventually, Harness};
use mysql_async::prelude::Queryable;
use mysql_async::{ChangeUserOpts, Conn};
use sluice::config::AuthSource;

/// Logs in through Sluice as `user`; the server error code on refusal.
async fn login(h: &Harness, user: &str, password: &str) -> Result<Conn, u16> {
    match Conn::new(h.opts(h.addr.port(), user, password)).await {
        Ok(c) => Ok(c),
        Err(mysql_async::Error::Server(e)) => Err(e.code),
        Err(e) => panic!("login as {user}: {e}"),
    }
}

async fn current_user(c: &mut Conn) -> String {
    c.query_first("SELECT CURRENT_USER()")
        .await
        .unwrap()
        .unwrap()
}

/// Waits until a login as `user` gives `want` (Ok = 0).
async fn login_becomes(h: &Harness, user: &str, password: &str, want: u16) {
    eventually(
        &format!("login as {user} to give {want}"),
        Duration::from_secs(10),
        || async move {
            match login(h, user, password).await {
                Ok(c) => {
                    let _ = c.disconnect().await;
                    want == 0
                }
                Err(code) => code == want,
            }
        },
    )
    .await;
}

/// Waits until the replica has the account (created on the primary, replicated).
async fn on_replica(h: &Harness, user: &str) {
    let q = format!("SELECT COUNT(*) FROM mysql.global_priv WHERE User = '{user}'");
    eventually(
        "the account on the replica",
        Duration::from_secs(10),
        || {
            let q = q.clone();
            async move { h.root_sql(1, &q).await.trim() == "1" }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_created_at_run_time_log_in_and_follow_the_database() {
    let h = Harness::start_with(1, |c| {
        c.auth.source = AuthSource::Database;
        // Only the lookup of an unknown name can find a new account quickly: the periodic
        // read is a minute away.
        c.auth.refresh_ms = 60_000;
        c.auth.lookup_interval_ms = 300;
    })
    .await;
    h.root_sql(
        0,
        "CREATE DATABASE dbt; CREATE TABLE dbt.t (id INT AUTO_INCREMENT PRIMARY KEY, who VARCHAR(80)); \
         CREATE USER 'dyn'@'%' IDENTIFIED BY 'dyn-pw'; \
         GRANT SELECT, INSERT ON dbt.* TO 'dyn'@'%'",
    )
    .await;
    on_replica(&h, "dyn").await;
    login_becomes(&h, "dyn", "dyn-pw", 0).await;

    // Reads (replica) and writes (primary) run as the account, logged in with what the
    // client's token yielded: Sluice never had the password.
    let mut c = login(&h, "dyn", "dyn-pw").await.unwrap();
    assert_eq!(current_user(&mut c).await, "dyn@%");
    c.query_drop("INSERT INTO dbt.t (who) VALUES (CURRENT_USER())")
        .await
        .unwrap();
    let id = c.last_insert_id().unwrap();
    let read_on: i64 = c.query_first("SELECT @@server_id").await.unwrap().unwrap();
    let primary_id: i64 = h
        .root_sql(0, "SELECT @@server_id")
        .await
        .trim()
        .parse()
        .unwrap();
    assert_ne!(read_on, primary_id, "a plain read runs on the replica");
    let who: String = h
        .root_sql(0, &format!("SELECT who FROM dbt.t WHERE id = {id}"))
        .await
        .trim()
        .to_string();
    assert_eq!(who, "dyn@%");
    c.disconnect().await.unwrap();
    // A wrong password, and an account the database does not have.
    assert_eq!(login(&h, "dyn", "nope").await.err(), Some(1045));
    assert_eq!(login(&h, "ghost", "x").await.err(), Some(1045));

    // COM_CHANGE_USER from another account to this one.
    let mut c = login(&h, common::USER, common::PASSWORD).await.unwrap();
    c.change_user(
        ChangeUserOpts::default()
            .with_user(Some("dyn".into()))
            .with_pass(Some("dyn-pw".into())),
    )
    .await
    .expect("change user to a database account");
    assert_eq!(current_user(&mut c).await, "dyn@%");
    c.disconnect().await.unwrap();

    // A new password: the old one stops working, the new one works.
    h.root_sql(0, "ALTER USER 'dyn'@'%' IDENTIFIED BY 'dyn-pw-2'")
        .await;
    on_replica(&h, "dyn").await;
    // The name is known, so only the periodic read sees the change: make it come now by
    // asking for an unknown name (one lookup per interval).
    eventually(
        "the new password in force",
        Duration::from_secs(10),
        || async {
            let _ = login(&h, "ghost-trigger", "x").await;
            match login(&h, "dyn", "dyn-pw-2").await {
                Ok(c) => {
                    let _ = c.disconnect().await;
                    true
                }
                Err(_) => false,
            }
        },
    )
    .await;
    assert_eq!(login(&h, "dyn", "dyn-pw").await.err(), Some(1045));

    // Locked: 4151 after the right password, 1045 after a wrong one (as the server).
    h.root_sql(0, "ALTER USER 'dyn'@'%' ACCOUNT LOCK").await;
    eventually("the lock in force", Duration::from_secs(10), || async {
        let _ = login(&h, "ghost-trigger", "x").await;
        login(&h, "dyn", "dyn-pw-2").await.err() == Some(4151)
    })
    .await;
    assert_eq!(login(&h, "dyn", "wrong").await.err(), Some(1045));
    // Expired.
    h.root_sql(
        0,
        "ALTER USER 'dyn'@'%' ACCOUNT UNLOCK; ALTER USER 'dyn'@'%' PASSWORD EXPIRE",
    )
    .await;
    eventually("the expiry in force", Duration::from_secs(10), || async {
        let _ = login(&h, "ghost-trigger", "x").await;
        login(&h, "dyn", "dyn-pw-2").await.err() == Some(1862)
    })
    .await;

    // A host pattern that excludes the client, and a plugin Sluice cannot verify.
    h.root_sql(
        0,
        "CREATE USER 'net10'@'10.%' IDENTIFIED BY 'n10'; \
         CREATE USER 'sock'@'%' IDENTIFIED VIA unix_socket; \
         CREATE USER 'ok2'@'127.0.0.%' IDENTIFIED BY 'ok2-pw'",
    )
    .await;
    on_replica(&h, "ok2").await;
    login_becomes(&h, "ok2", "ok2-pw", 0).await;
    assert_eq!(login(&h, "net10", "n10").await.err(), Some(1045));
    assert_eq!(login(&h, "sock", "").await.err(), Some(1045));

    // SHOW ACCOUNTS on the admin port: what a login gets, most specific host first.
    let addr = h.proxy.as_ref().unwrap().admin_addr.expect("admin port on");
    let mut adm = Conn::new(h.opts(addr.port(), "admin", sluice::sandbox::ADMIN_PASSWORD))
        .await
        .expect("admin login");
    let accounts = common::table(&mut adm, "SHOW ACCOUNTS").await;
    let state = |user: &str| {
        accounts
            .iter()
            .find(|r| r["user"].as_deref() == Some(user))
            .and_then(|r| r["state"].clone())
    };
    assert_eq!(state("dyn").as_deref(), Some("expired"), "{accounts:?}");
    assert_eq!(state("sock").as_deref(), Some("unsupported plugin"));
    assert_eq!(state("ok2").as_deref(), Some("ok"));
    let pos = |user: &str| {
        accounts
            .iter()
            .position(|r| r["user"].as_deref() == Some(user))
    };
    assert!(
        pos("ok2") < pos("dyn"),
        "'ok2'@'127.0.0.%' before 'dyn'@'%'"
    );
    adm.disconnect().await.unwrap();

    // Dropped: refused.
    h.root_sql(0, "DROP USER 'ok2'@'127.0.0.%'").await;
    eventually("the drop in force", Duration::from_secs(10), || async {
        let _ = login(&h, "ghost-trigger", "x").await;
        login(&h, "ok2", "ok2-pw").await.err() == Some(1045)
    })
    .await;

    // A scan of unknown names for 1.5 s: at most one read of the accounts per lookup
    // interval, however many names.
    let shared = h.proxy.as_ref().unwrap().shared.clone();
    // The primary's own record of the account reads: its general log, in a table.
    h.root_sql(
        0,
        "SET GLOBAL log_output = 'TABLE'; TRUNCATE mysql.general_log; SET GLOBAL general_log = ON",
    )
    .await;
    let before = shared.accounts.loads.load(Ordering::Relaxed);
    let start = Instant::now();
    let mut names = 0;
    while start.elapsed() < Duration::from_millis(1500) && names < 5000 {
        assert_eq!(
            login(&h, &format!("scan{names}"), "x").await.err(),
            Some(1045)
        );
        names += 1;
    }
    let reads = shared.accounts.loads.load(Ordering::Relaxed) - before;
    let bound = start.elapsed().as_millis() as u64 / 300 + 2;
    h.root_sql(0, "SET GLOBAL general_log = OFF").await;
    let on_server: u64 = h
        .root_sql(
            0,
            "SELECT COUNT(*) FROM mysql.general_log WHERE command_type = 'Query' \
             AND argument LIKE '%FROM mysql.global_priv%'",
        )
        .await
        .trim()
        .parse()
        .unwrap();
    eprintln!(
        "{names} unknown names in {:?}: {reads} account reads counted by Sluice, {on_server} in the primary's general log (bound {bound})",
        start.elapsed()
    );
    assert!(reads >= 2, "unknown names trigger reads");
    assert!(reads <= bound, "{reads} reads > {bound}");
    assert!(on_server >= 2, "the primary saw the reads");
    assert!(
        on_server <= bound,
        "the primary saw {on_server} account reads > {bound}"
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_primary_down_known_accounts_pass_and_unknown_ones_are_refused_promptly() {
    let mut h = Harness::start_with(1, |c| {
        c.auth.source = AuthSource::Database;
        c.auth.lookup_interval_ms = 200;
        // No failover: the primary stays down for the whole test.
        c.monitor.failover = sluice::config::FailoverMode::Off;
        c.monitor.failover_hold_ms = 500;
    })
    .await;
    h.root_sql(0, "CREATE USER 'known'@'%' IDENTIFIED BY 'known-pw'")
        .await;
    on_replica(&h, "known").await;
    login_becomes(&h, "known", "known-pw", 0).await;
    h.topo.nodes[0].kill();
    let cluster = h.proxy.as_ref().unwrap().cluster.clone();
    eventually(
        "the monitor to see the primary down",
        Duration::from_secs(15),
        || {
            let down = !cluster.borrow().servers[0].healthy;
            async move { down }
        },
    )
    .await;
    // The account read before still verifies the password: the login gets past
    // authentication and fails only for want of a primary (9001/9002), never 1045.
    let start = Instant::now();
    let known = login(&h, "known", "known-pw").await.err();
    assert!(
        matches!(known, Some(9001 | 9002)),
        "a known account with the primary down: {known:?}"
    );
    // A wrong password is still wrong.
    assert_eq!(login(&h, "known", "nope").await.err(), Some(1045));
    // An unknown user: 1045 promptly, not a hang on the dead primary.
    for i in 0..5 {
        assert_eq!(
            login(&h, &format!("nobody{i}"), "x").await.err(),
            Some(1045)
        );
    }
    eprintln!(
        "with the primary down: 7 logins answered in {:?}",
        start.elapsed()
    );
    h.shutdown().await;
}
