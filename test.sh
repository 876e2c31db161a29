#!/bin/sh
# The whole test suite: formatting, lints, unit, integration and system tests.
# Installs what it needs first (Debian). Root runs everything; without root the tests that
# need it (FUSE mounts with trusted xattrs, namespaces) say they are skipped.
set -eu
cd "$(dirname "$0")"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/shoal-target}"
scripts/deps.sh run test
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --workspace --locked --no-fail-fast -- --test-threads "${SHOAL_TEST_THREADS:-2}"
