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
# Real EC2 clients for tests/http_api.rs and tests/real_tools.rs: boto3,
# the aws CLI and Ansible (with its amazon.aws collection) from PyPI
# (Debian's botocore is years old), in a venv under target/.
if ! target/pyenv/bin/python -c 'import boto3, awscli, ansible' 2>/dev/null; then
	python3 -m venv target/pyenv
	target/pyenv/bin/pip install --quiet --upgrade boto3 awscli ansible
fi
if ! target/pyenv/bin/ansible-galaxy collection list amazon.aws 2>/dev/null | grep -q '^amazon\.aws '; then
	target/pyenv/bin/ansible-galaxy collection install amazon.aws
fi
cargo clippy --quiet --all-targets -- -D warnings
cargo build --quiet --all-targets
# Every test binary runs even when one fails, so one run shows every failure.
cargo test --no-fail-fast 2>&1
