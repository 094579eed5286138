#!/usr/bin/env bash
# The test suite, from a fresh machine: host packages, lints (rustfmt,
# clippy, and shell scripts), the test images, then every Rust test (unit,
# CLI, real boots). Idempotent; a second run reuses the installed packages
# and the built images.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup-host.sh
# Lints first: they take seconds and fail fast.
cargo fmt --check
shellcheck scripts/*.sh scripts/images/*.sh .ci/run
scripts/build-images.sh tiny all
scripts/build-images.sh debian-12 x86_64
# Real EC2 clients for tests/http_api.rs: boto3 and the aws CLI from PyPI
# (Debian's botocore is years old), in a venv under target/.
if ! target/pyenv/bin/python -c 'import boto3, awscli' 2>/dev/null; then
	python3 -m venv target/pyenv
	target/pyenv/bin/pip install --quiet --upgrade boto3 awscli
fi
cargo clippy --quiet --all-targets -- -D warnings
cargo build --quiet --all-targets
cargo test 2>&1
