#!/bin/sh
# Seed corpora: fuzz/make_corpus.sh [TARGET...] (default: every target) fills
# fuzz/corpus/TARGET.
# - qcow2_open: made by qemu-img/qemu-io (the oracle): small images covering
#   every cluster size class, compat level, refcount width, lazy refcounts,
#   preallocation, backing file names and compressed clusters.
# - the others: the committed seeds in fuzz/seeds/TARGET (written by
#   `cargo run --manifest-path fuzz/Cargo.toml --bin make_seeds -- fuzz/seeds`);
#   kernel_image also gets the first 64 KiB of a real kernel when one is at
#   $IVMM_GUEST_KERNEL (default: target/guest/bzImage, the lab's guest kernel).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
[ $# -gt 0 ] || set -- qcow2_open virtio_blk_request virtio_net_tx_rx virtio_pci_transport \
	serial_16550 kernel_image nat_packets

qcow2_open() {
	out=$1
	tmp=$(mktemp -d)
	n=0
	for opts in cluster_size=512 cluster_size=4k,refcount_bits=1 cluster_size=64k,compat=0.10 \
	            cluster_size=64k,lazy_refcounts=on,refcount_bits=64 cluster_size=4k,preallocation=metadata; do
		n=$((n + 1))
		qemu-img create -q -f qcow2 -o "$opts" "$tmp/$n.qcow2" 256k
		qemu-io -c 'write -P 7 0 5k' -c 'write -z 64k 4k' "$tmp/$n.qcow2" >/dev/null
		cp "$tmp/$n.qcow2" "$out/seed-$n"
	done
	qemu-img create -q -f qcow2 -u -b base.raw -F raw "$tmp/ov.qcow2" 128k
	cp "$tmp/ov.qcow2" "$out/seed-backing"
	qemu-img convert -c -O qcow2 -o cluster_size=4k "$tmp/1.qcow2" "$tmp/c.qcow2"
	cp "$tmp/c.qcow2" "$out/seed-compressed"
	rm -rf "$tmp"
}

for target in "$@"; do
	out=$here/corpus/$target
	mkdir -p "$out"
	case $target in
	qcow2_open) qcow2_open "$out" ;;
	*)
		[ -d "$here/seeds/$target" ] || { echo "no seeds for $target" >&2; exit 1; }
		cp "$here/seeds/$target"/* "$out/"
		kernel=${IVMM_GUEST_KERNEL:-$here/../target/guest/bzImage}
		if [ "$target" = kernel_image ] && [ -f "$kernel" ]; then
			head -c 65536 "$kernel" >"$out/local-kernel-64k"
		fi
		;;
	esac
	echo "wrote $(ls "$out" | wc -l) seeds to $out"
done
