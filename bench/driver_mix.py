#!/usr/bin/env python3
"""Sessions of different drivers over one server connection: whether they share it.

    python3 bench/driver_mix.py [--rounds 20]

Starts `sluice sandbox --replicas 0 --max-backend-connections 1` (a MariaDB primary and Sluice
with one connection to it; `SLUICE_BIN` picks the binary, default target/release/sluice), then
runs two mixes, each alternating statements between two sessions that logged in differently:

- PyMySQL and mysql-connector-python (pure Python): `SELECT @@pseudo_thread_id` from each, and
  PyMySQL's `SELECT 1; SELECT 2` (PyMySQL logs in without multi-statements: refused, 1064);
- PHP's mysqli and PDO (mysqlnd): the same, then mysqli's `multi_query` (which sends
  COM_SET_OPTION) and one more PDO statement.

Prints per mix how many server threads answered and how many connections the primary accepted
from Sluice meanwhile (its `Connections` counter, less the ones this script opened to read it;
the first is the one Sluice opens for the first session's login). One thread and one
connection: the sessions shared it.
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
        php = os.path.join(work, "mix.php")
        with open(php, "w") as f:
            f.write(PHP)
        for name, run in (
            ("PyMySQL + Connector/Python", lambda: python_mix(port, a.rounds)),
            ("PHP mysqli + PDO", lambda: subprocess.run(
                ["php", php, str(port), str(a.rounds)], capture_output=True, text=True,
                timeout=120).stdout.strip()),
        ):
            before = connections(primary)
            out = run()
            # Less the connection each `connections` call makes.
            opened = connections(primary) - before - 1
            threads, _, rest = out.partition(" ")
            print(f"{name}: {threads} server thread(s), {opened} server connection(s) opened; {rest}")
    finally:
        C.stop([sb], work)


if __name__ == "__main__":
    main()
