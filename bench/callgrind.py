#!/usr/bin/env python3
"""Instructions per query, counted by valgrind's callgrind: a repeatable measure of a proxy's
user-space cost (the same binary and workload give the same count, whatever else the machine
does), where timings here move by ±20-30 % from run to run.

    python3 bench/callgrind.py [--events 20000] [--threads 8] [--test oltp_point_select]
                               [--mode disable] [--targets sluice,haproxy,floor] [--top 30]
                               [--keep DIR] [--cache-sim [--ll-kib 1024]]

Starts `sluice sandbox --replicas 0` (a MariaDB primary; the sandbox's own Sluice is not
measured), then runs each target under `valgrind --tool=callgrind` with instrumentation off:
`sluice` is `sluice run` of `SLUICE_BIN` (default target/release/sluice) in front of the
primary (more `[proxy]` settings from `SLUICE_PROXY`, e.g. 'multiplexing = "session"'),
`haproxy` is HAProxy in TCP mode, `floor` is bench/floor (tokio, bytes copied both ways). Each
proxy gets a warm-up run (connections, pools, caches), then instrumentation is switched on
(`callgrind_control -i on`), sysbench runs exactly `--events` transactions, and the profile is
dumped (`callgrind_control -d`). Prints per target the instructions executed per query in user
space (kernel time is not counted: compare it with pair.py's sys figures), and for Sluice the
functions with the most instructions of their own (callgrind_annotate). `--keep DIR` keeps the
profiles for `callgrind_annotate --inclusive=yes DIR/sluice.out`. `--cache-sim` also simulates
the L1 caches (`--cache-sim=yes`: valgrind's model of this CPU's L1, 32 KB each) and prints the
instruction-fetch and data-read misses per query: how much of the hot path fits the caches.
`--ll-kib N` makes the simulated last level an N KiB cache (8-way, 64-byte lines; e.g. 1024 for
this machine's per-core L2) and prints its data misses per query too: with many sessions, how
much of each statement's state has left the core's caches since that session's last turn.

Valgrind runs one thread at a time and ~50 times slower, so this counts work, not waiting:
contention, cache misses and the scheduler are not in these figures.
"""

