#!/usr/bin/env bash
# Install what the nested bed (tests/bed/nested.sh) needs on Debian 12, as root.
# Idempotent; when everything is present it only checks (well under a second)
# and touches neither apt nor pip. Prints one summary line to stderr on success.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
source "$here/lib.sh"

export DEBIAN_FRONTEND=noninteractive
apt_updated=
apt_update() {
	if [[ -z $apt_updated ]]; then
		apt-get update -qq >/dev/null
		apt_updated=1
	fi
}
pkg_installed() {
	[[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) == "install ok installed" ]]
}

# Debian packages: QEMU (TCG emulates AMD SVM for L1), a busybox for vng's
# initramfs, cpio, file and kmod (vng calls `file` and `modprobe` on the host),
# erofs-utils (mkfs.erofs: `microvm run` packs root filesystems with it), podman and
# runc (the OCI runtime tests drive microvm through podman, and compare with runc),
# docker.io (tests/guest/tests/docker.rs starts a dockerd and containerd of its own), passt
# (`microvm run --network user`, the default) and iptables (the network tests check that
# INPUT rules filter published ports).
missing=()
for pkg in qemu-system-x86 busybox-static cpio file kmod erofs-utils podman runc docker.io passt iptables; do
	pkg_installed "$pkg" || missing+=("$pkg")
done

# L1 kernel: Debian 12's own 6.12 image (bookworm-security; its kvm-amd module gives L1 a
# real /dev/kvm, and it runs steadier under the emulator than 6.1: tests/bed/README.md).
if ! kernel=$(bed_find_kernel) || [[ $kernel != /boot/vmlinuz-6.12.* && -z ${MICROVM_BED_KERNEL:-} ]]; then
	apt_update
	kpkg=$(apt-cache search --names-only '^linux-image-6\.12\.[0-9]+\+deb12-amd64-unsigned$' |
		awk '{print $1}' | sort -V | tail -n1)
	[[ -n $kpkg ]] || { echo "setup.sh: no linux-image-6.12.*+deb12-amd64-unsigned in apt" >&2; exit 1; }
	missing+=("$kpkg")
fi

# pip for virtme-ng: any python3 with a working pip will do (pyenv's or Debian's).
vng=$(bed_find_vng) || vng=
if [[ -z $vng ]]; then
	py=
	for cand in python3 /usr/bin/python3; do
		if c=$(command -v "$cand") && "$c" -m pip --version >/dev/null 2>&1; then
			py=$c
			break
		fi
	done
	if [[ -z $py ]]; then
		missing+=(python3-pip)
		py=/usr/bin/python3
	fi
fi

if ((${#missing[@]})); then
	apt_update
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
kernel=$(bed_find_kernel) || { echo "setup.sh: no usable /boot/vmlinuz-6.12.*+deb12-amd64" >&2; exit 1; }

if [[ -z $vng ]]; then
	pipflags=(install --quiet --disable-pip-version-check --root-user-action=ignore --no-warn-script-location)
	# Debian's own python refuses system-wide pip installs (PEP 668) without this.
	if "$py" -c 'import os, sys, sysconfig
sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")) else 1)'; then
		pipflags+=(--break-system-packages)
	fi
	"$py" -m pip "${pipflags[@]}" virtme-ng >/dev/null
	# pyenv only creates shims for new scripts on rehash.
	if command -v pyenv >/dev/null 2>&1; then pyenv rehash >/dev/null 2>&1 || true; fi
	vng=$(bed_find_vng) || { echo "setup.sh: virtme-ng installed but vng not found" >&2; exit 1; }
fi

echo "nested bed ready: kernel=$kernel vng=$vng ($("$vng" --version 2>/dev/null)) qemu=$(qemu-system-x86_64 --version | head -n1 | awk '{print $4}')${missing:+ installed: ${missing[*]}}" >&2
