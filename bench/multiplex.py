#!/usr/bin/env python3
"""Multiplexing benchmarks: many client sessions over a few server connections.

    python3 bench/multiplex.py [--phases active,idle,threads] [--time 20]
        [--active 10000] [--idle 15000] [--sources 8]

Phases (each on its own `sluice sandbox`, a primary and one replica, default multiplexing):

- active:  ACTIVE client sessions (bench/loadgen.rs, raw protocol, 8 source addresses) run
           point selects in a loop through Sluice, whose pools hold at most 64 connections per
           server. Reports QPS, p50/p99, errors, the server connections sampled during the run
           (peak, on each server) and the multiplexing ratio (sessions / server connections).
- idle:    IDLE client sessions log in, run one query and stay idle. Reports Sluice's RSS with
           them open minus its RSS before (per session), and the server connections.
- threads: sysbench oltp_point_select through Sluice with max_backend_connections = 32 at 32
           and at 1000 threads, and likewise directly and through HAProxy (TCP, one server
           connection per client; the servers' max_connections raised), with the CPU time per
           query of sysbench, of the proxy and of the rest of the machine, and each target's
           1000-thread / 32-thread QPS ratio; then the same with loadgen's 32 and 1000
           connections in place of sysbench's threads (a client whose own cost per query does
           not grow with its connections).

Installs sysbench and haproxy (apt) if missing; builds the release binary and the loadgen example.
"""
import argparse, contextlib, os, re, shutil, subprocess, sys, tempfile, threading, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import (ensure, free_port, wait_port, cpu_seconds, start_sandbox, figures,  # noqa: E402
                     machine_split, start_haproxy, stop)
import resource  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
USER, PASSWORD = "app", "app"


def sql(port, statement):
    out = subprocess.run(["mariadb", "--no-defaults", "-N", "-B", "-h127.0.0.1", f"-P{port}",
                          "-uroot", "-e", statement], capture_output=True, text=True)
    if out.returncode != 0:
        out = subprocess.run(["mariadb", "--no-defaults", "-N", "-B", "-h127.0.0.1", f"-P{port}",
                              f"-u{USER}", f"-p{PASSWORD}", "-e", statement],
                             capture_output=True, text=True, check=True)
    return out.stdout.strip()


def app_connections(port):
    return int(sql(port, "SELECT COUNT(*) FROM information_schema.PROCESSLIST "
                         "WHERE USER = 'app' AND ID <> CONNECTION_ID()"))


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def sysbench(port, threads, seconds, action="run"):
    cmd = ["sysbench", "oltp_point_select", "--db-driver=mysql", "--mysql-host=127.0.0.1",
           f"--mysql-port={port}", f"--mysql-user={USER}", f"--mysql-password={PASSWORD}",
           "--mysql-db=sbtest", "--tables=4", "--table-size=10000", f"--threads={threads}",
           f"--time={seconds}", "--db-ps-mode=disable", "--report-interval=0",
           action]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"sysbench {action} on {port} failed:\n{out.stdout}\n{out.stderr}")
    return out.stdout


@contextlib.contextmanager
def sandbox(binary, extra):
    """A primary + one replica with the sysbench tables, and Sluice; removed on exit."""
    work = tempfile.mkdtemp(prefix="sluice-mux-")
    port = free_port()
    sb, primary, servers = start_sandbox(binary, work, port, 1, extra)
    try:
        wait_port(port)
        sql(primary, "CREATE DATABASE IF NOT EXISTS sbtest")
        sysbench(primary, 4, 10, action="prepare")
        time.sleep(3)  # the replica applies the tables; the monitor measures its lag
        yield sb, port, servers
    finally:
        sb.terminate()
        sb.wait(timeout=60)
        shutil.rmtree(work, ignore_errors=True)


def last_result(lines):
    """The key=value pairs of loadgen's last output line."""
    return dict(kv.split("=", 1) for kv in lines[-1].split() if "=" in kv)


