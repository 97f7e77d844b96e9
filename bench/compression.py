#!/usr/bin/env python3
"""What compression costs: sysbench oltp_read_only with and without the compressed protocol
(`--mysql-compression`, zlib), direct, through HAProxy and through Sluice, in one run.

    python3 bench/compression.py [--time 10] [--repeats 3] [--threads 8,32] [--out FILE]

HAProxy (TCP mode) forwards the compressed bytes end to end: MariaDB inflates and deflates.
Sluice ends the client's compression (it must read the commands): it inflates every command
and deflates every result (zlib level 1), and talks to the server uncompressed. Targets:

  direct     client -> MariaDB               direct-z    the same, compressed
  haproxy    client -> HAProxy -> MariaDB    haproxy-z   compressed end to end through HAProxy
  sluice     client -> Sluice -> MariaDB     sluice-z    compressed from the client to Sluice

Reports median QPS, p95 and the proxy process's CPU time per query; runs of one configuration
are back to back, repeated in rotating order. Installs sysbench and haproxy (apt) if missing.
"""
import argparse, os, subprocess, sys, tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import (ROOT, USER, PASSWORD, ensure, free_port, start_haproxy,  # noqa: E402
                     start_sandbox, stop, wait_port, with_and_without)


def sysbench(port, threads, seconds, compress, action="run"):
    cmd = ["sysbench", "oltp_read_only", "--db-driver=mysql", "--mysql-host=127.0.0.1",
           f"--mysql-port={port}", f"--mysql-user={USER}", f"--mysql-password={PASSWORD}",
           "--mysql-db=sbtest", "--tables=4", "--table-size=10000", f"--threads={threads}",
           f"--time={seconds}", "--db-ps-mode=auto", "--report-interval=0", "--percentile=95",
           f"--mysql-compression={'on' if compress else 'off'}", action]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"sysbench failed: {' '.join(cmd)}\n{out.stdout}\n{out.stderr}")
    return out.stdout


def compressed(port, flag):
    """The server side's `Compression` status for a session through `port` (the CLI's way)."""
    out = subprocess.run(["mariadb", "--no-defaults", "-h127.0.0.1", f"-P{port}", f"-u{USER}",
                          f"-p{PASSWORD}", "-N", "-B", *(["--compress"] if flag else []), "-e",
                          "SHOW SESSION STATUS LIKE 'Compression'"], capture_output=True, text=True)
    return out.stdout.strip() or out.stderr.strip()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--time", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", default="8,32")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    ensure("sysbench", "sysbench")
    ensure("haproxy", "haproxy")
    subprocess.run(["cargo", "build", "--release", "-q"], cwd=ROOT, check=True)
    binary = os.path.join(ROOT, "target", "release", "sluice")
    work = tempfile.mkdtemp(prefix="sluice-z-bench-")
    sluice_port, haproxy_port = free_port(), free_port()
    procs = []
    try:
        sb, primary, _ = start_sandbox(binary, work, sluice_port, 0)
        procs.append(sb)
        hp = start_haproxy(work, haproxy_port, primary)
        procs.append(hp)
        wait_port(haproxy_port)
        wait_port(sluice_port)
        subprocess.run(["mariadb", "--no-defaults", "-h127.0.0.1", f"-P{primary}", f"-u{USER}",
                        f"-p{PASSWORD}", "-e", "CREATE DATABASE sbtest"], check=True)
        sysbench(primary, 4, 10, False, action="prepare")
        # Through Sluice the server hop is uncompressed whatever the client does.
        for name, port in (("direct", primary), ("haproxy", haproxy_port), ("sluice", sluice_port)):
            print(f"{name:8} --compress: server side {compressed(port, True)}", flush=True)
        targets = [("direct", primary, None, False), ("direct-z", primary, None, True),
                   ("haproxy", haproxy_port, hp.pid, False), ("haproxy-z", haproxy_port, hp.pid, True),
                   ("sluice", sluice_port, sb.pid, False), ("sluice-z", sluice_port, sb.pid, True)]
        table = with_and_without(targets, [int(t) for t in args.threads.split(",")], args.repeats,
                                 lambda port, threads, flag: sysbench(port, threads, args.time, flag))
        print("\n" + table)
        if args.out:
            with open(args.out, "w") as f:
                f.write(table + "\n")
    finally:
        stop(procs, work)


if __name__ == "__main__":
    main()
