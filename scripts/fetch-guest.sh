#!/usr/bin/env bash
# Guest fixtures for ivmm's tests and the nested-KVM lab (see shared/LAB.md).
#
# Downloads (apt-get download, nothing is installed) Debian's linux-image-cloud-amd64 kernel
# (the metapackage resolved to its real linux-image-*-cloud-amd64 package) and busybox-static,
# and builds, under target/:
#   guest/bzImage              the kernel as shipped (bzImage, lz4 payload)
#   guest/vmlinux              ELF extracted from the bzImage's lz4 payload (has the PVH note)
#   guest/modules/<kver>/      the kernel's modules directory
#   guest/busybox              busybox-static
#   guest/initrd.img           L2 guest initramfs (newc cpio, uncompressed): see l2_init below
#   lab/l1-base.cpio           L1 lab initramfs: busybox, kvm + virtio modules, /init
#   lab/guest.ext4             read-only disk for L1 (label ivmm-guest) holding bzImage, vmlinux
#                              and initrd.img; L1 mounts it on /guest. A disk is read on demand,
#                              where initramfs contents are all unpacked at every L1 boot.
# The L1 initramfs runs /lab/run.sh, which the test harness supplies in a second, per-run cpio.
#
# Results are cached: a stamp (hash of this script) makes re-running instant. The .debs are
# kept in target/guest/debs. Usage: scripts/fetch-guest.sh [--force]
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=$ROOT/target/guest
LAB=$ROOT/target/lab
STAMP=$OUT/.stamp

# Modules the L2 guest loads at boot, in this order (dependencies are added before a module
# from modules.dep). Built-in ones are skipped. "?" marks modules that may be absent.
L2_MODULES=(virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_mmio
	virtio_blk failover net_failover virtio_net virtio_console virtio-rng
	'?pvpanic' '?pvpanic-mmio' '?pvpanic-pci' '?button' '?evdev')
# Modules shipped in the L2 initramfs but not loaded: `modprobe NAME` in a guest command.
L2_EXTRA_MODULES=('?ext4' '?vsock' '?vmw_vsock_virtio_transport')
# Modules L1 loads: KVM (order from shared/LAB.md), virtio disks for extra lab disks, and
# networking pieces for network tests inside L1 (TAP, veth, bridge, nftables masquerade).
L1_MODULES=(irqbypass kvm kvm-amd virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev
	virtio_pci virtio_blk '?tun' '?veth' '?bridge'
	'?nf_tables' '?nft_chain_nat' '?nft_masq')

log() { printf 'fetch-guest.sh: %s\n' "$*" >&2; }
die() {
	printf 'fetch-guest.sh: ERROR: %s\n' "$*" >&2
	exit 1
}

for cmd in apt-get apt-cache dpkg-deb lz4 readelf cpio mkfs.ext4 sha256sum grep awk; do
	command -v "$cmd" >/dev/null || die "missing '$cmd': run scripts/setup.sh first"
done

key=$(sha256sum "${BASH_SOURCE[0]}" | cut -d' ' -f1)
outputs=("$OUT/bzImage" "$OUT/vmlinux" "$OUT/busybox" "$OUT/initrd.img" "$LAB/l1-base.cpio"
	"$LAB/guest.ext4")
if [ "${1:-}" != "--force" ] && [ -f "$STAMP" ] && [ "$(head -n1 "$STAMP")" = "$key" ]; then
	ok=1
	for f in "${outputs[@]}"; do [ -s "$f" ] || ok=0; done
	if [ "$ok" = 1 ]; then
		log "up to date ($(sed -n 2p "$STAMP"))"
		exit 0
	fi
fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/ivmm-fetch.XXXXXX")
chmod 0755 "$TMP"
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$OUT/debs" "$LAB"

# --- download -------------------------------------------------------------------------------
resolve_kernel() {
	apt-cache show --no-all-versions linux-image-cloud-amd64 2>/dev/null |
		sed -n 's/^Depends:.*\(linux-image-[^ ,]*-cloud-amd64\).*/\1/p' | head -n1
}
kpkg=$(resolve_kernel)
if [ -z "$kpkg" ] && [ "$(id -u)" -eq 0 ]; then
	log "apt lists do not know linux-image-cloud-amd64: apt-get update"
	apt-get update -qq || die "apt-get update failed"
	kpkg=$(resolve_kernel)
fi
[ -n "$kpkg" ] || die "cannot resolve linux-image-cloud-amd64 (apt lists missing? run scripts/setup.sh)"
log "kernel package: $kpkg"

