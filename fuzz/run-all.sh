#!/usr/bin/env bash
# Builds every fuzz target and runs each for SECONDS (sequentially, one job, one worker),
# starting from the committed seeds in seeds/<target>/ plus the corpus earlier runs kept in
# corpus/<target>/. Prints per target: total execs, execs/s, final cov and ft, and whether it
# crashed. Exits non-zero if any target crashed (reproducers land in artifacts/<target>/).
#
#   fuzz/run-all.sh 60                       # every target, 60 s each
#   fuzz/run-all.sh 600 kernel_loader        # only the targets named
#   NICE=10 FUZZ_ARGS="-max_len=65536" fuzz/run-all.sh 30
#
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). Logs: logs/<target>.log.
set -euo pipefail

if [[ $# -lt 1 || ! $1 =~ ^[0-9]+$ ]]; then
    echo "usage: $0 SECONDS [TARGET...]" >&2
    exit 2
fi
seconds=$1
shift
cd "$(dirname "$0")"
all_targets=(virtio_blk_chain virtio_net_chains virtio_vsock_tx virtio_mmio_regs agent_frame_decoder vsock_connect_handshake kernel_loader)
targets=("${@:-${all_targets[@]}}")
nice_level=${NICE:-10}

nice -n "$nice_level" cargo +nightly fuzz build >&2

mkdir -p logs
crashed=()
printf '%-24s %8s %12s %10s %8s %8s  %s\n' target seconds execs execs/s cov ft result
for t in "${targets[@]}"; do
    corpus=corpus/$t
    mkdir -p "$corpus" "artifacts/$t"
    if [[ -d seeds/$t ]]; then
        cp -n seeds/"$t"/* "$corpus"/ 2>/dev/null || true
    fi
    log=logs/$t.log
    start=$(date +%s)
    set +e
    # -print_final_stats gives the exec count; the last "#N ... cov: ft:" line the coverage.
    # The timeout outlives -max_total_time by a margin in case a run hangs on exit.
    timeout $((seconds + 120)) nice -n "$nice_level" cargo +nightly fuzz run "$t" "$corpus" -- \
        -max_total_time="$seconds" -print_final_stats=1 \
        -timeout=10 -rss_limit_mb=2048 ${FUZZ_ARGS:-} >"$log" 2>&1
    rc=$?
    set -e
    elapsed=$(($(date +%s) - start))
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    status_line=$(grep -E '^#[0-9]+' "$log" | grep 'cov:' | tail -1 || true)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$status_line")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$status_line")
    if [[ $rc -eq 0 ]]; then
        result=ok
    else
        result="CRASH (rc $rc, see $log and artifacts/$t/)"
        crashed+=("$t")
    fi
    printf '%-24s %8s %12s %10s %8s %8s  %s\n' "$t" "$elapsed" "${execs:-?}" "${rate:-?}" "${cov:-?}" "${ft:-?}" "$result"
done

if [[ ${#crashed[@]} -gt 0 ]]; then
    echo "crashed: ${crashed[*]}" >&2
    exit 1
fi
