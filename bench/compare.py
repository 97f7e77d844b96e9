#!/usr/bin/env python3
"""Sysbench comparison in one run: direct to the primary, through HAProxy (TCP mode) and
through Sluice, on the same local topology.

    python3 bench/compare.py [--time 10] [--repeats 3] [--threads 8,32] [--proxy-threads N] [--floor] [--out FILE]

Starts `sluice sandbox` (a MariaDB primary, and Sluice in the same process), HAProxy in TCP
mode in front of the same primary, prepares sysbench tables, then runs oltp_point_select and
oltp_read_only with --db-ps-mode=auto and disable at each thread count, against each target.
Runs of one configuration are made back to back and repeated in rotating order; medians are
reported. For HAProxy and Sluice it also reports the CPU time the proxy process used per query
(utime+stime from /proc/PID/stat divided by the queries sysbench made, and the two parts), which
is far steadier than throughput on a shared 2-core machine, and the share of the run the machine's
CPUs were idle. Installs sysbench and haproxy (apt) if missing.

--floor adds a fourth target: bench/floor, a tokio proxy that only copies bytes both ways
(copy_bidirectional, one server connection per client, the same runtime and thread count as
Sluice): what any proxy on tokio costs here before it parses, pools or counts anything.
"""
import argparse, os, re, shutil, signal, socket, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
USER, PASSWORD = "app", "app"
TICK = os.sysconf("SC_CLK_TCK")


def ensure(binary, package):
    if shutil.which(binary):
        return
    print(f"installing {package} …", flush=True)
    subprocess.run(["apt-get", "update", "-qq"], check=False)
    subprocess.run(["apt-get", "install", "-y", "-qq", package], check=True,
                   env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port, limit=60):
    end = time.time() + limit
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"port {port} did not open")


def cpu_split(pid):
    """The process's (user, system) CPU seconds so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICK, int(fields[12]) / TICK


def machine_split():
    """The machine's (busy, idle) CPU seconds so far, from /proc/stat (iowait counts as idle)."""
    with open("/proc/stat") as f:
        t = [int(x) for x in f.readline().split()[1:]]
    idle = t[3] + t[4]
    return (sum(t[:8]) - idle) / TICK, idle / TICK


def cpu_seconds(pid):
    return sum(cpu_split(pid))


def sysbench(test, port, threads, ps_mode, seconds, action="run", extra=()):
    cmd = ["sysbench", test, "--db-driver=mysql", "--mysql-host=127.0.0.1",
           f"--mysql-port={port}", f"--mysql-user={USER}", f"--mysql-password={PASSWORD}",
           "--mysql-db=sbtest", "--tables=4", "--table-size=10000", f"--threads={threads}",
           f"--time={seconds}", f"--db-ps-mode={ps_mode}", "--report-interval=0",
           "--percentile=95", *extra, action]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"sysbench failed: {' '.join(cmd)}\n{out.stdout}\n{out.stderr}")
    return out.stdout


def global_status(port, *names):
    """The sum of the server's global status counters `names` (e.g. 'Bytes_sent')."""
    listed = ", ".join(f"'{n}'" for n in names)
    out = subprocess.run(["mariadb", "--no-defaults", "-h127.0.0.1", f"-P{port}", f"-u{USER}",
                          f"-p{PASSWORD}", "-N", "-B", "-e",
                          f"SHOW GLOBAL STATUS WHERE Variable_name IN ({listed})"],
                         capture_output=True, text=True, check=True).stdout
    return sum(int(line.split()[1]) for line in out.splitlines() if line.strip())


def statements(port):
    """Statements a server has run (Com_select + Com_stmt_execute)."""
    return global_status(port, "Com_select", "Com_stmt_execute")


def figures(text):
    queries = int(re.search(r"queries:\s+(\d+)", text).group(1))
    qps = float(re.search(r"queries:\s+\d+\s+\(([\d.]+) per sec", text).group(1))
    p95 = float(re.search(r"95th percentile:\s+([\d.]+)", text).group(1))
    return queries, qps, p95


