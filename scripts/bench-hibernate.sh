#!/usr/bin/env bash
# Hibernation and memory benchmark, in one run, baselines side by side:
#  1. debian-12 (t3.micro, TCG): cold boot to ssh answering, then
#     stop --hibernate, then start (resume) to ssh answering; their ratio;
#  2. a tiny t3.nano guest's QEMU RSS (VmRSS once the guest printed its
#     ready marker, and again 5 s later) and time to ready, with QEMU's
#     defaults (AMIRUN_MEMORY_SAVINGS=off: QEMU's default TCG translation
#     cache and no free-page-reporting balloon, the old behaviour) and
#     with amirun's savings (the default), N times each, alternating;
#  3. how many of 16 tiny guests launched at once reach ready, and how long
#     all of them take.
# The machine is shared: the load average is printed with the results.
#
#   scripts/bench-hibernate.sh [N]      (default N=3)
# Images come from scripts/build-images.sh, which honours AMIRUN_BUILD_DIR
# and AMIRUN_HOME (the catalog it writes) as always.
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-3}"
READY='amirun-tiny: ready'
GUESTS=16

scripts/build-images.sh tiny x86_64 >/dev/null
catalog="${AMIRUN_HOME:-${XDG_DATA_HOME:-$HOME/.local/share}/amirun}/catalog.d/local-images.json"
cargo build --quiet --bin amirun
AMIRUN="$PWD/target/debug/amirun"
work=$(mktemp -d)
export AMIRUN_HOME="$work/home" AMIRUN_RUNTIME_DIR="$work/run" AMIRUN_STOP_TIMEOUT=5
# Guests reach nothing but amirun's own IMDS and ssh forward on loopback.
export AMIRUN_GUEST_OUTBOUND=none
cleanup() {
	for p in "$AMIRUN_HOME"/instances/*/supervisor.pid; do [ -f "$p" ] && kill -9 "$(cat "$p")" 2>/dev/null || true; done
	rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$AMIRUN_HOME/catalog.d"
cp "$catalog" "$AMIRUN_HOME/catalog.d/"
ami_of() { "$AMIRUN" describe-images --filters "Name=name,Values=$1" --query 'Images[0].ImageId' --output text; }
tiny=$(ami_of amirun/tiny-x86_64)
debian=$(ami_of debian-12-x86_64-local)
load_before=$(cut -d' ' -f1-3 /proc/loadavg)

now() { date +%s.%N; }
since() { awk -v a="$(now)" -v b="$1" 'BEGIN { printf "%.2f\n", a - b }'; }
# until_true SECONDS CMD... -> runs CMD until it succeeds, at most SECONDS
until_true() {
	local deadline=$((SECONDS + $1))
	shift
	until "$@" >/dev/null 2>&1; do
		[ "$SECONDS" -lt "$deadline" ] || { echo "timed out: $*" >&2; return 1; }
		sleep 0.2
	done
}
state_is() { [ "$("$AMIRUN" describe-instances --instance-ids "$1" --query 'Reservations[0].Instances[0].State.Name' --output text)" = "$2" ]; }
ssh_answers() { timeout 10 "$AMIRUN" ssh "$1" -- true; }
cloud_init_done() { grep -qs 'Cloud-init v\. .* finished at' "$AMIRUN_HOME/instances/$1/serial.log"; }
ready() { grep -qs "$READY" "$AMIRUN_HOME/instances/$1/serial.log"; }
qemu_pid() { pgrep -f "qemu-system.*guest=$1" | head -1; }
rss_mb() { awk '/^VmRSS/ { printf "%.0f\n", $2 / 1024 }' "/proc/$1/status"; }
stop_now() { kill -9 "$(cat "$AMIRUN_HOME/instances/$1/supervisor.pid")" 2>/dev/null || true; }

# 1. debian-12: cold boot vs resume, to ssh answering.
"$AMIRUN" create-key-pair --key-name bench --key-type ed25519 >/dev/null
t0=$(now)
deb=$("$AMIRUN" run-instances --image-id "$debian" --instance-type t3.micro --key-name bench \
	--hibernation-options Configured=true --query 'Instances[0].InstanceId' --output text)
until_true 900 ssh_answers "$deb"
cold=$(since "$t0")
# Let first-boot work finish (cloud-init restarts sshd on the way), so the
# guest that hibernates is a settled one.
until_true 900 cloud_init_done "$deb"
t0=$(now)
"$AMIRUN" stop-instances --instance-ids "$deb" --hibernate >/dev/null
until_true 300 state_is "$deb" stopped
save=$(since "$t0")
state_mb=$(du -m "$AMIRUN_HOME/volumes/$deb.hibernation" | cut -f1)
t0=$(now)
"$AMIRUN" start-instances --instance-ids "$deb" >/dev/null
until_true 300 ssh_answers "$deb"
resume=$(since "$t0")
"$AMIRUN" terminate-instances --instance-ids "$deb" >/dev/null

# 2. tiny t3.nano: QEMU RSS and time to ready, QEMU's defaults vs savings.
old_rss=() new_rss=() old_rss5=() new_rss5=() old_t=() new_t=()
for _ in $(seq "$N"); do
	for mode in old new; do
		if [ "$mode" = old ]; then savings=off; else savings=on; fi
		t0=$(now)
		id=$(AMIRUN_MEMORY_SAVINGS=$savings "$AMIRUN" run-instances --image-id "$tiny" --instance-type t3.nano \
			--query 'Instances[0].InstanceId' --output text)
		until_true 600 ready "$id"
		t=$(since "$t0")
		p=$(qemu_pid "$id")
		r=$(rss_mb "$p")
		sleep 5 # not synchronisation: the second reading is meant to be 5 s later
		r5=$(rss_mb "$p")
		stop_now "$id"
		if [ "$mode" = old ]; then
			old_rss+=("$r") old_rss5+=("$r5") old_t+=("$t")
		else
			new_rss+=("$r") new_rss5+=("$r5") new_t+=("$t")
		fi
	done
done

# 3. 16 tiny guests at once.
t0=$(now)
mapfile -t many < <("$AMIRUN" run-instances --image-id "$tiny" --instance-type t3.nano --count "$GUESTS" \
	--query 'Instances[].InstanceId' --output text | tr '\t' '\n')
all_ready() { local id; for id in "${many[@]}"; do ready "$id" || return 1; done; }
until_true 1800 all_ready || true
all_t=$(since "$t0")
n_ready=0 sum_rss=0
for id in "${many[@]}"; do
	if ready "$id"; then n_ready=$((n_ready + 1)); fi
	p=$(qemu_pid "$id") && [ -n "$p" ] && sum_rss=$((sum_rss + $(rss_mb "$p")))
done
for id in "${many[@]}"; do stop_now "$id"; done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

python3 - "$cold" "$save" "$resume" "$state_mb" "${old_rss[*]}" "${new_rss[*]}" "${old_t[*]}" "${new_t[*]}" \
	"$n_ready" "$GUESTS" "$all_t" "$sum_rss" "$load_before" "$load_after" "$N" "${old_rss5[*]}" "${new_rss5[*]}" <<'PY'
import statistics, sys
a = sys.argv[1:]
cold, save, resume, state_mb = float(a[0]), float(a[1]), float(a[2]), a[3]
old_rss, new_rss, old_t, new_t = ([float(x) for x in s.split()] for s in a[4:8])
n_ready, guests, all_t, sum_rss, load_before, load_after, n = a[8], a[9], float(a[10]), a[11], a[12], a[13], a[14]
old_rss5, new_rss5 = ([float(x) for x in s.split()] for s in a[15:17])
p50 = statistics.median
print(f"{'debian-12 t3.micro, TCG':<44} {'seconds':>9}")
print(f"{'cold boot -> ssh answers':<44} {cold:9.2f}")
print(f"{'stop --hibernate -> stopped':<44} {save:9.2f}   (state {state_mb} MB)")
print(f"{'start (resume) -> ssh answers':<44} {resume:9.2f}")
print(f"{'ratio cold / resume':<44} {cold / resume:9.1f}x")
print()
print(f"{'tiny t3.nano, TCG, ' + n + ' runs each, p50 (min-max)':<44} {'old: QEMU defaults':>22} {'new: savings':>22}")
fmt = lambda xs, d: f"{p50(xs):.{d}f} ({min(xs):.{d}f}-{max(xs):.{d}f})"
print(f"{'QEMU VmRSS at ready, MB':<44} {fmt(old_rss, 0):>22} {fmt(new_rss, 0):>22}")
print(f"{'QEMU VmRSS 5 s after ready, MB':<44} {fmt(old_rss5, 0):>22} {fmt(new_rss5, 0):>22}")
print(f"{'launch -> ready, s':<44} {fmt(old_t, 1):>22} {fmt(new_t, 1):>22}")
print(f"{'RSS new / old (p50, at ready)':<44} {p50(new_rss) / p50(old_rss):22.2f}")
print(f"{'time new / old (p50)':<44} {p50(new_t) / p50(old_t):22.2f}")
print()
print(f"{guests} tiny t3.nano guests at once: {n_ready} reached ready in {all_t:.1f} s; QEMU RSS total {sum_rss} MB")
print(f"load average before: {load_before}; after: {load_after}")
PY
