//! The admin port (through `mysql_async`, the `mariadb` CLI and PyMySQL) and the metrics
//! endpoint (scraped over HTTP and parsed with the Prometheus project's own Python parser),
//! against real traffic and real servers.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{eventually, python_with_pymysql, spec, table, Harness};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder, Row};
use sluice::sandbox::ADMIN_PASSWORD;

/// The SELECT statements user `app` ran on a server, by the server's own count.
async fn select_commands(h: &Harness, node: usize) -> u64 {
    h.root_sql(
        node,
        "SELECT IFNULL(SUM(SELECT_COMMANDS), 0) FROM information_schema.USER_STATISTICS WHERE USER = 'app'",
    )
    .await
    .trim()
    .parse()
    .unwrap()
}

fn val<'a>(row: &'a HashMap<String, Option<String>>, col: &str) -> Option<&'a str> {
    row.get(col)
        .unwrap_or_else(|| panic!("no column {col} in {row:?}"))
        .as_deref()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_port_shows_true_values_and_takes_commands() {
    let mut s = spec(2);
    s.extra_cnf = vec!["userstat = ON".into()];
    let h = Harness::start_spec(s, |_| {}).await;
    let mut app = h.proxy_conn().await;
    app.query_drop("CREATE DATABASE IF NOT EXISTS adm")
        .await
        .unwrap();
    h.topo
        .wait_replicas_caught_up(Duration::from_secs(10))
        .await
        .unwrap();
    // A reader connected (its driver's start-up query done), fresh statistics on the
    // replicas, Sluice's own figures noted: then 100 reads through Sluice.
    let mut reader = h.proxy_conn().await;
    for _ in 0..10 {
        // Opens the session's connection to each replica.
        let _: Option<u64> = reader.query_first("SELECT 1 FROM DUAL").await.unwrap();
    }
    for node in 1..=2 {
        h.root_sql(node, "FLUSH LOCAL USER_STATISTICS").await;
    }
    for _ in 0..4 {
        let _: Option<u64> = reader.query_first("SELECT 1 FROM DUAL").await.unwrap();
    }
    // No settle time needed: the replicas' counts read now do not change later (watched for
    // 15 s once); the 100 reads below are waited for.
    let server_before = [
        0,
        select_commands(&h, 1).await,
        select_commands(&h, 2).await,
    ];
    let mut a = h.admin_conn().await;
    let before = table(&mut a, "SHOW SERVERS").await;
    let stats_before = table(&mut a, "SHOW STATS").await;
    for _ in 0..100 {
        let _: Option<u64> = reader
            .query_first("SELECT COUNT(*) FROM information_schema.SCHEMATA")
            .await
            .unwrap();
    }
    // The server updates its per-user statistics after it answered: wait until the replicas
    // counted the 100 reads (exactness is checked per server below).
    eventually(
        "the replicas' statistics count the reads",
        Duration::from_secs(10),
        || {
            let h = &h;
            async move {
                select_commands(h, 1).await + select_commands(h, 2).await
                    >= server_before[1] + server_before[2] + 100
            }
        },
    )
    .await;
    let servers = table(&mut a, "SHOW SERVERS").await;
    assert_eq!(servers.len(), 3);
    let mut on_replicas = 0u64;
    for (i, row) in servers.iter().enumerate() {
        assert_eq!(val(row, "name"), Some(format!("db{}", i + 1).as_str()));
        assert_eq!(val(row, "healthy"), Some("yes"));
        let role = if i == 0 { "primary" } else { "replica" };
        assert_eq!(val(row, "role"), Some(role));
        if i > 0 {
            let total = |r: &HashMap<String, Option<String>>| -> u64 {
                val(r, "queries_total").unwrap().parse().unwrap()
            };
            let ours = total(row) - total(&before[i]);
            let theirs = select_commands(&h, i).await - server_before[i];
            assert_eq!(ours, theirs, "server db{}", i + 1);
            on_replicas += ours;
            let _ = val(row, "lag_ms"); // the column exists (NULL while unknown)
        }
    }
    assert_eq!(on_replicas, 100, "{servers:?}");
    let stats = table(&mut a, "SHOW STATS").await;
    let replica_reads = |t: &[HashMap<String, Option<String>>]| -> u64 {
        t.iter()
            .find(|r| val(r, "route") == Some("replica") && val(r, "class") == Some("read"))
            .and_then(|r| val(r, "value"))
            .map_or(0, |v| v.parse().unwrap())
    };
    assert_eq!(replica_reads(&stats) - replica_reads(&stats_before), 100);
    let replicas = table(&mut a, "SELECT * FROM servers WHERE role = 'replica'").await;
    assert_eq!(replicas.len(), 2);

    let pools = table(&mut a, "SHOW POOLS").await;
    assert_eq!(pools.len(), 3);
    assert!(pools.iter().all(|p| val(p, "max") == Some("64")));

    let sessions = table(&mut a, "SHOW SESSIONS").await;
    assert!(sessions.len() >= 2, "{sessions:?}");
    assert!(sessions.iter().all(|s| val(s, "user") == Some("app")));

    let config = table(&mut a, "SHOW CONFIG").await;
    let pw = config
        .iter()
        .find(|r| val(r, "key") == Some("admin.password"))
        .expect("admin.password listed");
    assert_ne!(
        val(pw, "value"),
        Some(format!("\"{ADMIN_PASSWORD}\"").as_str())
    );
    assert!(
        !format!("{config:?}").contains(ADMIN_PASSWORD),
        "a password leaked"
    );
    assert!(
        !format!("{config:?}").contains(common::PASSWORD),
        "a password leaked"
    );
    let rules = table(&mut a, "SHOW RULES").await;
    assert!(rules.is_empty());

    // Taking a replica out of service: no new reads go there.
    a.query_drop("SET SERVER db3 OFFLINE").await.unwrap();
    eventually("db3 to show as offline", Duration::from_secs(5), || {
        let p = h.proxy.as_ref().unwrap();
        let v = p.cluster.borrow().clone();
        async move { v.servers[2].excluded.is_some() }
    })
    .await;
    let before = h
        .root_sql(2, "SELECT IFNULL(SUM(SELECT_COMMANDS), 0) FROM information_schema.USER_STATISTICS WHERE USER = 'app'")
        .await;
    for _ in 0..30 {
        let _: Option<u64> = reader.query_first("SELECT 1 FROM DUAL").await.unwrap();
    }
    let after = h
        .root_sql(2, "SELECT IFNULL(SUM(SELECT_COMMANDS), 0) FROM information_schema.USER_STATISTICS WHERE USER = 'app'")
        .await;
    assert_eq!(before, after, "an offline server got reads");
    let err = a.query_drop("SET SERVER db1 OFFLINE").await.unwrap_err();
    assert!(err.to_string().contains("SWITCHOVER"), "{err}");
    a.query_drop("SET SERVER db3 ONLINE").await.unwrap();

    // KILL SESSION ends a client's session.
    let mut victim = h.proxy_conn().await;
    let _: Option<u64> = victim.query_first("SELECT 1").await.unwrap();
    let newest_row = |sessions: Vec<HashMap<String, Option<String>>>| {
        sessions
            .into_iter()
            .max_by_key(|s| val(s, "id").unwrap().parse::<u32>().unwrap())
            .unwrap()
    };
    let login_db = val(&newest_row(table(&mut a, "SHOW SESSIONS").await), "db").map(String::from);
    // The session's database as it changes (published when it changes, not per statement).
    // Published just after the answer is sent: another thread may look first (bounded wait).
    victim.query_drop("USE information_schema").await.unwrap();
    let mut row = newest_row(table(&mut a, "SHOW SESSIONS").await);
    for _ in 0..100 {
        if val(&row, "db") == Some("information_schema") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        row = newest_row(table(&mut a, "SHOW SESSIONS").await);
    }
    assert_eq!(val(&row, "db"), Some("information_schema"), "{row:?}");
    let _: Option<u64> = victim.query_first("SELECT 2").await.unwrap();
    if let Some(db) = &login_db {
        victim.query_drop(format!("USE `{db}`")).await.unwrap();
        let mut row = newest_row(table(&mut a, "SHOW SESSIONS").await);
        for _ in 0..100 {
            if val(&row, "db") == Some(db.as_str()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            row = newest_row(table(&mut a, "SHOW SESSIONS").await);
        }
        assert_eq!(val(&row, "db"), Some(db.as_str()), "{row:?}");
    }
    let newest = val(&newest_row(table(&mut a, "SHOW SESSIONS").await), "id")
        .unwrap()
        .parse::<u32>()
        .unwrap();
    a.query_drop(format!("KILL SESSION {newest}"))
        .await
        .unwrap();
    assert!(victim.query_drop("SELECT 1").await.is_err());
    assert!(a.query_drop("KILL SESSION 999999").await.is_err());

    // Garbage never breaks the port.
    for bad in [
        ";",
        "",
        "DROP TABLE x",
        "SHOW SERVERZ",
        "\u{1}\u{2}\u{3}",
        "SELECT * FROM users",
    ] {
        match a.query_drop(bad).await {
            Err(mysql_async::Error::Server(e)) => {
                assert!(matches!(e.code, 1064 | 1065), "{bad:?}: {e:?}")
            }
            other => panic!("{bad:?}: {other:?}"),
        }
    }
    assert_eq!(table(&mut a, "SHOW SERVERS").await.len(), 3);

    // Operations through the monitor.
    let ack: Vec<Row> = a.query("FAILOVER ACKNOWLEDGE").await.unwrap();
    assert!(ack.is_empty());
    a.query_drop("SWITCHOVER TO db2").await.unwrap();
    let failovers = table(&mut a, "SHOW FAILOVERS").await;
    assert_eq!(failovers.len(), 1);
    assert_eq!(val(&failovers[0], "kind"), Some("switchover"));
    assert_eq!(val(&failovers[0], "to"), Some("db2"));
    assert_eq!(val(&failovers[0], "ok"), Some("yes"));
    app.query_drop("CREATE DATABASE IF NOT EXISTS adm2")
        .await
        .unwrap();
    assert_eq!(
        h.root_sql(
            1,
            "SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = 'adm2'"
        )
        .await
        .trim(),
        "1"
    );

    // A wrong admin password: 1045.
    match Conn::new(h.admin_opts("wrong")).await {
        Err(mysql_async::Error::Server(e)) => assert_eq!(e.code, 1045),
        other => panic!("{:?}", other.map(|_| ())),
    }
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_port_works_from_the_cli_and_pymysql() {
    let h = Harness::start(1).await;
    let port = h.proxy.as_ref().unwrap().admin_addr.unwrap().port();
    let _: Option<u64> = h.proxy_conn().await.query_first("SELECT 1").await.unwrap();
    let out = tokio::process::Command::new(common::cli_binary())
        .args(["--no-defaults", "--protocol=tcp", "-h127.0.0.1"])
        .arg(format!("-P{port}"))
        .args([
            "-uadmin",
            &format!("-p{ADMIN_PASSWORD}"),
            "-e",
            "SHOW SERVERS; SHOW POOLS; SHOW QUERY DIGEST",
        ])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("name\taddress\trole"), "{stdout}");
    assert!(stdout.contains("digest\tdigest_text\tcount"), "{stdout}");
    assert!(
        stdout.contains("db1\t") && stdout.contains("primary"),
        "{stdout}"
    );
    let py = format!(
        "import pymysql\n\
         c = pymysql.connect(host='127.0.0.1', port={port}, user='admin', password='{ADMIN_PASSWORD}')\n\
         cur = c.cursor()\n\
         cur.execute('SHOW SERVERS')\n\
         print([r[0] for r in cur.fetchall()])\n\
         try:\n    cur.execute('nonsense')\nexcept pymysql.err.MySQLError as e:\n    print('error', e.args[0])\n"
    );
    let out = tokio::process::Command::new(python_with_pymysql())
        .args(["-c", &py])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("['db1', 'db2']"), "{stdout}");
    assert!(stdout.contains("error 1064"), "{stdout}");
    h.shutdown().await;
}