import argparse, os, re, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare as C  # noqa: E402
import pair as P  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=20000)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--test", default="oltp_point_select")
    ap.add_argument("--mode", default="disable")
    ap.add_argument("--targets", default="sluice,haproxy")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--keep", default=None, help="directory to keep the profiles in")
    ap.add_argument("--cache-sim", action="store_true",
                    help="simulate the L1 caches and print their misses per query")
    ap.add_argument("--ll-kib", type=int, default=None,
                    help="with --cache-sim: the simulated last-level cache's size in KiB")
    a = ap.parse_args()
    want = a.targets.split(",")
    for w in want:
        if w not in ("sluice", "haproxy", "floor"):
            raise SystemExit(f"unknown target {w}")
    C.ensure("sysbench", "sysbench")
    C.ensure("haproxy", "haproxy")
    C.ensure("valgrind", "valgrind")
    binary = os.environ.get("SLUICE_BIN", os.path.join(C.ROOT, "target", "release", "sluice"))
    floor = os.path.join(C.ROOT, "bench", "floor", "target", "release", "sluice-bench-floor")
    if "floor" in want:
        subprocess.run(["cargo", "build", "--release", "--quiet", "--manifest-path",
                        os.path.join(C.ROOT, "bench", "floor", "Cargo.toml")], check=True)
    work = tempfile.mkdtemp(prefix="sluice-callgrind-")
    keep = a.keep or work
    os.makedirs(keep, exist_ok=True)
    sb, primary, _ = C.start_sandbox(binary, work, C.free_port(), 0)
    procs = [sb]
    results = []
    try:
        subprocess.run(["mariadb", "--no-defaults", "-h127.0.0.1", f"-P{primary}", f"-u{C.USER}",
                        f"-p{C.PASSWORD}", "-e", "CREATE DATABASE sbtest"], check=True)
        C.sysbench("oltp_read_only", primary, 4, "disable", 10, action="prepare")
        for name in want:
            port = C.free_port()
            out = os.path.join(keep, f"{name}.out")
            vg = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]
            if a.cache_sim:
                vg.insert(2, "--cache-sim=yes")
                if a.ll_kib:
                    vg.insert(3, f"--LL={a.ll_kib * 1024},8,64")
            if name == "sluice":
                cmd = vg + P.second_sluice_command(binary, work, port, primary, 2,
                                                   os.environ.get("SLUICE_PROXY", ""))
            elif name == "haproxy":
                cmd = vg + C.haproxy_command(work, port, primary, 2)
            else:
                cmd = vg + [floor, f"127.0.0.1:{port}", f"127.0.0.1:{primary}", "2"]
            p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 env=C.sluice_env())
            procs.append(p)
            C.wait_port(port, limit=120)
            warm = min(2000, a.events)
            C.sysbench(a.test, port, a.threads, a.mode, 0, extra=(f"--events={warm}",))
            control(p.pid, "-i", "on")
            out_text = C.sysbench(a.test, port, a.threads, a.mode, 0,
                                  extra=(f"--events={a.events}",))
            control(p.pid, "-d")
            control(p.pid, "-i", "off")
            queries = C.figures(out_text)[0]
            dumped = dump_file(out, p.pid)
            totals = event_totals(dumped)
            ir = totals["Ir"]
            results.append((name, queries, ir, dumped))
            misses = ""
            if a.cache_sim:
                misses = (f"; L1 misses per query: instructions {totals['I1mr'] / queries:,.1f}, "
                          f"data reads {totals['D1mr'] / queries:,.1f}, "
                          f"data writes {totals['D1mw'] / queries:,.1f}")
                if a.ll_kib:
                    misses += (f"; {a.ll_kib} KiB last-level data misses per query: reads "
                               f"{totals['DLmr'] / queries:,.1f}, writes {totals['DLmw'] / queries:,.1f}")
            print(f"{name:8} {queries} queries, {ir} instructions: {ir / queries:,.0f} per query"
                  f"{misses}", flush=True)
            p.terminate()
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
            procs.remove(p)
        print(f"\n{a.test}, ps-mode {a.mode}, {a.threads} threads, {a.events} events:")
        base = {n: ir / q for n, q, ir, _ in results}
        for name, q, ir, _ in results:
            rel = f"  ({ir / q / base['haproxy']:.2f} x HAProxy)" if "haproxy" in base else ""
            print(f"  {name:8} {ir / q:10,.0f} instructions per query{rel}")
        for name, _, _, dumped in results:
            if name == "sluice":
                ann = subprocess.run(["callgrind_annotate", "--threshold=100", dumped],
                                     capture_output=True, text=True).stdout
                lines = [ln for ln in ann.splitlines() if re.match(r"\s*[\d,]+ \(", ln)]
                print(f"\nSluice: the {a.top} functions with the most instructions of their own")
                for ln in lines[1:a.top + 1]:
                    print("  " + ln.strip()[:150])
        if a.keep:
            print(f"\nprofiles: {', '.join(d for *_, d in results)}")
    finally:
        # The profiles stay when --keep put them outside `work`.
        C.stop(procs, work)


def control(pid, *args):
    subprocess.run(["callgrind_control", *args, str(pid)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)


def dump_file(out, pid):
    """The file `callgrind_control -d` wrote (callgrind appends the dump's number)."""
    for _ in range(100):
        cands = sorted(f for f in os.listdir(os.path.dirname(out))
                       if f.startswith(os.path.basename(out) + "."))
        if cands:
            return os.path.join(os.path.dirname(out), cands[-1])
        time.sleep(0.2)
    raise SystemExit(f"callgrind wrote no dump for pid {pid} next to {out}")


def event_totals(path):
    """The profile's totals by event name (`Ir`; with the cache simulation also `I1mr`, `D1mr`,
    `D1mw`, ...)."""
    names = None
    with open(path) as f:
        for line in f:
            if line.startswith("events:"):
                names = line.split()[1:]
            elif line.startswith("summary:") or line.startswith("totals:"):
                if names is None:
                    break
                return dict(zip(names, (int(v) for v in line.split()[1:])))
    raise SystemExit(f"{path}: no events or totals line")


if __name__ == "__main__":
    main()