def sluice_env():
    """Sluice's environment: the default log level (`info`, as shipped) unless `SLUICE_LOG`
    says otherwise. (Until session 36 the scripts ran it at `warn`, which disabled the
    session's span and hid what entering it on every poll cost: about 500 instructions per
    statement.)"""
    return dict(os.environ, SLUICE_LOG=os.environ.get("SLUICE_LOG", "info"))


def start_sandbox(binary, work, port, replicas, extra=()):
    """Starts `sluice sandbox`; returns the process, the primary's port and every server as
    (name, port). Its output keeps being read so that it never blocks on a full pipe. With
    `port` 0 every listener of the sandbox's Sluice (clients, admin, metrics) takes a free
    port: the process's `sluice_port` is the client port it printed."""
    sb = subprocess.Popen([binary, "sandbox", "--replicas", str(replicas), "--listen",
                           f"127.0.0.1:{port}", "--dir", os.path.join(work, "topology"), *extra],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=sluice_env())
    primary = None
    servers = []
    seen = []
    for line in sb.stdout:
        seen = (seen + [line.rstrip()])[-5:]
        m = re.match(r"\s+(primary|replica)\s+(\S+)\s+127\.0\.0\.1:(\d+)", line)
        if m:
            servers.append((m.group(2), int(m.group(3))))
            if m.group(1) == "primary":
                primary = int(m.group(3))
        m = re.match(r"\s+mariadb -h 127\.0\.0\.1 -P (\d+) ", line)
        if m and not hasattr(sb, "sluice_port"):
            sb.sluice_port = int(m.group(1))
        if line.startswith("Press Ctrl-C"):
            break
    if primary is None:
        sb.kill()
        # e.g. another Sluice holds the admin port (127.0.0.1:6032) or the metrics port (6070).
        raise SystemExit("sandbox did not start:\n  " + "\n  ".join(seen))
    import threading
    threading.Thread(target=lambda: [None for _ in sb.stdout], daemon=True).start()
    return sb, primary, servers


