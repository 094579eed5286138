#!/usr/bin/env bash
# Launch benchmark, in one run:
#  1. time from process start to the tiny image's userspace marker, N times
#     with a bare qemu-system-x86_64 command (same machine: q35, OVMF, TCG,
#     virtio disk on a qcow2 overlay, user networking) and N times through
#     `amirun run-instances`, with their ratio;
#  2. `amirun run-instances` wall time over a 1 GiB and a 20 GiB virtual base,
#     to show that making the instance's overlay does not grow with the base.
#
#   scripts/bench-launch.sh [N]      (default N=5)
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-5}"
MARK='amirun-tiny: userspace up'

scripts/build-images.sh tiny x86_64 >/dev/null
cargo build --quiet --bin amirun
AMIRUN="$PWD/target/debug/amirun"
work=$(mktemp -d)
export AMIRUN_HOME="$work/home" AMIRUN_RUNTIME_DIR="$work/run" AMIRUN_STOP_TIMEOUT=2
cleanup() {
  for p in "$AMIRUN_HOME"/instances/*/supervisor.pid; do [ -f "$p" ] && kill -9 "$(cat "$p")" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$AMIRUN_HOME/catalog.d"
cp "${XDG_DATA_HOME:-$HOME/.local/share}/amirun/catalog.d/local-images.json" "$AMIRUN_HOME/catalog.d/"
ami=$("$AMIRUN" describe-images --filters Name=name,Values=amirun/tiny-x86_64 --query 'Images[0].ImageId' --output text)
base=$("$AMIRUN" fetch-image --image-id "$ami" --query 'Disks[0].Path' --output text)
code=/usr/share/OVMF/OVMF_CODE_4M.fd
vars=/usr/share/OVMF/OVMF_VARS_4M.fd

now() { date +%s.%N; }
# wait_marker FILE START -> seconds from START until MARK appears in FILE (300 s bound)
wait_marker() {
  local f=$1 t0=$2 deadline=$((SECONDS + 300))
  until grep -qs "$MARK" "$f"; do
    [ "$SECONDS" -lt "$deadline" ] || { echo "marker not seen in $f" >&2; return 1; }
    sleep 0.02
  done
  awk -v a="$(now)" -v b="$t0" 'BEGIN { printf "%.3f\n", a - b }'
}

bare=() ; via=() ; small=() ; big=()
for i in $(seq "$N"); do
  d="$work/bare$i"; mkdir -p "$d"
  qemu-img create -q -f qcow2 -b "$base" -F qcow2 "$d/root.qcow2"
  cp "$vars" "$d/vars.fd"
  t0=$(now)
  qemu-system-x86_64 -nodefaults -no-user-config -display none -machine q35 -accel tcg -cpu max -m 1024 -smp 2 \
    -drive if=pflash,format=raw,unit=0,readonly=on,file="$code" -drive if=pflash,format=raw,unit=1,file="$d/vars.fd" \
    -drive file="$d/root.qcow2",if=virtio,format=qcow2 -netdev user,id=n0 -device virtio-net-pci,netdev=n0 \
    -chardev file,id=s0,path="$d/serial.log" -serial chardev:s0 </dev/null >/dev/null 2>&1 &
  pid=$!
  bare+=("$(wait_marker "$d/serial.log" "$t0")")
  kill -9 "$pid"; wait "$pid" 2>/dev/null || true

  t0=$(now)
  id=$("$AMIRUN" run-instances --image-id "$ami" --instance-type t3.micro --query 'Instances[0].InstanceId' --output text)
  via+=("$(wait_marker "$AMIRUN_HOME/instances/$id/serial.log" "$t0")")
  kill -9 "$(cat "$AMIRUN_HOME/instances/$id/supervisor.pid")"
done

# Overlay creation vs base size: empty qcow2 bases of 1 GiB and 20 GiB virtual size.
for size in 1 20; do
  qemu-img create -q -f qcow2 "$work/base-$size.qcow2" "${size}G"
  ami_s=$("$AMIRUN" import-image --disk-containers "Url=file://$work/base-$size.qcow2,Format=qcow2" --query ImageId --output text)
  for i in $(seq "$N"); do
    t0=$(now)
    id=$("$AMIRUN" run-instances --image-id "$ami_s" --instance-type t3.nano --query 'Instances[0].InstanceId' --output text)
    t=$(awk -v a="$(now)" -v b="$t0" 'BEGIN { printf "%.3f\n", a - b }')
    kill -9 "$(cat "$AMIRUN_HOME/instances/$id/supervisor.pid")"
    if [ "$size" = 1 ]; then small+=("$t"); else big+=("$t"); fi
  done
done

python3 - "$N" "${bare[*]}" "${via[*]}" "${small[*]}" "${big[*]}" <<'PY'
import statistics, sys
n = sys.argv[1]
bare, via, small, big = ([float(x) for x in a.split()] for a in sys.argv[2:6])
def row(name, xs):
    return f"{name:<38} {statistics.median(xs):8.2f} {min(xs):8.2f} {max(xs):8.2f}"
print(f"tiny x86_64, TCG, OVMF, {n} runs each        p50      min      max   (seconds)")
print(row("bare qemu-system-x86_64 -> userspace", bare))
print(row("amirun run-instances -> userspace", via))
print(f"{'ratio amirun / bare (p50)':<38} {statistics.median(via)/statistics.median(bare):8.2f}")
print()
print(row("run-instances, 1 GiB virtual base", small))
print(row("run-instances, 20 GiB virtual base", big))
print(f"{'ratio 20 GiB / 1 GiB (p50)':<38} {statistics.median(big)/statistics.median(small):8.2f}")
PY
