#!/usr/bin/env bash
# Run a command inside the nested bed: an L1 VM (QEMU TCG emulating AMD SVM,
# booted with virtme-ng) that has a real /dev/kvm, so the command can boot
# KVM guests. See README.md beside this file.
#
#   tests/bed/nested.sh [options] -- COMMAND [ARG...]
#
# Options:
#   --cpus N          L1 vCPUs (default 1: the steady configuration, README.md)
#   --kernel IMAGE    L1 kernel image (default: $MICROVM_BED_KERNEL, else the newest
#                     /boot/vmlinuz-6.12.*+deb12-amd64, else 6.1); its modules must be in /lib/modules
#   --append ARGS     more of L1's kernel command line (module options such as
#                     kvm_amd.vgif=0 apply when udev loads the module)
#   --memory SIZE     L1 memory, QEMU syntax (default 4G)
#   --rwdir DIR       also make host DIR writable in L1 (repeatable)
#   --env NAME[=VAL]  pass another variable into L1 (repeatable)
#   --ro              do not make the repo writable in L1
#   --time            print how long L1 took to reach COMMAND on stderr
#   --verbose         show L1's boot console too (slower: each byte is emulated)
#   --console-errors  show L1's console at kernel log level error and worse only (an
#                     oops or panic of L1 reaches the output; little else does)
#   --timeout SECONDS stop L1 if COMMAND has not ended by then, or sooner if L1 has
#                     frozen (exit 125, "L1 died"): L1 has been seen to hang for good,
#                     with no message, under load
#
# COMMAND runs as root in L1 with cwd = the repo root, under bash, with these
# variables from the caller: PATH HOME USER LOGNAME TERM TZ LANG LANGUAGE LC_*
# CI NO_COLOR CARGO_* RUSTUP_* RUST_* RUSTFLAGS RUSTDOCFLAGS NEXTEST_* MICROVM_*
# (MICROVM_BED=nested is added). Its stdout and stderr reach the caller's
# stdout and stderr as it writes them; its exit status is nested.sh's.
# Exit 125: the bed itself failed (L1 did not boot, died before COMMAND ended,
# or has no /dev/kvm); nothing of COMMAND's status is known then.
#
# The host filesystem is visible read-only in L1 (9p), except the repo (unless
# --ro), CARGO_TARGET_DIR, --rwdir dirs and a scratch dir. /tmp in L1 is an
# overlay on tmpfs (writes stay in L1) and /run is a tmpfs: put unix sockets
# and runtime state there, never in a shared directory (bind fails, ENXIO).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=lib.sh
source "$here/lib.sh"

die() { echo "nested.sh: $*" >&2; exit 125; }
usage() { sed -n "2,37s/^# \\{0,1\\}//p" "${BASH_SOURCE[0]}" >&2; exit "${1:-2}"; }

cpus=1 memory=4G verbose='' timing='' repo_rw=1 errors_only= limit= append=
rwdirs=() extra_env=()
while (($#)); do
	case $1 in
	--cpus) cpus=${2:?}; shift 2 ;;
	--memory) memory=${2:?}; shift 2 ;;
	--kernel) MICROVM_BED_KERNEL=${2:?}; shift 2 ;;
	--append) append+=" ${2:?}"; shift 2 ;;
	--rwdir) rwdirs+=("$(cd "${2:?}" && pwd)"); shift 2 ;;
	--env) extra_env+=("${2:?}"); shift 2 ;;
	--ro) repo_rw=; shift ;;
	--time) timing=1; shift ;;
	--verbose | -v) verbose=1 timing=1; shift ;;
	--console-errors) errors_only=1; shift ;;
	--timeout) limit=${2:?}; shift 2 ;;
	--) shift; break ;;
	-h | --help) usage 0 ;;
	-*) echo "nested.sh: unknown option $1" >&2; usage ;;
	*) break ;;
	esac
