#!/usr/bin/env bash
# Checks that the built server serves a UI that can hydrate: starts target/release/courier (or
# $COURIER_BIN) on a free port with its own data dir and redis-server, fetches the home page, and
# asks for every /pkg/ file the page names (the wasm, its JS, the CSS): each must be 200.
set -euo pipefail
cd "$(dirname "$0")/.."
binary=${COURIER_BIN:-target/release/courier}
[ -x "$binary" ] || { echo "check-site: $binary is not built" >&2; exit 1; }

work=$(mktemp -d)
pid=
cleanup() {
  if [ -n "$pid" ]; then
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# Port 0 picks a free port; the log says which. Its own redis-server, whatever the environment says.
env -u COURIER_REDIS_URL NO_COLOR=1 RUST_LOG=info "$binary" serve --addr 127.0.0.1:0 \
  --data-dir "$work/data" --concurrency 1 >"$work/log" 2>&1 &
pid=$!
base=
for _ in $(seq 1 100); do
  addr=$(sed 's/\x1b\[[0-9;]*m//g' "$work/log" | grep -o 'serving the UI and the API.*addr=[0-9.:]*' \
    | grep -o 'addr=[0-9.:]*' | head -n1 | cut -d= -f2 || true)
  if [ -n "$addr" ] && curl -fsS "http://$addr/readyz" >/dev/null 2>&1; then
    base="http://$addr"
    break
  fi
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.1
done
if [ -z "$base" ]; then
  echo "check-site: $binary did not start serving; its log:" >&2
  cat "$work/log" >&2
  exit 1
fi

curl -fsS "$base/" -o "$work/page.html"
mapfile -t assets < <(grep -o '/pkg/[^"'"'"' )<>]*' "$work/page.html" | sort -u)
failed=0
for kind in '\.wasm$' '\.js$'; do
  if ! printf '%s\n' "${assets[@]}" | grep -q "$kind"; then
    echo "check-site: the page names no /pkg/ file matching $kind" >&2
    failed=1
  fi
done
for asset in "${assets[@]}"; do
  status=$(curl -s -o /dev/null -w '%{http_code}' "$base$asset")
  echo "check-site: $status $asset"
  [ "$status" = 200 ] || failed=1
done
if [ "$failed" != 0 ]; then
  echo "check-site: $binary serves a page whose UI cannot hydrate (see above)" >&2
  exit 1
fi
echo "check-site: every /pkg/ file the page names is served (${#assets[@]} files)"