def start_haproxy(work, port, primary, threads=0):
    """HAProxy in TCP mode on `port`, forwarding to the primary (`threads` > 0: nbthread)."""
    return subprocess.Popen(haproxy_command(work, port, primary, threads),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def haproxy_command(work, port, primary, threads=0):
    """The command line of that HAProxy (its config written into `work`)."""
    cfg = os.path.join(work, "haproxy.cfg")
    nbthread = f"    nbthread {threads}\n" if threads else ""
    with open(cfg, "w") as f:
        f.write(f"""global
    maxconn 4096
{nbthread}defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
frontend mysql
    bind 127.0.0.1:{port}
    default_backend primary
backend primary
    server db1 127.0.0.1:{primary}
""")
    return ["haproxy", "-db", "-f", cfg]


def stop(procs, work):
    """Stops the sandbox (first, with SIGINT) and the other processes, and removes `work`."""
    for p in reversed(procs):
        p.send_signal(signal.SIGINT if p is procs[0] else signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
    shutil.rmtree(work, ignore_errors=True)


def with_and_without(targets, threads_list, repeats, run):
    """Runs each target (name, port, proxy pid or None, flag) with `run(port, threads, flag)`
    (sysbench's output), in rotating order, `repeats` times per thread count; returns the
    markdown table of median QPS, p95 and the proxy's CPU time per query."""
    lines = ["| threads | target | QPS | p95 ms | proxy CPU µs/query |", "|---|---|---|---|---|"]
    for threads in threads_list:
        res = {t[0]: [] for t in targets}
        for r in range(repeats):
            k = r % len(targets)
            for name, port, pid, flag in targets[k:] + targets[:k]:
                before = cpu_seconds(pid) if pid else None
                q, qps, p95 = figures(run(port, threads, flag))
                cpu = (cpu_seconds(pid) - before) * 1e6 / q if pid else None
                res[name].append((qps, p95, cpu))
        for name, _, pid, _ in targets:
            v = res[name]
            qps = statistics.median(x[0] for x in v)
            p95 = statistics.median(x[1] for x in v)
            cpu = f"{statistics.median(x[2] for x in v):.1f}" if pid else "—"
            line = f"| {threads} | {name} | {qps:.0f} | {p95:.2f} | {cpu} |"
            print(line, flush=True)
            lines.append(line)
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--time", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", default="8,32")
    ap.add_argument("--tests", default="oltp_point_select,oltp_read_only")
    ap.add_argument("--modes", default="auto,disable")
    ap.add_argument("--out", default=None)
    ap.add_argument("--proxy-threads", type=int, default=0,
                    help="threads of both proxies (HAProxy nbthread, Sluice [proxy] worker_threads); "
                         "0: each one's default, one per CPU")
    ap.add_argument("--floor", action="store_true",
                    help="also run bench/floor, a tokio proxy that only copies bytes (built here)")
    ap.add_argument("--replicas", type=int, default=0,
                    help="replicas behind Sluice (reads are split); HAProxy always goes to the primary")
    args = ap.parse_args()
    ensure("sysbench", "sysbench")
    ensure("haproxy", "haproxy")
    subprocess.run(["cargo", "build", "--release", "-q"], cwd=ROOT, check=True)
    # SLUICE_BIN: another build of Sluice, e.g. bench/pgo.py's target/pgo/sluice.
    binary = os.environ.get("SLUICE_BIN", os.path.join(ROOT, "target", "release", "sluice"))
    print(f"Sluice binary: {binary}", flush=True)
    if args.floor:
        subprocess.run(["cargo", "build", "--release", "-q", "--manifest-path",
                        os.path.join(ROOT, "bench", "floor", "Cargo.toml")], check=True)

    work = tempfile.mkdtemp(prefix="sluice-bench-")
    sluice_port, haproxy_port = free_port(), free_port()
    procs = []
    try:
        extra = ["--worker-threads", str(args.proxy_threads)] if args.proxy_threads else []
        sb, primary, servers = start_sandbox(binary, work, sluice_port, args.replicas, extra)
        procs.append(sb)
        hp = start_haproxy(work, haproxy_port, primary, args.proxy_threads)
        procs.append(hp)
        wait_port(haproxy_port)
        wait_port(sluice_port)
        floor = None
        if args.floor:
            floor_port = free_port()
            floor = subprocess.Popen([os.path.join(ROOT, "bench", "floor", "target", "release",
                                                   "sluice-bench-floor"),
                                      f"127.0.0.1:{floor_port}", f"127.0.0.1:{primary}",
                                      str(args.proxy_threads)])
            procs.append(floor)
            wait_port(floor_port)
        subprocess.run(["mariadb", "--no-defaults", "-h127.0.0.1", f"-P{primary}", f"-u{USER}",
                        f"-p{PASSWORD}", "-e", "CREATE DATABASE sbtest"], check=True)
        sysbench("oltp_read_only", primary, 4, "disable", 10, action="prepare")
        if args.replicas:
            # Let the replicas apply the prepared tables and the monitor measure their lag.
            time.sleep(5)
        print(f"primary 127.0.0.1:{primary}, haproxy :{haproxy_port} (pid {hp.pid}), "
              f"sluice :{sluice_port} (pid {sb.pid}); {args.time}s runs × {args.repeats}", flush=True)

        targets = [("direct", primary, None), ("haproxy", haproxy_port, hp.pid),
                   ("sluice", sluice_port, sb.pid)]
        if floor:
            targets.append(("floor", floor_port, floor.pid))
        rows = []
        for test in args.tests.split(","):
            for threads in [int(t) for t in args.threads.split(",")]:
                for mode in args.modes.split(","):
                    res = {name: [] for name, _, _ in targets}
                    shares = {name: 0 for name, _ in servers}
                    for r in range(args.repeats):
                        k = r % len(targets)
                        order = targets[k:] + targets[:k]
                        for name, port, pid in order:
                            before = cpu_split(pid) if pid else None
                            counts = [statements(p) for _, p in servers] if name == "sluice" else None
                            # After the statement counts (a client process each): the idle
                            # share covers the sysbench run alone, for every target alike.
                            m_before = machine_split()
                            q, qps, p95 = figures(sysbench(test, port, threads, mode, args.time))
                            m_after = machine_split()
                            busy, idle = (m_after[0] - m_before[0]), (m_after[1] - m_before[1])
                            idle_pct = 100 * idle / (busy + idle) if busy + idle else 0.0
                            if counts is not None:
                                for (sname, p), c0 in zip(servers, counts):
                                    shares[sname] += statements(p) - c0
                            if pid:
                                after = cpu_split(pid)
                                user_us = (after[0] - before[0]) * 1e6 / q
                                sys_us = (after[1] - before[1]) * 1e6 / q
                                res[name].append((qps, p95, user_us + sys_us, user_us, sys_us, idle_pct))
                            else:
                                res[name].append((qps, p95, None, None, None, idle_pct))
                    med = {n: tuple(statistics.median(x[i] for x in v) if v[0][i] is not None else None
                                    for i in range(6))
                           for n, v in res.items()}
                    total = sum(shares.values()) or 1
                    share_text = ", ".join(f"{n} {100 * c / total:.0f}%" for n, c in shares.items())
                    rows.append((test, threads, mode, med, share_text))
                    h, s = med["haproxy"], med["sluice"]
                    print(f"{test:18} t={threads:<3} ps={mode:8} "
                          f"direct {med['direct'][0]:9.0f} qps | haproxy {h[0]:9.0f} qps p95 {h[1]:6.2f} ms "
                          f"{h[2]:5.1f} µs/q | sluice {s[0]:9.0f} qps p95 {s[1]:6.2f} ms {s[2]:5.1f} µs/q | "
                          f"sluice/haproxy qps {s[0] / h[0]:.2f} cpu {s[2] / h[2]:.2f} | user+sys µs/q haproxy "
                          f"{h[3]:.1f}+{h[4]:.1f} sluice {s[3]:.1f}+{s[4]:.1f} | idle % direct {med['direct'][5]:.1f} "
                          f"haproxy {h[5]:.1f} sluice {s[5]:.1f} | via sluice: {share_text}", flush=True)
                    if floor:
                        f_ = med["floor"]
                        print(f"{'':18} floor {f_[0]:9.0f} qps {f_[2]:5.1f} µs/q ({f_[3]:.1f}+{f_[4]:.1f}) idle {f_[5]:.1f} % | "
                              f"floor/haproxy qps {f_[0] / h[0]:.2f} cpu {f_[2] / h[2]:.2f}", flush=True)
        floor_head = " floor QPS | floor CPU µs/q (user+sys) | QPS ratio F/H | CPU ratio F/H |" if floor else ""
        lines = ["| test | threads | ps-mode | direct QPS | HAProxy QPS | Sluice QPS | HAProxy p95 ms | Sluice p95 ms | HAProxy CPU µs/q (user+sys) | Sluice CPU µs/q (user+sys) | QPS ratio S/H | CPU ratio S/H | idle % H / S |" + floor_head + " statements via Sluice |",
                 "|---|---|---|---|---|---|---|---|---|---|---|---|---|" + ("---|---|---|---|" if floor else "") + "---|"]
        for test, threads, mode, med, share_text in rows:
            d, h, s = med["direct"], med["haproxy"], med["sluice"]
            floor_cells = ""
            if floor:
                f_ = med["floor"]
                floor_cells = (f" {f_[0]:.0f} | {f_[2]:.1f} ({f_[3]:.1f}+{f_[4]:.1f}) | {f_[0] / h[0]:.2f} | "
                               f"{f_[2] / h[2]:.2f} |")
            lines.append(f"| {test} | {threads} | {mode} | {d[0]:.0f} | {h[0]:.0f} | {s[0]:.0f} | {h[1]:.2f} | {s[1]:.2f} | "
                         f"{h[2]:.1f} ({h[3]:.1f}+{h[4]:.1f}) | {s[2]:.1f} ({s[3]:.1f}+{s[4]:.1f}) | {s[0] / h[0]:.2f} | {s[2] / h[2]:.2f} | "
                         f"{h[5]:.1f} / {s[5]:.1f} |{floor_cells} {share_text} |")
        table = "\n".join(lines)
        print("\n" + table)
        if args.out:
            with open(args.out, "w") as f:
                f.write(table + "\n")
    finally:
        stop(procs, work)


if __name__ == "__main__":
    main()
