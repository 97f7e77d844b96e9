"""MySQL query attributes with mysql-connector-python (pure Python): text and prepared
statements with and without attributes, through whatever is at PORT. Prints one line per
result (compared by tests/query_attributes.rs across targets), then whether the connection
negotiated CLIENT_QUERY_ATTRIBUTES, then `done`.

    python3 query_attributes.py PORT DATABASE TOKEN
"""
import sys
import warnings

import mysql.connector
from mysql.connector.constants import ClientFlag

port, db, token = int(sys.argv[1]), sys.argv[2], sys.argv[3]
warnings.simplefilter("ignore")  # "the server does not support Query Attributes" (direct)
c = mysql.connector.connect(host="127.0.0.1", port=port, user="app", password="app-pw",
                            use_pure=True, ssl_disabled=True, autocommit=True)
cur = c.cursor()
cur.execute(f"CREATE DATABASE IF NOT EXISTS {db}")
cur.execute(f"USE {db}")
cur.execute("CREATE TABLE IF NOT EXISTS t (id INT AUTO_INCREMENT PRIMARY KEY, token VARCHAR(64), n INT)")

# Text protocol: attributes of several types, then none.
cur.add_attribute("trace", "abc")
cur.add_attribute("n", 42)
cur.add_attribute("f", 1.5)
cur.execute("SELECT 1 + %s, 'x'", (41,))
print("text with attributes", cur.fetchall())
cur.clear_attributes()
cur.execute("SELECT 2 + %s", (40,))
print("text without", cur.fetchall())
cur.add_attribute("w", "write")
cur.execute("INSERT INTO t (token, n) VALUES (%s, %s)", (token, 1))
print("insert rows", cur.rowcount)
cur.clear_attributes()
# Session state set with attributes: later statements (through a proxy, perhaps on other
# server connections) see it.
cur.add_attribute("s", "set")
cur.execute("SET SESSION sql_mode = 'ANSI_QUOTES'")
cur.clear_attributes()
cur.execute("SELECT @@session.sql_mode")
print("sql_mode", cur.fetchall())

# Prepared statements: parameters and attributes in one list, a NULL parameter, none.
p = c.cursor(prepared=True)
p.add_attribute("trace", "def")
p.add_attribute("k", 7)
p.execute("SELECT ? + ?, ?", (1, 2, "y"))
print("prepared with attributes", p.fetchall())
p.execute("SELECT ? + ?, ?", (3, 4, None))
print("prepared again with attributes", p.fetchall())
p.clear_attributes()
p.execute("SELECT ? + ?, ?", (5, 6, "z"))
print("prepared without", p.fetchall())
p.add_attribute("only", "attribute")
p.execute("SELECT COUNT(*) FROM t WHERE token = 'none'")
print("prepared, no parameters, attributes", p.fetchall())
p.clear_attributes()
p.add_attribute("w", "write")
p.execute("INSERT INTO t (token, n) VALUES (?, ?)", (token, 2))
print("prepared insert rows", p.rowcount)
p.clear_attributes()
cur.execute("SELECT n FROM t WHERE token = %s ORDER BY n", (token,))
print("rows of this run", cur.fetchall())
# An error keeps its code and the session goes on.
cur.add_attribute("e", "err")
try:
    cur.execute("SELECT * FROM no_such_table")
except mysql.connector.Error as e:
    print("error", e.errno, e.sqlstate)
cur.clear_attributes()
cur.execute("SELECT 'after'")
print("after the error", cur.fetchall())
print("negotiated", bool(c._client_flags & ClientFlag.CLIENT_QUERY_ATTRIBUTES))
c.close()
print("done")
