#!/usr/bin/env python3
"""Checks a running example tier (docker/compose.yaml), as tests/docker_tier.rs does in CI.

1. through HAProxy (HTTP 8080 and HTTPS 8443, verified against docker/certs/ca.pem): an entry
   written is read back on the same session (read-your-writes) and listed;
2. 200 requests are spread over both application servers (X-App header) and both Sluice
   instances (client_connections_total on each admin port, SHOW STATS);
3. the primary's container is killed: writes through the tier resume within the failover
   budget, no acknowledged entry is lost, and Prometheus fires SluiceFailoverHappened.
Prints one line per step; exits non-zero on the first failure. Bounded waits throughout.
"""
import http.client
import json
import os
import ssl
import subprocess
import sys
import time
import uuid

import pymysql

HERE = os.path.dirname(os.path.abspath(__file__))
CA = os.path.join(HERE, "certs", "ca.pem")
PRIMARY_CONTAINER = os.environ.get("TIER_PRIMARY_CONTAINER", "sluice-tier-db1")
WRITE_BUDGET_S = float(os.environ.get("TIER_WRITE_BUDGET_S", "15"))


def fail(msg):
    print(f"FAIL: {msg}", flush=True)
    sys.exit(1)


def request(method, path, body=None, https=False, timeout=20):
    if https:
        ctx = ssl.create_default_context(cafile=CA)
        conn = http.client.HTTPSConnection("127.0.0.1", 8443, timeout=timeout, context=ctx)
    else:
        conn = http.client.HTTPConnection("127.0.0.1", 8080, timeout=timeout)
    try:
        headers = {"Content-Type": "application/x-www-form-urlencoded"} if body else {}
        conn.request(method, path, body=body, headers=headers)
        r = conn.getresponse()
        data = r.read().decode()
        return r.status, r.getheader("X-App"), data
    finally:
        conn.close()


def wait_for(what, limit_s, probe):
    deadline = time.monotonic() + limit_s
    last = None
    while time.monotonic() < deadline:
        try:
            v = probe()
            if v:
                return v
        except Exception as e:  # noqa: BLE001 - any failure means "not yet"
            last = e
        time.sleep(0.5)
    fail(f"{what} not within {limit_s} s (last error: {last})")


def admin_stat(port, name):
    with open(os.path.join(HERE, "secrets", "admin_password")) as f:
        pw = f.readline().strip()
    c = pymysql.connect(host="127.0.0.1", port=port, user="admin", password=pw, connect_timeout=5)
    try:
        with c.cursor() as cur:
            cur.execute("SHOW STATS")
            for row in cur.fetchall():
                if row[0] == name:
                    return int(row[3])
    finally:
        c.close()
    fail(f"SHOW STATS on {port} has no {name}")


def add(text, https=False):
    status, app, data = request("POST", "/entries", body=f"text={text}", https=https)
    if status != 201:
        raise RuntimeError(f"POST answered {status}: {data}")
    return json.loads(data), app


