#!/usr/bin/env bash
# Instructions a task, counted rather than timed: callgrind counts the same in every run, where
# this machine's clock moves by a fifth between runs minutes apart. What one `courier worker` (one
# thread, a concurrency of 50) or Redis spends draining a queued backlog of `echo` tasks:
#
#   scripts/count.sh redis [N]    Redis's instructions over the drain of N tasks (default 5,000),
#                                 counted from the worker's start (zeroed after the submissions):
#                                 a task's share is the total over N. REDIS_SERVER picks the
#                                 binary: one built with symbols names Redis's functions in the
#                                 file it leaves (`callgrind_annotate --inclusive=yes FILE`).
#   scripts/count.sh worker [N]   the worker's, over drains of N and 2N tasks: a task's share is
#                                 the difference over N (the process's start and stop cancel out).
#
# COURIER_BIN picks the `courier` binary (default target/release/courier); RUST_LOG is the
# bench's `warn` unless set. Builds nothing: run `cargo build --release -p courier -p
# courier-bench` first. The drain's end is told by one `XINFO GROUPS` a second: a poll that reads
# every task would be counted with the drain (docs/benchmark-notes.md, "Forty-fourth step").
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-}
n=${2:-5000}
case "$what" in
  redis | worker) ;;
  *)
    echo "usage: scripts/count.sh redis|worker [N]" >&2
    exit 2
    ;;
esac
bench=target/release/courier-bench
courier=${COURIER_BIN:-target/release/courier}
redis_server=${REDIS_SERVER:-redis-server}
export RUST_LOG=${RUST_LOG:-warn}
if [ ! -x "$bench" ] || [ ! -x "$courier" ]; then
  echo "[count] no $bench or $courier: cargo build --release -p courier -p courier-bench" >&2
  exit 1
fi
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
if ! command -v callgrind_annotate >/dev/null; then
  echo "[count] installing valgrind with apt-get" >&2
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null
fi

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# Starts a Redis of its own on `$port` (under callgrind when `$1` names the file it writes).
start_redis() {
  port=$("$bench" free-port)
  local args=(--port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$work")
  if [ -n "${1:-}" ]; then
    valgrind --tool=callgrind --callgrind-out-file="$1" "$redis_server" "${args[@]}" >"$work/valgrind.log" 2>&1 &
  else
    "$redis_server" "${args[@]}" >"$work/redis.log" 2>&1 &
  fi
  redis_pid=$!
  pids+=("$redis_pid")
  for _ in $(seq 1 300); do redis-cli -p "$port" ping >/dev/null 2>&1 && return; sleep 0.1; done
  echo "[count] Redis did not start" >&2
  exit 1
}

stop_redis() {
  redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
  wait "$redis_pid" 2>/dev/null || true
}

# Queues `$1` `echo` tasks through a server that runs no worker, a hundred a request, each as the
# bench submits them in batches: a payload of some 80 bytes, which makes its record a hash table
# (one whose values are all 64 bytes or shorter stays a listpack, and costs Redis more a field).
submit() {
  local http
  http=$("$bench" free-port)
  "$courier" --redis-url "redis://127.0.0.1:$port" --prefix count --addr "127.0.0.1:$http" \
    serve --concurrency 0 >"$work/serve.log" 2>&1 &
  local serve=$!
  for _ in $(seq 1 300); do curl -sf -o /dev/null "http://127.0.0.1:$http/healthz" && break; sleep 0.1; done
  local sent=0 batch body i pad
  pad=$(printf 'x%.0s' $(seq 1 64))
  while [ "$sent" -lt "$1" ]; do
    batch=$(($1 - sent < 100 ? $1 - sent : 100))
    body='{"tasks":['
    for ((i = 0; i < batch; i++)); do
      body+="{\"kind\":\"echo\",\"payload\":{\"n\":$((sent + i)),\"pad\":\"$pad\"}}"
      [ "$i" -lt $((batch - 1)) ] && body+=','
    done
    curl -sf -o /dev/null -H 'content-type: application/json' -d "$body]}" \
      "http://127.0.0.1:$http/api/v1/tasks/batch"
    sent=$((sent + batch))
  done
  kill "$serve"
  wait "$serve" 2>/dev/null || true
}

# Waits until the worker has ended every task it was given: nothing pending, nothing unread.
drained() {
  local groups
  for _ in $(seq 1 3600); do
    groups=$(redis-cli -p "$port" xinfo groups 'count:{default}:ready:echo' | tr '\n' ' ')
    if [[ "$groups" =~ pending\ 0\  ]] && [[ "$groups" =~ lag\ 0\  ]]; then return; fi
    sleep 1
  done
  echo "[count] the drain did not end within an hour" >&2
  exit 1
}

# How many of the tasks succeeded (read once, after the counts are taken).
succeeded() {
  redis-cli -p "$port" eval "local n = 0
    for _, key in ipairs(redis.call('KEYS', 'count:{default}:task:*')) do
      if redis.call('HGET', key, 'status') == 'succeeded' then n = n + 1 end
    end
    return n" 0
}

# Starts the worker, `$worker`, behind the command words given (none, or valgrind's).
start_worker() {
  "$@" "$courier" --redis-url "redis://127.0.0.1:$port" --prefix count \
    worker --concurrency 50 --threads 1 >"$work/worker.log" 2>&1 &
  worker=$!
  pids+=("$worker")
}

# The total of a callgrind file.
total() {
  callgrind_annotate "$1" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }'
}

if [ "$what" = redis ]; then
  start_redis "$work/redis.callgrind"
  submit "$n"
  callgrind_control -z "$redis_pid" >/dev/null 2>&1
  start_worker
  drained
  kill "$worker"
  wait "$worker" 2>/dev/null || true
  callgrind_control -d "$redis_pid" >/dev/null 2>&1
  done=$(succeeded)
  stop_redis
  file=$(ls -S "$work"/redis.callgrind* | head -1)
  kept=$(mktemp --suffix=.callgrind)
  cp "$file" "$kept"
  echo "succeeded: $done of $n"
  echo "Redis, instructions a task: $(($(total "$kept") / n)) (callgrind file: $kept)"
else
  totals=()
  for size in "$n" $((2 * n)); do
    start_redis
    submit "$size"
    start_worker valgrind --tool=callgrind --callgrind-out-file="$work/worker.$size"
    drained
    kill -TERM "$worker"
    wait "$worker" 2>/dev/null || true
    echo "drain of $size: $(succeeded) succeeded, $(total "$work/worker.$size") instructions"
    totals+=("$(total "$work/worker.$size")")
    stop_redis
  done
  echo "worker, instructions a task: $(((totals[1] - totals[0]) / n))"
fi
