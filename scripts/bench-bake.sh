#!/usr/bin/env bash
# Benchmark: create-image of a stopped instance with a small change over a
# multi-GiB base, against `qemu-img convert` of the whole disk (what a bake
# that copies the disk would cost). Runs in one go, in a throwaway state
# directory, and prints both times and their ratio.
#
#   scripts/bench-bake.sh [BASE_GIB]      (default 4)
#
# The base is the tiny image (built by scripts/build-images.sh) grown to
# BASE_GIB GiB, the space past its root partition filled with random data,
# then imported as a raw disk: a real, bootable multi-GiB AMI. One instance
# of it boots, writes one small file and powers off; then the two are timed
# on its stopped root volume.
set -euo pipefail

GIB=${1:-4}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
AMIRUN=${AMIRUN:-$ROOT/target/debug/amirun}
[ -x "$AMIRUN" ] || (cd "$ROOT" && cargo build --quiet)
CATALOG=${AMIRUN_TEST_CATALOG:-${XDG_DATA_HOME:-$HOME/.local/share}/amirun/catalog.d/local-images.json}
[ -f "$CATALOG" ] || { echo "no $CATALOG: run scripts/build-images.sh tiny first" >&2; exit 1; }

WORK=$(mktemp -d /var/tmp/amirun-bench.XXXXXX)
export AMIRUN_HOME=$WORK/home AMIRUN_RUNTIME_DIR=$WORK/runtime AMIRUN_STOP_TIMEOUT=20
mkdir -p "$AMIRUN_HOME/catalog.d" "$AMIRUN_RUNTIME_DIR"
cp "$CATALOG" "$AMIRUN_HOME/catalog.d/"
cleanup() {
    for p in "$AMIRUN_HOME"/instances/*/supervisor.pid; do
        [ -f "$p" ] && kill "$(cat "$p")" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
a() { "$AMIRUN" "$@"; }
now() { date +%s.%N; }

echo "== making a ${GIB} GiB base from the tiny image"
TINY=$(a describe-images --filters Name=name,Values=amirun/tiny-x86_64 --query 'Images[0].ImageId' --output text)
TINY_BLOB=$(a fetch-image --image-id "$TINY" --query 'Disks[0].Path' --output text)
qemu-img convert -O raw "$TINY_BLOB" "$WORK/base.raw"
USED=$(stat -c %s "$WORK/base.raw")
head -c $((GIB * 1024 * 1024 * 1024 - USED)) /dev/urandom >>"$WORK/base.raw"
t=$(now)
AMI=$(a import-image --disk-containers "Url=file://$WORK/base.raw,Format=raw" --query ImageId --output text)
echo "imported $AMI ($(du -h --apparent-size "$WORK/base.raw" | cut -f1) raw) in $(echo "$(now) - $t" | bc) s"
rm -f "$WORK/base.raw"

echo "== one instance writes a small change and powers off"
ID=$(a run-instances --image-id "$AMI" --user-data '#!/bin/sh
head -c 1048576 /dev/urandom > /root/change.bin
echo bench-change > /root/change
sync
poweroff' --query 'Instances[0].InstanceId' --output text)
for _ in $(seq 600); do
    s=$(a describe-instances --instance-ids "$ID" --query 'Reservations[0].Instances[0].State.Name' --output text)
    [ "$s" = stopped ] && break
    sleep 0.5
done
[ "$s" = stopped ] || { echo "instance $ID is $s, not stopped" >&2; exit 1; }
VOL=$(a describe-volumes --filters "Name=attachment.instance-id,Values=$ID" --query 'Volumes[0].VolumeId' --output text)
VOLFILE=$AMIRUN_HOME/volumes/$VOL.qcow2

echo "== baseline: qemu-img convert of the whole disk"
t=$(now)
qemu-img convert -O qcow2 "$VOLFILE" "$WORK/full.qcow2"
T_CONVERT=$(echo "$(now) - $t" | bc)
FULL_BYTES=$(stat -c %s "$WORK/full.qcow2")
rm -f "$WORK/full.qcow2"

echo "== amirun create-image on the stopped instance"
t=$(now)
OUT=$(a create-image --instance-id "$ID" --name bench-image)
T_CREATE=$(echo "$(now) - $t" | bc)
LAYER_BYTES=$(echo "$OUT" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Amirun"]["Snapshots"][0]["StorageBytes"])')
a terminate-instances --instance-ids "$ID" >/dev/null

RATIO=$(echo "scale=1; $T_CONVERT / $T_CREATE" | bc)
printf '\n%-44s %10s %14s\n' "operation (${GIB} GiB disk, ~1 MiB changed)" "seconds" "bytes written"
printf '%-44s %10.3f %14d\n' "qemu-img convert (whole disk, baseline)" "$T_CONVERT" "$FULL_BYTES"
printf '%-44s %10.3f %14d\n' "amirun create-image (stopped instance)" "$T_CREATE" "$LAYER_BYTES"
printf '%-44s %10sx\n' "speed-up (baseline / create-image)" "$RATIO"
