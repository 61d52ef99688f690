#!/usr/bin/env bash
# The rootfs of an OCI bundle written in place over virtio-fs (the default) against packed
# into an EROFS image with the writes kept in the guest (`MICROVM_ROOTFS=erofs`), issue
# "Volumes" part 5 and issue "runc fidelity" part 4: `podman run --rm IMG true` for the busybox
# image and for a large one (busybox plus SIZE_MIB, default 1024, in 16 MiB files), with runc
# for scale. podman's vfs store copies the image for each container with new inode times, so
# every EROFS container packs cold: the case the issue asks about. The nested bed's L1 holds
# the image, podman's per-container copy and the packed image in memory: give it room
# (`--memory 8G`) or a smaller SIZE_MIB. Wall time of each run, median of 3, interleaved.
# Run it where guests boot: tests/bed/nested.sh --memory 8G -- bench/rootfs_share.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bench_name=rootfs-share
# shellcheck source=podman_lib.sh
source bench/podman_lib.sh
sed 's/^exec /export MICROVM_ROOTFS=erofs\nexec /' "$scratch/microvm" >"$scratch/microvm-erofs"
chmod +x "$scratch/microvm-erofs"
big=$scratch/big-rootfs
cp -a target/images/rootfs-busybox "$big"
mkdir "$big/data"
for i in $(seq $((${SIZE_MIB:-1024} / 16))); do head -c 16M /dev/urandom >"$big/data/$i"; done
# Streamed: no tar file beside the tree.
# shellcheck disable=SC2086
tar -C "$big" -c . | podman $P import - localhost/bench-big >/dev/null
rm -rf "$big"
runtimes=(runc "$scratch/microvm" "$scratch/microvm-erofs")
for image in bench-busybox bench-big; do
	declare -A times=()
	for _ in 1 2 3; do
		for runtime in "${runtimes[@]}"; do
			t0=$(date +%s.%N)
			# shellcheck disable=SC2086
			podman $P --runtime "$runtime" run --rm --network none "localhost/$image" true
			t1=$(date +%s.%N)
			times[$runtime]+="$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }') "
			# Each packed copy is a new cache entry: drop them so L1's memory holds out.
			"$scratch/microvm" cache prune --all >/dev/null
		done
	done
	for runtime in "${runtimes[@]}"; do
		# shellcheck disable=SC2086
		median=$(printf '%s\n' ${times[$runtime]} | sort -g | sed -n 2p)
		echo "$(basename "$runtime"): podman run --rm $image true: median ${median} s (${times[$runtime]% })"
	done
done
