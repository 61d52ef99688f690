#!/usr/bin/env bash
# Builds microvm, its guest kernel and its guest agent, and installs them where an installed
# microvm looks for them, so podman, docker and containerd can start it with no wrapper and
# no MICROVM_* variable (runtime/src/layout.rs):
#
#   ./install.sh [--prefix DIR]      # default /usr/local
#
#   PREFIX/bin/microvm
#   PREFIX/bin/containerd-shim-microvm-v2   containerd's shim (runtime io.containerd.microvm.v2)
#   PREFIX/lib/microvm/vmlinux         the guest kernel (kernel-config/build.sh, cached)
#   PREFIX/lib/microvm/microvm-agent   the static guest agent
#   PREFIX/lib/microvm/virtiofsd       the file server of volumes (images/build-virtiofsd.sh)
#
# The image cache is ~/.cache/microvm when the caller's home can be written, else
# /var/cache/microvm or /run/microvm-cache; /etc/microvm/config.toml can name all three.
# Prints the installed binary's path as the last line of stdout; progress goes to stderr.
set -euo pipefail
cd "$(dirname "$0")"

prefix=/usr/local
while (($#)); do
	case $1 in
	--prefix) prefix=${2:?--prefix needs a directory}; shift 2 ;;
	*) sed -n '2,15s/^# \{0,1\}//p' "$0" >&2; exit 2 ;;
	esac
done

cargo build --release -p runtime --bin microvm >&2
cargo build --release -p containerd-shim-microvm >&2
kernel_dir=$(kernel-config/build.sh | tail -n 1)
agent=$(images/build-agent.sh | tail -n 1)
virtiofsd=$(images/build-virtiofsd.sh | tail -n 1)

install -D -m 0755 target/release/microvm "$prefix/bin/microvm"
install -D -m 0755 target/release/containerd-shim-microvm-v2 "$prefix/bin/containerd-shim-microvm-v2"
install -D -m 0644 "$kernel_dir/vmlinux" "$prefix/lib/microvm/vmlinux"
install -D -m 0755 "$agent" "$prefix/lib/microvm/microvm-agent"
install -D -m 0755 "$virtiofsd" "$prefix/lib/microvm/virtiofsd"
echo "installed: $prefix/bin/{microvm,containerd-shim-microvm-v2}, $prefix/lib/microvm/{vmlinux,microvm-agent,virtiofsd}" >&2
echo "$prefix/bin/microvm"
