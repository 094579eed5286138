# shellcheck shell=bash
# The "tiny" image: Debian's cloud kernel, a busybox initramfs that switches
# root into a small ext4 root partition, GRUB on an ESP (UEFI) and in a BIOS
# boot partition (x86_64).  Sourced by scripts/build-images.sh.
# No step here needs root.

TINY_ESP_MIB=40
TINY_ROOT_MIB=128

# Kernel modules the tiny image loads at boot (with their dependencies).
# virtio_balloon gives the guest's free memory back to the host: QEMU's
# balloon has free-page-reporting on, and the kernel (CONFIG_PAGE_REPORTING)
# reports free blocks, which QEMU then drops from its RSS. It loads first, so
# that its first report (2 s after it starts) comes as early as it can.
tiny_modules() {
	local m="virtio_pci virtio_balloon virtio_blk virtio_net virtio_rng virtio_scsi sr_mod isofs vfat nls_ascii nls_cp437 nls_utf8 evdev"
	[ "$1" = x86_64 ] && m="$m button"
	echo "$m"
}

tiny_packages() { # ARCH -> "pkg:debarch=version" lines
	local a k
	a=$(deb_arch "$1")
	k=$(kernel_pkg "$a")
	echo "$k:$a=$(pkg_version "$k:$a")"
	echo "busybox-static:$a=$(pkg_version "busybox-static:$a")"
	if [ "$1" = x86_64 ]; then
		echo "grub-efi-amd64-bin:amd64=$(pkg_version grub-efi-amd64-bin:amd64)"
		echo "grub-pc-bin:amd64=$(pkg_version grub-pc-bin:amd64)"
	else
		echo "grub-efi-arm64-bin:arm64=$(pkg_version grub-efi-arm64-bin:arm64)"
	fi
}

tiny_key() { # ARCH PACKAGES
	local files
	mapfile -t files < <(find "$REPO/images/tiny" -type f | LC_ALL=C sort)
	{
		echo "arch=$1"
		echo "$2"
		echo "grub-common=$(dpkg-query -W -f='${Version}' grub-common 2>/dev/null)"
		echo "inputs=$(hash_inputs "$REPO/scripts/build-images.sh" "$REPO/scripts/images/common.sh" \
			"$REPO/scripts/images/tiny.sh" "${files[@]}")"
		# executable or not matters too (git keeps only that bit)
		for f in "${files[@]}"; do
			if [ -x "$f" ]; then echo "x ${f#"$REPO"/}"; else echo "- ${f#"$REPO"/}"; fi
		done
	} | sha256sum | cut -d' ' -f1
}

