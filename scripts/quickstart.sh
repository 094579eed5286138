#!/usr/bin/env bash
# The main job on a fresh machine: install what amirun needs, build the
# default tiny image, boot it with `amirun run-instances`, show its console
# reaching userspace and the instance in describe-instances. Idempotent.
#
#   scripts/quickstart.sh [x86_64|arm64]
set -euo pipefail
cd "$(dirname "$0")/.."
arch="${1:-x86_64}"
case "$arch" in
  x86_64) type=t3.micro ;;
  arm64) type=t4g.micro ;;
  *) echo "usage: $0 [x86_64|arm64]" >&2; exit 2 ;;
esac

step() { printf '\n== %s\n' "$*" >&2; }

step "Host packages"
scripts/setup-host.sh
step "The tiny $arch image (reused when already built)"
scripts/build-images.sh tiny "$arch"
step "Building amirun"
cargo build --quiet --bin amirun
amirun() { target/debug/amirun "$@"; }

ami=$(amirun describe-images --filters "Name=name,Values=amirun/tiny-$arch" --query 'Images[0].ImageId' --output text)
step "Launching $ami (amirun/tiny-$arch) as a $type"
userdata=$(mktemp)
trap 'rm -f "$userdata"' EXIT
printf '#!/bin/sh\necho "hello from user data on $(uname -m)"\n' > "$userdata"
id=$(amirun run-instances --image-id "$ami" --instance-type "$type" \
  --user-data "file://$userdata" \
  --tag-specifications 'ResourceType=instance,Tags=[{Key=Name,Value=quickstart}]' \
  --query 'Instances[0].InstanceId' --output text)
echo "instance $id" >&2
amirun wait instance-running --instance-ids "$id"

step "Console of $id (waiting for the guest to finish booting)"
deadline=$((SECONDS + 240))
until amirun get-console-output --instance-id "$id" --query Output --output text | grep -q 'amirun-tiny: ready'; do
  if [ "$SECONDS" -ge "$deadline" ]; then
    amirun get-console-output --instance-id "$id" --query Output --output text | tail -30
    echo "quickstart: $id did not finish booting within 240 s" >&2
    exit 1
  fi
  sleep 1
done
amirun get-console-output --instance-id "$id" --query Output --output text | grep -E '^\[amirun\]|amirun-tiny|hello from'

step "describe-instances"
amirun describe-instances --instance-ids "$id" --output table \
  --query 'Reservations[].Instances[].{Id:InstanceId,State:State.Name,Type:InstanceType,Arch:Architecture,Accel:Amirun.Accelerator,Ssh:Amirun.SshEndpoint}'

cat >&2 <<MSG

$id keeps running after this script. Next:
  target/debug/amirun get-console-output --instance-id $id --output text
  target/debug/amirun stop-instances --instance-ids $id        # EBS-backed: stop, then start-instances
  target/debug/amirun terminate-instances --instance-ids $id
  # ssh needs an image with sshd, e.g. debian-12 (scripts/build-images.sh debian-12 x86_64):
  target/debug/amirun create-key-pair --key-name me --key-type ed25519 >/dev/null
  target/debug/amirun run-instances --image-id <debian-12 ami> --key-name me
  target/debug/amirun ssh <instance-id>
MSG
