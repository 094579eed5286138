#!/usr/bin/env bash
# Install the host packages amirun needs to run guests (idempotent).
#
# Debian 12 note (see shared HOST.md): the machine image may ship qemu-utils
# 10 from backports; installing Debian's qemu-system-* 7.2 removes it. So the
# system emulators and firmware go first, then qemu-utils, and we check that
# qemu-img answers afterwards. Needs root (apt-get); everything else in
# amirun runs as any user.
set -euo pipefail

need=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
# passt: pasta is a guest's outbound leg from its own network namespace
# (src/network.rs); iproute2: `ip` sets that namespace up. VPC networks
# (src/network/vpc.rs): nftables enforces security groups, dnsmasq-base
# (the binary only, no system service) is each VPC's DHCP server.
for p in qemu-system-x86 qemu-system-arm ovmf qemu-efi-aarch64 seabios ipxe-qemu passt iproute2 nftables dnsmasq-base; do
  have_pkg "$p" || need+=("$p")
done
# tests/real_tools.rs runs Debian's packer (amazon-ebs builder).
have_pkg packer || need+=(packer)
# scripts/test.sh lints the shell scripts.
command -v shellcheck >/dev/null 2>&1 || need+=(shellcheck)
# tests/http_api.rs installs boto3 and awscli into a venv (scripts/test.sh).
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive

if [ "${#need[@]}" -gt 0 ]; then
  echo "setup-host: installing ${need[*]}" >&2
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if ! command -v qemu-img >/dev/null 2>&1; then
  echo "setup-host: installing qemu-utils" >&2
  $SUDO apt-get install -y -qq --no-install-recommends qemu-utils >/dev/null || {
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends qemu-utils >/dev/null; }
fi
for tool in qemu-img qemu-system-x86_64 qemu-system-aarch64; do
  if ! "$tool" --version >/dev/null 2>&1; then
    echo "setup-host: $tool does not run after installing packages" >&2
    exit 1
  fi
done
# Security groups filter bridged traffic through br_netfilter (a module on
# stock Debian kernels; built in on some).
if [ ! -e /proc/sys/net/bridge/bridge-nf-call-iptables ]; then
  $SUDO modprobe br_netfilter 2>/dev/null ||
    echo "setup-host: br_netfilter is not available; instances in a VPC will run isolated" >&2
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "setup-host: cargo not found; install Rust (https://rustup.rs or 'apt-get install cargo')" >&2
  exit 1
fi
echo "setup-host: $(qemu-img --version | head -1); $(qemu-system-x86_64 --version | head -1)" >&2
