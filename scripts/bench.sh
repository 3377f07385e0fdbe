#!/usr/bin/env bash
# Benchmarks Courier side by side with the peer harness (BullMQ, ../shared/bench/peer/run.sh) in
# one run on one private Redis: prints JSON lines, and writes docs/benchmarks.md.
# Flags go to courier-bench: `--smoke` (tiny sizes, no peer, no report: CI's check that the tool
# works), `--workloads e2e,latency`, `--backlogs 1000,100000,1000000`, `--sse-clients 10000`, …
# BENCH_TURNS (default 5; 0 for none) then runs the backlog's drain and the latency workload
# that many more times in turns, the peer's and Courier's one right after the other, who goes
# first alternating (both sides' defaults: 50,000 tasks at concurrency 50; 500 tasks/s for 10 s):
# the report's targets "in turns" take the median pair of each.
set -euo pipefail
cd "$(dirname "$0")/.."
smoke=false
for arg in "$@"; do [ "$arg" = --smoke ] && smoke=true; done
turns=${BENCH_TURNS:-5}
if ! [[ $turns =~ ^[0-9]{1,3}$ ]]; then
  echo "BENCH_TURNS must be a number of turns (0 for none), not '$turns'" >&2
  exit 2
fi
./scripts/setup.sh
source scripts/env.sh
cargo build --release -p courier -p courier-bench
bench=target/release/courier-bench

# Many SSE clients need many file descriptors, in this shell's children too.
ulimit -n "$(ulimit -Hn)"

source scripts/private-redis.sh

peer=../shared/bench/peer/run.sh
if ! $smoke && [ -f "$peer" ]; then
  REDIS_PORT="$port" bash "$peer" | tee "$work/peer.jsonl"
  # The Redis memory a BullMQ job holds, with the BullMQ the harness installed.
  REDIS_PORT="$port" node scripts/peer-memory.mjs | tee -a "$work/peer.jsonl"
  redis-cli -p "$port" flushall >/dev/null
fi
"$bench" --courier target/release/courier --redis-url "redis://127.0.0.1:$port" "$@" | tee "$work/courier.jsonl"

# The backlog's drain and the latency in turns: each side's lines tagged with the turn's number.
peer_turn() {
  redis-cli -p "$port" flushall >/dev/null
  REDIS_PORT="$port" PEER_MODES=fork LARGE_N=1 bash "$peer"
}
courier_turn() {
  redis-cli -p "$port" flushall >/dev/null
  "$bench" --courier target/release/courier --redis-url "redis://127.0.0.1:$port" --workloads submit,latency
}
if ! $smoke && [ -s "$work/peer.jsonl" ]; then
  for ((turn = 1; turn <= turns; turn++)); do
    if ((turn % 2)); then sides=(peer_turn courier_turn); else sides=(courier_turn peer_turn); fi
    for side in "${sides[@]}"; do
      # A side that fails leaves its turn without a pair (the report skips it), not the run
      # without its report.
      "$side" | sed "s/^{/{\"turn\":$turn,/" | tee -a "$work/turns.jsonl" ||
        echo "[bench] turn $turn: $side failed" >&2
    done
  done
fi

if ! $smoke; then
  report_args=()
  [ -s "$work/peer.jsonl" ] && report_args=(--peer "$work/peer.jsonl")
  [ -s "$work/turns.jsonl" ] && report_args+=(--turns "$work/turns.jsonl")
  {
    "$bench" report --courier "$work/courier.jsonl" "${report_args[@]}"
    [ -f docs/benchmark-notes.md ] && { echo; cat docs/benchmark-notes.md; }
    echo
    echo '## Raw figures'
    echo
    echo '```'
    cat "$work"/*.jsonl
    echo '```'
  } > docs/benchmarks.md
  echo "wrote docs/benchmarks.md" >&2
fi
