#!/usr/bin/env bash
# Run inside L1 (through nested.sh): copies the guest tests' inputs into L1's own memory
# once, then runs COMMAND with the MICROVM_* variables naming the copies:
#
#   tests/bed/nested.sh -- tests/bed/l1-inputs.sh TEST_BINARY [ARGS...]
#
# The host's files reach L1 over 9p without a page cache (vng mounts them cache=none): every
# `microvm run` would otherwise read the 17 MB vmlinux and page in the microvm binary over
# 9p again (~1.4 s of each run in the bed). Copied: MICROVM_BIN, MICROVM_SHIM, MICROVM_AGENT,
# MICROVM_KERNEL_DIR, MICROVM_SMOKE_INITRAMFS, MICROVM_VIRTIOFSD (the test root filesystems are copied by the
# suite itself, tests/guest/src/lib.rs). Names are kept (tests find `microvm` by name).
set -euo pipefail
(($#)) || { sed -n '2,11s/^# \{0,1\}//p' "$0" >&2; exit 2; }
dir=$(mktemp -d /run/microvm-inputs.XXXXXX)
trap 'rm -rf "$dir"' EXIT
for name in MICROVM_BIN MICROVM_SHIM MICROVM_AGENT MICROVM_KERNEL_DIR MICROVM_SMOKE_INITRAMFS MICROVM_VIRTIOFSD; do
	src=${!name:-}
	[[ -n $src ]] || continue
	mkdir "$dir/$name"
	cp -a "$src" "$dir/$name/"
	export "$name=$dir/$name/$(basename "$src")"
done
"$@"
