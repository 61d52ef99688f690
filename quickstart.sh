#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine, then shows the main job: boots the smoke guest with
# `microvm boot` (it prints "microvm-smoke: init running, 2 CPUs online" and powers off), and
# runs `echo` from a busybox root filesystem with `microvm run`. Exit status 0 when both did.
# Where this host cannot run guests at hardware speed (no vmx/svm, or a PVM /dev/kvm), the
# guests boot on real KVM inside the nested bed instead (tests/bed/nested.sh).
set -euo pipefail
cd "$(dirname "$0")"

tests/bed/setup.sh
# microvm, its kernel and its agent into /usr/local (bin/, lib/microvm/), where it finds them
# with no flag or variable, as podman and docker start it.
MICROVM=$(./install.sh | tail -n 1)
INITRAMFS=$(images/build-smoke-initramfs.sh | tail -n 1)
ROOTFS=$(images/build-test-rootfs.sh | tail -n 1)

DEMO="'$MICROVM' boot --kernel /usr/local/lib/microvm/vmlinux --initrd '$INITRAMFS' --cpus 2 &&
  '$MICROVM' run '$ROOTFS' -- echo 'hello from a microVM'"
if "$MICROVM" check >&2; then
  exec bash -c "$DEMO"
else
  exec tests/bed/nested.sh -- bash -c "$DEMO"
fi
