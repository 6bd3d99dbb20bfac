#!/usr/bin/env bash
# Host setup for ivmm development and CI on Debian 12 (bookworm). Idempotent.
#
# Installs what the lab and the test suite need:
#   - qemu-system-x86 (L1 of the nested-KVM lab, see shared/LAB.md) at the SAME version as
#     qemu-utils. Machines of this kind ship qemu-utils 10.0.2 from bookworm-backports; a plain
#     `apt-get install qemu-system-x86` from bookworm (7.2) would remove qemu-utils (qemu-img),
#     so QEMU is installed from bookworm-backports at the installed qemu-utils version.
#   - acpica-tools (iasl, for ACPI table checks), lz4 (vmlinux extraction), cpio, e2fsprogs,
#     binutils (readelf), gzip.
# When everything is already present it returns in well under a second without touching apt.
# At the end it checks that `qemu-img --version` and `qemu-system-x86_64 --version` agree.
#
# Usage: scripts/setup.sh        (as root, or with sudo available)
#        IVMM_SETUP_FORCE=1 scripts/setup.sh   to run the apt steps even when all is present
set -euo pipefail

log() { printf 'setup.sh: %s\n' "$*" >&2; }
die() {
	printf 'setup.sh: ERROR: %s\n' "$*" >&2
	exit 1
}

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
	command -v sudo >/dev/null || die "not root and no sudo: run scripts/setup.sh as root"
	SUDO=(sudo)
fi

# Commands the scripts and tests need, and the Debian package providing each.
declare -A NEEDED=(
	[qemu-system-x86_64]=qemu-system-x86
	[qemu-img]=qemu-utils
	[iasl]=acpica-tools
	[lz4]=lz4
	[cpio]=cpio
	[mkfs.ext4]=e2fsprogs
	[readelf]=binutils
	[gzip]=gzip
	[dpkg-deb]=dpkg
	[gcc]=gcc     # the hostile-guest test compiles tests/guest/hostile.c statically
	[script]=bsdutils # a pty for the seccomp terminal test
)

qemu_version() { # first "version X.Y.Z" on the first line of `$1 --version`
	"$1" --version 2>/dev/null | head -n1 | sed -n 's/.*version \([0-9][0-9.]*\).*/\1/p'
}

versions_agree() {
	local img sys
	img=$(qemu_version qemu-img)
	sys=$(qemu_version qemu-system-x86_64)
	[ -n "$img" ] && [ "$img" = "$sys" ]
}

backports_configured() {
	grep -rqsE '^[^#]*bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/
}

missing_commands() {
	local cmd
	for cmd in "${!NEEDED[@]}"; do
		command -v "$cmd" >/dev/null 2>&1 || printf '%s\n' "$cmd"
	done
}

# The Debian mirror the machine already uses for bookworm, so backports come from the same one.
debian_mirror() {
	local uri
	uri=$(grep -hsE '^deb +(\[[^]]*\] +)?https?://[^ ]+ +bookworm +' /etc/apt/sources.list \
		/etc/apt/sources.list.d/*.list | head -n1 | sed -E 's/^deb +(\[[^]]*\] +)?([^ ]+).*/\2/')
	if [ -z "$uri" ]; then
		# deb822 format: take the URIs of the stanza whose Suites list bookworm.
		uri=$(awk '
			/^URIs:/ { u = $2 }
			/^Suites:/ { for (i = 2; i <= NF; i++) if ($i == "bookworm") found = u }
			/^$/ { u = "" }
			END { print found }
		' /etc/apt/sources.list.d/*.sources 2>/dev/null)
	fi
	printf '%s\n' "$uri"
}

if [ -z "${IVMM_SETUP_FORCE:-}" ] && [ -z "$(missing_commands)" ] && versions_agree &&
	backports_configured; then
	log "all tools present, QEMU $(qemu_version qemu-system-x86_64) matches qemu-img; nothing to do"
	exit 0
fi

[ -r /etc/debian_version ] || die "this script supports Debian 12 (bookworm) only"
case "$(cut -d. -f1 /etc/debian_version)" in
12 | bookworm*) ;;
*) log "warning: /etc/debian_version is $(cat /etc/debian_version), expected 12.x" ;;
esac

export DEBIAN_FRONTEND=noninteractive

if ! backports_configured; then
	mirror=$(debian_mirror)
	[ -n "$mirror" ] || die "cannot find the bookworm mirror in /etc/apt/sources.list{,.d/} to add bookworm-backports"
	log "adding bookworm-backports from $mirror"
	echo "deb $mirror bookworm-backports main" |
		"${SUDO[@]}" tee /etc/apt/sources.list.d/ivmm-backports.list >/dev/null
fi

log "apt-get update"
"${SUDO[@]}" apt-get update -qq || die "apt-get update failed"

# QEMU: same version for qemu-system-x86 and qemu-utils, from bookworm-backports.
utils_ver=$(dpkg-query -W -f='${db:Status-Abbrev} ${Version}' qemu-utils 2>/dev/null |
	awk '$1 == "ii" { print $2 }')
if [ -n "$utils_ver" ]; then
	log "qemu-utils $utils_ver is installed; installing qemu-system-x86 at the same version"
	qemu_pkgs=("qemu-system-x86=$utils_ver" "qemu-utils=$utils_ver")
else
	log "qemu-utils not installed; installing qemu-system-x86 and qemu-utils from bookworm-backports"
	qemu_pkgs=(qemu-system-x86 qemu-utils)
fi

# Other packages: only those whose command is missing (no upgrades behind the user's back).
others=()
for cmd in $(missing_commands); do
	case "${NEEDED[$cmd]}" in qemu-*) continue ;; esac
	others+=("${NEEDED[$cmd]}")
done

"${SUDO[@]}" apt-get install -y -qq --no-install-recommends -t bookworm-backports \
	"${qemu_pkgs[@]}" ||
	die "installing ${qemu_pkgs[*]} from bookworm-backports failed"
if [ "${#others[@]}" -gt 0 ]; then
	"${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${others[@]}" ||
		die "installing ${others[*]} failed"
fi

missing=$(missing_commands)
[ -z "$missing" ] || die "still missing after install: $(echo "$missing" | tr '\n' ' ')"

img=$(qemu-img --version | head -n1)
sys=$(qemu-system-x86_64 --version | head -n1)
versions_agree || die "QEMU versions disagree: '$img' vs '$sys'"
log "ok: $sys / $img"
