#!/usr/bin/env bash
# `podman run --rm IMG true` with microvm as the OCI runtime against runc, N times each,
# interleaved; prints each time and the medians. Run it where guests boot (hardware KVM, or
# the nested bed: tests/bed/nested.sh -- bench/podman.sh [N]). Needs podman and runc
# (tests/bed/setup.sh), a release build, the agent and a kernel (tests/run.sh builds them).
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-5}
bench_name=podman
# shellcheck source=podman_lib.sh
source bench/podman_lib.sh
once() {
	local t0 t1
	t0=$(date +%s.%N)
	# shellcheck disable=SC2086
	podman $P --runtime "$1" run --rm --network none localhost/bench-busybox true
	t1=$(date +%s.%N)
	awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f\n", b-a}'
}
: >"$scratch/microvm.times"; : >"$scratch/runc.times"
for _ in $(seq "$n"); do
	once "$scratch/microvm" >>"$scratch/microvm.times"
	once runc >>"$scratch/runc.times"
done
median() { sort -n "$1" | awk '{a[NR]=$1} END{print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
for r in microvm runc; do
	echo "$r: $(tr '\n' ' ' <"$scratch/$r.times")median $(median "$scratch/$r.times") s"
done
