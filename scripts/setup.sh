#!/usr/bin/env bash
# Installs everything Courier needs to build, run and test, skipping whatever is already present.
# Safe to run again and again: each step checks before it acts.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_LEPTOS_VERSION=0.3.11
# Must equal the `wasm-bindgen = "=X"` pin in Cargo.toml: cargo-leptos refuses a mismatch.
WASM_BINDGEN_VERSION=$(sed -n 's/^wasm-bindgen = { version = "=\([0-9.]*\)".*/\1/p' Cargo.toml)
BINARYEN_VERSION=123.0.0

say() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# 1. Toolchain and wasm target, as pinned in rust-toolchain.toml (RUSTUP_AUTO_INSTALL may be 0).
rustup toolchain install >/dev/null 2>&1 || rustup toolchain install

# 2. System packages: redis-server for the embedded Redis and tests (redis-cli, of redis-tools,
#    makes the test clusters), openssl for the TLS tests
#    (they make their own CA), chromium for Playwright, python3 (with venv) for the push tests'
#    endpoint and signature checks, prometheus for the `promtool` that checks `GET /metrics`.
missing=()
command -v python3 >/dev/null || missing+=(python3)
python3 -c 'import ensurepip' 2>/dev/null || missing+=(python3-venv)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v redis-cli >/dev/null || missing+=(redis-tools)
command -v openssl >/dev/null || missing+=(openssl)
command -v chromium >/dev/null || missing+=(chromium)
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
command -v cc >/dev/null || missing+=(build-essential)
command -v promtool >/dev/null || missing+=(prometheus)
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]} with apt-get"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

node_major=$(node --version | sed 's/^v\([0-9]*\).*/\1/')
if [ "$node_major" -lt 20 ]; then
  say "Node.js $(node --version) is too old: Playwright needs Node 20 or newer (Debian 13, or NodeSource)"
  exit 1
fi

# 3. cargo-leptos and the wasm-bindgen CLI it drives (it would otherwise try to download them).
if ! cargo leptos --version 2>/dev/null | grep -q "$CARGO_LEPTOS_VERSION"; then
  say "installing cargo-leptos $CARGO_LEPTOS_VERSION (takes about 15 minutes, once)"
  cargo install cargo-leptos --version "$CARGO_LEPTOS_VERSION" --locked
fi
if ! wasm-bindgen --version 2>/dev/null | grep -q "$WASM_BINDGEN_VERSION"; then
  say "installing wasm-bindgen-cli $WASM_BINDGEN_VERSION"
  # Not --locked: its lockfile pins a webpki-roots release the registry no longer serves.
  cargo install wasm-bindgen-cli --version "$WASM_BINDGEN_VERSION"
fi

# 4. npm packages: wasm-opt (binaryen) for release builds, Playwright for the end-to-end tests.
tools=tools/node_modules/.bin
if [ ! -x "$tools/wasm-opt" ] || ! "$tools/wasm-opt" --version | grep -q "version ${BINARYEN_VERSION%%.*}"; then
  say "installing binaryen $BINARYEN_VERSION (wasm-opt) from npm"
  (cd tools && npm ci --no-audit --no-fund --silent)
fi
PLAYWRIGHT_VERSION=$(sed -n 's/.*"@playwright\/test": "\([0-9.]*\)".*/\1/p' end2end/package.json)
if ! end2end/node_modules/.bin/playwright --version 2>/dev/null | grep -q "$PLAYWRIGHT_VERSION"; then
  say "installing Playwright $PLAYWRIGHT_VERSION from npm (it drives Debian's Chromium)"
  (cd end2end && npm ci --no-audit --no-fund --silent)
fi
# 5. Python packages from PyPI, in .venv: the Standard Webhooks reference library (the push
#    tests check Courier's signatures with it rather than with Courier's own code) and
#    schemathesis (the OpenAPI test fuzzes the real server against its own document).
STANDARDWEBHOOKS_VERSION=1.1.0
SCHEMATHESIS_VERSION='4.32.*'
has_package() { # name, version pattern (fnmatch)
  .venv/bin/python -c 'import fnmatch, importlib.metadata as m, sys; sys.exit(not fnmatch.fnmatch(m.version(sys.argv[1]), sys.argv[2]))' \
    "$1" "$2" 2>/dev/null
}
if ! has_package standardwebhooks "$STANDARDWEBHOOKS_VERSION"; then
  say "installing standardwebhooks $STANDARDWEBHOOKS_VERSION from PyPI into .venv"
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check "standardwebhooks==$STANDARDWEBHOOKS_VERSION"
fi
if ! has_package schemathesis "$SCHEMATHESIS_VERSION" || [ ! -x .venv/bin/st ]; then
  say "installing schemathesis $SCHEMATHESIS_VERSION from PyPI into .venv"
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi
say "ready"
