#!/usr/bin/env bash
# Runs Courier: sets up what is missing, builds the release (server + wasm UI), then starts
# `courier serve` with its own redis-server, passing any flags through (see `--help`).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
source scripts/env.sh
cargo leptos build --release
exec target/release/courier serve "$@"
