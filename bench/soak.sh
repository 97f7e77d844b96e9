#!/usr/bin/env bash
# Soak: 30 minutes (SLUICE_SOAK_SECS, default 1800) of mixed read/write load through two
# `sluice run` processes (4 writers, 2 readers) over a semi-sync primary + 2 replicas, with a
# failover, a switchover, a reload (SIGHUP) and a replica restart every 5 minutes. Checks, and
# prints: acknowledged writes lost (must be 0), probes that saw two writable servers (must be
# 0), and each Sluice process's RSS, file descriptors, sessions and pool connections against
# their baseline (must be back within 5 %). The 2-minute version runs in CI (tests/soak.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
export SLUICE_SOAK_SECS="${SLUICE_SOAK_SECS:-1800}"
mkdir -p target/tmp
cargo nextest run --release --profile soak --test soak --no-capture >target/tmp/soak.log 2>&1 \
    || { echo "the soak failed; its output: target/tmp/soak.log" >&2; tail -40 target/tmp/soak.log >&2; exit 1; }
cat target/tmp/soak.txt