fetch_deb() { # package -> path of its .deb in the cache (downloaded once)
	local pkg=$1 ver file
	ver=$(apt-cache show --no-all-versions "$pkg" 2>/dev/null | sed -n 's/^Version: //p' | head -n1)
	[ -n "$ver" ] || die "package '$pkg' not found by apt-cache"
	local cached=("$OUT/debs/${pkg}_"*"${ver#*:}"_amd64.deb)
	file=${cached[0]}
	if [ ! -f "$file" ]; then
		mkdir -p "$TMP/dl"
		chmod 0777 "$TMP/dl" # apt drops privileges to _apt for downloads
		(cd "$TMP/dl" && apt-get download -q "$pkg=$ver" >&2) || die "apt-get download $pkg=$ver failed"
		local got=("$TMP/dl/${pkg}_"*.deb)
		file=${got[0]}
		[ -f "$file" ] || die "apt-get download $pkg left no .deb"
		mv "$file" "$OUT/debs/"
		file="$OUT/debs/$(basename "$file")"
	fi
	printf '%s\n' "$file"
}
kdeb=$(fetch_deb "$kpkg")
bdeb=$(fetch_deb busybox-static)

# --- extract --------------------------------------------------------------------------------
dpkg-deb -x "$kdeb" "$TMP/k" || die "dpkg-deb -x $kdeb failed"
dpkg-deb -x "$bdeb" "$TMP/b" || die "dpkg-deb -x $bdeb failed"
kver=$(find "$TMP/k/lib/modules" -mindepth 1 -maxdepth 1 -printf '%f\n' | head -n1)
if [ -z "$kver" ] || [ ! -f "$TMP/k/boot/vmlinuz-$kver" ]; then
	die "no vmlinuz/modules in $kdeb"
fi
log "kernel version: $kver"

# The .deb has no modules.dep (the package's postinst makes it): busybox's depmod writes one.
"$TMP/b/bin/busybox" depmod -b "$TMP/k" "$kver" || die "depmod for $kver failed"
rm -rf "$OUT/modules" && mkdir -p "$OUT/modules"
mv "$TMP/k/lib/modules/$kver" "$OUT/modules/$kver"
cp "$TMP/k/boot/vmlinuz-$kver" "$OUT/bzImage"
cp "$TMP/k/boot/config-$kver" "$OUT/config"
cp "$TMP/b/bin/busybox" "$OUT/busybox"
MODDIR=$OUT/modules/$kver

# vmlinux: the bzImage payload is a legacy lz4 frame (magic 02 21 4c 18). lz4 stops with an
# error at the bytes after the frame, so success is judged by the ELF and its PVH note.
extract_vmlinux() {
	local offsets off
	offsets=$(grep -obUaP '\x02\x21\x4c\x18' "$OUT/bzImage" | cut -d: -f1)
	for off in $offsets; do
		tail -c +$((off + 1)) "$OUT/bzImage" | lz4 -dc >"$TMP/vmlinux" 2>/dev/null || true
		if readelf -h "$TMP/vmlinux" >/dev/null 2>&1; then
			mv "$TMP/vmlinux" "$OUT/vmlinux"
			return 0
		fi
	done
	return 1
}
extract_vmlinux || die "no lz4-compressed ELF found in $OUT/bzImage"
# XEN_ELFNOTE_PHYS32_ENTRY = 18 (0x12): the PVH entry point.
readelf -n "$OUT/vmlinux" | grep -qE 'Xen[[:space:]]+0x[0-9a-f]+[[:space:]]+Unknown note type: \(0x00000012\)' ||
	die "$OUT/vmlinux has no Xen PVH ELF note (XEN_ELFNOTE_PHYS32_ENTRY)"

# --- modules --------------------------------------------------------------------------------
# Prints the modules.dep path of module $1 ("-" and "_" are the same), or nothing.
mod_path() {
	awk -F: -v want="${1//-/_}" '{
		b = $1; sub(/.*\//, "", b); sub(/\.ko(\.[a-z]+)?$/, "", b); gsub(/-/, "_", b)
		if (b == want) { print $1; exit }
	}' "$MODDIR/modules.dep"
}
is_builtin() {
	awk -v want="${1//-/_}" '{
		b = $0; sub(/.*\//, "", b); sub(/\.ko$/, "", b); gsub(/-/, "_", b)
		if (b == want) { found = 1; exit }
	} END { exit !found }' "$MODDIR/modules.builtin"
}
mod_deps() { awk -F': *' -v p="$1" '$1 == p { print $2; exit }' "$MODDIR/modules.dep"; }

