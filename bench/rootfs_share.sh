#!/usr/bin/env bash
# The rootfs over virtio-fs or packed (issue "Volumes", part 5): `podman run --rm IMG true` for
# a large image (busybox plus SIZE_MIB, default 1024, in 16 MiB files; the nested bed's L1
# holds the image, podman's per-container copy and the packed image in memory, so give it
# room or a smaller SIZE_MIB), with microvm packing podman's per-container
# rootfs into an EROFS image (the default) against sharing it read-only over virtio-fs
# (MICROVM_ROOTFS=virtiofs), and runc for scale. podman's vfs store copies the image for each
# container with new inode times, so every microvm container packs cold: this is the case the
# issue asks about. Wall time of each run, median of 3, interleaved. Run it where guests boot
# (the nested bed: tests/bed/nested.sh -- bench/rootfs_share.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bench_name=rootfs-share
# shellcheck source=podman_lib.sh
source bench/podman_lib.sh
sed 's/^exec /export MICROVM_ROOTFS=virtiofs\nexec /' "$scratch/microvm" >"$scratch/microvm-virtiofs"
chmod +x "$scratch/microvm-virtiofs"
big=$scratch/big-rootfs
cp -a target/images/rootfs-busybox "$big"
mkdir "$big/data"
for i in $(seq $((${SIZE_MIB:-1024} / 16))); do head -c 16M /dev/urandom >"$big/data/$i"; done
# Streamed: no tar file beside the tree.
# shellcheck disable=SC2086
tar -C "$big" -c . | podman $P import - localhost/bench-big >/dev/null
rm -rf "$big"
declare -A times
for _ in 1 2 3; do
	for runtime in runc "$scratch/microvm" "$scratch/microvm-virtiofs"; do
		t0=$(date +%s.%N)
		# shellcheck disable=SC2086
		podman $P --runtime "$runtime" run --rm --network none localhost/bench-big true
		t1=$(date +%s.%N)
		times[$runtime]+="$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }') "
	done
done
for runtime in runc "$scratch/microvm" "$scratch/microvm-virtiofs"; do
	# shellcheck disable=SC2086
	median=$(printf '%s\n' ${times[$runtime]} | sort -g | sed -n 2p)
	echo "$(basename "$runtime"): podman run --rm (1 GiB image) true: median ${median} s (${times[$runtime]% })"
done
