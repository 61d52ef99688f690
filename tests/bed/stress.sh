#!/usr/bin/env bash
# Stress loop for the nested bed's stability (tests/bed/README.md, "The emulator's own
# failures"): two parallel loops of `microvm run ROOTFS -- true` for SECONDS, inside L1:
#
#   tests/bed/nested.sh --console-errors --rwdir OUTDIR --timeout $((SECONDS + 300)) -- \
#       tests/bed/stress.sh MICROVM AGENT VMLINUX ROOTFS SECONDS OUTDIR
#
# OUTDIR/log gets one line a run (loop.n, exit status, time, agent_ready ms). A run still
# going after 60 s is asked for its guest's state (SIGUSR2: vCPU registers, console tail, on
# its stderr), has its threads' kernel stacks, stderr and console kept in OUTDIR, and is
# killed. L1's kernel log gets a heartbeat every 20 s, so a frozen L1 shows as a gap.
set -uo pipefail
[[ $# -eq 6 ]] || { sed -n '2,13s/^# \{0,1\}//p' "$0" >&2; exit 2; }
bin=$1 agent=$2 kernel=$3 rootfs=$4 secs=$5 out=$6
mkdir -p "$out" && : >"$out/log"
(i=0; while :; do echo "<3>stress heartbeat $i" >/dev/kmsg; i=$((i + 1)); sleep 20; done) &
beat=$!
trap 'kill $beat 2>/dev/null' EXIT
# Everything on L1's tmpfs: the 9p share is slow and sockets cannot live there.
work=$(mktemp -d /run/stress.XXXXXX)
cp "$bin" "$agent" "$kernel" "$work/" && cp -a "$rootfs" "$work/rootfs" || exit 1
export MICROVM_CACHE=$work/cache MICROVM_AGENT=$work/$(basename "$agent")
end=$((SECONDS + secs))
loop() {
	local j=$1 n=0 pid rc k t
	export MICROVM_RUNTIME_DIR=$work/rt$j
	mkdir -p "$MICROVM_RUNTIME_DIR"
	while ((SECONDS < end)); do
		n=$((n + 1))
		MICROVM_TIMINGS=1 "$work/$(basename "$bin")" run --console "$work/console$j" \
			--kernel "$work/$(basename "$kernel")" "$work/rootfs" -- true >/dev/null 2>"$work/err$j" &
		pid=$!
		for k in $(seq 600); do kill -0 $pid 2>/dev/null || break; sleep 0.1; done
		if kill -0 $pid 2>/dev/null; then
			# The guest's state (vCPU registers, console tail) to err$j, then the host side's.
			kill -USR2 $pid
			sleep 2
			for t in /proc/$pid/task/*; do
				echo "== $(cat "$t/comm") $(cat "$t/wchan") syscall: $(cat "$t/syscall")"
				cat "$t/stack"
			done >"$out/stacks.$j.$n" 2>&1
			kill -9 $pid
		fi
		wait $pid
		rc=$?
		echo "$j.$n rc=$rc $(date +%T) $(grep -o 'agent_ready=[^ ]*' "$work/err$j")" >>"$out/log"
		if [[ $rc != 0 ]]; then
			cp "$work/err$j" "$out/err.$j.$n"
			cp "$work/console$j" "$out/console.$j.$n"
		fi
		rm -rf "${MICROVM_RUNTIME_DIR:?}"/*
	done
}
loop 1 &
loop 2 &
wait %2 %3
echo "done: $(grep -c 'rc=0' "$out/log") of $(wc -l <"$out/log") runs exited 0" >>"$out/log"
rm -rf "$work"
