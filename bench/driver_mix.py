#!/usr/bin/env python3
"""Sessions of different drivers over one server connection: whether they share it.

    python3 bench/driver_mix.py [--rounds 20]

Starts `sluice sandbox --replicas 0 --max-backend-connections 1` (a MariaDB primary and Sluice
with one connection to it; `SLUICE_BIN` picks the binary, default target/release/sluice), then
runs five mixes, each alternating statements between sessions that logged in differently:

- PyMySQL and mysql-connector-python (pure Python): `SELECT @@pseudo_thread_id` from each, and
  PyMySQL's `SELECT 1; SELECT 2` (PyMySQL logs in without multi-statements: refused, 1064);
- three PyMySQL sessions that differ only by login character set (utf8mb4_general_ci 45,
  utf8mb4_unicode_ci 224, latin1 8), each checking it sees its own collation;
- PyMySQL without and with local files (CLIENT_LOCAL_FILES, which PHP's mysqlnd also asks
  for) and Connector/Python, then PyMySQL's LOAD DATA LOCAL without local files and
  Connector/Python's prepared CALL with an OUT parameter;
- PyMySQL and mysqlclient (libmariadb asks for MariaDB's extended metadata, progress reports
  and metadata caching, which still split the pools);
- PHP's mysqli and PDO (mysqlnd): the same, then mysqli's `multi_query` (which sends
  COM_SET_OPTION) and one more PDO statement.

Prints per mix how many server threads answered, how many connections the primary accepted
from Sluice meanwhile (its `Connections` counter, less the ones this script opened to read it;
the first is the one Sluice opens for the first session's login) and how many times Sluice
re-authenticated the connection for another kind of session (`COM_CHANGE_USER`, counted in the
primary's general log, which the script turns on). One thread, one connection and no
re-authentication: the sessions shared it as it was.
"""

import argparse, os, subprocess, sys, tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare as C  # noqa: E402

PHP = r"""<?php
[$port, $rounds] = [(int)$argv[1], (int)$argv[2]];
$m = new mysqli("127.0.0.1", "app", "app", "", $port);
$p = new PDO("mysql:host=127.0.0.1;port=$port", "app", "app");
$ids = [];
try {
  for ($i = 0; $i < $rounds; $i++) {
    $ids[] = $m->query("SELECT @@pseudo_thread_id")->fetch_row()[0];
    $ids[] = $p->query("SELECT @@pseudo_thread_id")->fetch()[0];
  }
  $m->multi_query("SELECT 1; SELECT 2");
  do { if ($r = $m->store_result()) $r->free(); } while ($m->more_results() && $m->next_result());
  $ids[] = $p->query("SELECT @@pseudo_thread_id")->fetch()[0];
  echo count(array_unique($ids)), " ok\n";
} catch (Throwable $e) {
  echo count(array_unique($ids)), " ", str_replace("\n", " ", $e->getMessage()), "\n";
}
"""


def connections(primary):
    import pymysql
    c = pymysql.connect(host="127.0.0.1", port=primary, user="app", password="app")
    cur = c.cursor()
    cur.execute("SHOW GLOBAL STATUS LIKE 'Connections'")
    n = int(cur.fetchone()[1])
    c.close()
    return n


def root(work, sql):
    """`sql` as the primary's root (over its socket); the output's text."""
    sock = os.path.join(work, "topology", "db1", "mysqld.sock")
    return subprocess.run(["mariadb", "-S", sock, "-u", "root", "-N", "-e", sql],
                          capture_output=True, text=True, check=True).stdout.strip()


def change_users(work):
    """How many COM_CHANGE_USER (re-authentications) the primary has logged."""
    return int(root(work, "SELECT COUNT(*) FROM mysql.general_log "
                          "WHERE command_type = 'Change user'"))


def python_mix(port, rounds):
    import pymysql
    import mysql.connector
    a = pymysql.connect(host="127.0.0.1", port=port, user="app", password="app", autocommit=True)
    b = mysql.connector.connect(host="127.0.0.1", port=port, user="app", password="app",
                                use_pure=True, ssl_disabled=True, autocommit=True)
    ca, cb = a.cursor(), b.cursor()
    ids = set()
    multi = "accepted"
    for _ in range(rounds):
        ca.execute("SELECT @@pseudo_thread_id")
        ids.add(ca.fetchone()[0])
        cb.execute("SELECT @@pseudo_thread_id")
        ids.add(cb.fetchone()[0])
    try:
        ca.execute("SELECT 1; SELECT 2")
    except pymysql.err.MySQLError as e:
        multi = f"refused ({e.args[0]})"
    a.close()
    b.close()
    return f"{len(ids)} ok; PyMySQL's SELECT 1; SELECT 2: {multi}"


