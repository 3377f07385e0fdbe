#!/usr/bin/env bash
# Starts and stops a local Redis Cluster to run Courier on by hand: three masters and three
# replicas on 127.0.0.1, each on a free port, nothing saved to disk.
#
#   scripts/redis-cluster.sh start DIR   starts the nodes (data, logs and pidfiles in DIR), waits
#                                        until the cluster serves every slot, and prints only the
#                                        masters' urls, comma-separated: a COURIER_REDIS_URL
#   scripts/redis-cluster.sh stop DIR    stops every node started in DIR (nothing left: no-op)
#
#   export COURIER_REDIS_URL=$(scripts/redis-cluster.sh start /tmp/cluster)
set -euo pipefail

usage() {
  echo "usage: $0 start DIR | stop DIR" >&2
  exit 2
}

# Whether something on 127.0.0.1 accepts connections on port $1 (bash's /dev/tcp, no tools).
listening() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Sets $picked to a port nobody listens on, below Linux's ephemeral range (32768 and up) so that
# no outgoing connection takes it before the node binds it, and not picked before ($taken).
pick_port() {
  while :; do
    picked=$((20000 + RANDOM % 12000))
    case " $taken " in *" $picked "*) continue ;; esac
    listening "$picked" || break
  done
  taken="$taken $picked"
}

# Whether process $1 runs (an exited one can linger as a zombie until init reaps it).
running() {
  local state
  state=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) && [ "$state" != Z ]
}

# The pid in pidfile $1 if that process is still a running redis-server (a pid can be reused).
live_pid() {
  local pid
  pid=$(cat "$1" 2>/dev/null) || return 1
  [ -n "$pid" ] && running "$pid" && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = redis-server ] &&
    echo "$pid"
}

# Stops every node whose pidfile is in $1: TERM, then KILL after 5 s; removes the pidfiles.
stop_nodes() {
  local dir=$1 pidfile pid
  [ -d "$dir" ] || return 0
  for pidfile in "$dir"/*.pid; do
    [ -e "$pidfile" ] || continue
    if pid=$(live_pid "$pidfile"); then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do
        running "$pid" || break
        sleep 0.1
      done
      if running "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
    fi
    rm -f "$pidfile"
  done
}

# Whether every node in ${ports[@]} sees the whole cluster: every slot served, state ok, six nodes
# known, and every replica's link to its master up (so that `WAIT 1` is answered at once).
cluster_ready() {
  local port info
  for port in "${ports[@]}"; do
    info=$(redis-cli -p "$port" cluster info 2>/dev/null | tr -d '\r') || return 1
    grep -qx 'cluster_state:ok' <<<"$info" || return 1
    grep -qx 'cluster_slots_assigned:16384' <<<"$info" || return 1
    grep -qx 'cluster_known_nodes:6' <<<"$info" || return 1
    info=$(redis-cli -p "$port" info replication 2>/dev/null | tr -d '\r') || return 1
    if grep -qx 'role:slave' <<<"$info"; then
      grep -qx 'master_link_status:up' <<<"$info" || return 1
    fi
  done
}

start() {
  local pidfile port bus
  mkdir -p "$1"
  dir=$(cd "$1" && pwd)
  for pidfile in "$dir"/*.pid; do
    if [ -e "$pidfile" ] && live_pid "$pidfile" >/dev/null; then
      echo "a cluster is already running in $dir: stop it first" >&2
      exit 1
    fi
  done
  # A start that fails half-way leaves nothing running.
  trap 'stop_nodes "$dir"' EXIT

  taken=""
  ports=()
  for _ in 1 2 3 4 5 6; do
    pick_port
    port=$picked
    # The cluster bus gets a free port of its own: the default (port + 10000) may be taken.
    pick_port
    bus=$picked
    mkdir -p "$dir/$port"
    # A master that does not answer for 2 s is failed over; a master feeds a new replica at once
    # rather than after the default 5 s wait for more replicas to sync together.
    redis-server --port "$port" --cluster-port "$bus" --bind 127.0.0.1 \
      --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 2000 \
      --appendonly no --save '' --repl-diskless-sync-delay 0 \
      --dir "$dir/$port" --logfile "$dir/$port/redis.log" \
      --daemonize yes --pidfile "$dir/$port.pid" >&2
    ports+=("$port")
  done
  for port in "${ports[@]}"; do
    for _ in $(seq 1 50); do
      redis-cli -p "$port" ping >/dev/null 2>&1 && break
      sleep 0.1
    done
    redis-cli -p "$port" ping >/dev/null 2>&1 || {
      echo "the node on port $port did not start: see $dir/$port/redis.log" >&2
      exit 1
    }
  done

  local addresses=()
  for port in "${ports[@]}"; do addresses+=("127.0.0.1:$port"); done
  if ! redis-cli --cluster create "${addresses[@]}" --cluster-replicas 1 --cluster-yes \
    >"$dir/create.log" 2>&1; then
    echo "redis-cli --cluster create failed: see $dir/create.log" >&2
    exit 1
  fi

  local ready=false
  for _ in $(seq 1 300); do
    if cluster_ready; then
      ready=true
      break
    fi
    sleep 0.1
  done
  if ! $ready; then
    echo "the cluster was not ready within 30 s: see the logs in $dir" >&2
    exit 1
  fi
  trap - EXIT

  # The masters serving slots, as the first node sees them: `<id> <ip:port@bus> <flags> <master>
  # <ping> <pong> <epoch> <link> <slots…>` per line.
  redis-cli -p "${ports[0]}" cluster nodes |
    tr -d '\r' |
    awk '$3 ~ /(^|,)master(,|$)/ && NF > 8 { split($2, at, "@"); print "redis://" at[1] }' |
    sort -t: -k3 -n |
    paste -sd, -
}

[ $# -eq 2 ] || usage
case "$1" in
  start) start "$2" ;;
  stop) stop_nodes "$2" ;;
  *) usage ;;
esac
