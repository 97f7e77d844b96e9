"""One scenario, run with a Python driver against a port (Sluice or MariaDB directly); what it
prints is compared between the two. Usage: scenario.py MODULE PORT DATABASE"""
import sys

mod, port, db = sys.argv[1], int(sys.argv[2]), sys.argv[3]
if mod == "mysql.connector":
    import mysql.connector as m

    def connect(**kw):
        return m.connect(host="127.0.0.1", port=port, user="app", password="app-pw",
                         allow_local_infile=True, **kw)
elif mod == "MySQLdb":
    import MySQLdb as m

    def connect(autocommit=False, **kw):
        c = m.connect(host="127.0.0.1", port=port, user="app", password="app-pw", charset="utf8mb4",
                      local_infile=1, **kw)
        c.autocommit(autocommit)
        return c
else:
    raise SystemExit(f"unknown driver {mod}")


def out(*a):
    print(*a, flush=True)


c = connect()
cur = c.cursor()
cur.execute(f"CREATE DATABASE {db} CHARACTER SET utf8mb4")
cur.execute(f"USE {db}")
cur.execute("CREATE TABLE t (id INT AUTO_INCREMENT PRIMARY KEY, j JSON, name VARCHAR(50), "
            "d DECIMAL(10,2), ts DATETIME(3), b BLOB, f DOUBLE)")
rows = [('{"a": 1}', "h\u00e9llo \u2713", "12.34", "2024-01-02 03:04:05.678", b"\x00\x01\xff", 1.5),
        (None, None, None, None, None, None)]
cur.executemany("INSERT INTO t (j, name, d, ts, b, f) VALUES (%s, %s, %s, %s, %s, %s)", rows)
out("executemany rowcount", cur.rowcount)
cur.execute("INSERT INTO t (name) VALUES (%s)", ("third",))
out("lastrowid", cur.lastrowid)
c.commit()
cur.execute("SELECT id, j, name, d, ts, b, f FROM t ORDER BY id")
for r in cur.fetchall():
    out(repr(r))
out("description", [(d[0], d[1]) for d in cur.description])
# LOAD DATA LOCAL from a file the driver streams.
import os
import tempfile

with tempfile.NamedTemporaryFile("w", suffix=".csv", delete=False) as f:
    for i in range(1000):
        f.write(f"loaded {i}\n")
    path = f.name
cur.execute("CREATE TABLE ld (v VARCHAR(40))")
cur.execute(f"LOAD DATA LOCAL INFILE '{path}' INTO TABLE ld")
out("load data rowcount", cur.rowcount)
os.unlink(path)
c.commit()
cur.execute("SELECT COUNT(*), MIN(v), MAX(v) FROM ld")
out("loaded", cur.fetchone())
cur.execute("START TRANSACTION")
cur.execute("INSERT INTO t (name) VALUES ('rolled back')")
c.rollback()
cur.execute("SELECT COUNT(*) FROM t")
out("count after rollback", cur.fetchone())
try:
    cur.execute("INSERT INTO t (id) VALUES (1)")
except m.Error as e:
    out("duplicate key", e.args[0])
cur.execute("SET time_zone = '+05:00'")
cur.execute("SELECT @@time_zone, LAST_INSERT_ID()")
out("session", cur.fetchone())
cur.execute("SELECT CAST('abc' AS SIGNED)")
out("cast", cur.fetchall())
cur.execute("SHOW WARNINGS")
out("warnings", cur.fetchall())
if mod == "mysql.connector":
    pc = c.cursor(prepared=True)
    pc.execute("SELECT id, name, d, j FROM t WHERE id > ? ORDER BY id", (1,))
    out("prepared", pc.fetchall())
c.commit()
# A second connection in autocommit mode: plain reads (on a replica through Sluice).
c2 = connect(autocommit=True)
cur2 = c2.cursor()
cur2.execute(f"SELECT COUNT(*), SUM(id) FROM {db}.t")
out("autocommit read", cur2.fetchone())
# KILL with the id the driver got in the greeting: the victim's next statement fails.
victim = connect(autocommit=True)
vid = victim.connection_id if mod == "mysql.connector" else victim.thread_id()
cur2.execute(f"KILL {vid}")
try:
    vc = victim.cursor()
    vc.execute("SELECT 1")
    vc.fetchall()
    out("victim survived KILL")
except m.Error as e:
    out("victim killed", type(e).__name__)
cur.execute(f"DROP DATABASE {db}")
out("done")
