# Sourced by the scripts that measure on a Redis of their own (bench.sh, profile.sh): starts a
# private redis-server without persistence on a free loopback port, `$port`, with its files in
# `$work` (a new temporary directory), and stops it and removes them as the script exits.
# Needs `$bench`, the courier-bench binary (it finds the free port).
port=$("$bench" free-port)
work=$(mktemp -d)
cleanup() {
  redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
  --dir "$work" --logfile "$work/redis.log"
for _ in $(seq 1 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
