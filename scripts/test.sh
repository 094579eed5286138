#!/usr/bin/env bash
# The test suite, from a fresh machine: host packages, lints (rustfmt,
# clippy, and shell scripts), the test images, then every Rust test (unit,
# CLI, real boots), and last the OpenStack region's tests against the
# all-in-one cloud that came up meanwhile. Idempotent; a second run reuses
# the installed packages and the built images.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup-host.sh
# Lints first: they take seconds and fail fast.
cargo fmt --check
shellcheck scripts/*.sh scripts/images/*.sh .ci/run
scripts/build-images.sh tiny all
scripts/build-images.sh debian-12 x86_64
# The all-in-one OpenStack cloud for tests/openstack.rs (issue 16): its
# packages install and its services come up in the background, while the
# code builds and the other tests run (after the image builds: those use apt).
mkdir -p target
(
	start=$SECONDS
	scripts/openstack-aio.sh up
	echo "openstack-aio.sh up took $((SECONDS - start)) s (in the background)"
) >target/openstack-aio.log 2>&1 &
aio=$!
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
status=0
cargo test --no-fail-fast 2>&1 || status=$?
# Then the OpenStack region's tests (#[ignore]d in a plain `cargo test`:
# they need the cloud), once the cloud answers.
if wait "$aio"; then
	tail -n 1 target/openstack-aio.log
	cargo test --test openstack -- --ignored 2>&1 || status=$?
else
	echo "openstack-aio.sh up failed; the end of target/openstack-aio.log:"
	tail -n 60 target/openstack-aio.log
	status=1
fi
scripts/openstack-aio.sh down >>target/openstack-aio.log 2>&1 || true
exit "$status"