def sampler(servers, stop, peaks):
    while not stop.is_set():
        for name, p in servers:
            try:
                peaks[name] = max(peaks.get(name, 0), app_connections(p))
            except subprocess.CalledProcessError:
                pass
        stop.wait(0.5)


def loadgen(mode, port, clients, seconds, sources):
    binary = os.path.join(ROOT, "target", "release", "examples", "loadgen")
    return subprocess.Popen([binary, mode, str(port), str(clients), str(seconds), str(sources)],
                            stdout=subprocess.PIPE, text=True)


def phase_active(binary, args, report):
    with sandbox(binary, ["--max-client-connections", "20000",
                          "--server-cnf", "max_connections = 1000"]) as (sb, port, servers):
        stop, peaks = threading.Event(), {}
        t = threading.Thread(target=sampler, args=(servers, stop, peaks))
        lg = loadgen("active", port, args.active, args.time, args.sources)
        first = lg.stdout.readline()  # every client connected: the measured window starts
        cpu0 = cpu_seconds(sb.pid)
        t.start()
        lines = [first] + lg.communicate()[0].strip().splitlines()
        stop.set()
        cpu = cpu_seconds(sb.pid) - cpu0
        result = last_result(lines)
        # (the sampler starts once the clients are connected: the first line)
        total_conns = sum(peaks.values()) or 1
        qps = float(result["qps"])
        line = (f"active: {args.active} sessions, {result['connected']} connected, errors "
                f"{result['errors']}, {qps:.0f} qps, p50 {result['p50_ms']} ms, p99 "
                f"{result['p99_ms']} ms, server connections (peak) "
                + ", ".join(f"{n} {c}" for n, c in peaks.items())
                + f", multiplexing ratio {args.active / total_conns:.0f} : 1, "
                f"Sluice CPU {cpu * 1e6 / max(qps * args.time, 1):.1f} µs/q")
        if result.get("first_error") not in (None, "None"):
            line += f", first error {result['first_error']}"
        print(line, flush=True)
        report.append(line)
        t.join(timeout=1)


def phase_idle(binary, args, report):
    with sandbox(binary, ["--max-client-connections", "20000"]) as (sb, port, servers):
        time.sleep(2)
        before = rss_kib(sb.pid)
        lg = loadgen("idle", port, args.idle, 20, args.sources)
        first = lg.stdout.readline()
        time.sleep(5)  # every session has run its query and gone idle
        during = rss_kib(sb.pid)
        conns = {n: app_connections(p) for n, p in servers}
        out = lg.communicate()[0].strip().splitlines()
        result = last_result(out)
        per = (during - before) / max(int(result["connected"]), 1)
        line = (f"idle: {result['connected']} of {args.idle} sessions open ({first.strip()}), "
                f"errors {result['errors']}, Sluice RSS {before / 1024:.0f} MiB before, "
                f"{during / 1024:.0f} MiB with them: {per:.1f} KiB per idle session "
                f"(100,000 sessions ≈ {per * 100000 / 1024 / 1024:.1f} GiB); server connections "
                + ", ".join(f"{n} {c}" for n, c in conns.items()))
        print(line, flush=True)
        report.append(line)


def phase_threads(binary, args, report):
    with sandbox(binary, ["--max-backend-connections", "32",
                          "--server-cnf", "max_connections = 1200"]) as (sb, port, servers):
        primary = dict(servers)["db1"]
        # HAProxy (TCP) as the reference proxy: one server connection per client, so at 1000
        # clients the primary runs 1000 connections, as when sysbench connects directly.
        work = tempfile.mkdtemp(prefix="sluice-mux-haproxy-")
        hport = free_port()
        haproxy = start_haproxy(work, hport, primary)
        targets = (("direct", primary, None), ("haproxy", hport, haproxy.pid),
                   ("sluice", port, sb.pid))
        try:
            wait_port(hport)
            # sysbench runs one OS thread per connection: on 2 shared cores its own CPU time
            # per query grows with the thread count. loadgen runs every connection on one
            # tokio runtime: its cost per query barely moves, so its ratios show the
            # targets' own scaling.
            for client in ("sysbench", "loadgen"):
                rows = threads_runs(client, targets, args, report)
                ratios(client, rows, report)
        finally:
            stop([haproxy], work)