def main():
    wait_for("the tier answering through HAProxy", 180,
             lambda: request("GET", "/entries")[0] == 200)
    # Both applications in HAProxy's rotation (its health checks mark a new one up).
    def both_apps():
        seen = {request("GET", "/healthz")[1] for _ in range(6)}
        return seen == {"app1", "app2"}
    wait_for("both applications in HAProxy's rotation", 120, both_apps)
    print("ok: the tier answers through HAProxy, both applications in rotation", flush=True)

    # 1. Read-your-writes, over HTTP and HTTPS.
    for https in (False, True):
        token = f"ryw-{uuid.uuid4().hex[:12]}"
        entry, _ = add(token, https=https)
        if not entry.get("read_back") or entry.get("text") != token:
            fail(f"the entry was not read back on its session: {entry}")
        status, _, data = request("GET", "/entries", https=https)
        listed = [e["text"] for e in json.loads(data)["entries"]]
        if token not in listed:
            # A read on another session may go to a replica: wait for it (bounded).
            wait_for(f"{token} listed", 10, lambda: token in [
                e["text"] for e in json.loads(request("GET", "/entries", https=https)[2])["entries"]])
    print("ok: written entries are read back (HTTP and HTTPS)", flush=True)

    # 2. 200 requests over both apps and both Sluice instances.
    before = {p: admin_stat(p, "client_connections_total") for p in (6032, 6132)}
    apps, vias = {}, {}
    acked = []
    for i in range(200):
        if i % 2 == 0:
            entry, app = add(f"spread-{i}-{uuid.uuid4().hex[:8]}")
            acked.append(entry["text"])
            via = entry["sluice"]
        else:
            status, app, data = request("GET", "/entries")
            if status != 200:
                fail(f"GET /entries answered {status}: {data}")
            via = json.loads(data)["sluice"]
        apps[app] = apps.get(app, 0) + 1
        vias[via] = vias.get(via, 0) + 1
    after = {p: admin_stat(p, "client_connections_total") for p in (6032, 6132)}
    grown = {p: after[p] - before[p] for p in after}
    print(f"ok?: apps {apps}, sluice instances (as the apps saw them) {vias}, "
          f"client connections counted by each admin port {grown}", flush=True)
    if set(apps) != {"app1", "app2"} or min(apps.values()) < 50:
        fail(f"requests were not spread over both applications: {apps}")
    if min(grown.values()) < 50:
        fail(f"connections were not spread over both Sluice instances: {grown}")

    # 3. The primary dies: writes resume, nothing acknowledged is lost, the alert fires.
    # Prometheus must have scraped the counters at 0 first, or increase() sees nothing.
    def scraped_before():
        conn = http.client.HTTPConnection("127.0.0.1", 9090, timeout=5)
        conn.request("GET", "/api/v1/query?query=count(sluice_failovers_total%7Bkind%3D%22failover%22%2Coutcome%3D%22success%22%7D%20%3D%3D%200)")
        result = json.loads(conn.getresponse().read())["data"]["result"]
        return result and result[0]["value"][1] == "2"
    wait_for("Prometheus scraping both Sluice instances", 120, scraped_before)
    subprocess.run(["docker", "kill", PRIMARY_CONTAINER], check=True, capture_output=True)
    killed = time.monotonic()
    first_ok = None
    for n in range(10_000):
        try:
            entry, _ = add(f"after-kill-{n}-{uuid.uuid4().hex[:8]}")
            acked.append(entry["text"])
            if first_ok is None:
                first_ok = time.monotonic() - killed
            if len(acked) >= 120:
                break
        except Exception as e:  # noqa: BLE001
            if time.monotonic() - killed > WRITE_BUDGET_S:
                fail(f"writes did not resume within {WRITE_BUDGET_S} s after the primary died: {e}")
            time.sleep(0.1)
    print(f"ok: writes resumed {first_ok:.2f} s after the primary was killed", flush=True)
    if first_ok > WRITE_BUDGET_S:
        fail(f"writes resumed after {first_ok:.1f} s (budget {WRITE_BUDGET_S} s)")

    def all_present():
        # Every acknowledged entry, through one Sluice instance's primary (a write-routed read).
        with open(os.path.join(HERE, "secrets", "app_password")) as f:
            pw = f.readline().strip()
        c = pymysql.connect(host="127.0.0.1", port=6033, user="app", password=pw,
                            bind_address="127.0.0.21", ssl_ca=CA, connect_timeout=5)
        try:
            with c.cursor() as cur:
                cur.execute("BEGIN")  # in a transaction: on the primary
                cur.execute("SELECT text FROM guestbook.entries")
                have = {r[0] for r in cur.fetchall()}
                cur.execute("COMMIT")
        finally:
            c.close()
        missing = [t for t in acked if t not in have]
        if missing:
            raise RuntimeError(f"{len(missing)} acknowledged entries missing, e.g. {missing[:3]}")
        return True
    wait_for("every acknowledged entry on the new primary", 20, all_present)
    print(f"ok: all {len(acked)} acknowledged entries are on the new primary", flush=True)

    def alert_firing():
        conn = http.client.HTTPConnection("127.0.0.1", 9090, timeout=5)
        conn.request("GET", "/api/v1/alerts")
        alerts = json.loads(conn.getresponse().read())["data"]["alerts"]
        firing = {a["labels"]["alertname"] for a in alerts if a["state"] == "firing"}
        return firing if "SluiceFailoverHappened" in firing else None
    firing = wait_for("Prometheus firing SluiceFailoverHappened", 90, alert_firing)
    print(f"ok: Prometheus fires {sorted(firing)}", flush=True)
    print("PASS", flush=True)


if __name__ == "__main__":
    main()