/// `SHOW QUERY DIGEST` once `done` holds for its rows, or after 2 s. A statement is recorded
/// just after its answer is sent, so the admin port may look before the last one is in.
async fn digest_once(
    a: &mut mysql_async::Conn,
    done: impl Fn(&[HashMap<String, Option<String>>]) -> bool,
) -> Vec<HashMap<String, Option<String>>> {
    let mut rows = table(a, "SHOW QUERY DIGEST").await;
    for _ in 0..100 {
        if done(&rows) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        rows = table(a, "SHOW QUERY DIGEST").await;
    }
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_digest_counts_statements_by_shape() {
    let h = Harness::start(1).await;
    let mut app = h.proxy_conn().await;
    app.query_drop("CREATE DATABASE IF NOT EXISTS dg")
        .await
        .unwrap();
    app.query_drop("CREATE TABLE IF NOT EXISTS dg.t (id INT PRIMARY KEY, v INT)")
        .await
        .unwrap();
    let mut a = h.admin_conn().await;
    a.query_drop("RESET QUERY DIGEST").await.unwrap();
    assert!(table(&mut a, "SHOW QUERY DIGEST").await.is_empty());
    for i in 0..20 {
        app.query_drop(format!("INSERT INTO dg.t VALUES ({i}, {})", i * 10))
            .await
            .unwrap();
    }
    app.query_drop("UPDATE dg.t SET v = v + 1 WHERE id < 5")
        .await
        .unwrap();
    h.topo
        .wait_replicas_caught_up(Duration::from_secs(10))
        .await
        .unwrap();
    // Text queries differing only in literals, spacing and case share one digest; the
    // prepared form (`?`) is the same statement too.
    for i in 0..60 {
        let sql = if i % 2 == 0 {
            format!("SELECT v FROM dg.t WHERE id = {}", i % 20)
        } else {
            format!("select  v from dg.t   where id={} /* c */", i % 20)
        };
        let _: Option<i64> = app.query_first(sql).await.unwrap();
    }
    let stmt = app.prep("SELECT v FROM dg.t WHERE id = ?").await.unwrap();
    for i in 0..10 {
        let _: Option<i64> = app.exec_first(&stmt, (i,)).await.unwrap();
    }
    let all: Vec<i64> = app.query("SELECT v FROM dg.t").await.unwrap();
    assert_eq!(all.len(), 20);
    assert!(app.query_drop("SELECT * FROM dg.nosuch").await.is_err());

    let rows = digest_once(&mut a, |rows| {
        rows.iter()
            .any(|r| val(r, "digest_text") == Some("SELECT * FROM DG.NOSUCH"))
    })
    .await;
    let find = |text: &str| {
        rows.iter()
            .find(|r| val(r, "digest_text") == Some(text))
            .unwrap_or_else(|| panic!("no digest {text:?} in {rows:?}"))
    };
    let num = |r: &HashMap<String, Option<String>>, c: &str| -> f64 {
        val(r, c).unwrap().parse().unwrap()
    };
    let insert = find("INSERT INTO DG.T VALUES (?, ?)");
    assert_eq!(num(insert, "count"), 20.0);
    assert_eq!(num(insert, "rows"), 20.0, "affected rows");
    assert_eq!(val(insert, "route"), Some("primary"));
    let update = find("UPDATE DG.T SET V = V + ? WHERE ID < ?");
    assert_eq!(num(update, "rows"), 5.0);
    let point = find("SELECT V FROM DG.T WHERE ID = ?");
    assert_eq!(num(point, "count"), 70.0);
    assert_eq!(num(point, "rows"), 70.0);
    assert_eq!(num(point, "on_replica"), 70.0, "{point:?}");
    assert_eq!(val(point, "route"), Some("replica"));
    let (avg, p99, max, total) = (
        num(point, "avg_ms"),
        num(point, "p99_ms"),
        num(point, "max_ms"),
        num(point, "total_ms"),
    );
    assert!(
        avg > 0.0 && avg <= p99 && p99 <= max && max <= total,
        "{point:?}"
    );
    assert!((total / 70.0 - avg).abs() < 0.01, "{point:?}");
    assert_eq!(num(find("SELECT V FROM DG.T"), "rows"), 20.0);
    let bad = find("SELECT * FROM DG.NOSUCH");
    assert_eq!((num(bad, "count"), num(bad, "errors")), (1.0, 1.0));
    assert_eq!(val(bad, "digest").unwrap().len(), 16);

    a.query_drop("RESET QUERY DIGEST").await.unwrap();
    assert!(table(&mut a, "SHOW QUERY DIGEST").await.is_empty());
    let _: Option<i64> = app
        .query_first("SELECT v FROM dg.t WHERE id = 3")
        .await
        .unwrap();
    let rows = digest_once(&mut a, |rows| !rows.is_empty()).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(val(&rows[0], "count"), Some("1"));
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_port_stays_off_without_a_password() {
    let h = Harness::start_with(0, |c| c.admin.password = None).await;
    assert!(h.proxy.as_ref().unwrap().admin_addr.is_none());
    h.shutdown().await;
}

/// Scrapes a URL with Python's HTTP client and parses the body with prometheus_client's
/// text-format parser; prints `name{labels} value` lines.
async fn scrape(url: &str) -> (u16, String) {
    let py = format!(
        "import urllib.request, urllib.error, sys\n\
         try:\n    r = urllib.request.urlopen('{url}', timeout=10); code = r.status; body = r.read().decode()\n\
         except urllib.error.HTTPError as e:\n    code = e.code; body = e.read().decode()\n\
         print(code)\n\
         if '{url}'.endswith('/metrics'):\n\
         \x20   from prometheus_client.parser import text_string_to_metric_families\n\
         \x20   for fam in text_string_to_metric_families(body):\n\
         \x20       for s in fam.samples:\n\
         \x20           labels = ','.join('%s=%s' % kv for kv in sorted(s.labels.items()))\n\
         \x20           print('%s{{%s}} %s' % (s.name, labels, s.value))\n\
         else:\n    print(body.strip())\n"
    );
    let out = tokio::process::Command::new("python3")
        .args(["-c", &py])
        .output()
        .await
        .expect("python3");
    assert!(
        out.status.success(),
        "scrape failed (is prometheus_client installed? `pip install prometheus_client`): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (code, rest) = text.split_once('\n').unwrap_or((&text, ""));
    (code.trim().parse().unwrap_or(0), rest.to_string())
}

fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_match_the_traffic_and_the_topology() {
    let h = Harness::start(2).await;
    let base = format!("http://{}", h.proxy.as_ref().unwrap().metrics_addr.unwrap());
    let (code, body) = scrape(&format!("{base}/healthz")).await;
    assert_eq!((code, body.trim()), (200, "ok"));
    let (code, body) = scrape(&format!("{base}/readyz")).await;
    assert_eq!(code, 200, "{body}");
    let mut c = h.proxy_conn().await;
    let (_, before) = scrape(&format!("{base}/metrics")).await;
    let reads_before =
        sample(&before, "sluice_queries_total{class=read,route=replica}").unwrap_or(0.0);
    for _ in 0..50 {
        let _: Option<u64> = c.query_first("SELECT 1 FROM DUAL").await.unwrap();
    }
    c.query_drop("CREATE DATABASE IF NOT EXISTS met")
        .await
        .unwrap();
    // A computed user variable cannot be replayed: the session is pinned to its connection.
    c.query_drop("SET @pinned = RAND()").await.unwrap();
    let bad = mysql_async::Conn::new(h.opts(h.addr.port(), "app", "wrong")).await;
    assert!(bad.is_err());
    let (code, m) = scrape(&format!("{base}/metrics")).await;
    assert_eq!(code, 200);
    assert_eq!(
        sample(&m, "sluice_queries_total{class=read,route=replica}"),
        Some(reads_before + 50.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "sluice_reads_routed_total{target=replica}"),
        Some(reads_before + 50.0)
    );
    assert_eq!(
        sample(&m, "sluice_queries_total{class=ddl,route=primary}"),
        Some(1.0)
    );
    assert_eq!(
        sample(&m, "sluice_session_pins_total{reason=user_variable}"),
        Some(1.0)
    );
    assert_eq!(
        sample(&m, "sluice_sessions_pinned{reason=user_variable}"),
        Some(1.0)
    );
    assert_eq!(
        sample(&m, "sluice_sessions_pinned{reason=temp_table}"),
        Some(0.0)
    );
    assert_eq!(
        sample(&m, "sluice_sessions_holding_connections{}"),
        Some(1.0),
        "the pinned session holds its connection"
    );
    assert!(sample(&m, "sluice_multiplexing_ratio{}").unwrap() > 0.0);
    // One client and free pool slots: no statement waited in a pool's queue, and only waits
    // are observed (every lease was, once).
    assert_eq!(
        sample(&m, "sluice_pool_wait_seconds_count{}"),
        Some(0.0),
        "{m}"
    );
    assert_eq!(sample(&m, "sluice_errors_total{code=1045}"), Some(1.0));
    assert_eq!(sample(&m, "sluice_client_connections{}"), Some(1.0));
    assert!(sample(&m, "sluice_client_connections_total{}").unwrap() >= 2.0);
    assert!(
        sample(&m, "sluice_query_duration_seconds_count{route=replica}").unwrap() >= 50.0,
        "{m}"
    );
    assert_eq!(sample(&m, "sluice_primary_known{}"), Some(1.0));
    assert_eq!(
        sample(&m, "sluice_server_role{role=primary,server=db1}"),
        Some(1.0)
    );
    assert_eq!(sample(&m, "sluice_server_up{server=db3}"), Some(1.0));
    assert!(sample(&m, "sluice_replica_lag_seconds{server=db2}").is_some());
    assert!(sample(&m, "sluice_backend_connections{server=db1,state=in_use}").unwrap() >= 1.0);

    // A replica whose SQL thread stops has no lag figure any more (unknown, not zero).
    h.root_sql(2, "STOP SLAVE SQL_THREAD").await;
    let mut gone = false;
    for _ in 0..50 {
        let (_, m) = scrape(&format!("{base}/metrics")).await;
        if sample(&m, "sluice_replica_lag_seconds{server=db3}").is_none() {
            assert!(sample(&m, "sluice_replica_lag_seconds{server=db2}").is_some());
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "the stopped replica still reports a lag");
    let (code, _) = scrape(&format!("{base}/nope")).await;
    assert_eq!(code, 404);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_routing_and_rules_under_load_and_refuses_a_broken_file() {
    common::init_tracing();
    let topo = sluice::sandbox::Topology::start(spec(2))
        .await
        .expect("topology");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.toml");
    let base = topo
        .config_toml("127.0.0.1:0")
        .replace("[admin]\n", "[admin]\nlisten = \"127.0.0.1:0\"\n");
    let write = |routing: &str| {
        std::fs::write(
            &path,
            format!("{base}\n[metrics]\nlisten = \"127.0.0.1:0\"\n\n[routing]\n{routing}"),
        )
        .unwrap()
    };
    write("max_lag_ms = 60000\n");
    std::fs::write(
        dir.path().join("rules.toml"),
        "[[rule]]\nname = \"no-answer\"\nmatch.regex = '^SELECT \\?$'\naction.deny = \"not here\"\n",
    )
    .unwrap();
    let config = sluice::config::Config::load(&path).expect("valid config");
    let proxy = sluice::server::start(std::sync::Arc::new(config))
        .await
        .unwrap();
    assert!(proxy.wait_ready(Duration::from_secs(15)).await);
    let opts = |port: u16, user: &str, pw: &str| {
        OptsBuilder::default()
            .ip_or_hostname("127.0.0.1")
            .tcp_port(port)
            .user(Some(user))
            .pass(Some(pw))
            .prefer_socket(false)
    };
    let app = opts(proxy.local_addr.port(), "app", "app-pw");
    // A steady read load that must see no errors across the reloads.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let mut c = Conn::new(app).await.unwrap();
            let (mut ok, mut errors) = (0u64, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                match c
                    .query_first::<u64, _>("SELECT COUNT(*) FROM information_schema.SCHEMATA")
                    .await
                {
                    Ok(_) => ok += 1,
                    Err(e) => errors.push(e.to_string()),
                }
            }
            (ok, errors)
        })
    };
    let mut c = Conn::new(app.clone()).await.unwrap();
    assert_ne!(server_id(&mut c).await, 1, "reads go to replicas at first");
    c.query_drop("SELECT 42").await.expect("no rule yet");

    // New budget (0: reads stay on the primary) and a rule file, applied with RELOAD.
    write("max_lag_ms = 0\nrules = [\"rules.toml\"]\n");
    let mut a = Conn::new(opts(
        proxy.admin_addr.unwrap().port(),
        "admin",
        ADMIN_PASSWORD,
    ))
    .await
    .unwrap();
    a.query_drop("RELOAD").await.expect("reload applied");
    assert!(a.info().contains("max_lag_ms = 0"), "{}", a.info());
    assert_eq!(
        server_id(&mut c).await,
        1,
        "a 0 ms budget keeps reads on the primary"
    );
    match c.query_drop("SELECT 42").await {
        Err(mysql_async::Error::Server(e)) => assert_eq!(e.code, 9010, "{e:?}"),
        other => panic!("the new rule must deny: {other:?}"),
    }
    let rules = table(&mut a, "SHOW RULES").await;
    assert_eq!(rules.len(), 1);
    assert_eq!(val(&rules[0], "name"), Some("no-answer"));

    // A broken file is refused whole; the routing in force stays.
    std::fs::write(&path, format!("{base}\n[routing]\nmax_lag_ms = \"soon\"\n")).unwrap();
    match a.query_drop("RELOAD").await {
        Err(mysql_async::Error::Server(e)) => {
            assert_eq!(e.code, 9031);
            assert!(e.message.contains("routing.max_lag_ms"), "{}", e.message);
            assert!(e.message.contains("sluice.toml"), "{}", e.message);
        }
        other => panic!("a broken config must be refused: {other:?}"),
    }
    assert_eq!(server_id(&mut c).await, 1);
    assert!(c.query_drop("SELECT 42").await.is_err());
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (ok, errors) = load.await.unwrap();
    assert!(ok > 0);
    assert!(
        errors.is_empty(),
        "client errors during the reloads: {errors:?}"
    );
    let m = scrape(&format!("http://{}/metrics", proxy.metrics_addr.unwrap()))
        .await
        .1;
    assert_eq!(
        sample(&m, "sluice_config_reloads_total{outcome=success}"),
        Some(1.0)
    );
    assert_eq!(
        sample(&m, "sluice_config_reloads_total{outcome=failure}"),
        Some(1.0)
    );
    proxy.shutdown().await;
    drop(topo);
}

/// The config text for a sandbox topology with only the named servers, plus `extra`.
fn config_with(topo: &sluice::sandbox::Topology, servers: &[&str], extra: &str) -> String {
    let blocks: Vec<String> = topo
        .config_toml("127.0.0.1:0")
        .replace("[admin]\n", "[admin]\nlisten = \"127.0.0.1:0\"\n")
        .split("\n\n")
        .filter(|b| {
            !b.starts_with("[[servers]]")
                || servers
                    .iter()
                    .any(|n| b.contains(&format!("name = \"{n}\"")))
        })
        .map(str::to_string)
        .collect();
    format!(
        "{}\n{extra}\n[metrics]\nlisten = \"\"\n\n[routing]\nmax_lag_ms = 60000\n",
        blocks.join("\n\n")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_and_removes_servers_and_users_without_dropping_clients() {
    common::init_tracing();
    let topo = sluice::sandbox::Topology::start(spec(2))
        .await
        .expect("topology");
    topo.sql(
        0,
        "CREATE USER 'late'@'%' IDENTIFIED BY 'late-pw'; GRANT ALL PRIVILEGES ON *.* TO 'late'@'%'; REVOKE READ_ONLY ADMIN ON *.* FROM 'late'@'%'",
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.toml");
    std::fs::write(&path, config_with(&topo, &["db1", "db2"], "")).unwrap();
    let config = sluice::config::Config::load(&path).expect("valid config");
    let proxy = sluice::server::start(std::sync::Arc::new(config))
        .await
        .unwrap();
    assert!(proxy.wait_ready(Duration::from_secs(15)).await);
    let opts = |port: u16, user: &str, pw: &str| {
        OptsBuilder::default()
            .ip_or_hostname("127.0.0.1")
            .tcp_port(port)
            .user(Some(user))
            .pass(Some(pw))
            .prefer_socket(false)
    };
    let app = opts(proxy.local_addr.port(), "app", "app-pw");
    let late = opts(proxy.local_addr.port(), "late", "late-pw");
    // Readers that must see no error across the reloads; they note which servers answered.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u64>::new()));
    let load = {
        let (stop, seen, app) = (stop.clone(), seen.clone(), app.clone());
        tokio::spawn(async move {
            let mut c = Conn::new(app).await.unwrap();
            let (mut ok, mut errors) = (0u64, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                match c.query_first::<u64, _>("SELECT @@server_id").await {
                    Ok(Some(id)) => {
                        ok += 1;
                        seen.lock().unwrap().push(id);
                    }
                    Ok(None) => errors.push("no row".to_string()),
                    Err(e) => errors.push(e.to_string()),
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (ok, errors)
        })
    };
    let mut a = Conn::new(opts(
        proxy.admin_addr.unwrap().port(),
        "admin",
        ADMIN_PASSWORD,
    ))
    .await
    .unwrap();
    let mut c = Conn::new(app.clone()).await.unwrap();
    for _ in 0..20 {
        assert_eq!(server_id(&mut c).await, 2, "only db2 serves reads at first");
    }
    match Conn::new(late.clone()).await {
        Err(mysql_async::Error::Server(e)) => assert_eq!(e.code, 1045),
        other => panic!("an unknown user logged in: {:?}", other.map(|_| ())),
    }

    // Add db3 and a user, change pool and monitor settings.
    std::fs::write(
        &path,
        config_with(
            &topo,
            &["db1", "db2", "db3"],
            "[[users]]\nname = \"late\"\npassword = \"late-pw\"\n",
        )
        .replace("[proxy]\n", "[proxy]\nmax_backend_connections = 77\n")
        .replace("[monitor]\n", "[monitor]\ninterval_ms = 150\n"),
    )
    .unwrap();
    a.query_drop("RELOAD").await.expect("reload applied");
    let info = a.info().to_string();
    assert!(info.contains("server db3 added"), "{info}");
    assert!(
        info.contains("[[users]]") && info.contains("[proxy] settings"),
        "{info}"
    );
    assert!(!info.contains("NOT applied"), "{info}");
    let servers = table(&mut a, "SHOW SERVERS").await;
    assert_eq!(servers.len(), 3, "{servers:?}");
    let pools = table(&mut a, "SHOW POOLS").await;
    assert!(
        pools.iter().all(|p| val(p, "max") == Some("77")),
        "{pools:?}"
    );
    let config = table(&mut a, "SHOW CONFIG").await;
    assert!(
        config
            .iter()
            .any(|r| val(r, "key") == Some("monitor.interval_ms") && val(r, "value") == Some("150")),
        "{config:?}"
    );
    // The session opened before the reload reads from db3 once the monitor finds it fit.
    let mut on_db3 = false;
    for _ in 0..300 {
        if server_id(&mut c).await == 3 {
            on_db3 = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        on_db3,
        "an existing session never read from the added server"
    );
    let mut l = Conn::new(late.clone())
        .await
        .expect("the added user logs in");
    assert_ne!(
        server_id(&mut l).await,
        1,
        "the new user reads from replicas"
    );

    // Remove db2: nothing is routed there once RELOAD has answered.
    std::fs::write(
        &path,
        config_with(
            &topo,
            &["db1", "db3"],
            "[[users]]\nname = \"late\"\npassword = \"late-pw\"\n",
        ),
    )
    .unwrap();
    a.query_drop("RELOAD").await.expect("reload applied");
    assert!(a.info().contains("server db2 removed"), "{}", a.info());
    // The background reader has at most one read in flight, possibly routed just before
    // RELOAD answered: every read it records after that one was routed after the reload.
    let mark = seen.lock().unwrap().len() + 1;
    for _ in 0..40 {
        assert_eq!(server_id(&mut c).await, 3, "a removed server got a read");
        assert_eq!(server_id(&mut l).await, 3, "a removed server got a read");
    }
    let names: Vec<String> = table(&mut a, "SHOW SERVERS")
        .await
        .iter()
        .map(|r| val(r, "name").unwrap().to_string())
        .collect();
    assert_eq!(names, ["db1", "db3"]);
    assert_eq!(table(&mut a, "SHOW POOLS").await.len(), 2);
    // The removed server's pool is drained: sessions closed their connections there at their
    // next command, and nothing was pooled.
    let mut drained = false;
    for _ in 0..100 {
        let n = topo
            .sql(
                1,
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER IN ('app', 'late')",
            )
            .await
            .unwrap();
        if n.trim() == "0" {
            drained = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(drained, "connections to the removed server stayed open");

    // Removing the primary is refused whole.
    std::fs::write(&path, config_with(&topo, &["db3"], "")).unwrap();
    match a.query_drop("RELOAD").await {
        Err(mysql_async::Error::Server(e)) => {
            assert_eq!(e.code, 9031);
            assert!(e.message.contains("db1 is the primary"), "{}", e.message);
        }
        other => panic!("removing the primary must be refused: {other:?}"),
    }
    assert_eq!(table(&mut a, "SHOW SERVERS").await.len(), 2);
    Conn::new(late.clone())
        .await
        .expect("a refused reload changed nothing: the user is still there");
    c.query_drop("CREATE DATABASE IF NOT EXISTS rl")
        .await
        .unwrap();

    eventually(
        "the steady reader reads after the removal",
        Duration::from_secs(10),
        || {
            let seen = seen.clone();
            async move { seen.lock().unwrap().len() > mark + 10 }
        },
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (ok, errors) = load.await.unwrap();
    assert!(ok > 0);
    assert!(
        errors.is_empty(),
        "client errors during the reloads: {errors:?}"
    );
    let seen_all = seen.lock().unwrap().clone();
    assert!(
        seen_all.len() > mark + 10,
        "the steady reader went on after the removal ({} reads, mark {mark})",
        seen_all.len()
    );
    let after_removal = &seen_all[mark..];
    assert!(
        !after_removal.contains(&2),
        "the steady reader was served by the removed server: {after_removal:?}"
    );
    assert!(seen.lock().unwrap().contains(&3));
    proxy.shutdown().await;
    drop(topo);
}

async fn server_id(c: &mut Conn) -> u64 {
    c.query_first::<u64, _>("SELECT @@server_id")
        .await
        .unwrap()
        .unwrap()
}
