#!/usr/bin/env bash
# Connection storm: SLUICE_STORM_LOGINS (default 10,000) logins by 64 clients from 6 loopback
# source addresses, a quarter with a wrong password, while a steady client queries — once
# through Sluice (`sluice run`), once directly against MariaDB. Prints the storm's duration,
# the steady client's p99 under each, and the Sluice process's RSS and descriptors before and
# after (the test asserts correctness and that sessions, descriptors and pool connections return
# to their baseline; RSS and latency are only reported).
set -euo pipefail
cd "$(dirname "$0")/.."
export SLUICE_STORM_LOGINS="${SLUICE_STORM_LOGINS:-10000}"
for run in 1 2 3; do
    cargo nextest run --release --test storm --no-capture >/dev/null 2>&1 \
        || { echo "the storm test failed: run cargo nextest run --test storm --no-capture" >&2; exit 1; }
    echo "== run $run"
    cat target/tmp/storm.txt
done
