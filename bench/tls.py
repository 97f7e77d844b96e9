#!/usr/bin/env python3
"""What TLS costs: sysbench oltp_point_select over TLS and in clear text, direct, through
HAProxy and through Sluice, in one run.

    python3 bench/tls.py [--time 10] [--repeats 3] [--threads 8,32] [--out FILE]

MySQL negotiates TLS inside its own protocol (SSLRequest after the greeting), so HAProxy cannot
terminate it: with HAProxy the TLS session runs end to end between the client and MariaDB and
HAProxy forwards bytes (TCP mode). Sluice terminates the client's TLS itself and talks to the
server in clear text (no [backend_tls] here). Targets:

  direct        client -> MariaDB, plain            direct-tls   the same over TLS
  haproxy       client -> HAProxy -> MariaDB        haproxy-tls  TLS end to end through HAProxy
  sluice        client -> Sluice -> MariaDB         sluice-tls   TLS from the client to Sluice

Certificates come from openssl (a CA, a server certificate for 127.0.0.1, and the client files
sysbench 1.0 loads from its working directory: cacert.pem, client-cert.pem, client-key.pem).
Reports median QPS and the proxy processes' CPU time per query; runs of one configuration are
back to back, repeated in rotating order. Installs sysbench and haproxy (apt) if missing.
"""
import argparse, os, re, subprocess, sys, tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import (ROOT, USER, PASSWORD, ensure, free_port, start_haproxy,  # noqa: E402
                     start_sandbox, stop, wait_port, with_and_without)


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(d):
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=bench CA",
            "-keyout", "ca-key.pem", "-out", "cacert.pem", cwd=d)
    for name, cn in (("server", "127.0.0.1"), ("client", "bench client")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}",
                "-keyout", f"{name}-key.pem", "-out", f"{name}.csr", cwd=d)
        with open(os.path.join(d, f"{name}.ext"), "w") as f:
            f.write("subjectAltName=IP:127.0.0.1\n" if name == "server" else "basicConstraints=CA:FALSE\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "cacert.pem", "-CAkey", "ca-key.pem",
                "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}-cert.pem", cwd=d)


def sysbench(port, threads, seconds, tls, cwd, action="run"):
    cmd = ["sysbench", "oltp_point_select", "--db-driver=mysql", "--mysql-host=127.0.0.1",
           f"--mysql-port={port}", f"--mysql-user={USER}", f"--mysql-password={PASSWORD}",
           "--mysql-db=sbtest", "--tables=4", "--table-size=10000", f"--threads={threads}",
           f"--time={seconds}", "--db-ps-mode=auto", "--report-interval=0", "--percentile=95",
           f"--mysql-ssl={'on' if tls else 'off'}", action]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    if out.returncode != 0:
        raise SystemExit(f"sysbench failed: {' '.join(cmd)}\n{out.stdout}\n{out.stderr}")
    return out.stdout


def uses_tls(port, cwd):
    """The cipher the server side of a connection through `port` reports (sysbench's way)."""
    out = subprocess.run(["mariadb", "--no-defaults", "-h127.0.0.1", f"-P{port}", f"-u{USER}",
                          f"-p{PASSWORD}", "--ssl", f"--ssl-ca={cwd}/cacert.pem", "-N", "-B", "-e", "\\s"],
                         capture_output=True, text=True, cwd=cwd)
    m = re.search(r"SSL:\s+(.*)", out.stdout)
    return m.group(1).strip() if m else out.stderr.strip()


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
    work = tempfile.mkdtemp(prefix="sluice-tls-bench-")
    make_pki(work)
    sluice_port, haproxy_port = free_port(), free_port()
    procs = []
    try:
        cnf = [f"ssl_ca = {work}/cacert.pem", f"ssl_cert = {work}/server-cert.pem",
               f"ssl_key = {work}/server-key.pem"]
        extra = ["--tls-cert", f"{work}/server-cert.pem", "--tls-key", f"{work}/server-key.pem"]
        for line in cnf:
            extra += ["--server-cnf", line]
        sb, primary, _ = start_sandbox(binary, work, sluice_port, 0, extra)
        procs.append(sb)
        hp = start_haproxy(work, haproxy_port, primary)
        procs.append(hp)
        wait_port(haproxy_port)
        wait_port(sluice_port)
        subprocess.run(["mariadb", "--no-defaults", "-h127.0.0.1", f"-P{primary}", f"-u{USER}",
                        f"-p{PASSWORD}", "-e", "CREATE DATABASE sbtest"], check=True)
        sysbench(primary, 4, 10, False, work, action="prepare")
        for name, port in (("direct", primary), ("haproxy", haproxy_port), ("sluice", sluice_port)):
            print(f"{name:8} with --ssl: {uses_tls(port, work)}", flush=True)
        targets = [("direct", primary, None, False), ("direct-tls", primary, None, True),
                   ("haproxy", haproxy_port, hp.pid, False), ("haproxy-tls", haproxy_port, hp.pid, True),
                   ("sluice", sluice_port, sb.pid, False), ("sluice-tls", sluice_port, sb.pid, True)]
        table = with_and_without(targets, [int(t) for t in args.threads.split(",")], args.repeats,
                                 lambda port, threads, flag: sysbench(port, threads, args.time, flag, work))
        print("\n" + table)
        if args.out:
            with open(args.out, "w") as f:
                f.write(table + "\n")
    finally:
        stop(procs, work)


if __name__ == "__main__":
    main()
