#!/usr/bin/env python3
"""A profile-guided (PGO) release build of Sluice: the build that ships (docker/build.sh puts it
in the image by default; docs/operations.md installs it for systemd).

    python3 bench/pgo.py [--out target/pgo/sluice] [--time 8]

1. builds an instrumented binary (`RUSTFLAGS=-Cprofile-generate`, in target/pgo-gen);
2. runs it as `sluice sandbox --replicas 1` and trains it with the traffic Sluice is for:
   sysbench point selects, read-only and read-write transactions (text and prepared
   statements) and loadgen's many connections, each for `--time` seconds;
3. merges the profile with the `llvm-profdata` of rustc's own LLVM version (apt package
   `llvm-N`, installed if missing);
4. builds the optimized binary with it (`-Cprofile-use`, in target/pgo; `SLUICE_PGO_BUILD=1`,
   so that `sluice --version` and the `sluice_build_info` metric say "profile-guided"), linked
   with `--emit-relocs` so that BOLT may move its functions;
5. lays that binary's code out again with BOLT (`/usr/lib/llvm-16/bin/llvm-bolt`, apt
   package `bolt-16`, installed if missing): an instrumented copy (`llvm-bolt -instrument`)
   runs the same training, and `llvm-bolt` then puts the hot basic blocks and functions
   together and the cold ones apart. Sluice's hot path is larger than the L1 instruction
   cache; this cuts its instruction-cache misses by 70-83 % on top of PGO and its user time
   per query by 8-23 % (docs/benchmarks.md). BOLT keeps the symbols, not the debug line
   tables. The build is marked `SLUICE_BOLT_BUILD=1` (`sluice --version`: "profile-guided+bolt
   build"), and the script refuses to hand it out unless the output carries BOLT's
   `.note.bolt_info` section (the intermediate target/pgo/release/sluice says the same but is
   not the product: only `--out` is). `--no-bolt` stops after step 4;
6. copies the result to `--out`.

The binary behaves exactly as `cargo build --release`'s; only its code layout and inlining
follow the measured profile. docs/benchmarks.md has the A/B figures.
"""
import argparse, os, re, shutil, signal, subprocess, sys, tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare as C  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def llvm_profdata():
    """The llvm-profdata of rustc's LLVM major version (profiles are versioned)."""
    out = subprocess.run(["rustc", "-vV"], capture_output=True, text=True, check=True).stdout
    major = re.search(r"LLVM version: (\d+)", out).group(1)
    tool = f"llvm-profdata-{major}"
    C.ensure(tool, f"llvm-{major}")
    return tool


# By its full path: /usr/bin/llvm-bolt-16 looks for its instrumentation runtime in /usr/lib.
BOLT = "/usr/lib/llvm-16/bin/llvm-bolt"


def cargo(rustflags, target_dir, *extra, pgo=False, bolt=False):
    env = dict(os.environ, RUSTFLAGS=rustflags, CARGO_TARGET_DIR=os.path.join(ROOT, target_dir))
    env.pop("SLUICE_PGO_BUILD", None)
    env.pop("SLUICE_BOLT_BUILD", None)
    if pgo:
        # `sluice --version` and the sluice_build_info metric say "profile-guided".
        env["SLUICE_PGO_BUILD"] = "1"
    if bolt:
        # ... and "BOLT layout": main() checks that BOLT did process the binary.
        env["SLUICE_BOLT_BUILD"] = "1"
    subprocess.run(["cargo", "build", "--release", "--locked", "--bin", "sluice", *extra],
                   cwd=ROOT, env=env, check=True)
    return os.path.join(ROOT, target_dir, "release", "sluice")


def train(binary, seconds):
    work = tempfile.mkdtemp(prefix="sluice-pgo-")
    # Port 0: the admin and metrics listeners take free ports too, so that the training runs
    # beside another Sluice (or a test suite) that holds 6032 and 6070.
    sb, primary, _ = C.start_sandbox(binary, work, 0, 1, ["--max-backend-connections", "32"])
    port = sb.sluice_port
    try:
        C.wait_port(port)
        subprocess.run(["mariadb", "-h127.0.0.1", f"-P{primary}", "-uapp", "-papp", "-e",
                        "CREATE DATABASE IF NOT EXISTS sbtest"], check=True)
        C.sysbench("oltp_read_write", primary, 4, "disable", 0, action="prepare")
        for test in ("oltp_point_select", "oltp_read_only", "oltp_read_write"):
            for mode in ("disable", "auto"):
                print(f"training: {test} {mode}", flush=True)
                # Deadlocks the server reports in read-write must not end the training.
                C.sysbench(test, port, 16, mode, seconds, extra=["--mysql-ignore-errors=all"])
        loadgen = os.path.join(ROOT, "target", "release", "examples", "loadgen")
        print("training: loadgen, 1000 connections", flush=True)
        subprocess.run([loadgen, "active", str(port), "1000", str(seconds), "4"],
                       capture_output=True, check=True)
    finally:
        # A normal exit writes the profile.
        sb.send_signal(signal.SIGINT)
        sb.wait(timeout=120)
        shutil.rmtree(work, ignore_errors=True)


