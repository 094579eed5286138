#!/usr/bin/env bash
# The test suite, from a fresh machine: host packages, the tiny images, then
# every Rust test (unit, CLI, real boots). Idempotent; a second run reuses
# the installed packages and the built images.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup-host.sh
scripts/build-images.sh tiny all
cargo build --quiet --all-targets
cargo test --all-targets 2>&1
