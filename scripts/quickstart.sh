#!/usr/bin/env bash
# One command from a fresh clone to a shell in a VM: installs the host packages ivmm's tooling
# needs (scripts/setup.sh), fetches the default guest (Debian's cloud kernel and a busybox
# initramfs, scripts/fetch-guest.sh), builds ivmm, and boots the guest with its console on this
# terminal. On hosts whose /dev/kvm cannot run stock kernels (kvm_pvm) it runs inside the
# nested-KVM lab (scripts/lab); on hosts with hardware KVM, directly.
#
#   scripts/quickstart.sh [extra ivmm run arguments, e.g. --vcpus 2 --mem 1G]
#
# In the guest shell, `poweroff -f` ends the VM; Ctrl-A x quits at once.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

scripts/setup.sh
scripts/fetch-guest.sh
exec scripts/lab run -- run --kernel {bzimage} --initrd {initrd} \
    --cmdline "console=ttyS0 quiet" "$@"
