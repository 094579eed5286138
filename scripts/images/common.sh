# shellcheck shell=bash
# Helpers shared by the image builders; sourced by scripts/build-images.sh.
# Nothing here needs root except the apt-get calls in ensure_host_packages
# and ensure_foreign_arch (marked ROOT).

log() { printf '%s\n' "build-images: $*" >&2; }
die() { printf '%s\n' "build-images: ERROR in step '${STEP:-?}': $*" >&2; exit 1; }
step() { STEP="$*"; log "[$CURRENT] $*"; }

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# Run a command as root: directly when we are root, else through sudo.
as_root() {
	if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
		die "'$*' needs root (run as root or install sudo)"
	fi
}

# Debian architecture name for an amirun/EC2 architecture.
deb_arch() {
	case "$1" in
	x86_64) echo amd64 ;;
	arm64) echo arm64 ;;
	*) die "unknown architecture $1" ;;
	esac
}

# ensure_host_packages PKG...: install the Debian packages that are missing.
# Idempotent: apt-get runs only when something is missing.  qemu-system-*
# are installed before (and together with) qemu-utils because installing
# them removes a newer qemu-utils (see shared/HOST.md).
ensure_host_packages() {
	local missing=() p
	for p in "$@"; do
		if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
			missing+=("$p")
		fi
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	local qsys=() rest=()
	for p in "${missing[@]}"; do
		case "$p" in qemu-system-*) qsys+=("$p") ;; *) rest+=("$p") ;; esac
	done
	log "installing host packages: ${missing[*]}"
	# ROOT: installing host packages.
	as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null ||
		die "apt-get update failed"
	if [ ${#qsys[@]} -gt 0 ]; then
		as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
			"${qsys[@]}" qemu-utils >/dev/null || die "apt-get install ${qsys[*]} failed"
	fi
	if [ ${#rest[@]} -gt 0 ]; then
		as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
			"${rest[@]}" >/dev/null || die "apt-get install ${rest[*]} failed"
	fi
	qemu-img --version >/dev/null 2>&1 || die "qemu-img is missing after installing packages"
}

# require_tools CMD...: fail loudly when a tool is missing.
require_tools() {
	local t
	for t in "$@"; do
		command -v "$t" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin:/sbin" command -v "$t" >/dev/null 2>&1 ||
			die "required tool '$t' is missing"
	done
}

# ensure_foreign_arch DEBARCH: make apt know packages of DEBARCH (for
# `apt-get download`); nothing of that architecture is installed.
ensure_foreign_arch() {
	local a=$1
	[ "$a" = "$(dpkg --print-architecture)" ] && return 0
	if ! dpkg --print-foreign-architectures | grep -qx "$a"; then
		log "adding dpkg architecture $a (for apt-get download)"
		# ROOT: dpkg --add-architecture and apt-get update.
		as_root dpkg --add-architecture "$a" || die "dpkg --add-architecture $a failed"
		as_root apt-get update -q >/dev/null || die "apt-get update failed"
	fi
}

# apt_show PKG:ARCH -> `apt-cache show --no-all-versions` of the candidate.
# apt-cache takes over a second per call here, so answers are cached per
# state of apt's package lists (a later `apt-get update` invalidates them).
apt_show() {
	local sig dir f
	sig=$(stat -c '%n %s %Y' /var/lib/apt/lists/*Packages* /etc/apt/sources.list \
		/etc/apt/sources.list.d/* 2>/dev/null | sha256sum | cut -c1-16)
	dir="$BUILD/cache/apt/$sig"
	f="$dir/$1"
	if [ ! -s "$f" ]; then
		mkdir -p "$dir"
		apt-cache show --no-all-versions "$1" >"$f.tmp.$$" 2>/dev/null || true
		# Architecture: all packages are not found as name:arch.
		if ! grep -q '^Version: ' "$f.tmp.$$" && [ "${1%%:*}" != "$1" ]; then
			apt-cache show --no-all-versions "${1%%:*}" >"$f.tmp.$$" 2>/dev/null || true
		fi
		if ! grep -q '^Version: ' "$f.tmp.$$" && [ -z "${APT_REFRESHED:-}" ]; then
			# The package lists may be missing or stale: refresh once.
			APT_REFRESHED=1
			# ROOT: apt-get update.
			as_root apt-get update -q >/dev/null || die "apt-get update failed"
			rm -f "$f.tmp.$$"
			apt_show "$1"
			return
		fi
		grep -q '^Version: ' "$f.tmp.$$" || { rm -f "$f.tmp.$$"; die "package $1 is not known to apt (apt-get update? network?)"; }
		mv -f "$f.tmp.$$" "$f"
	fi
	cat "$f"
}

# pkg_version PKG:ARCH -> candidate version known to apt (no network).
pkg_version() {
	local out
	out=$(apt_show "$1") || exit 1
	sed -n 's/^Version: //p' <<<"$out" | head -n1
}

# kernel_pkg DEBARCH -> the versioned linux-image package the cloud
# metapackage depends on, e.g. linux-image-6.1.0-56-cloud-amd64.
kernel_pkg() {
	local out k
	out=$(apt_show "linux-image-cloud-$1:$1") || exit 1
	k=$(sed -n 's/^Depends: //p' <<<"$out" | head -n1 | tr ',' '\n' |
		sed -n 's/^ *\(linux-image-[^ ]*\).*/\1/p' | head -n1)
	[ -n "$k" ] || die "cannot resolve linux-image-cloud-$1"
	echo "$k"
}

# fetch_deb PKG DEBARCH VERSION -> path of the .deb in the download cache.
fetch_deb() {
	local pkg=$1 a=$2 v=$3 dir="$BUILD/cache/debs" f
	mkdir -p "$dir"
	f="$dir/${pkg}_${v//:/%3a}_$a.deb"
	if [ ! -s "$f" ]; then
		local tmp
		tmp=$(mktemp -d "$dir/.dl.XXXXXX")
		(cd "$tmp" && apt-get download -q -o APT::Sandbox::User=root "$pkg:$a=$v" >/dev/null 2>"$tmp/err") ||
			{ cat "$tmp/err" >&2; rm -rf "$tmp"; die "cannot download package $pkg:$a=$v"; }
		local got
		got=$(ls "$tmp"/*.deb 2>/dev/null | head -n1)
		[ -n "$got" ] || { rm -rf "$tmp"; die "apt-get download gave no file for $pkg:$a=$v"; }
		mv "$got" "$f"
		rm -rf "$tmp"
	fi
	echo "$f"
}

# uuid_from STRING -> a stable UUID derived from STRING.
uuid_from() {
	local h
	h=$(printf '%s' "$1" | sha256sum | cut -c1-32)
	echo "${h:0:8}-${h:8:4}-4${h:13:3}-a${h:17:3}-${h:20:12}"
}

# fat_volid STRING -> a stable 8-hex-digit FAT volume id.
fat_volid() { printf '%s' "$1" | sha256sum | cut -c1-8 | tr a-f A-F; }

# le_bytes VALUE NBYTES -> printf escape string of VALUE little-endian.
le_bytes() {
	local v=$1 n=$2 i s=
	for ((i = 0; i < n; i++)); do
		s+=$(printf '\\x%02x' $((v & 255)))
		v=$((v >> 8))
	done
	printf '%s' "$s"
}

# patch_bytes FILE OFFSET VALUE NBYTES: write VALUE little-endian at OFFSET.
patch_bytes() {
	# shellcheck disable=SC2059
	printf "$(le_bytes "$3" "$4")" | dd of="$1" bs=1 seek="$2" conv=notrunc status=none
}

# Partition layout shared by the images (like Debian's cloud images):
#   p14 BIOS boot  1 MiB .. 4 MiB  (x86_64 only: grub i386-pc core.img)
#   p15 ESP        4 MiB .. 4 MiB + ESP_MIB
#   p1  root       after the ESP, to the end of the disk (growable)
BIOS_START=2048
BIOS_SECTORS=6144

# make_disk OUT ARCH ESP_IMG ROOT_IMG ESP_MIB ROOT_MIB [CORE_IMG BOOT_IMG]
# Writes a raw GPT disk without loop devices or root.
make_disk() {
	local out=$1 arch=$2 esp=$3 root=$4 esp_mib=$5 root_mib=$6 core=${7:-} bootimg=${8:-}
	local esp_start=$((4 * 2048)) esp_sectors=$((esp_mib * 2048))
	local root_start=$((esp_start + esp_sectors)) root_sectors=$((root_mib * 2048))
	local total=$((root_start + root_sectors + 2048))
	local roottype
	case "$arch" in
	x86_64) roottype=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709 ;;
	arm64) roottype=B921B045-1DF0-41C3-AF44-4C6F280D3FAE ;;
	esac
	rm -f "$out"
	truncate -s $((total * 512)) "$out"
	{
		echo "label: gpt"
		echo "unit: sectors"
		echo "first-lba: 2048"
		# Fixed identifiers (derived from the image name): reproducible disks.
		echo "label-id: $(uuid_from "$CURRENT-gpt")"
		echo "${out}1 : start=$root_start, size=$root_sectors, type=$roottype, uuid=$(uuid_from "$CURRENT-p1"), name=root"
		if [ -n "$core" ]; then
			echo "${out}14 : start=$BIOS_START, size=$BIOS_SECTORS, type=21686148-6449-6E6F-744E-656564454649, uuid=$(uuid_from "$CURRENT-p14"), name=bios"
		fi
		echo "${out}15 : start=$esp_start, size=$esp_sectors, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, uuid=$(uuid_from "$CURRENT-p15"), name=esp"
	} | sfdisk --no-reread --no-tell-kernel -q "$out" >/dev/null || die "sfdisk failed on $out"
	dd if="$esp" of="$out" bs=1M seek=$((esp_start / 2048)) conv=notrunc,sparse status=none || die "writing ESP"
	dd if="$root" of="$out" bs=1M seek=$((root_start / 2048)) conv=notrunc,sparse status=none || die "writing root"
	if [ -n "$core" ]; then
		# GRUB for legacy BIOS, installed by hand (what grub-bios-setup does):
		# core.img goes into the BIOS boot partition, its first sector's
		# blocklist points at the rest of it, and the MBR boot code (the
		# first 440 bytes of boot.img, keeping the protective MBR's table)
		# points at core.img's first sector.
		local core_sectors
		core_sectors=$((($(stat -c %s "$core") + 511) / 512))
		[ "$core_sectors" -le "$BIOS_SECTORS" ] || die "core.img ($core_sectors sectors) does not fit the BIOS boot partition"
		local c
		c=$(mktemp "$WORK/core.XXXXXX")
		cp "$core" "$c"
		patch_bytes "$c" 500 $((BIOS_START + 1)) 8          # blocklist start
		patch_bytes "$c" 508 $((core_sectors - 1)) 2        # blocklist length
		dd if="$c" of="$out" bs=512 seek=$BIOS_START conv=notrunc status=none || die "writing core.img"
		dd if="$bootimg" of="$out" bs=440 count=1 conv=notrunc status=none || die "writing boot.img"
		patch_bytes "$out" $((0x5c)) $BIOS_START 8           # kernel sector
		rm -f "$c"
	fi
}

# make_esp OUT SIZE_MIB VOLID DIR: FAT ESP holding the contents of DIR.
make_esp() {
	local out=$1 mib=$2 volid=$3 dir=$4
	rm -f "$out"
	mkfs.vfat -n ESP -i "$volid" -C "$out" $((mib * 1024)) >/dev/null || die "mkfs.vfat failed"
	MTOOLS_SKIP_CHECK=1 mcopy -o -s -i "$out" "$dir"/* ::/ || die "mcopy to ESP failed"
}

# grub_image FORMAT MODDIR OUT CFG: GRUB core image with CFG embedded and
# the modules it needs built in (no grub.cfg file is read at boot).
grub_image() {
	local fmt=$1 moddir=$2 out=$3 cfg=$4 mods
	mods="part_gpt part_msdos fat ext2 search search_fs_uuid search_label linux gzio echo test normal configfile"
	case "$fmt" in
	i386-pc) mods="$mods biosdisk" ;;
	x86_64-efi) mods="$mods efi_gop" ;;
	arm64-efi) ;;
	esac
	# shellcheck disable=SC2086
	grub-mkimage -d "$moddir" -O "$fmt" -o "$out" -c "$cfg" -p /boot/grub $mods ||
		die "grub-mkimage -O $fmt failed"
}

# file_sha256 FILE
file_sha256() { sha256sum "$1" | cut -d' ' -f1; }

# hash_inputs FILE... : one hash over the contents and names of files.
hash_inputs() {
	local f
	for f in "$@"; do
		printf '%s\n' "${f#"$REPO"/}"
		sha256sum <"$f"
	done | sha256sum | cut -d' ' -f1
}

# finish_image NAME RAW COMPRESS KEY START: convert to qcow2 (temp name +
# rename) and write the stamp last, so that an interrupted build never
# leaves an image that a later run would take for finished.
finish_image() {
	local name=$1 raw=$2 compress=$3 key=$4 start=$5
	local out="$BUILD/$name.qcow2" tmp="$BUILD/.$name.qcow2.tmp.$$"
	step "qemu-img convert to $out"
	local c=()
	[ "$compress" = yes ] && c=(-c)
	qemu-img convert -q "${c[@]}" -f raw -O qcow2 -o cluster_size=65536 "$raw" "$tmp" || die "qemu-img convert failed"
	rm -f "$BUILD/$name.stamp"
	mv -f "$tmp" "$out"
	local sum size
	sum=$(file_sha256 "$out")
	size=$(stat -c %s "$out")
	{
		echo "key=$key"
		echo "sha256=$sum"
		echo "size=$size"
		echo "mtime=$(stat -c %Y "$out")"
		echo "virtual_size=$(stat -c %s "$raw")"
		echo "build_seconds=$(elapsed "$start")"
		echo "built_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
	} >"$BUILD/.$name.stamp.tmp.$$"
	mv -f "$BUILD/.$name.stamp.tmp.$$" "$BUILD/$name.stamp"
	log "built $out in $(elapsed "$start") s"
}

# stamp_get NAME FIELD
stamp_get() { sed -n "s/^$2=//p" "$BUILD/$1.stamp" 2>/dev/null | head -n1; }

# image_valid NAME -> 0 when the image exists and matches its stamp
# (size and mtime, cheap; a full hash check is done by is_current).
image_valid() {
	local f="$BUILD/$1.qcow2"
	[ -f "$f" ] && [ -f "$BUILD/$1.stamp" ] &&
		[ "$(stat -c %s "$f")" = "$(stamp_get "$1" size)" ] &&
		[ "$(stat -c %Y "$f")" = "$(stamp_get "$1" mtime)" ]
}

# is_current NAME KEY -> 0 when the built image has these inputs and its
# content still has the recorded sha256.
is_current() {
	local name=$1 key=$2
	image_valid "$name" || return 1
	[ "$(stamp_get "$name" key)" = "$key" ] || return 1
	[ "$(file_sha256 "$BUILD/$name.qcow2")" = "$(stamp_get "$name" sha256)" ] || {
		log "$name.qcow2 changed since it was built: rebuilding"
		return 1
	}
}
