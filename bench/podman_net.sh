#!/usr/bin/env bash
# Networking of OCI containers (issue "Networking"): a busybox httpd behind podman's default
# bridge and `-p`, with microvm as the OCI runtime against runc, in the same place: the
# latency of 100 sequential HTTP GETs of a small page (median and 90th percentile) and the
# throughput of a 64 MiB download (container -> host, median of 3). Run it where guests boot
# (hardware KVM, or the nested bed: tests/bed/nested.sh -- bench/podman_net.sh). Needs podman,
# runc and CNI's plugins (tests/bed/setup.sh), a release build, the agent and a kernel.
set -euo pipefail
cd "$(dirname "$0")/.."
bench_name=podman-net
# shellcheck source=podman_lib.sh
source bench/podman_lib.sh
port=18090
for runtime in runc "$scratch/microvm"; do
	port=$((port + 1))
	# shellcheck disable=SC2086
	podman $P --runtime "$runtime" run -d -p "$port:80" localhost/bench-busybox sh -c \
		'mkdir /www && echo hello > /www/index.html && dd if=/dev/zero of=/www/big bs=1M count=64 2>/dev/null && exec httpd -f -p 80 -h /www' >/dev/null
	python3 - "$port" "$(basename "$runtime")" <<'EOP'
import statistics, sys, time, urllib.request
port, name = sys.argv[1], sys.argv[2]
url = f"http://127.0.0.1:{port}"
deadline = time.time() + 180
while True:
    try:
        urllib.request.urlopen(url + "/index.html", timeout=5).read()
        break
    except OSError:
        if time.time() > deadline:
            sys.exit(f"{name}: the published port never answered")
        time.sleep(0.25)
times = []
for _ in range(100):
    t0 = time.perf_counter()
    assert urllib.request.urlopen(url + "/index.html", timeout=10).read() == b"hello\n"
    times.append((time.perf_counter() - t0) * 1000)
times.sort()
rates = []
for _ in range(3):
    t0 = time.perf_counter()
    n = len(urllib.request.urlopen(url + "/big", timeout=120).read())
    assert n == 64 << 20, n
    rates.append(64 / (time.perf_counter() - t0))
print(f"{name}: 100 GETs median {statistics.median(times):.2f} ms, p90 {times[89]:.2f} ms; "
      f"64 MiB download median {statistics.median(rates):.1f} MiB/s ({', '.join(f'{r:.1f}' for r in rates)})")
EOP
	# shellcheck disable=SC2086
	podman $P rm -af -t 1 >/dev/null
done
