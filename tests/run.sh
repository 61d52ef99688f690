#!/usr/bin/env bash
# The project's test command (README, .ci/run). On a fresh Debian 12 machine it:
#  1. installs what the build and the nested test bed need (tests/bed/setup.sh);
#  2. builds the workspace, the guest kernel (cached outside the repo) and the smoke initramfs;
#  3. runs every test that needs no Linux guest here (unit tests; tiny-guest tests on /dev/kvm);
#  4. runs the guest-booting tests where real KVM is: directly when `microvm check` says this
#     host runs microVMs at hardware speed, otherwise inside the nested bed (QEMU TCG + SVM +
#     kvm-amd, tests/bed/nested.sh);
#  5. prints one closing line "N passed, M failed" over both runs.
# It keeps to a time budget (MICROVM_TEST_BUDGET seconds, default 85 minutes; CI stops a run
# at 90): a guest test binary it no longer has time for is not started, and counts as failed.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
LOGS=$(mktemp -d /tmp/microvm-tests.XXXXXX)
trap 'rm -rf "$LOGS"' EXIT
BUDGET=${MICROVM_TEST_BUDGET:-5100}

step() { printf '\n== %s (at %d s)\n' "$*" "$SECONDS" >&2; }

# The release binaries the guest tests run are built without LTO and with parallel codegen:
# the same code, optimised, in a third of the build time on a two-core CI machine. What
# ships (`cargo build --release`, quickstart.sh) keeps the profile's full LTO.
export CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16

step "setup"
tests/bed/setup.sh

step "build"
cargo build --release -p runtime --bin microvm
cargo build --release -p containerd-shim-microvm
KERNEL_DIR=$(kernel-config/build.sh | tail -n 1)
INITRAMFS=$(images/build-smoke-initramfs.sh | tail -n 1)
AGENT=$(images/build-agent.sh | tail -n 1)
VIRTIOFSD=$(images/build-virtiofsd.sh | tail -n 1)
ROOTFS_DIR=$(dirname "$(images/build-test-rootfs.sh | tail -n 1)")
export MICROVM_BIN="$ROOT/target/release/microvm"
export MICROVM_SHIM="$ROOT/target/release/containerd-shim-microvm-v2"
export MICROVM_AGENT="$AGENT"
export MICROVM_TEST_ROOTFS_DIR="$ROOTFS_DIR"
export MICROVM_KERNEL_DIR="$KERNEL_DIR"
export MICROVM_SMOKE_INITRAMFS="$INITRAMFS"
export MICROVM_VIRTIOFSD="$VIRTIOFSD"

step "host tests (no Linux guest)"
set +e
cargo test --workspace --exclude guest-tests 2>&1 | tee "$LOGS/host.log"
host_status=${PIPESTATUS[0]}
set -e

step "guest tests (Linux guests on real KVM)"
mapfile -t GUEST_TESTS < <(cargo test -p guest-tests --tests --no-run --message-format=json 2>/dev/null \
  | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | grep -v '/guest_tests-')
[ "${#GUEST_TESTS[@]}" -ge 2 ] || { echo "tests/run.sh: could not build the guest tests" >&2; exit 1; }
set +e
guest_status=0
: > "$LOGS/guest.log"
if "$MICROVM_BIN" check >&2; then
  echo "tests/run.sh: hardware KVM here: guests boot directly" >&2
  for t in "${GUEST_TESTS[@]}"; do
    "$t" --test-threads=2 2>&1 | tee -a "$LOGS/guest.log"
    s=${PIPESTATUS[0]}; [ "$s" = 0 ] || guest_status=$s
  done