def ratios(client, rows, report):
    qps = {(r[0], r[1]): r[2] for r in rows}
    lines = [f"threads: {client}: {name} at 1000 / at 32 = "
             f"{qps[(name, 1000)] / qps[(name, 32)]:.2f}" for name in ("sluice", "haproxy", "direct")]
    lines.append(f"threads: {client}: at 1000, Sluice / HAProxy = "
                 f"{qps[('sluice', 1000)] / qps[('haproxy', 1000)]:.2f}, Sluice / direct = "
                 f"{qps[('sluice', 1000)] / qps[('direct', 1000)]:.2f}")
    for line in lines:
        print(line, flush=True)
        report.append(line)


def threads_runs(client, targets, args, report):
    """`client` (sysbench or loadgen) with 32 then 1000 connections against each target;
    returns (name, connections, qps, errors) rows and reports the CPU time per query of the
    client, of the proxy (Sluice or HAProxy) and of the rest of the machine (the servers, the
    kernel's softirq work, everything else)."""
    rows = []
    for conns in (32, 1000):
        for name, p, pid in targets:
            # The client is a child: its rusage once it has exited.
            child0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            proxy0, busy0 = (cpu_seconds(pid) if pid else 0.0), machine_split()[0]
            if client == "sysbench":
                out = sysbench(p, conns, args.time)
                q, qps, _ = figures(out)
                errors = int(re.search(r"ignored errors:\s+(\d+)", out).group(1))
                p99 = ""
            else:
                lg = loadgen("active", p, conns, args.time, args.sources)
                res = last_result(lg.communicate()[0].strip().splitlines())
                qps, errors = float(res["qps"]), int(res["errors"])
                q = qps * args.time
                p99 = f", p99 {res['p99_ms']} ms"
            child1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            proxy_s = (cpu_seconds(pid) - proxy0) if pid else 0.0
            busy = machine_split()[0] - busy0
            child_s = (child1.ru_utime + child1.ru_stime) - (child0.ru_utime + child0.ru_stime)
            rows.append((name, conns, qps, errors))
            per = 1e6 / max(q, 1)
            line = (f"threads: {client} {name:7} {conns:5} connections: {qps:8.0f} qps, errors "
                    f"{errors}{p99}; CPU per query: {client} {child_s * per:.1f} µs, proxy "
                    f"{proxy_s * per:.1f} µs, the rest {(busy - child_s - proxy_s) * per:.1f} µs, "
                    f"machine {busy * per:.1f} µs")
            print(line, flush=True)
            report.append(line)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--phases", default="active,idle,threads")
    ap.add_argument("--time", type=int, default=20)
    ap.add_argument("--active", type=int, default=10000)
    ap.add_argument("--idle", type=int, default=15000)
    ap.add_argument("--sources", type=int, default=8)
    args = ap.parse_args()
    ensure("sysbench", "sysbench")
    ensure("haproxy", "haproxy")
    subprocess.run(["cargo", "build", "--release", "-q"], cwd=ROOT, check=True)
    subprocess.run(["cargo", "build", "--release", "-q", "--example", "loadgen"], cwd=ROOT,
                   check=True)
    # SLUICE_BIN: another build of Sluice, e.g. bench/pgo.py's target/pgo/sluice.
    binary = os.environ.get("SLUICE_BIN", os.path.join(ROOT, "target", "release", "sluice"))
    print(f"Sluice binary: {binary}", flush=True)
    report = []
    for phase in args.phases.split(","):
        {"active": phase_active, "idle": phase_idle, "threads": phase_threads}[phase](
            binary, args, report)
    print("\n".join(report))


if __name__ == "__main__":
    main()
