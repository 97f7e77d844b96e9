#!/usr/bin/env bash
# Failover figures, from the failover integration tests (which measure them while checking that
# no acknowledged write is lost; semi-sync AFTER_SYNC, 4 writing clients, MariaDB's default
# slave_net_timeout):
#  - the write gap after `kill -9` of the primary, after `kill -STOP` (a hung primary) and behind a
#    network black hole, each
#    over SLUICE_FAILOVER_RUNS runs (default here 10), with the time until the other replica
#    follows the new primary;
#  - the proxy cut off from a healthy primary (must not fail over), 10 times;
#  - the write pause of a planned switchover, and how fast a returning old primary is fenced.
set -euo pipefail
cd "$(dirname "$0")/.."
export SLUICE_FAILOVER_RUNS="${SLUICE_FAILOVER_RUNS:-10}"
cargo nextest run --release --test failover --no-capture \
    -E 'test(kill_primary_under_semisync_load) | test(hung_primary_under_semisync_load) | test(black_holed_primary) | test(switchover_under_load) | test(a_returning_old_primary)' \
    >/dev/null 2>&1 || { echo "the failover tests failed: run them with cargo nextest run --test failover" >&2; exit 1; }
partitions=0
for i in $(seq 1 "$SLUICE_FAILOVER_RUNS"); do
    cargo nextest run --release --test failover -E 'test(proxy_cut_off_from_a_healthy_primary)' \
        >/dev/null 2>&1 || { echo "partition run $i: Sluice failed over (or the test failed)" >&2; exit 1; }
    partitions=$((partitions + 1))
done
for f in failover-write-gaps.txt failover-hang-gaps.txt failover-blackhole-gaps.txt switchover-pause.txt fencing.txt; do
    cat "target/tmp/$f"
done
echo "proxy cut off from a healthy primary: 0 failovers in $partitions runs"