else
  echo "tests/run.sh: no hardware KVM here: guests boot in the nested bed" >&2
  # Two lanes, one per host core, each taking the next test binary from one queue and
  # running it in an L1 of its own with one vCPU (tests/bed/README.md, "Choosing the bed's
  # configuration": an L1 with two vCPUs crashes or freezes under TCG every few hundred
  # guests; two one-vCPU L1s did not, at the same throughput). Each binary's output is
  # printed whole when it ends, so the two lanes' outputs do not interleave. l1-inputs.sh
  # gives each L1 its own copies of the binary, kernel and agent (9p has no page cache).
  #
  # L1 may still die in the middle of a binary (vng exits 255 with no test failed before)
  # or hang for good (nested.sh --timeout stops it): the emulator, not a test. Such a run
  # says nothing about the tests, so that binary runs again in a fresh L1, up to three
  # times in all; its last run counts. Each attempt's watchdog is 900 s (the longest binary
  # takes about 400 s) or what is left of the budget, whichever is less; no attempt starts
  # with under 4 minutes left.
  # The queue holds the longest binaries first (their times with one L1 vCPU, 2026-12-08:
  # oci 300 s, podman 265 s, sandbox 245 s, volumes 235 s, stress 180 s, run 157 s, docker
  # 150 s, containerd 83 s, network 53 s, boot 52 s), so that the two lanes end close
  # together; a binary not in this list goes last.
  queue=$LOGS/queue
  for t in "${GUEST_TESTS[@]}"; do
    name=$(basename "$t"); name=${name%-*}
    rank=99
    for r in oci:1 podman:2 sandbox:3 volumes:4 stress:5 run:6 docker:7 containerd:8 network:9 boot:10; do
      [ "${r%:*}" = "$name" ] && rank=${r#*:}
    done
    printf '%s %s\n' "$rank" "$t"
  done | sort -n | cut -d' ' -f2- > "$queue"
  next_binary() {
    flock "$queue" sh -c 'head -n 1 "$1"; sed -i 1d "$1"' _ "$queue"
  }
  run_binary() { # run_binary TEST_BINARY LANE: its status goes to $LOGS/status.NAME
    local t=$1 lane=$2 name attempt left s=0 log
    name=$(basename "$t")
    log=$LOGS/attempt.$lane
    for attempt in 1 2 3; do
      left=$((BUDGET - SECONDS))
      if [ "$left" -lt 240 ]; then
        echo "tests/run.sh: ${left} s left of the ${BUDGET} s budget: ${name%-*} not run (attempt $attempt)" > "$log"
        s=124
        break
      fi
      step "guest tests: ${name%-*}, attempt $attempt (lane $lane)"
      tests/bed/nested.sh --cpus 1 --console-errors --timeout $((left < 900 ? left : 900)) -- \
        tests/bed/l1-inputs.sh "$t" --test-threads=2 > "$log" 2>&1
      s=$?
      if [ "$s" = 125 ] && [ "$attempt" != 3 ] && grep -q "^nested.sh: L1 died while COMMAND was running" "$log"; then
        echo "tests/run.sh: the nested bed's L1 died (not a test failure): running ${name%-*} again" >> "$log"
        flock "$LOGS/guest.log" cat "$log"
        continue
      fi
      break
    done
    echo "$s" > "$LOGS/status.$name"
    step "guest tests: ${name%-*} ended with status $s (lane $lane)"
    flock "$LOGS/guest.log" sh -c 'cat "$1"; cat "$1" >> "$2"' _ "$log" "$LOGS/guest.log"
  }
  lane() {
    local t
    while t=$(next_binary) && [ -n "$t" ]; do
      run_binary "$t" "$1"
    done
  }
  lane 1 & lane1=$!
  sleep 5 # the two L1s start a little apart: both at once slows each L1's boot
  lane 2
  wait "$lane1"
  for t in "${GUEST_TESTS[@]}"; do
    s=$(cat "$LOGS/status.$(basename "$t")" 2>/dev/null || echo 1)
    [ "$s" = 0 ] || guest_status=$s
  done
fi
set -e

# One closing line over both runs, from libtest's "test result:" lines.
read -r passed failed < <(cat "$LOGS/host.log" "$LOGS/guest.log" \
  | sed -n 's/^test result: [A-Za-z]*\. \([0-9]*\) passed; \([0-9]*\) failed.*/\1 \2/p' \
  | awk '{p += $1; f += $2} END {print p + 0, f + 0}')
guest_ran=$(grep -c '^test result:' "$LOGS/guest.log" || true)
if [ "$guest_ran" -lt "${#GUEST_TESTS[@]}" ]; then
  echo "tests/run.sh: $((${#GUEST_TESTS[@]} - guest_ran)) of ${#GUEST_TESTS[@]} guest test binaries did not run to the end (status $guest_status)" >&2
  failed=$((failed + 1))
fi
retried=$(grep -c '^microvm-test-retry:' "$LOGS/guest.log" || true)
if [ "$retried" -gt 0 ]; then
  echo "tests/run.sh: $retried guest run(s) triple-faulted in the emulator and ran again (nested bed only; tests/guest/src/lib.rs):" >&2
  grep '^microvm-test-retry:' "$LOGS/guest.log" >&2
fi
echo "$passed passed, $failed failed (in $SECONDS s)"
[ "$host_status" = 0 ] && [ "$guest_status" = 0 ] && [ "$failed" = 0 ]
