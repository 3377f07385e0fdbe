#!/usr/bin/env bash
# Runs every check and test: formatting, lints (native and wasm), unit and integration tests
# against private redis-servers, then the release build under Playwright in Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
source scripts/env.sh

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "format"
cargo fmt --all -- --check
step "lints"
cargo clippy --all-targets -- -D warnings
cargo clippy -p frontend --target wasm32-unknown-unknown -- -D warnings
step "unit and integration tests"
cargo test
# The runs below name test targets, not `-p courier`: selecting one package resolves features
# differently (the app crate's `default` is on only when app itself is selected), and so would
# build app and courier a second time (gigabytes of target dir).
step "the API tests again, every task in a named queue (it must behave exactly as default)"
COURIER_TEST_QUEUE=named cargo test --test api
step "the API, pull-worker and schedule tests again, on a Redis Cluster of three masters with a replica each"
cluster=$(mktemp -d)
trap './scripts/redis-cluster.sh stop "$cluster"; rm -rf "$cluster"' EXIT
# On its own line, so that a cluster that does not start stops the run (set -e).
cluster_url=$(./scripts/redis-cluster.sh start "$cluster")
[ -n "$cluster_url" ] || { echo "the test cluster named no masters" >&2; exit 1; }
COURIER_TEST_REDIS_URL=$cluster_url cargo test --test api --test pull --test schedules
./scripts/redis-cluster.sh stop "$cluster"
step "release build"
cargo leptos build --release
step "end-to-end tests (Playwright, Chromium)"
(cd end2end && npx playwright test)
step "benchmark tool smoke run (tiny sizes; checks that it works, asserts no speed)"
./scripts/bench.sh --smoke
step "the server binary left behind serves a UI that hydrates (every /pkg/ file it names is there)"
./scripts/check-site.sh
