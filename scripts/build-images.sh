#!/usr/bin/env bash
# Build amirun's local images from Debian packages and list them in a
# catalog file that amirun picks up.
#
#   scripts/build-images.sh [tiny|debian-12|all] [x86_64|arm64|all]
#
# Defaults: tiny all.  Builds what is missing; reuses an image when its
# inputs (these scripts, images/<name>/ files, package versions as apt
# knows them) have not changed.  Results:
#   images:  ${AMIRUN_BUILD_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/amirun/images}/<name>-<arch>.qcow2
#            (+ <name>-<arch>.stamp: input key, sha256, size, build time)
#   catalog: ${AMIRUN_HOME:-${XDG_DATA_HOME:-$HOME/.local/share}/amirun}/catalog.d/local-images.json
# See images/README.md.
#
# Root is needed only for: installing missing host packages and adding the
# arm64 dpkg architecture (apt-get/dpkg, through sudo when not root), and
# for debian-12 (mmdebstrap, unpacking a root filesystem with its owners,
# registering binfmt for arm64).  tiny needs no root once the packages are
# installed.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${AMIRUN_BUILD_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/amirun/images}
AMIRUN_HOME_DIR=${AMIRUN_HOME:-${XDG_DATA_HOME:-$HOME/.local/share}/amirun}
CATALOG="$AMIRUN_HOME_DIR/catalog.d/local-images.json"
CURRENT=setup
STEP=start
WORK=

# shellcheck source=scripts/images/common.sh
. "$REPO/scripts/images/common.sh"
# shellcheck source=scripts/images/tiny.sh
. "$REPO/scripts/images/tiny.sh"
# shellcheck source=scripts/images/debian-12.sh
. "$REPO/scripts/images/debian-12.sh"

usage() {
	echo "usage: $0 [tiny|debian-12|all] [x86_64|arm64|all]" >&2
	exit 2
}

