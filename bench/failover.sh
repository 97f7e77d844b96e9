#!/usr/bin/env bash
# Failover figures: the write gap after `kill -9` of the primary (10 runs, semi-sync AFTER_SYNC,
# 4 writing clients, default settings) and the write pause of a planned switchover (4 writers).
# They come from the failover integration tests, which measure them while checking that no
# acknowledged write is lost; this script runs those tests and prints what they recorded.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo nextest run --release --test failover --no-capture \
    -E 'test(kill_primary_under_semisync_load) | test(switchover_under_load) | test(a_returning_old_primary)' \
    >/dev/null 2>&1 || { echo "the failover tests failed: run them with cargo nextest run --test failover" >&2; exit 1; }
for f in failover-write-gaps.txt switchover-pause.txt fencing.txt; do
    cat "target/tmp/$f"
done
