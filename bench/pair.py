#!/usr/bin/env python3
"""Paired runs of one sysbench test against several targets, for experiments on the hot path.

    python3 bench/pair.py [--reps 6] [--time 8] [--test oltp_point_select] [--mode disable]
                          [--threads 32] [--targets haproxy,floor,floor-percore,sluice,sluice2,sluice3,direct]

Starts `sluice sandbox --replicas 0` (a MariaDB primary; its Sluice is the `sluice` target;
`SLUICE_BIN` chooses the binary, default target/release/sluice), HAProxy in TCP mode and the
floor proxy of bench/floor (`floor`: tokio's multi-thread runtime; `floor-percore`: one
single-threaded runtime per thread, each client and its server connection on one thread), each
with 2 threads (`--proxy-threads`), and `sluice2` (`sluice3`): `sluice run` of the binary `SLUICE_BIN2` (`SLUICE_BIN3`) in front of the same
primary (to compare two builds in one run). Runs the test against each target in rotating order, `--reps` times, and prints
per run and as medians: QPS, the proxy's user and system CPU time per query, the share of the
run the machine's CPUs were idle, the machine's busy CPU time per query, and of it the MariaDB
server's and the load generator's (sysbench) CPU time per query, and the bytes the server sent
per query. Fewer figures than
compare.py, more runs per minute: for comparing variants, not for the headline table.
"""

import argparse, os, re, resource, statistics, subprocess, sys, tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare as C  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=6)
    ap.add_argument("--time", type=int, default=8)
    ap.add_argument("--test", default="oltp_point_select")
    ap.add_argument("--mode", default="disable")
    ap.add_argument("--threads", type=int, default=32)
    ap.add_argument("--targets", default="haproxy,floor,floor-percore,sluice")
    ap.add_argument("--proxy-threads", type=int, default=2,
                    help="threads of every proxy (HAProxy nbthread, the floor's, Sluice's)")
    a = ap.parse_args()
    want = a.targets.split(",")
    for w in want:
        if w not in ("haproxy", "floor", "floor-percore", "sluice", "sluice2", "sluice3", "direct"):
            raise SystemExit(f"unknown target {w}")
    C.ensure("sysbench", "sysbench")
    C.ensure("haproxy", "haproxy")
    floor = os.path.join(C.ROOT, "bench", "floor", "target", "release", "sluice-bench-floor")
    if any(w.startswith("floor") for w in want):
        subprocess.run(["cargo", "build", "--release", "--quiet", "--manifest-path",
                        os.path.join(C.ROOT, "bench", "floor", "Cargo.toml")], check=True)
    binary = os.environ.get("SLUICE_BIN", os.path.join(C.ROOT, "target", "release", "sluice"))
    work = tempfile.mkdtemp(prefix="sluice-pair-")
    sb_port = C.free_port()
    n = a.proxy_threads
    sb, primary, _ = C.start_sandbox(binary, work, sb_port, 0, ["--worker-threads", str(n)])
    procs = [sb]
    try:
        subprocess.run(["mariadb", "--no-defaults", "-h127.0.0.1", f"-P{primary}", f"-u{C.USER}",
                        f"-p{C.PASSWORD}", "-e", "CREATE DATABASE sbtest"], check=True)
        C.sysbench("oltp_read_only", primary, 4, "disable", 10, action="prepare")
        targets = []
        for w in want:
            if w == "haproxy":
                port = C.free_port()
                h = C.start_haproxy(work, port, primary, n)
                procs.append(h)
                C.wait_port(port)
                targets.append((w, port, h.pid))
            elif w.startswith("floor"):
                port = C.free_port()
                f = subprocess.Popen([floor, f"127.0.0.1:{port}", f"127.0.0.1:{primary}", str(n)]
                                     + (["percore"] if w == "floor-percore" else []))
                procs.append(f)
                C.wait_port(port)
                targets.append((w, port, f.pid))
            elif w == "sluice":
                targets.append((w, sb_port, sb.pid))
            elif w in ("sluice2", "sluice3"):
                port = C.free_port()
                s2 = start_second_sluice(work, port, primary, n, w[-1])
                procs.append(s2)
                C.wait_port(port)
                targets.append((w, port, s2.pid))
            else:
                targets.append((w, primary, None))
        server = server_pid(primary)
        res = {t[0]: [] for t in targets}
        for r in range(a.reps):
            k = r % len(targets)
            for name, port, pid in targets[k:] + targets[:k]:
                before = C.cpu_split(pid) if pid else (0, 0)
                m0 = C.machine_split()
                b0 = bytes_sent(primary)
                s0 = C.cpu_seconds(server)
                g0 = children_cpu()
                out = C.sysbench(a.test, port, a.threads, a.mode, a.time)
                g1 = children_cpu()
                s1 = C.cpu_seconds(server)
                b1 = bytes_sent(primary)
                m1 = C.machine_split()
                after = C.cpu_split(pid) if pid else (0, 0)
                q, qps, _ = C.figures(out)
                user = (after[0] - before[0]) * 1e6 / q
                sys_ = (after[1] - before[1]) * 1e6 / q
                busy, idle = m1[0] - m0[0], m1[1] - m0[1]
                row = (qps, user, sys_, 100 * idle / (busy + idle), busy * 1e6 / q,
                       (s1 - s0) * 1e6 / q, (g1 - g0) * 1e6 / q, (b1 - b0) / q)
                res[name].append(row)
                print(f"{r} {name:14} qps {qps:8.0f} user {user:5.2f} sys {sys_:5.2f} "
                      f"idle {row[3]:4.1f} % machine {row[4]:5.1f} server {row[5]:5.1f} "
                      f"sysbench {row[6]:5.1f} µs/q, server sent {row[7]:6.1f} B/q", flush=True)
        print(f"medians of {a.reps} ({a.test}, {a.threads} threads, ps-mode {a.mode}):")
        for name, _, _ in targets:
            m = [statistics.median(x[i] for x in res[name]) for i in range(8)]
            print(f"{name:14} qps {m[0]:8.0f} user {m[1]:5.2f} sys {m[2]:5.2f} cpu {m[1] + m[2]:5.2f} "
                  f"idle {m[3]:4.1f} % machine {m[4]:5.1f} server {m[5]:5.1f} "
                  f"sysbench {m[6]:5.1f} µs/q, server sent {m[7]:6.1f} B/q")
    finally:
        C.stop(procs, work)