which_images=${1:-tiny}
which_arch=${2:-all}
case "$which_images" in tiny) images=(tiny) ;; debian-12) images=(debian-12) ;; all) images=(tiny debian-12) ;; -h | --help) usage ;; *) usage ;; esac
case "$which_arch" in x86_64 | amd64) arches=(x86_64) ;; arm64 | aarch64) arches=(arm64) ;; all) arches=(x86_64 arm64) ;; *) usage ;; esac
[ $# -le 2 ] || usage

on_exit() {
	local rc=$?
	if [ -n "${WORK:-}" ] && [ -d "$WORK" ]; then rm -rf "$WORK"; fi
	rm -f "$BUILD"/.*.tmp.$$ "$CATALOG.tmp.$$" 2>/dev/null || true
	rm -rf "$BUILD"/cache/.tmp.$$.* 2>/dev/null || true
	if [ $rc -ne 0 ]; then
		echo "build-images: FAILED (exit $rc) in [$CURRENT] step: $STEP" >&2
	fi
	exit $rc
}
trap on_exit EXIT
trap 'exit 130' INT TERM

T0=$(now)
mkdir -p "$BUILD/work" "$BUILD/cache"
# One build at a time per build directory.
exec 9>"$BUILD/.lock"
if ! flock -n 9; then
	log "another build-images.sh holds $BUILD/.lock, waiting"
	flock 9
fi

step "host packages"
# To build: qemu-utils … xorriso.  To boot what is built (tests, amirun):
# qemu-system-*, the firmware, xorriso for seeds, openssh-client.
host_pkgs=(qemu-utils dosfstools mtools fdisk e2fsprogs cpio gzip kmod grub-common xorriso
	qemu-system-x86 qemu-system-arm ovmf qemu-efi-aarch64 openssh-client)
for img in "${images[@]}"; do
	if [ "$img" = debian-12 ]; then
		host_pkgs+=(mmdebstrap)
		for a in "${arches[@]}"; do
			if [ "$(deb_arch "$a")" != "$(dpkg --print-architecture)" ]; then
				host_pkgs+=(qemu-user-static binfmt-support arch-test)
			fi
		done
	fi
done
ensure_host_packages "${host_pkgs[@]}"
require_tools qemu-img mkfs.vfat mcopy sfdisk mke2fs cpio gzip modinfo grub-mkimage dpkg-deb apt-get sha256sum flock

# Leftovers of interrupted builds.
rm -rf "${BUILD:?}"/work/* 2>/dev/null || true
find "$BUILD" -maxdepth 1 -name '.*.tmp.*' -delete 2>/dev/null || true
find "$BUILD/cache" -maxdepth 1 -name '.tmp.*' -exec rm -rf {} + 2>/dev/null || true

for img in "${images[@]}"; do
	for a in "${arches[@]}"; do
		case "$img" in
		tiny) build_tiny "$a" ;;
		debian-12) build_debian12 "$a" ;;
		esac
	done
done

# ---------------------------------------------------------------- catalog
CURRENT=catalog
step "write catalog $CATALOG"

json_entry() { # key name description arch boot_mode rdt file sha image min_gib
	cat <<-EOF
		    {
		      "key": "$1",
		      "name": "$2",
		      "description": "$3",
		      "owner_alias": "amirun",
		      "architecture": "$4",
		      "boot_mode": "$5",
		      "root_device_type": "$6",
		      "root_device_name": "/dev/xvda",
		      "source": { "url": "file://$7", "sha256": "$8", "format": "qcow2" },
		      "min_size_gib": ${10},
		      "tags": { "amirun:image": "$9" }
		    }
	EOF
}

entries=()
for a in x86_64 arm64; do
	bm=uefi
	[ "$a" = x86_64 ] && bm=uefi-preferred
	n="tiny-$a"
	if image_valid "$n"; then
		f="$BUILD/$n.qcow2"
		s=$(stamp_get "$n" sha256)
		d="amirun tiny: Debian cloud kernel + busybox, $a"
		entries+=("$(json_entry "amirun-tiny-$a" "amirun/tiny-$a" "$d" "$a" "$bm" ebs "$f" "$s" tiny 1)")
		entries+=("$(json_entry "amirun-tiny-$a-instance-store" "amirun/tiny-$a-instance-store" \
			"$d, instance-store" "$a" "$bm" instance-store "$f" "$s" tiny 1)")
		k="$BUILD/$n.kernel"
		if [ -f "$k" ] && [ -f "$BUILD/$n.vmlinuz" ] && [ -f "$BUILD/$n.initrd" ]; then
			# The same disk, booted by QEMU straight into the kernel (no firmware, no GRUB).
			kernel_entry=$(json_entry "amirun-tiny-$a-kernel" "amirun/tiny-$a-kernel" \
				"$d, direct kernel boot" "$a" "$bm" ebs "$f" "$s" tiny 1)
			kernel_fields=$(printf '      "kernel": { "url": "file://%s", "sha256": "%s" },\n      "ramdisk": { "url": "file://%s", "sha256": "%s" },\n      "kernel_cmdline": "%s",' \
				"$BUILD/$n.vmlinuz" "$(sed -n 's/^kernel_sha256=//p' "$k")" \
				"$BUILD/$n.initrd" "$(sed -n 's/^initrd_sha256=//p' "$k")" \
				"$(sed -n 's/^cmdline=//p' "$k")")
			entries+=("$(printf '%s\n' "$kernel_entry" | awk -v f="$kernel_fields" '{ print } /"source":/ { print f }')")
		fi
	fi
	n="debian-12-$a"
	if image_valid "$n"; then
		f="$BUILD/$n.qcow2"
		s=$(stamp_get "$n" sha256)
		d="Debian 12 (bookworm) cloud image built locally from Debian packages, $a"
		entries+=("$(json_entry "debian-12-$a-local" "debian-12-$a-local" "$d" "$a" "$bm" ebs "$f" "$s" debian-12 2)")
	fi
done

mkdir -p "$(dirname "$CATALOG")"
tmp="$CATALOG.tmp.$$"
{
	echo '{'
	echo '  "format_version": 1,'
	echo '  "images": ['
	for i in "${!entries[@]}"; do
		if [ "$i" -gt 0 ]; then echo '    ,'; fi
		printf '%s\n' "${entries[$i]}"
	done
	echo '  ]'
	echo '}'
} >"$tmp"
mv -f "$tmp" "$CATALOG"

CURRENT="done"
STEP=report
echo
echo "Images in $BUILD:"
for img in tiny debian-12; do
	for a in x86_64 arm64; do
		n="$img-$a"
		image_valid "$n" || continue
		printf '  %-40s %s  %s MiB\n' "$BUILD/$n.qcow2" "$(stamp_get "$n" sha256)" \
			"$(($(stamp_get "$n" size) / 1048576))"
	done
done
echo "Catalog: $CATALOG (${#entries[@]} images)"
echo "Done in $(elapsed "$T0") s"
