#!/bin/sh
# Seed corpus for qcow2_open, made by qemu-img/qemu-io (the oracle): small
# images covering every cluster size class, compat level, refcount width,
# lazy refcounts, preallocation, backing file names and compressed clusters.
set -eu
out="$(dirname "$0")/corpus/qcow2_open"
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
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
echo "wrote $(ls "$out" | wc -l) seeds to $out"
