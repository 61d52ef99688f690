#!/usr/bin/env bash
# Volumes (issue "Volumes"): a host directory bind-mounted into a podman container, microvm
# (virtio-fs through virtiofsd) against runc (a plain bind mount), in the same place:
# sequential write of 256 MiB (dd, fsync at the end), sequential read of it from a fresh
# container (the host's page cache warm for both), and 2,000 small files created, listed
# with stat (ls -l) and deleted. Median of 3 of each, timed inside the container from
# /proc/uptime (10 ms steps), and microvm's figures as a ratio of runc's. Run it where guests
# boot (hardware KVM, or the nested bed: tests/bed/nested.sh -- bench/volumes.sh). Then what a
# volume costs a sandbox (below). `bench/volumes.sh io` or `cost` runs one part only.
set -euo pipefail
part=${1:-all}
cd "$(dirname "$0")/.."
bench_name=volumes
# shellcheck source=podman_lib.sh
source bench/podman_lib.sh
now='now() { cut -d" " -f1 /proc/uptime; }'
write="$now"'; t0=$(now); dd if=/dev/zero of=/data/big bs=1M count=256 conv=fsync 2>/dev/null; t1=$(now); echo "$t0 $t1"'
read_small="$now"'; t0=$(now); dd if=/data/big of=/dev/null bs=1M 2>/dev/null; t1=$(now)
mkdir /data/small; i=0; while [ $i -lt 2000 ]; do echo x > /data/small/$i; i=$((i + 1)); done
ls -l /data/small >/dev/null; rm -r /data/small; t2=$(now); echo "$t0 $t1 $t2"'
declare -A result
[[ $part == cost ]] || for runtime in runc "$scratch/microvm"; do
	name=$(basename "$runtime")
	data="$scratch/data-$name"
	mkdir -p "$data"
	w=() r=() s=()
	for _ in 1 2 3; do
		rm -f "$data/big"
		# shellcheck disable=SC2086
		read -r a b < <(podman $P --runtime "$runtime" run --rm --network none -v "$data:/data" localhost/bench-busybox sh -c "$write")
		# shellcheck disable=SC2086
		read -r c d e < <(podman $P --runtime "$runtime" run --rm --network none -v "$data:/data" localhost/bench-busybox sh -c "$read_small")
		w+=("$(awk -v a="$a" -v b="$b" 'BEGIN { print b - a }')")
		r+=("$(awk -v a="$c" -v b="$d" 'BEGIN { print b - a }')")
		s+=("$(awk -v a="$d" -v b="$e" 'BEGIN { print b - a }')")
	done
	median() { printf '%s\n' "$@" | sort -g | sed -n 2p; }
	result[$name]="$(median "${w[@]}") $(median "${r[@]}") $(median "${s[@]}")"
	read -r mw mr ms <<<"${result[$name]}"
	echo "$name: write 256 MiB ${mw}s ($(awk -v t="$mw" 'BEGIN { printf "%.1f", 256 / t }') MiB/s), read ${mr}s ($(awk -v t="$mr" 'BEGIN { printf "%.1f", 256 / (t > 0 ? t : 0.01) }') MiB/s), 2000 small files ${ms}s"
done
[[ $part == cost ]] || {
read -r rw rr rs <<<"${result[runc]}"
read -r mw mr ms <<<"${result[microvm]}"
awk -v rw="$rw" -v rr="$rr" -v rs="$rs" -v mw="$mw" -v mr="$mr" -v ms="$ms" 'BEGIN {
	printf "microvm / runc time: write %.2f, read %.2f, small files %.2f\n", mw / rw, mr / (rr > 0 ? rr : 0.01), ms / rs
}'
}
[[ $part == io ]] && exit 0

# What a volume costs a sandbox: the shared memfd guest memory and the virtiofsd beside it.
# `microvm run ROOTFS true` with and without `-v` (wall time, median of 5, interleaved), and
# the host memory of a sandbox idling in `sleep`: the VMM's RSS (shared memfd pages count as
# RssShmem) plus virtiofsd's.
export MICROVM_AGENT="$agent" MICROVM_KERNEL="$kernel" MICROVM_CACHE="$scratch/cache" MICROVM_VIRTIOFSD="$virtiofsd"
microvm=$PWD/target/release/microvm
# A copy in local storage: the nested bed reaches the repository over 9p without a page
# cache, and the rootfs cache key's walk of the tree would be timed too.
cp -a target/images/rootfs-busybox "$scratch/rootfs"
rootfs=$scratch/rootfs
mkdir -p "$scratch/empty"
plain=() shared=()
for _ in 1 2 3 4 5; do
	for mode in plain shared; do
		extra=()
		[[ $mode == shared ]] && extra=(-v "$scratch/empty:/data")
		t0=$(date +%s.%N)
		"$microvm" run "${extra[@]}" "$rootfs" true
		t1=$(date +%s.%N)
		ms=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", (b - a) * 1000 }')
		if [[ $mode == plain ]]; then plain+=("$ms"); else shared+=("$ms"); fi
	done
done
median5() { printf '%s\n' "$@" | sort -g | sed -n 3p; }
echo "run true: without a volume $(median5 "${plain[@]}") ms, with one $(median5 "${shared[@]}") ms (median of 5)"
rss_kib() { awk '/^VmRSS/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
for mode in plain shared; do
	extra=()
	[[ $mode == shared ]] && extra=(-v "$scratch/empty:/data")
	"$microvm" run --name "bench-$mode" "${extra[@]}" "$rootfs" sh -c 'echo up; sleep 30' >"$scratch/$mode.out" &
	pid=$!
	until grep -q up "$scratch/$mode.out" 2>/dev/null; do sleep 0.2; done
	sleep 2
	vmm=$(rss_kib "$pid")
	shmem=$(awk '/^RssShmem/ { print $2 }' "/proc/$pid/status")
	fsd=0
	for p in $(pgrep -f "virtiofsd.*bench-$mode" || true); do fsd=$((fsd + $(rss_kib "$p"))); done
	echo "idle sandbox ($mode): VMM RSS $((vmm / 1024)) MiB (shared memfd $((shmem / 1024)) MiB), virtiofsd $((fsd / 1024)) MiB"
	# The container's PID 1 ignores SIGTERM; a second one within 3 s stops the VM.
	kill "$pid"; sleep 0.5; kill "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
done