done
(($#)) || usage

kernel=$(bed_find_kernel) || die "no Debian 6.12 or 6.1 kernel with modules in /boot: run tests/bed/setup.sh"
vng=$(bed_find_vng) || die "vng (virtme-ng) not found: run tests/bed/setup.sh"
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 missing: run tests/bed/setup.sh"

# A closed stdin would let QEMU's first open() take fd 0.
[[ -e /proc/$$/fd/0 ]] || exec </dev/null

# CARGO_TARGET_DIR goes into L1 as an absolute path, and writable: L1 sees
# only what exists on the host when it starts, so create it now.
if [[ -n ${CARGO_TARGET_DIR:-} ]]; then
	mkdir -p "$CARGO_TARGET_DIR"
	CARGO_TARGET_DIR=$(cd "$CARGO_TARGET_DIR" && pwd)
fi

# Host-side scratch: fifos for the output streams (host only) and share/, the
# rwdir where L1 finds the script to run and leaves COMMAND's exit status.
tmp=$(mktemp -d /tmp/microvm-bed.XXXXXX)
share=$tmp/share
mkdir "$share"
vpid='' pollpid=''
# shellcheck disable=SC2317 # run by the EXIT trap
cleanup() {
	[[ -n $vpid ]] && kill -TERM -- "-$vpid" 2>/dev/null
	[[ -n $pollpid ]] && kill "$pollpid" 2>/dev/null
	[[ -n ${dogpid:-} ]] && { kill "$dogpid" 2>/dev/null || true; }
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# The script L1 runs. Values are quoted with printf %q so any byte survives.
# shellcheck disable=SC2016 # $share and $? expand in L1
{
	echo '#!/bin/bash'
	printf 'share=%q\n' "$share"
	echo ': > "$share/started"'
	# udev usually has kvm-amd loaded already; make sure of it.
	echo 'modprobe kvm-amd 2>/dev/null || modprobe kvm-intel 2>/dev/null'
	# L1 runs no systemd, so nothing made the static /dev/net/tun node that loads tun on first
	# open: load it (a podman or docker container's tap, runtime/src/tap_net.rs).
	echo 'modprobe tun 2>/dev/null'
	# L1 has no network card; a dummy one with the default route stands in for a host's
	# uplink, which `microvm run --network user` (passt) needs. 192.0.2.0/24 is TEST-NET-1.
	echo 'ip link add uplink0 type dummy && ip addr add 192.0.2.1/24 dev uplink0 && ip link set uplink0 up && ip route add default via 192.0.2.254'
	# L1's kernel log, kept on the share: if L1 dies, its last lines say why.
	echo '(dmesg --follow --level=emerg,alert,crit,err,warn >"$share/dmesg" 2>&1 &)'
	# A process snapshot every 30 s: if the watchdog stops L1, its age tells whether L1
	# itself had frozen or only COMMAND hung, and the list shows what was waiting where.
	echo '(while :; do ps -eo pid,ppid,stat,etimes,wchan:24,args --forest >"$share/ps.new" 2>&1 && mv "$share/ps.new" "$share/ps"; sleep 30; done </dev/null >/dev/null 2>&1 &)'
	# MICROVM_BED_KEEPER=1: one idle VM held for L1's life keeps KVM's static keys from flipping (and L1's kernel
	# text from being patched) at every guest start and stop: see kvm-keeper.py.
	[[ -n ${MICROVM_BED_KEEPER:-} ]] && printf '(exec python3 %q </dev/null >"$share/keeper" 2>&1 &)\n' "$here/kvm-keeper.py"
	# L1's text symbols (kvm and kvm-amd included), for naming a frozen CPU's RIP.
	[[ -n $limit ]] && echo '(nice grep -i " [tw] " /proc/kallsyms >"$share/kallsyms" 2>/dev/null &)'
	echo 'if [[ ! -c /dev/kvm ]]; then'
	echo '  echo "nested.sh: L1 has no /dev/kvm (kvm-amd did not load; is +svm in -cpu?)" >&2'
	echo '  echo 125 > "$share/status"; exit 125'
	echo 'fi'
	while IFS= read -r name; do
		case $name in
		PATH | HOME | USER | LOGNAME | TERM | TZ | LANG | LANGUAGE | LC_* | CI | NO_COLOR | \
			CARGO_* | RUSTUP_* | RUST_* | RUSTFLAGS | RUSTDOCFLAGS | NEXTEST_* | MICROVM_*)
			printf 'export %s=%q\n' "$name" "${!name}" ;;
		esac
	done < <(compgen -e)
	for kv in "${extra_env[@]}"; do
		if [[ $kv == *=* ]]; then
			printf 'export %s=%q\n' "${kv%%=*}" "${kv#*=}"
		elif [[ -n ${!kv+x} ]]; then
			printf 'export %s=%q\n' "$kv" "${!kv}"
		fi
	done
	echo 'export MICROVM_BED=nested'
	printf 'cd %q || exit 125\n' "$repo"
	# Run COMMAND in a child so that its status is recorded however it ends.
	printf '%q ' "$@"
	echo
	echo 'echo $? > "$share/status"'
} > "$share/run.sh"

# QEMU's monitor (on a socket in $tmp) lets the watchdog show where L1's CPUs are when it
# stops a frozen L1 (bed_cpu_report); L1 runs without KASLR so that its addresses name
# functions in /boot/System.map-VERSION.
# AMD SVM with nested paging for L1; the features TCG cannot emulate are turned
# off explicitly, else QEMU warns about each of them on stderr.
default_cpu=EPYC,+svm,+npt,-rdseed,-sha-ni,-fxsr-opt,-misalignsse,-3dnowprefetch,-osvw,-topoext,-nrip-save,-xsavec

# Keep udev in L1 from loading drivers for q35's emulated hardware (AHCI, CD-ROM,
# watchdogs, SMBus, input) and for CPU-accelerated crypto: every module load is
# slow under TCG, and this cuts L1's start by 5-10 s. Nothing here is needed to
# run KVM guests; an explicit `modprobe NAME` in L1 still works.
noload=sr_mod,cdrom,sg,ahci,libahci,libata,iTCO_wdt,iTCO_vendor_support,intel_pmc_bxt
noload+=,psmouse,evdev,i2c_i801,i2c_smbus,serio_raw,pcspkr,i6300esb,qemu_fw_cfg,lpc_ich
noload+=,button,intel_rapl_msr,intel_rapl_common,crct10dif_pclmul,crc32_pclmul
noload+=,crc32c_intel,ghash_clmulni_intel,sha512_ssse3,sha256_ssse3,sha1_ssse3,aesni_intel

# --force-9p: vng otherwise first tries virtiofsd, which does not start here,
# and loses ~3 s before falling back to 9p.
# Writable mounts in L1 (each at the same path as on the host).
vng_args=(--run "$kernel" --disable-kvm --force-9p --cpus "$cpus" --memory "$memory"
	"--qemu-opts=-cpu ${MICROVM_BED_CPU:-$default_cpu} -monitor unix:$tmp/monitor,server=on,wait=off"
	--append "nokaslr modprobe.blacklist=$noload$append" --rwdir "$share")
[[ -n $repo_rw ]] && vng_args+=(--rwdir "$repo")
if [[ -n ${CARGO_TARGET_DIR:-} ]]; then
	[[ -n $repo_rw && $CARGO_TARGET_DIR == "$repo"/* ]] || vng_args+=(--rwdir "$CARGO_TARGET_DIR")
fi
for d in "${rwdirs[@]}"; do vng_args+=(--rwdir "$d"); done
[[ -n $verbose ]] && vng_args+=(--verbose)
# The console on, but only messages of level error (3) and worse reach it.
[[ -n $errors_only && -z $verbose ]] && vng_args+=(--verbose --append loglevel=3)

# QEMU opens /proc/self/fd/1 and /proc/self/fd/2 anew. On a regular file that
# truncates it and gives each stream its own offset (the streams overwrite
# each other), so hand QEMU pipes and copy them to our stdout and stderr.
mkfifo "$tmp/out" "$tmp/err"
cat "$tmp/out" & opid=$!
cat "$tmp/err" >&2 & epid=$!
t0=$(date +%s.%N)
if [[ -n $timing ]]; then
	# Note when L1 starts COMMAND, by the host's clock (L1's drifts under TCG).
	(while [[ ! -e $share/started ]]; do sleep 0.1; done; date +%s.%N >"$tmp/t1") </dev/null &
	pollpid=$!
fi
# setsid: vng, its shell, virtme-run and QEMU form one process group that
# cleanup() can stop. Explicit <&0: a background job would get /dev/null.
PATH="$(dirname "$vng"):$PATH" setsid "$vng" "${vng_args[@]}" -- "exec /bin/bash $share/run.sh" \
	<&0 >"$tmp/out" 2>"$tmp/err" &
vpid=$!
if [[ -n $limit ]]; then
	# The watchdog stops the whole group; then the status file is missing and L1 "died".
	# It stops L1 when COMMAND has run for $limit s, or sooner when L1 has frozen: L1's
	# process snapshot (rewritten every 30 s) has not changed for $frozen s. Its sleeps hold
	# none of our output (a pipe reader would wait for them), and stopping it stops them.
	frozen=300
	(
		trap 'kill "$sp" 2>/dev/null; exit 0' TERM
		end=$((SECONDS + limit))
		while ((SECONDS < end)); do
			sleep 10 </dev/null >/dev/null 2>&1 &
			sp=$!
			wait "$sp"
			if [[ -f $share/ps ]] && (($(date +%s) - $(stat -c %Y "$share/ps") > frozen)); then
				echo "nested.sh: L1 has not run its 30 s process snapshot for over $frozen s (frozen): stopping L1" >&2
				break
			fi
		done
		((SECONDS < end)) || echo "nested.sh: COMMAND still running after $limit s: stopping L1" >&2
		bed_cpu_report "$tmp/monitor" "$share/kallsyms" "$cpus" >&2
		: >"$tmp/timed-out"
		kill -TERM -- "-$vpid" 2>/dev/null
	) </dev/null &
	dogpid=$!
fi
vrc=0
wait "$vpid" || vrc=$?
vpid=
[[ -n ${dogpid:-} ]] && { kill "$dogpid" 2>/dev/null || true; }
wait "$opid" "$epid" || true

if [[ -n $timing ]]; then
	kill "$pollpid" 2>/dev/null || true
	wait "$pollpid" 2>/dev/null || true
	pollpid=
	if [[ -f $tmp/t1 ]]; then
		echo "nested.sh: L1 reached COMMAND after $(awk -v a="$t0" -v b="$(<"$tmp/t1")" \
			'BEGIN{printf "%.1f", b-a}') s, all took $(awk -v a="$t0" -v b="$(date +%s.%N)" \
			'BEGIN{printf "%.1f", b-a}') s" >&2
	fi
fi
if [[ -f $share/status ]]; then
	rc=$(<"$share/status")
	[[ $rc =~ ^[0-9]+$ ]] || die "bad status '$rc' from L1"
	exit "$rc"
fi
if [[ -f $share/started ]]; then
	if [[ -f $tmp/timed-out && -f $share/ps ]]; then
		age=$(($(date +%s) - $(stat -c %Y "$share/ps")))
		echo "nested.sh: L1's processes as of $age s before it was stopped (a snapshot is taken every 30 s):" >&2
		grep -v -e ' ps -eo ' -e ' sleep 30$' -e '\[.*\]$' "$share/ps" | head -n 60 >&2
	fi
	if [[ -s $share/dmesg ]]; then
		echo "nested.sh: L1's last kernel warnings:" >&2
		tail -n 20 "$share/dmesg" >&2
	fi
	die "L1 died while COMMAND was running (vng exit $vrc; kernel panic, OOM or killed?)"
fi
hint="; rerun with --verbose for its console"
[[ -n $verbose ]] && hint=
die "L1 failed to boot (vng exit $vrc$hint)"