def start_second_sluice(work, port, primary, threads, k="2"):
    """`sluice run` of the binary `SLUICE_BIN2` (`k` = "3": `SLUICE_BIN3`) in front of the same
    primary (A/B of two builds, both run the same way; `SLUICE2_PROXY` / `SLUICE3_PROXY`: more
    `[proxy]` settings for it, e.g. 'worker_threads = 1')."""
    binary = os.environ.get(f"SLUICE_BIN{k}")
    if not binary:
        raise SystemExit(f"target sluice{k} needs SLUICE_BIN{k} (a Sluice binary)")
    cmd = second_sluice_command(binary, work, port, primary, threads,
                                os.environ.get(f"SLUICE{k}_PROXY", ""))
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=C.sluice_env())


def second_sluice_command(binary, work, port, primary, threads, proxy_extra):
    """The command line of `sluice run` in front of the sandbox's primary on `port` (its config
    written into `work`; `proxy_extra`: more `[proxy]` lines), with a free admin port and no
    metrics listener, so that it runs beside the sandbox's own Sluice."""
    cfg = os.path.join(work, f"sluice-{port}.toml")
    with open(cfg, "w") as f:
        f.write(f"""[proxy]
listen = "127.0.0.1:{port}"
worker_threads = {threads}
{proxy_extra}
[[servers]]
name = "db1"
address = "127.0.0.1:{primary}"
[[users]]
name = "{C.USER}"
password = "{C.PASSWORD}"
[admin]
listen = "127.0.0.1:{C.free_port()}"
user = "admin"
password = "admin-pw"
[metrics]
listen = ""
[monitor]
user = "sluice_monitor"
password = "sluice-monitor-pw"
""")
    return [binary, "run", "--config", cfg]


def server_pid(port):
    """The pid of the MariaDB server listening on `port` (the sandbox's primary)."""
    out = subprocess.run(["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True).stdout
    m = re.search(r"pid=(\d+)", out)
    if not m:
        raise SystemExit(f"no process listens on port {port}")
    return int(m.group(1))


def bytes_sent(port):
    """The bytes the MariaDB server on `port` has sent (`Bytes_sent`): per query, how much it
    encoded for its clients (e.g. column definitions a client that caches metadata is not
    sent on a direct connection). The status query's own bytes are a few hundred per run."""
    return C.global_status(port, "Bytes_sent")


def children_cpu():
    """CPU seconds of the finished child processes (the sysbench runs)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


if __name__ == "__main__":
    main()
