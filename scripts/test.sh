#!/usr/bin/env bash
# The test suite, from a fresh machine: host packages, the tiny images, then
# every Rust test (unit, CLI, real boots). Idempotent; a second run reuses
# the installed packages and the built images.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup-host.sh
scripts/build-images.sh tiny all
scripts/build-images.sh debian-12 x86_64
cargo build --quiet --all-targets
cargo test 2>&1
