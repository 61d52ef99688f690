#!/usr/bin/env bash
# containerd 1.6 with microvm's shim (io.containerd.microvm.v2) against runc's
# (io.containerd.runc.v2), in the same place: `ctr run --rm IMG true`, N times each,
# interleaved, with each time and the medians; then the host memory of one idle task of each
# (`sleep` in the container): the PSS of its shim and of every process under it (microvm:
# the VMM process holding the guest's memory; runc: the container's process), and what one
# `ctr task metrics` of it takes (the Stats call kubelet makes: runc's shim reads the host's
# cgroup, microvm's asks the guest's agent through `microvm events --stats`), 10 times.
#
#   tests/bed/nested.sh -- tests/bed/l1-inputs.sh bench/containerd.sh [N]
#
# Takes its inputs as the guest tests do (MICROVM_BIN, MICROVM_SHIM, MICROVM_AGENT,
# MICROVM_KERNEL_DIR, MICROVM_VIRTIOFSD, MICROVM_TEST_ROOTFS_DIR; tests/run.sh builds them)
# and lays them out as install.sh does; containerd runs with its own scratch root and socket.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-5}
scratch=$(mktemp -d /tmp/microvm-bench-containerd.XXXXXX)
prefix=$scratch/prefix
install -D -m 0755 "${MICROVM_BIN:-target/release/microvm}" "$prefix/bin/microvm"
install -D -m 0755 "${MICROVM_SHIM:-target/release/containerd-shim-microvm-v2}" "$prefix/bin/containerd-shim-microvm-v2"
install -D -m 0644 "${MICROVM_KERNEL_DIR:?}/vmlinux" "$prefix/lib/microvm/vmlinux"
install -D -m 0755 "${MICROVM_AGENT:?}" "$prefix/lib/microvm/microvm-agent"
install -D -m 0755 "${MICROVM_VIRTIOFSD:?}" "$prefix/lib/microvm/virtiofsd"
rootfs=${MICROVM_TEST_ROOTFS_DIR:?}/rootfs-busybox
export PATH=$prefix/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

cat >"$scratch/config.toml" <<EOF
version = 2
root = '$scratch/root'
state = '$scratch/state'
disabled_plugins = ['io.containerd.grpc.v1.cri']
[grpc]
address = '$scratch/containerd.sock'
EOF
env -i PATH="$PATH" containerd --config "$scratch/config.toml" >"$scratch/containerd.log" 2>&1 &
daemon=$!
ctr() { command ctr --address "$scratch/containerd.sock" --namespace bench "$@"; }
cleanup() {
	for id in $(ctr task ls -q 2>/dev/null); do ctr task delete --force "$id" >/dev/null 2>&1 || true; done
	for id in $(ctr container ls -q 2>/dev/null); do ctr container rm "$id" >/dev/null 2>&1 || true; done
	kill "$daemon" 2>/dev/null; wait "$daemon" 2>/dev/null || true
	rm -rf "$scratch"
}
trap cleanup EXIT
for _ in $(seq 100); do ctr version >/dev/null 2>&1 && break; sleep 0.2; done

# The busybox rootfs as an OCI image archive of one uncompressed layer.
image=$scratch/image
mkdir -p "$image/blobs/sha256"
put() { # put FILE: moves FILE into the blobs, prints "DIGEST SIZE"
	local digest
	digest=$(sha256sum "$1" | cut -d' ' -f1)
	mv "$1" "$image/blobs/sha256/$digest"
	echo "sha256:$digest $(stat -c %s "$image/blobs/sha256/$digest")"
}
tar -C "$rootfs" -cf "$scratch/layer.tar" .
read -r layer layer_size < <(put "$scratch/layer.tar")
printf '{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/usr/bin:/bin"]},"rootfs":{"type":"layers","diff_ids":["%s"]}}' \
	"$layer" >"$scratch/config.json"
read -r config config_size < <(put "$scratch/config.json")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"%s","size":%s}]}' \
	"$config" "$config_size" "$layer" "$layer_size" >"$scratch/manifest.json"
read -r manifest manifest_size < <(put "$scratch/manifest.json")
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"%s","size":%s,"annotations":{"io.containerd.image.name":"localhost/busybox:latest"}}]}' \
	"$manifest" "$manifest_size" >"$image/index.json"
echo '{"imageLayoutVersion":"1.0.0"}' >"$image/oci-layout"
tar -C "$image" -cf "$scratch/image.tar" .
ctr image import --snapshotter native "$scratch/image.tar" >/dev/null

run() { ctr run --rm --snapshotter native --runtime "$1" localhost/busybox:latest "$2" "${@:3}"; }
once() {
	local t0 t1
	t0=$(date +%s.%N)
	run "$1" "$2" true
	t1=$(date +%s.%N)
	awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f\n", b-a}'
}
median() { sort -n "$1" | awk '{a[NR]=$1} END{print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
: >"$scratch/microvm.times"; : >"$scratch/runc.times"
for i in $(seq "$n"); do
	once io.containerd.microvm.v2 "m$i" >>"$scratch/microvm.times"
	once io.containerd.runc.v2 "r$i" >>"$scratch/runc.times"
done
for r in microvm runc; do
	echo "ctr run --rm true, $r: $(tr '\n' ' ' <"$scratch/$r.times")median $(median "$scratch/$r.times") s"
done

pss() { # pss PID: the kB of PSS of PID and every process under it
	local total=0 pid
	for pid in "$1" $(pgrep -P "$1" || true); do
		[ "$pid" = "$1" ] || { total=$((total + $(pss "$pid"))); continue; }
		total=$((total + $(awk '/^Pss:/{print $2}' "/proc/$pid/smaps_rollup" 2>/dev/null || echo 0)))
	done
	echo "$total"
}
for r in microvm runc; do
	ctr run -d --snapshotter native --runtime "io.containerd.$r.v2" localhost/busybox:latest "idle-$r" sleep 1000 >/dev/null
	sleep 5
	shim=$(pgrep -f "containerd-shim-$r-v2 .*-id idle-$r( |$)" | head -n 1)
	echo "idle task, $r: $(($(pss "$shim") / 1024)) MiB PSS (shim pid $shim and what runs under it)"
	for _ in $(seq 10); do
		t0=$(date +%s.%N)
		ctr task metrics "idle-$r" >/dev/null
		t1=$(date +%s.%N)
		awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f\n", b-a}'
	done >"$scratch/metrics-$r.times"
	echo "ctr task metrics, $r: $(tr '\n' ' ' <"$scratch/metrics-$r.times")median $(median "$scratch/metrics-$r.times") s"
	ctr task kill --signal SIGKILL "idle-$r" >/dev/null
	for _ in $(seq 100); do ctr task ls | grep -q "^idle-$r .*STOPPED" && break; sleep 0.2; done
	ctr task delete "idle-$r" >/dev/null 2>&1 || true
	ctr container rm "idle-$r" >/dev/null
done