# Appends module paths to the global ORDER, dependencies first.
declare -A SEEN
ORDER=()
add_module_path() {
	local p=$1 d
	[ -z "${SEEN[$p]:-}" ] || return 0
	SEEN[$p]=1
	for d in $(mod_deps "$p"); do add_module_path "$d"; done
	case "$p" in *.ko) ;; *) die "module $p is compressed; busybox insmod needs plain .ko" ;; esac
	ORDER+=("$p")
}
# resolve_modules NAME... : fills ORDER; "?NAME" may be missing.
resolve_modules() {
	local name optional p
	SEEN=()
	ORDER=()
	for name in "$@"; do
		optional=
		case "$name" in "?"*) optional=1 name=${name#?} ;; esac
		p=$(mod_path "$name")
		if [ -n "$p" ]; then
			add_module_path "$p"
		elif is_builtin "$name"; then
			log "  $name: built in"
		elif [ -n "$optional" ]; then
			log "  $name: not in this kernel (optional)"
		else
			die "module $name is neither a module nor built in ($MODDIR)"
		fi
	done
}

# copy_modules ROOT LISTFILE: copies ORDER's modules to ROOT/lib/modules/$kver and appends
# their paths to ROOT/LISTFILE; writes a modules.dep covering every module copied so far.
copy_modules() {
	local root=$1 list=$2 p
	mkdir -p "$root/lib/modules/$kver"
	if [ -n "$list" ]; then
		mkdir -p "$(dirname "$root/$list")"
		touch "$root/$list"
	fi
	for p in "${ORDER[@]}"; do
		mkdir -p "$root/lib/modules/$kver/$(dirname "$p")"
		cp "$MODDIR/$p" "$root/lib/modules/$kver/$p"
		[ -z "$list" ] || echo "$p" >>"$root/$list"
	done
	(cd "$root/lib/modules/$kver" && find . -name '*.ko' | sed 's|^\./||' | sort) >"$TMP/have"
	awk -F': *' 'NR == FNR { have[$0] = 1; next } ($1 in have)' "$TMP/have" "$MODDIR/modules.dep" \
		>"$root/lib/modules/$kver/modules.dep"
}

# --- initramfs helpers ----------------------------------------------------------------------
busybox_root() { # ROOT: directory tree with busybox and its applet links
	local root=$1 applet
	mkdir -p "$root"/{bin,sbin,dev,proc,sys,tmp,run,etc,root}
	cp "$OUT/busybox" "$root/bin/busybox"
	for applet in $("$OUT/busybox" --list); do
		[ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
	done
	ln -sf ../bin/busybox "$root/sbin/init"
}
make_cpio() { # DIR OUTFILE
	(cd "$1" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) >"$2.tmp" ||
		die "cpio of $1 failed"
	mv "$2.tmp" "$2"
}

# --- L2 guest initramfs ---------------------------------------------------------------------
log "L2 modules:"
R2=$TMP/l2
busybox_root "$R2"
resolve_modules "${L2_MODULES[@]}"
copy_modules "$R2" etc/ivmm/boot-modules
resolve_modules "${L2_EXTRA_MODULES[@]}"
copy_modules "$R2" ""

# busybox acpid runs /etc/acpi/PWRF/00000080 on an ACPI power-button press.
mkdir -p "$R2/etc/acpi/PWRF"
printf '#!/bin/sh\necho IVMM-GUEST-POWER-BUTTON >/dev/console\nexec poweroff -f\n' >"$R2/etc/acpi/PWRF/00000080"
chmod 0755 "$R2/etc/acpi/PWRF/00000080"

cat >"$R2/init" <<'EOF'
#!/bin/sh
# ivmm L2 test guest init (generated by scripts/fetch-guest.sh).
# Kernel cmdline: ivmm.cmd=BASE64 runs that shell command, prints IVMM-CMD-EXIT=<rc> and powers
# off; without it, an interactive shell on the console. ivmm.exit=reboot ends with `reboot -f`
# instead of `poweroff -f`.
export PATH=/bin:/sbin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
kver=$(uname -r)
while read -r m; do
	insmod "/lib/modules/$kver/$m" || echo "IVMM-GUEST-WARN: insmod $m failed"
done </etc/ivmm/boot-modules
if command -v acpid >/dev/null; then
	acpid -c /etc/acpi -l /run/acpid.log
fi

cmd= finish=poweroff
for w in $(cat /proc/cmdline); do
	case "$w" in
	ivmm.cmd=*) cmd=${w#ivmm.cmd=} ;;
	ivmm.exit=reboot) finish=reboot ;;
	esac
