#!/usr/bin/env bash
# Runs every Silverline test: formatting and lints, unit and property tests, end-to-end tests of the worker
# binary, and the integration tests against the real services this script builds (cached) and starts on
# loopback. Idempotent; safe to run on a fresh clone as root or as a user.
set -euo pipefail
cd "$(dirname "$0")/.."
export SILVERLINE_CACHE="${SILVERLINE_CACHE:-$HOME/.cache/silverline}"
mkdir -p "$SILVERLINE_CACHE"

step() { printf '\n==> %s\n' "$*" >&2; }

step "toolchain"
if command -v rustup >/dev/null 2>&1; then
  rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test (unit, property and end-to-end tests)"
cargo test --workspace --locked
