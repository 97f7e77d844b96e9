"""One scenario, run with a Python driver against a port (Sluice or MariaDB directly); what it
prints is compared between the two. Usage: scenario.py MODULE PORT DATABASE"""
import sys
import time

mod, port, db = sys.argv[1], int(sys.argv[2]), sys.argv[3]
if mod == "mysql.connector":
    import mysql.connector as m

    def connect(files=True, **kw):
        return m.connect(host="127.0.0.1", port=port, user="app", password="app-pw",
                         allow_local_infile=files, **kw)
elif mod == "MySQLdb":
    import MySQLdb as m

    def connect(autocommit=False, files=True, **kw):
        c = m.connect(host="127.0.0.1", port=port, user="app", password="app-pw", charset="utf8mb4",
                      local_infile=int(files), **kw)
        c.autocommit(autocommit)
        return c
elif mod == "pymysql":
    import pymysql as m

    def connect(files=True, **kw):
        return m.connect(host="127.0.0.1", port=port, user="app", password="app-pw",
                         charset="utf8mb4", local_infile=files, **kw)
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
# From a connection that did not enable local files: refused by the server's error (PyMySQL and
# Connector/Python then do not announce local files; Sluice's server connections do, so Sluice
# answers it). libmariadb announces them and refuses the server's file request itself.
nf = connect(files=False)
try:
    nf.cursor().execute(f"LOAD DATA LOCAL INFILE '{path}' INTO TABLE {db}.ld")
    out("load without local files: accepted")
except m.Error as e:
    out("load without local files", getattr(e, "errno", None) or e.args[0])
nf.close()
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
    # A prepared CALL with an OUT parameter: Connector/Python does not ask for
    # CLIENT_PS_MULTI_RESULTS, so a direct connection answers with the final OK alone (Sluice's
    # server connection asks for the OUT parameters' result, and leaves it out for it).
    cur.execute("CREATE PROCEDURE outs(IN a INT, OUT b INT) SET b = a * 2")
    pc.execute("CALL outs(?, ?)", (4, 0))
    out("prepared call", pc.with_rows, pc.rowcount)
c.commit()
# A second connection in autocommit mode: plain reads (on a replica through Sluice).
c2 = connect(autocommit=True)
cur2 = c2.cursor()
cur2.execute(f"SELECT COUNT(*), SUM(id) FROM {db}.t")
out("autocommit read", cur2.fetchone())
# Several result sets from one multi-statement query.
if mod == "mysql.connector":
    mc = connect(autocommit=True, database=db)
elif mod == "pymysql":
    from pymysql.constants import CLIENT

    mc = connect(autocommit=True, database=db, client_flag=CLIENT.MULTI_STATEMENTS)
else:
    from MySQLdb.constants import CLIENT

    mc = connect(autocommit=True, db=db, client_flag=CLIENT.MULTI_STATEMENTS)
mcur = mc.cursor()
mcur.execute("SELECT 1 AS a; SELECT 'two' AS b, 2 AS c; SELECT COUNT(*) AS n FROM t")
sets = []
for _ in range(10):
    sets.append((mcur.fetchall(), [d[0] for d in mcur.description]))
    if not mcur.nextset():
        break
out("multi", sets)
mcur.close()
# COM_CHANGE_USER to another account, then a wrong password (which ends the connection).
if mod == "pymysql":
    out("PyMySQL has no COM_CHANGE_USER")
elif mod == "mysql.connector":
    mc.cmd_change_user(username="other", password="other-pw", database=db)
else:
    mc.change_user("other", "other-pw", db)
if mod != "pymysql":
    mcur = mc.cursor()
    mcur.execute(f"SELECT CURRENT_USER(), DATABASE() = '{db}', @@time_zone")
    out("changed user", mcur.fetchone())
    mcur.close()
    try:
        if mod == "mysql.connector":
            mc.cmd_change_user(username="other", password="wrong", database=db)
        else:
            mc.change_user("other", "wrong", db)
        out("wrong password accepted")
    except m.Error as e:
        out("change user refused", e.args[0])
# Character sets: the same stored text read by a client in each character set, with the text
# and the binary protocol (mysql.connector), autocommit reads (a replica through Sluice). The
# bytes as they arrive (no decoding) and the column metadata are printed.
cur.execute(f"CREATE TABLE {db}.cs (id INT PRIMARY KEY, s VARCHAR(20) CHARACTER SET utf8mb4)")
cur.execute(f"INSERT INTO {db}.cs VALUES (1, %s), (2, %s), (3, 'abc')",
            ("\u041f\u0440\u0438\u0432\u0435\u0442", "caf\u00e9"))
c.commit()
# Through Sluice the reads below go to the replicas, which get the rows a moment later: wait
# (bounded) until four reads in a row see them, as an application reading its own writes from
# a new connection would have to.
w = connect(autocommit=True)
wc = w.cursor()
seen = 0
for _ in range(200):
    # A replica that has not yet created the table answers 1146: not yet, like a short count.
    try:
        wc.execute(f"SELECT COUNT(*) FROM {db}.cs")
        n = wc.fetchone()[0]
    except Exception as e:
        code = getattr(e, "errno", None) or (e.args[0] if e.args else None)
        if code != 1146:
            raise
        n = -1
    seen = seen + 1 if n == 3 else 0
    if seen == 4:
        break
    time.sleep(0.01)
out("replicated", seen == 4)
w.close()
for cs in ["cp1251", "koi8r", "cp866", "latin1", "utf8mb4", "binary"]:
    try:
        if mod in ("mysql.connector", "pymysql"):
            k = m.connect(host="127.0.0.1", port=port, user="app", password="app-pw", charset=cs,
                          use_unicode=False, autocommit=True)
        else:
            k = m.connect(host="127.0.0.1", port=port, user="app", password="app-pw", charset=cs,
                          use_unicode=False)
            k.autocommit(True)
        kc = k.cursor()
        kc.execute(f"SELECT s, id, @@character_set_results, @@collation_connection FROM {db}.cs "
                   "ORDER BY id")
        rows = kc.fetchall()
        out(cs, "text", [tuple(bytes(v).hex() if isinstance(v, (bytes, bytearray)) else v for v in r)
                         for r in rows], kc.description)
        if mod == "mysql.connector":
            kp = k.cursor(prepared=True)
            kp.execute(f"SELECT s, id FROM {db}.cs WHERE id > ? ORDER BY id", (0,))
            prow = kp.fetchall()
            out(cs, "prepared", [tuple(bytes(v).hex() if isinstance(v, (bytes, bytearray)) else v
                                       for v in r) for r in prow], kp.description)
            kp.close()
        k.close()
    except LookupError as e:
        # The driver itself cannot use this character set (directly as well): it needs a
        # Python codec of that name (mysql.connector has none for koi8r, MySQLdb for binary).
        out(cs, "not usable by the driver:", e)
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
