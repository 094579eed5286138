# shellcheck shell=bash
# The "debian-12" image: a Debian bookworm cloud image made with mmdebstrap
# (systemd, cloud-init with NoCloud and Ec2, openssh-server,
# qemu-guest-agent, the cloud kernel, growroot), GPT with an ESP; GRUB on
# the ESP (UEFI) and in a BIOS boot partition (x86_64) boots /vmlinuz and
# /initrd.img from the root partition, so kernel updates inside the guest
# are picked up.  Sourced by scripts/build-images.sh.
#
# ROOT: this whole builder runs as root (mmdebstrap in root mode, unpacking
# the root filesystem with its owners, binfmt for a foreign architecture).

DEB12_SUITE=bookworm
DEB12_VARIANT=minbase
DEB12_ESP_MIB=127
DEB12_DISK_MIB=2048
DEB12_MIRRORS=(
	"deb http://deb.debian.org/debian bookworm main"
	"deb http://deb.debian.org/debian bookworm-updates main"
	"deb http://deb.debian.org/debian-security bookworm-security main"
)

deb12_include() { # DEBARCH
	echo "linux-image-cloud-$1,initramfs-tools,systemd-sysv,udev,dbus,cloud-init,cloud-guest-utils,cloud-initramfs-growroot,openssh-server,qemu-guest-agent,ifupdown,isc-dhcp-client,sudo,netbase,ca-certificates,procps,iproute2,less,curl"
}

# ensure_binfmt DEBARCH: foreign maintainer scripts run through qemu-user.
ensure_binfmt() {
	local a=$1
	[ "$a" = "$(dpkg --print-architecture)" ] && return 0
	if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
		# ROOT: mounting binfmt_misc.
		mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || die "cannot mount binfmt_misc"
	fi
	if ! arch-test "$a" >/dev/null 2>&1; then
		# ROOT: registering qemu-user-static with binfmt_misc.
		update-binfmts --enable >/dev/null 2>&1 || true
		arch-test "$a" >/dev/null 2>&1 || die "cannot run $a binaries (qemu-user-static + binfmt_misc)"
	fi
}