def has_bolt_note(binary):
    """Whether `binary` went through llvm-bolt (which adds a `.note.bolt_info` section)."""
    out = subprocess.run(["readelf", "-S", "-W", binary], capture_output=True, text=True,
                         check=True).stdout
    return ".note.bolt_info" in out


def bolt(binary, out, seconds):
    """Lays `binary` out again from a profile of its own instrumented copy (step 5)."""
    C.ensure(BOLT, "bolt-16")
    work = os.path.join(ROOT, "target", "bolt")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    fdata = os.path.join(work, "sluice.fdata")
    instrumented = os.path.join(work, "sluice-instrumented")
    subprocess.run([BOLT, binary, "-instrument", "-o", instrumented,
                    f"--instrumentation-file={fdata}"], check=True, stdout=subprocess.DEVNULL)
    train(instrumented, seconds)
    if not os.path.exists(fdata):
        raise SystemExit("the BOLT-instrumented Sluice wrote no profile")
    # Hot blocks and functions together, cold ones split off. Left out on purpose: -icf
    # (folding identical functions can make distinct function pointers equal) and -split-eh
    # (moving landing pads buys little here).
    subprocess.run([BOLT, binary, "-o", out, f"-data={fdata}", "-reorder-blocks=ext-tsp",
                    "-reorder-functions=hfsort+", "-split-functions", "-split-all-cold",
                    "-use-gnu-stack"], check=True, stdout=subprocess.DEVNULL)
    if not has_bolt_note(out):
        raise SystemExit(f"{out} carries no .note.bolt_info: BOLT did not process it")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(ROOT, "target", "pgo", "sluice"))
    ap.add_argument("--time", type=int, default=8)
    ap.add_argument("--no-bolt", action="store_true",
                    help="stop after the profile-guided build (no BOLT layout)")
    args = ap.parse_args()
    C.ensure("sysbench", "sysbench")
    profdata = llvm_profdata()
    subprocess.run(["cargo", "build", "--release", "-q", "--example", "loadgen"], cwd=ROOT,
                   check=True)
    raw = os.path.join(ROOT, "target", "pgo-data")
    instrumented = cargo(f"-Cprofile-generate={raw}", os.path.join("target", "pgo-gen"))
    # The build scripts compiled with the instrumentation wrote profiles of their own: only
    # Sluice's is kept.
    shutil.rmtree(raw, ignore_errors=True)
    os.makedirs(raw)
    train(instrumented, args.time)
    merged = os.path.join(raw, "merged.profdata")
    files = [os.path.join(raw, f) for f in os.listdir(raw) if f.endswith(".profraw")]
    if not files:
        raise SystemExit("the instrumented Sluice wrote no profile")
    subprocess.run([profdata, "merge", "-o", merged, *files], check=True)
    use_bolt = not args.no_bolt
    flags = f"-Cprofile-use={merged}"
    if use_bolt:
        # BOLT moves functions only in a binary that kept its relocations.
        flags += " -Clink-arg=-Wl,--emit-relocs"
    built = cargo(flags, os.path.join("target", "pgo"), pgo=True, bolt=use_bolt)
    if use_bolt:
        laid_out = built + ".bolt"
        bolt(built, laid_out, args.time)
        built = laid_out
    version = subprocess.run([built, "--version"], capture_output=True, text=True,
                             check=True).stdout.strip()
    if "profile-guided" not in version:
        raise SystemExit(f"{built} does not say it is the profile-guided build: {version}")
    if use_bolt != ("profile-guided+bolt" in version):
        raise SystemExit(f"{built} says the wrong kind of build: {version}")
    if os.path.abspath(built) != os.path.abspath(args.out):
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        shutil.copy2(built, args.out)
    print(f"PGO build: {args.out} ({version})", flush=True)


if __name__ == "__main__":
    main()