done

echo "IVMM-GUEST-INIT"
if [ -n "$cmd" ]; then
	if echo "$cmd" | base64 -d >/run/ivmm-cmd 2>/dev/null; then
		echo "IVMM-CMD-BEGIN"
		sh -c "$(cat /run/ivmm-cmd)"
		rc=$?
	else
		echo "IVMM-GUEST-WARN: ivmm.cmd is not valid base64"
		rc=254
	fi
	echo "IVMM-CMD-EXIT=$rc"
else
	setsid cttyhack sh
fi
sync
$finish -f
EOF
chmod 0755 "$R2/init"
make_cpio "$R2" "$OUT/initrd.img"

# --- L1 lab initramfs -----------------------------------------------------------------------
log "L1 modules:"
R1=$TMP/l1
busybox_root "$R1"
resolve_modules "${L1_MODULES[@]}"
copy_modules "$R1" etc/lab/boot-modules
mkdir -p "$R1/guest" "$R1/lab"

cat >"$R1/init" <<'EOF'
#!/bin/sh
# ivmm lab L1 init (generated by scripts/fetch-guest.sh): loads stock kvm + kvm_amd on QEMU's
# emulated SVM, then runs /lab/run.sh (from the per-run cpio) and prints LAB-EXIT=<rc>.
# L2 artifacts: /guest/bzImage, /guest/vmlinux, /guest/initrd.img from the disk labelled
# ivmm-guest (mounted read-only).
export PATH=/bin:/sbin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm /dev/net
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
echo "LAB-L1-INIT"
kver=$(uname -r)
while read -r m; do
	insmod "/lib/modules/$kver/$m" || echo "LAB-WARN: insmod $m failed"
done </etc/lab/boot-modules
# Kernel warnings (e.g. KVM's "Unhandled WRMSR") would mix with the L2 console: errors only.
dmesg -n 3
if [ ! -c /dev/kvm ]; then
	echo "LAB-ERROR: no /dev/kvm in L1 (kvm_amd not loaded?)"
	dmesg | grep -iE 'kvm|svm' | tail -n 20
	echo "LAB-EXIT=125"
	poweroff -f
fi
# The guest disk: virtio_blk probes it while loading; give the device node a moment.
guestdev=
i=0
while [ -z "$guestdev" ] && [ "$i" -lt 50 ]; do
	guestdev=$(findfs LABEL=ivmm-guest 2>/dev/null)
	[ -n "$guestdev" ] || sleep 0.1
	i=$((i + 1))
done
if [ -z "$guestdev" ] || ! mount -t ext4 -o ro "$guestdev" /guest; then
	echo "LAB-ERROR: no guest disk (ext4 LABEL=ivmm-guest) to mount on /guest"
	echo "LAB-EXIT=124"
	poweroff -f
fi
echo "LAB-KVM-READY"
if [ -x /lab/run.sh ]; then
	/lab/run.sh
	rc=$?
else
	echo "LAB-ERROR: no /lab/run.sh (per-run cpio missing)"
	rc=126
fi
echo "LAB-EXIT=$rc"
sync
poweroff -f
EOF
chmod 0755 "$R1/init"
make_cpio "$R1" "$LAB/l1-base.cpio"

# --- L1 guest disk --------------------------------------------------------------------------
RD=$TMP/disk
mkdir -p "$RD"
cp "$OUT/bzImage" "$OUT/vmlinux" "$OUT/initrd.img" "$RD/"
size_mib=$(($(du -sm "$RD" | cut -f1) * 11 / 10 + 8))
rm -f "$LAB/guest.ext4"
mkfs.ext4 -q -F -L ivmm-guest -m 0 -O ^has_journal -E root_owner=0:0 -d "$RD" \
	"$LAB/guest.ext4" "${size_mib}M" >/dev/null || die "mkfs.ext4 of $LAB/guest.ext4 failed"
rm -f "$LAB/l1-vmlinux.cpio" # replaced by the guest disk

printf '%s\n%s %s\n' "$key" "$kpkg" "$(basename "$bdeb")" >"$STAMP"
log "done: $(du -h "$OUT/initrd.img" "$LAB/l1-base.cpio" "$LAB/guest.ext4" | tr '\t\n' ' ')"