# deb12_rootfs ARCH -> path of the cached mmdebstrap tarball, made when
# missing.  Keyed on the mmdebstrap inputs and the versions apt knows of
# the included packages; the run takes ~1 min for x86_64 and 10-20 min for
# arm64 (maintainer scripts under emulation).
deb12_rootfs() {
	local arch=$1 a inc key p v
	a=$(deb_arch "$arch")
	inc=$(deb12_include "$a")
	key=$(
		{
			echo "$DEB12_SUITE $DEB12_VARIANT $a $inc"
			printf '%s\n' "${DEB12_MIRRORS[@]}"
			for p in ${inc//,/ }; do
				v=$(pkg_version "$p:$a") || exit 1
				echo "$p=$v"
			done
			echo "mmdebstrap=$(dpkg-query -W -f='${Version}' mmdebstrap)"
		} | sha256sum | cut -c1-16
	) || exit 1
	local tar="$BUILD/cache/debian-12-rootfs-$arch-$key.tar"
	if [ -f "$tar" ] && [ -s "$tar" ]; then
		echo "$tar"
		return 0
	fi
	step "mmdebstrap $DEB12_SUITE $a (cached as ${tar##*/})"
	ensure_binfmt "$a"
	local t0 tmp="$BUILD/cache/.tmp.$$.${tar##*/}"
	t0=$(now)
	# ROOT: mmdebstrap (root mode).
	mmdebstrap --quiet --format=tar --variant="$DEB12_VARIANT" --arch="$a" --components=main --include="$inc" \
		"$DEB12_SUITE" "$tmp" "${DEB12_MIRRORS[@]}" >&2 ||
		{ rm -rf "$tmp"; die "mmdebstrap failed (a package could not be fetched or installed)"; }
	mv -f "$tmp" "$tar"
	# Older tarballs of this architecture are superseded.
	find "$BUILD/cache" -maxdepth 1 -name "debian-12-rootfs-$arch-*.tar" ! -name "${tar##*/}" -delete
	log "[$CURRENT] mmdebstrap took $(elapsed "$t0") s"
	echo "$tar"
}

build_debian12() {
	local arch=$1 name="debian-12-$1" a start
	a=$(deb_arch "$arch")
	CURRENT=$name
	start=$(now)
	[ "$(id -u)" -eq 0 ] || die "debian-12 is built as root (mmdebstrap, root filesystem owners): run with sudo"
	step "resolve package versions"
	[ "$a" = "$(dpkg --print-architecture)" ] || ensure_foreign_arch "$a"
	local grubpkgs
	if [ "$arch" = x86_64 ]; then
		grubpkgs="grub-efi-amd64-bin:amd64=$(pkg_version grub-efi-amd64-bin:amd64)
grub-pc-bin:amd64=$(pkg_version grub-pc-bin:amd64)"
	else
		grubpkgs="grub-efi-arm64-bin:arm64=$(pkg_version grub-efi-arm64-bin:arm64)"
	fi
	local tar
	tar=$(deb12_rootfs "$arch") || exit 1
	local files key
	mapfile -t files < <(find "$REPO/images/debian-12" -type f | LC_ALL=C sort)
	key=$(
		{
			echo "arch=$arch"
			echo "rootfs=${tar##*/}"
			echo "$grubpkgs"
			echo "grub-common=$(dpkg-query -W -f='${Version}' grub-common 2>/dev/null)"
			hash_inputs "$REPO/scripts/build-images.sh" "$REPO/scripts/images/common.sh" \
				"$REPO/scripts/images/debian-12.sh" "${files[@]}"
		} | sha256sum | cut -d' ' -f1
	)
	if is_current "$name" "$key"; then
		log "[$name] up to date: $BUILD/$name.qcow2"
		return 0
	fi
	log "[$name] building from ${tar##*/}"
	WORK=$(mktemp -d "$BUILD/work/$name.XXXXXX")

	step "download GRUB packages"
	local line p v d debs=()
	while IFS= read -r line; do
		p=${line%%=*}
		v=${line#*=}
		d=$(fetch_deb "${p%%:*}" "${p#*:}" "$v") || exit 1
		debs+=("$d")
	done <<<"$grubpkgs"
	mkdir -p "$WORK/pkg"
	for d in "${debs[@]}"; do dpkg-deb -x "$d" "$WORK/pkg" || die "dpkg-deb -x $d failed"; done

	step "unpack the root filesystem"
	local rd="$WORK/rootfs"
	mkdir -p "$rd"
	# ROOT: keeps the files' owners.
	tar -C "$rd" --numeric-owner --xattrs --xattrs-include='*' -xpf "$tar" || die "unpacking $tar failed"
	[ -e "$rd/vmlinuz" ] && [ -e "$rd/initrd.img" ] || die "no /vmlinuz or /initrd.img in the root filesystem"

	step "configure the image"
	local root_uuid esp_volid esp_uuid console
	root_uuid=$(uuid_from "amirun-$name-root")
	esp_volid=$(fat_volid "amirun-$name-esp")
	esp_uuid="${esp_volid:0:4}-${esp_volid:4:4}"
	case "$arch" in
	x86_64) console="console=tty0 console=ttyS0,115200" ;;
	arm64) console="console=tty0 console=ttyAMA0,115200" ;;
	esac
	cp -a "$REPO/images/debian-12/rootfs/." "$rd/"
	cat >"$rd/etc/fstab" <<-EOF
		# <file system>  <mount point>  <type>  <options>  <dump>  <pass>
		UUID=$root_uuid  /  ext4  rw,discard,errors=remount-ro  0  1
		UUID=$esp_uuid  /boot/efi  vfat  umask=0077,nofail  0  2
	EOF
	mkdir -p "$rd/boot/efi"
	# What a vendor publishes: no host keys, no machine id, no passwords,
	# no package lists, no logs, no resolver of the build host.
	rm -f "$rd"/etc/ssh/ssh_host_*
	: >"$rd/etc/machine-id"
	rm -f "$rd/var/lib/dbus/machine-id"
	: >"$rd/etc/resolv.conf"
	grep -q '^root:[*!]' "$rd/etc/shadow" || die "root has a password in /etc/shadow"
	find "$rd/var/lib/apt/lists" -type f ! -name lock -delete
	rm -f "$rd"/var/cache/apt/*.bin "$rd"/var/cache/apt/archives/*.deb
	find "$rd/var/log" -type f -exec truncate -s 0 {} +
	rm -rf "$rd/var/lib/cloud" "$rd/tmp/"* "$rd/var/tmp/"*
	echo "$name $(date -u +%Y-%m-%d)" >"$rd/etc/amirun-release"

	step "make the root filesystem"
	local root_mib=$((DEB12_DISK_MIB - 4 - DEB12_ESP_MIB - 1))
	mke2fs -q -t ext4 -L debian-root -U "$root_uuid" -d "$rd" \
		"$WORK/root.img" "${root_mib}M" >/dev/null || die "mke2fs failed"
	rm -rf "$rd"

	step "build GRUB and the EFI system partition"
	local efi_name grub_fmt
	case "$arch" in
	x86_64) efi_name=BOOTX64.EFI grub_fmt=x86_64-efi ;;
	arm64) efi_name=BOOTAA64.EFI grub_fmt=arm64-efi ;;
	esac
	cat >"$WORK/grub.cfg" <<-EOF
		set timeout=0
		set gfxpayload=keep
		search --no-floppy --fs-uuid --set=root $root_uuid
		linux /vmlinuz root=UUID=$root_uuid ro $console
		initrd /initrd.img
		boot
	EOF
	local esp="$WORK/esp"
	mkdir -p "$esp/EFI/BOOT"
	grub_image "$grub_fmt" "$WORK/pkg/usr/lib/grub/$grub_fmt" "$esp/EFI/BOOT/$efi_name" "$WORK/grub.cfg"
	local core="" bootimg=""
	if [ "$arch" = x86_64 ]; then
		core="$WORK/core.img"
		bootimg="$WORK/pkg/usr/lib/grub/i386-pc/boot.img"
		grub_image i386-pc "$WORK/pkg/usr/lib/grub/i386-pc" "$core" "$WORK/grub.cfg"
	fi
	make_esp "$WORK/esp.img" "$DEB12_ESP_MIB" "$esp_volid" "$esp"

	step "assemble the GPT disk"
	make_disk "$WORK/disk.raw" "$arch" "$WORK/esp.img" "$WORK/root.img" \
		"$DEB12_ESP_MIB" "$root_mib" "$core" "$bootimg"
	rm -f "$WORK/root.img" "$WORK/esp.img"

	finish_image "$name" "$WORK/disk.raw" yes "$key" "$start"
	rm -rf "$WORK"
	WORK=
}
