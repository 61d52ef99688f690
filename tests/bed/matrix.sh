#!/usr/bin/env bash
# One cell of the bed's stability matrix (README.md, "Choosing the bed's configuration"):
# boots an L1 with the given nested.sh options, runs stress.sh in it for SECONDS, and
# appends one row to OUTDIR/matrix.tsv:
#
#   tests/bed/matrix.sh NAME SECONDS OUTDIR [nested.sh options...]
#   e.g. tests/bed/matrix.sh 6.1-1cpu 1200 /tmp/matrix --cpus 1
#
# Columns: cell, runs, failed runs, silent guests (still running after 60 s), L1's end
# (ran out its time / died / frozen), minutes, runs per minute, median agent_ready (ms).
# The cell's own files (stress log, stacks of silent runs, L1's messages) stay in
# OUTDIR/NAME. Inputs are built by the caller: target/release/microvm, the static agent,
# the guest kernel and the test root filesystems (tests/run.sh's build step).
set -euo pipefail
[[ $# -ge 3 ]] || { sed -n '2,12s/^# \{0,1\}//p' "$0" >&2; exit 2; }
name=$1 secs=$2 out=$3
shift 3
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here/../.."

bin=${MICROVM_BIN:-target/release/microvm}
agent=$(images/build-agent.sh 2>/dev/null | tail -n 1)
kernel=$(kernel-config/build.sh 2>/dev/null | tail -n 1)/vmlinux
rootfs=$(dirname "$(images/build-test-rootfs.sh 2>/dev/null | tail -n 1)")/rootfs-busybox
[[ -x $bin && -f $agent && -f $kernel && -d $rootfs ]] || { echo "matrix.sh: build first (tests/run.sh's build step)" >&2; exit 2; }

dir=$out/$name
rm -rf "$dir" && mkdir -p "$dir"
start=$(date +%s)
rc=0
tests/bed/nested.sh --console-errors --rwdir "$dir" --timeout $((secs + 300)) "$@" -- \
	tests/bed/stress.sh "$(realpath "$bin")" "$agent" "$kernel" "$rootfs" "$secs" "$dir" \
	>"$dir/bed.out" 2>"$dir/bed.err" || rc=$?
minutes=$(awk -v s="$(($(date +%s) - start))" 'BEGIN{printf "%.1f", s/60}')

runs=$(grep -c ' rc=' "$dir/log" 2>/dev/null || true)
ok=$(grep -c ' rc=0 ' "$dir/log" 2>/dev/null || true)
silent=$(find "$dir" -name 'stacks.*' | wc -l)
if grep -q '^done:' "$dir/log" 2>/dev/null; then
	end=ran
elif grep -q 'frozen' "$dir/bed.err"; then
	end=frozen
else
	end="died($rc)"
fi
# Runs per minute over the loops' own span (first to last logged run), L1's boot excluded.
rate=$(awk '/ rc=/ {split($3, t, ":"); s = t[1] * 3600 + t[2] * 60 + t[3]; if (!n++) a = s; b = s}
	END {if (n > 1 && b > a) printf "%.1f", (n - 1) * 60 / (b - a); else print "-"}' "$dir/log" 2>/dev/null || echo -)
ready=$(sed -n 's/.*agent_ready=\([0-9.]*\).*/\1/p' "$dir/log" 2>/dev/null | sort -n |
	awk '{v[NR] = $1} END {if (NR) print v[int((NR + 1) / 2)]; else print "-"}')
[[ -s $out/matrix.tsv ]] || printf 'cell\truns\tfailed\tsilent\tL1\tminutes\truns/min\tagent_ready_ms\toptions\n' >"$out/matrix.tsv"
printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$runs" "$((runs - ok))" "$silent" "$end" \
	"$minutes" "$rate" "$ready" "$*" | tee -a "$out/matrix.tsv"