# resolve_modules MODDIR NAME... -> module file names (without .ko) in load
# order, dependencies first.
resolve_modules() {
	local moddir=$1
	shift
	declare -A path=() seen=()
	local f n
	while IFS= read -r f; do
		n=$(basename "$f" .ko)
		path[${n//-/_}]=$f
	done < <(find "$moddir" -name '*.ko')
	local order=()
	visit() {
		local m=${1//-/_} d
		[ -n "${seen[$m]:-}" ] && return 0
		seen[$m]=1
		[ -n "${path[$m]:-}" ] || die "kernel module $m not found"
		for d in $(modinfo -F depends "${path[$m]}" | tr ',' ' '); do visit "$d"; done
		order+=("${path[$m]}")
	}
	for n in "$@"; do visit "$n"; done
	printf '%s\n' "${order[@]}"
}

# busybox_links BUSYBOX DESTROOT: create applet symlinks.  The applet list
# comes from running the busybox binary (natively or through binfmt); the
# host's busybox of the same version is the fallback.
busybox_links() {
	local bb=$1 dest=$2 list
	list=$("$bb" --list-full 2>/dev/null) || list=""
	if [ -z "$list" ]; then
		local ha hv hdeb hdir
		ha=$(dpkg --print-architecture)
		hv=$(pkg_version "busybox-static:$ha")
		hdeb=$(fetch_deb busybox-static "$ha" "$hv")
		hdir=$(mktemp -d "$WORK/bbhost.XXXXXX")
		dpkg-deb -x "$hdeb" "$hdir"
		list=$("$hdir/bin/busybox" --list-full) || die "cannot list busybox applets"
	fi
	local a rel
	for a in $list; do
		[ -e "$dest/$a" ] && continue
		mkdir -p "$dest/$(dirname "$a")"
		case "$a" in
		bin/*) rel=busybox ;;
		sbin/*) rel=../bin/busybox ;;
		usr/bin/* | usr/sbin/*) rel=../../bin/busybox ;;
		*) continue ;;
		esac
		ln -s "$rel" "$dest/$a"
	done
}

build_tiny() {
	local arch=$1 name="tiny-$1" a start
	a=$(deb_arch "$arch")
	# shellcheck disable=SC2034 # read by common.sh (step, log)
	CURRENT=$name
	start=$(now)
	step "resolve package versions"
	[ "$a" = "$(dpkg --print-architecture)" ] || ensure_foreign_arch "$a"
	local pkgs key
	pkgs=$(tiny_packages "$arch")
	key=$(tiny_key "$arch" "$pkgs")
	if is_current "$name" "$key"; then
		log "[$name] up to date: $BUILD/$name.qcow2"
		return 0
	fi
	log "[$name] building (inputs: $(echo "$pkgs" | tr '\n' ' '))"
	WORK=$(mktemp -d "$BUILD/work/$name.XXXXXX")

	step "download packages"
	local line p v d debs=()
	while IFS= read -r line; do
		p=${line%%=*}
		v=${line#*=}
		d=$(fetch_deb "${p%%:*}" "${p#*:}" "$v") || exit 1
		debs+=("$d")
	done <<<"$pkgs"

	step "extract packages"
	mkdir -p "$WORK/pkg"
	for d in "${debs[@]}"; do dpkg-deb -x "$d" "$WORK/pkg" || die "dpkg-deb -x $d failed"; done
	local kver vmlinuz
	vmlinuz=$(ls "$WORK"/pkg/boot/vmlinuz-* 2>/dev/null | head -n1)
	[ -n "$vmlinuz" ] || die "no kernel in the kernel package"
	kver=${vmlinuz##*/vmlinuz-}
	local bb="$WORK/pkg/bin/busybox"
	[ -x "$bb" ] || die "no busybox in busybox-static"

	local console root_uuid esp_volid esp_uuid efi_name grub_fmt
	case "$arch" in
	x86_64) console=ttyS0,115200 efi_name=BOOTX64.EFI grub_fmt=x86_64-efi ;;
	arm64) console=ttyAMA0 efi_name=BOOTAA64.EFI grub_fmt=arm64-efi ;;
	esac
	root_uuid=$(uuid_from "amirun-$name-root")
	esp_volid=$(fat_volid "amirun-$name-esp")
	esp_uuid="${esp_volid:0:4}-${esp_volid:4:4}"
	local cmdline="console=$console quiet no_timer_check root=UUID=$root_uuid"

	step "build initramfs"
	local ird="$WORK/initramfs"
	mkdir -p "$ird"/{bin,sbin,dev,proc,sys,newroot,lib/modules,usr/bin,usr/sbin}
	cp "$bb" "$ird/bin/busybox"
	busybox_links "$bb" "$ird"
	ln -sf busybox "$ird/bin/sh"
	install -m 755 "$REPO/images/tiny/init" "$ird/init"
	local moddir="$WORK/pkg/lib/modules/$kver" mf
	# shellcheck disable=SC2046
	resolve_modules "$moddir" $(tiny_modules "$arch") >"$WORK/modules" || die "resolving kernel modules"
	: >"$ird/lib/modules/load-order"
	while IFS= read -r mf; do
		cp "$mf" "$ird/lib/modules/"
		basename "$mf" .ko >>"$ird/lib/modules/load-order"
	done <"$WORK/modules"
	# /dev/console lets the kernel give init a console before /init mounts
	# devtmpfs; without root, /init opens it itself.
	[ "$(id -u)" -eq 0 ] && mknod -m 600 "$ird/dev/console" c 5 1
	(cd "$ird" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet -R 0:0) |
		gzip -9 -n >"$WORK/initrd.img" || die "cpio/gzip of the initramfs failed"

	step "build root filesystem"
	local rd="$WORK/rootfs"
	mkdir -p "$rd"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,run,tmp,root,mnt,var/lib/amirun-tiny}
	cp -a "$REPO/images/tiny/rootfs/." "$rd/"
	cp "$bb" "$rd/bin/busybox"
	busybox_links "$bb" "$rd"
	ln -sf busybox "$rd/bin/sh"
	ln -sf /proc/mounts "$rd/etc/mtab"
	chmod 640 "$rd/etc/shadow"
	chmod 1777 "$rd/tmp"
	chmod 700 "$rd/root"
	echo 0 >"$rd/var/lib/amirun-tiny/boot-count"
	echo "$name $(date -u +%Y-%m-%d) kernel $kver" >"$rd/etc/amirun-release"
	rm -f "$WORK/root.img"
	mke2fs -q -t ext4 -L tiny-root -U "$root_uuid" -E root_owner=0:0 -d "$rd" \
		"$WORK/root.img" "${TINY_ROOT_MIB}M" >/dev/null || die "mke2fs failed"

	step "build GRUB and the EFI system partition"
	local esp="$WORK/esp"
	mkdir -p "$esp/EFI/BOOT" "$esp/boot"
	cp "$vmlinuz" "$esp/boot/vmlinuz"
	cp "$WORK/initrd.img" "$esp/boot/initrd.img"
	cat >"$WORK/grub.cfg" <<-EOF
		set timeout=0
		set gfxpayload=keep
		search --no-floppy --fs-uuid --set=root $esp_uuid
		linux /boot/vmlinuz $cmdline
		initrd /boot/initrd.img
		boot
	EOF
	grub_image "$grub_fmt" "$WORK/pkg/usr/lib/grub/$grub_fmt" "$esp/EFI/BOOT/$efi_name" "$WORK/grub.cfg"
	local core="" bootimg=""
	if [ "$arch" = x86_64 ]; then
		core="$WORK/core.img"
		bootimg="$WORK/pkg/usr/lib/grub/i386-pc/boot.img"
		grub_image i386-pc "$WORK/pkg/usr/lib/grub/i386-pc" "$core" "$WORK/grub.cfg"
	fi
	make_esp "$WORK/esp.img" "$TINY_ESP_MIB" "$esp_volid" "$esp"

	step "assemble the GPT disk"
	make_disk "$WORK/disk.raw" "$arch" "$WORK/esp.img" "$WORK/root.img" \
		"$TINY_ESP_MIB" "$TINY_ROOT_MIB" "$core" "$bootimg"

	# The kernel and initramfs also go beside the image, for the catalog's
	# direct-kernel-boot AMI (amirun/tiny-ARCH-kernel); written before the
	# image's stamp, which is what marks a build complete.
	step "export kernel and initramfs for direct kernel boot"
	cp "$vmlinuz" "$BUILD/.$name.vmlinuz.tmp.$$" && mv -f "$BUILD/.$name.vmlinuz.tmp.$$" "$BUILD/$name.vmlinuz" ||
		die "cannot write $BUILD/$name.vmlinuz"
	cp "$WORK/initrd.img" "$BUILD/.$name.initrd.tmp.$$" && mv -f "$BUILD/.$name.initrd.tmp.$$" "$BUILD/$name.initrd" ||
		die "cannot write $BUILD/$name.initrd"
	{
		echo "kernel_sha256=$(file_sha256 "$BUILD/$name.vmlinuz")"
		echo "initrd_sha256=$(file_sha256 "$BUILD/$name.initrd")"
		echo "cmdline=$cmdline"
	} >"$BUILD/.$name.kernel.tmp.$$" && mv -f "$BUILD/.$name.kernel.tmp.$$" "$BUILD/$name.kernel" ||
		die "cannot write $BUILD/$name.kernel"

	finish_image "$name" "$WORK/disk.raw" no "$key" "$start"
	rm -rf "$WORK"
	WORK=
}