def capability_mix(port, rounds):
    """PyMySQL without and with local files (`local_infile=True` asks for CLIENT_LOCAL_FILES, as
    PHP's mysqlnd does) and Connector/Python, then LOAD DATA LOCAL from the PyMySQL session
    without local files (the server's refusal, 4166) and Connector/Python's prepared CALL of a
    procedure with an OUT parameter (Connector/Python does not ask for CLIENT_PS_MULTI_RESULTS:
    a direct connection sends it no result for it)."""
    import pymysql
    import mysql.connector
    a = pymysql.connect(host="127.0.0.1", port=port, user="app", password="app", autocommit=True)
    f = pymysql.connect(host="127.0.0.1", port=port, user="app", password="app", autocommit=True,
                        local_infile=True)
    b = mysql.connector.connect(host="127.0.0.1", port=port, user="app", password="app",
                                use_pure=True, ssl_disabled=True, autocommit=True)
    curs = [a.cursor(), f.cursor(), b.cursor()]
    ids = set()
    for _ in range(rounds):
        for cur in curs:
            cur.execute("SELECT @@pseudo_thread_id")
            ids.add(cur.fetchone()[0])
    try:
        curs[0].execute("LOAD DATA LOCAL INFILE '/nonexistent.csv' INTO TABLE mix.t")
        load = "accepted"
    except pymysql.err.MySQLError as e:
        load = f"refused ({e.args[0]})"
    curs[0].execute("CREATE DATABASE IF NOT EXISTS mix")
    curs[0].execute("CREATE OR REPLACE PROCEDURE mix.outs(IN a INT, OUT b INT) SET b = a * 2")
    pc = b.cursor(prepared=True)
    pc.execute("CALL mix.outs(?, ?)", (4, 0))
    call = f"{len(pc.fetchall())} row(s)" if pc.with_rows else "no result"
    for x in (a, f, b):
        x.close()
    return (f"{len(ids)} ok; PyMySQL's LOAD DATA LOCAL without local files: {load}; "
            f"Connector/Python's prepared CALL with an OUT parameter: {call}")


def libmariadb_mix(port, rounds):
    """PyMySQL and mysqlclient (libmariadb, which asks for MariaDB's extended metadata,
    progress reports and metadata caching: capabilities that still give it connections of its
    own)."""
    import pymysql
    import MySQLdb
    a = pymysql.connect(host="127.0.0.1", port=port, user="app", password="app", autocommit=True)
    c = MySQLdb.connect(host="127.0.0.1", port=port, user="app", password="app")
    c.autocommit(True)
    ids = set()
    for _ in range(rounds):
        for cur in (a.cursor(), c.cursor()):
            cur.execute("SELECT @@pseudo_thread_id")
            ids.add(cur.fetchone()[0])
    a.close()
    c.close()
    return f"{len(ids)} ok"


def charset_mix(port, rounds):
    """Three PyMySQL sessions that differ only by login character set: utf8mb4_general_ci (45,
    PyMySQL's and mysql_async's default), utf8mb4_unicode_ci (224, node mysql2's and sqlx's)
    and latin1 (8). Each must see its own collation."""
    import pymysql
    logins = [dict(charset="utf8mb4"), dict(charset="utf8mb4", collation="utf8mb4_unicode_ci"),
              dict(charset="latin1")]
    want = ["utf8mb4_general_ci", "utf8mb4_unicode_ci", "latin1_swedish_ci"]
    conns = [pymysql.connect(host="127.0.0.1", port=port, user="app", password="app",
                             autocommit=True, **kw) for kw in logins]
    ids, wrong = set(), 0
    for _ in range(rounds):
        for c, w in zip(conns, want):
            cur = c.cursor()
            cur.execute("SELECT @@pseudo_thread_id, @@collation_connection")
            tid, coll = cur.fetchone()
            ids.add(tid)
            wrong += coll != w
    for c in conns:
        c.close()
    return f"{len(ids)} ok; sessions that saw another collation than their login's: {wrong}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=20)
    a = ap.parse_args()
    binary = os.environ.get("SLUICE_BIN", os.path.join(C.ROOT, "target", "release", "sluice"))
    work = tempfile.mkdtemp(prefix="sluice-mix-")
    port = C.free_port()
    sb, primary, _ = C.start_sandbox(binary, work, port, 0, ("--max-backend-connections", "1"))
    try:
        C.wait_port(port)
        root(work, "SET GLOBAL log_output = 'TABLE'; SET GLOBAL general_log = 1")
        php = os.path.join(work, "mix.php")
        with open(php, "w") as f:
            f.write(PHP)
        for name, run in (
            ("PyMySQL + Connector/Python", lambda: python_mix(port, a.rounds)),
            ("PyMySQL utf8mb4 + utf8mb4_unicode_ci + latin1", lambda: charset_mix(port, a.rounds)),
            ("PyMySQL + PyMySQL local_infile + Connector/Python",
             lambda: capability_mix(port, a.rounds)),
            ("PyMySQL + mysqlclient", lambda: libmariadb_mix(port, a.rounds)),
            ("PHP mysqli + PDO", lambda: subprocess.run(
                ["php", php, str(port), str(a.rounds)], capture_output=True, text=True,
                timeout=120).stdout.strip()),
        ):
            reauth = change_users(work)
            before = connections(primary)
            out = run()
            # Less the connection each `connections` call makes.
            opened = connections(primary) - before - 1
            reauth = change_users(work) - reauth
            threads, _, rest = out.partition(" ")
            print(f"{name}: {threads} server thread(s), {opened} server connection(s) opened, "
                  f"{reauth} re-authentication(s); {rest}")
    finally:
        C.stop([sb], work)


if __name__ == "__main__":
    main()
