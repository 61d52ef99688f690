# Sourced by the podman benchmarks (bench/podman.sh, bench/podman_net.sh), from the repo
# root: a scratch directory ($scratch, removed on exit with every container in it), microvm
# behind a wrapper that names its agent, kernel, virtiofsd and cache ($scratch/microvm), podman's flags
# for a store of its own ($P) and the busybox image imported as localhost/bench-busybox.
scratch=$(mktemp -d "/tmp/microvm-bench-${bench_name:?}.XXXXXX")
P="--storage-driver vfs --cgroup-manager cgroupfs --events-backend file --root $scratch/storage --runroot $scratch/run"
# shellcheck disable=SC2086 # $P is a list of flags
trap 'podman $P rm -af -t 1 >/dev/null 2>&1 || true; rm -rf "$scratch"' EXIT
agent=$(images/build-agent.sh 2>/dev/null | tail -n 1)
virtiofsd=$(images/build-virtiofsd.sh 2>/dev/null | tail -n 1)
kernel=$(readlink -f "${MICROVM_CACHE:-$HOME/.cache/microvm}/kernel/current")/vmlinux
cat >"$scratch/microvm" <<EOW
#!/bin/sh
export MICROVM_AGENT='$agent' MICROVM_KERNEL='$kernel' MICROVM_CACHE='$scratch/cache' MICROVM_VIRTIOFSD='$virtiofsd'
exec '$PWD/target/release/microvm' --root '$scratch/root' "\$@"
EOW
chmod +x "$scratch/microvm"
tar -C target/images/rootfs-busybox -cf "$scratch/busybox.tar" .
# shellcheck disable=SC2086
podman $P import "$scratch/busybox.tar" localhost/bench-busybox >/dev/null
