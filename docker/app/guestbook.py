#!/usr/bin/env python3
"""The example web application of the tier: a guestbook that writes and reads through Sluice.

GET  /            the page (the last 20 entries, a form)
POST /entries     add an entry (form field or raw body `text`); answers the entry as read back
                  on the same connection (read-your-writes through Sluice) as JSON
GET  /entries     the last 20 entries as JSON (reads: Sluice sends them to a replica)
GET  /healthz     200 when the process answers

Settings (environment): APP_NAME, APP_LISTEN (127.0.0.1:8081), APP_SOURCE (the source address
for connections to Sluice, which its firewall allows), SLUICE_ADDRESSES (host:port,… tried in
turn per request), DB_USER, DB_PASSWORD_FILE, SLUICE_CA (the CA of Sluice's client TLS
certificate; the connection is verified).
"""
import html
import itertools
import json
import os
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pymysql

NAME = os.environ.get("APP_NAME", "app")
LISTEN = os.environ.get("APP_LISTEN", "127.0.0.1:8081")
SOURCE = os.environ.get("APP_SOURCE") or None
ADDRESSES = [a.strip() for a in os.environ.get("SLUICE_ADDRESSES", "127.0.0.1:6033").split(",") if a.strip()]
USER = os.environ.get("DB_USER", "app")
with open(os.environ.get("DB_PASSWORD_FILE", "/run/secrets/app_password")) as f:
    PASSWORD = f.readline().strip()
CA = os.environ.get("SLUICE_CA")
_next = itertools.count()
_lock = threading.Lock()


def connect():
    """A connection through one of the Sluice instances (round robin, the next on failure)."""
    with _lock:
        start = next(_next)
    last = None
    for i in range(len(ADDRESSES)):
        host, port = ADDRESSES[(start + i) % len(ADDRESSES)].rsplit(":", 1)
        try:
            conn = pymysql.connect(
                host=host, port=int(port), user=USER, password=PASSWORD,
                bind_address=SOURCE, connect_timeout=5, read_timeout=30, write_timeout=30,
                ssl_ca=CA, ssl_verify_cert=bool(CA), ssl_verify_identity=bool(CA),
                autocommit=True, charset="utf8mb4")
            return conn, f"{host}:{port}"
        except pymysql.err.OperationalError as e:
            last = e
    raise last


def with_retry(work):
    """Runs work(cursor) on a fresh connection; one retry on a lost connection (a failover)."""
    for attempt in range(3):
        try:
            conn, via = connect()
            try:
                with conn.cursor() as cur:
                    return work(cur), via
            finally:
                conn.close()
        except pymysql.err.OperationalError:
            if attempt == 2:
                raise
            time.sleep(0.5)


def ensure_schema():
    for _ in range(120):
        try:
            with_retry(lambda cur: (
                cur.execute("CREATE DATABASE IF NOT EXISTS guestbook"),
                cur.execute("CREATE TABLE IF NOT EXISTS guestbook.entries ("
                            " id BIGINT AUTO_INCREMENT PRIMARY KEY,"
                            " text VARCHAR(500) NOT NULL,"
                            " app VARCHAR(40) NOT NULL,"
                            " created TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6))")))
            return
        except pymysql.err.MySQLError as e:
            print(f"{NAME}: waiting for the database: {e}", flush=True)
            time.sleep(1)
    raise SystemExit(f"{NAME}: the database never became available")


def add_entry(text):
    def work(cur):
        cur.execute("INSERT INTO guestbook.entries (text, app) VALUES (%s, %s)", (text, NAME))
        new_id = cur.lastrowid
        # Read back on the same session: Sluice routes it where the write is visible.
        cur.execute("SELECT id, text, app FROM guestbook.entries WHERE id = %s", (new_id,))
        row = cur.fetchone()
        return {"id": new_id, "read_back": row is not None and row[1] == text,
                "text": row[1] if row else None}
    entry, via = with_retry(work)
    entry.update(app=NAME, sluice=via)
    return entry


def last_entries():
    def work(cur):
        cur.execute("SELECT id, text, app FROM guestbook.entries ORDER BY id DESC LIMIT 20")
        return [{"id": r[0], "text": r[1], "app": r[2]} for r in cur.fetchall()]
    return with_retry(work)


class Handler(BaseHTTPRequestHandler):
    def send(self, status, body, ctype="application/json"):
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-App", NAME)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        try:
            if self.path == "/healthz":
                return self.send(200, "ok\n", "text/plain")
            if self.path == "/entries":
                rows, via = last_entries()
                return self.send(200, json.dumps({"app": NAME, "sluice": via, "entries": rows}))
            if self.path == "/":
                rows, via = last_entries()
                items = "".join(f"<li>{html.escape(r['text'])} <small>({html.escape(r['app'])})</small></li>" for r in rows)
                page = (f"<!doctype html><title>Guestbook</title><h1>Guestbook</h1>"
                        f"<form method=post action=/entries><input name=text><button>Sign</button></form>"
                        f"<ul>{items}</ul><p><small>served by {NAME} through Sluice {via}</small></p>")
                return self.send(200, page, "text/html; charset=utf-8")
            return self.send(404, json.dumps({"error": "not found"}))
        except pymysql.err.MySQLError as e:
            return self.send(503, json.dumps({"app": NAME, "error": str(e)}))

    def do_POST(self):
        if self.path != "/entries":
            return self.send(404, json.dumps({"error": "not found"}))
        length = min(int(self.headers.get("Content-Length") or 0), 4096)
        raw = self.rfile.read(length).decode("utf-8", "replace")
        text = urllib.parse.parse_qs(raw).get("text", [raw])[0].strip()[:500]
        if not text:
            return self.send(400, json.dumps({"error": "text is empty"}))
        try:
            return self.send(201, json.dumps(add_entry(text)))
        except pymysql.err.MySQLError as e:
            return self.send(503, json.dumps({"app": NAME, "error": str(e)}))

    def log_message(self, fmt, *args):
        pass


if __name__ == "__main__":
    ensure_schema()
    host, port = LISTEN.rsplit(":", 1)
    server = ThreadingHTTPServer((host, int(port)), Handler)
    print(f"{NAME}: listening on {LISTEN}, through {ADDRESSES}", flush=True)
    server.serve_forever()
