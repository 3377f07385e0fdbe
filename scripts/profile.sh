#!/usr/bin/env bash
# Where Redis's time goes in a workload: runs courier-bench (flags go to it: `--workloads e2e`,
# `--n 100000`, …) on a private Redis, then prints the bench's JSON lines, Redis's CPU over the
# run and each command's calls and time from `INFO commandstats`, the costliest first. With
# SLOWLOG=1 it also prints each script's calls and mean µs (a slow log at a threshold of 0,
# grouped by script). COURIER_BIN picks the `courier` binary (default target/release/courier),
# to compare two builds on one machine in one hour. Builds nothing: run
# `cargo build --release -p courier -p courier-bench` first.
# docs/benchmark-notes.md tells what each step measured with it.
set -euo pipefail
cd "$(dirname "$0")/.."
bench=target/release/courier-bench
courier=${COURIER_BIN:-target/release/courier}

source scripts/private-redis.sh
if [ "${SLOWLOG:-0}" = 1 ]; then
  redis-cli -p "$port" config set slowlog-log-slower-than 0 >/dev/null
  redis-cli -p "$port" config set slowlog-max-len 10000000 >/dev/null
fi

cpu() { redis-cli -p "$port" info cpu | tr -d '\r' | awk -F: '/^used_cpu_(user|sys):/ { s += $2 } END { print s }'; }
before=$(cpu)
"$bench" --courier "$courier" --redis-url "redis://127.0.0.1:$port" "$@"
after=$(cpu)

echo
echo "Redis CPU over the run: $(awk -v a="$after" -v b="$before" 'BEGIN { printf "%.2f", a - b }') s"
echo
printf '%-28s %12s %12s %10s\n' command calls usec usec/call
redis-cli -p "$port" info commandstats | tr -d '\r' |
  sed -n 's/^cmdstat_\([^:]*\):calls=\([0-9]*\),usec=\([0-9]*\),usec_per_call=\([0-9.]*\).*/\1 \2 \3 \4/p' |
  sort -k3 -n -r | awk '{ printf "%-28s %12d %12d %10.2f\n", $1, $2, $3, $4 }'

if [ "${SLOWLOG:-0}" = 1 ]; then
  echo
  echo "Scripts (by their first argument: the function's name, or a script's SHA), calls and mean µs:"
  # A slow log entry: id, time, µs, then the command's arguments, one per line.
  redis-cli -p "$port" slowlog get 10000000 |
    awk 'prev ~ /^[0-9]+$/ && /^(evalsha|EVALSHA|fcall|FCALL)$/ { getline sha; n[sha]++; t[sha] += us }
         { if (/^[0-9]+$/) us = $0; prev = $0 }
         END { for (s in n) printf "%-42s %10d %10.2f\n", s, n[s], t[s] / n[s] }' | sort -k2 -n -r
fi
