#!/usr/bin/env python3
"""`microvm run` benchmarks (issue "Run"). Standard library only.

  bench/run.py pack MICROVM BUSYBOX_ROOTFS
      packing time, cold (empty cache) and cached, for the busybox tree and a ~100 MB tree
      (made here: 100 files of 1 MiB of random bytes plus the busybox tree), median of 5.
  bench/run.py run MICROVM KERNEL AGENT BUSYBOX_ROOTFS
      (where real KVM is, e.g. inside tests/bed/nested.sh)
      `run <busybox> true` end to end, median of 10, split into VMM setup / kernel boot to
      agent ready / agent ready to process start (of which: the agent building the container)
      / process exit to VMM exit, confined (jail + seccomp, the default) and unconfined
      (`--seccomp off --no-jail`) interleaved; and stdout
      throughput through the agent (256 MiB) next to `cat` of the same data on this host.
  bench/run.py inputs MICROVM KERNEL AGENT BUSYBOX_ROOTFS
      (inside tests/bed/nested.sh) `run <busybox> true` with the binary, kernel and agent
      read where they lie (the bed's 9p share) against copies in L1's memory (/run, what
      tests/bed/l1-inputs.sh does for the guest tests), interleaved, median of 10 each: VMM
      setup, boot to agent ready, wall.
  bench/run.py versions MICROVM_BEFORE MICROVM_AFTER KERNEL AGENT BUSYBOX_ROOTFS
      (inside tests/bed/nested.sh) the same figures for two builds of microvm (before and
      after a change), all inputs in L1's memory, interleaved, median of 10 each.
  bench/run.py network MICROVM KERNEL AGENT BUSYBOX_ROOTFS
      (inside tests/bed/nested.sh) `--network user` against `--network none`: the boot cost
      of the network card and passt (interleaved, median of 10); TCP throughput container ->
      host (through 10.0.2.2) and host -> container (through `-p`), 64 MiB each, next to the
      same transfer over this host's loopback; and 100 HTTP GETs to a busybox httpd behind
      `-p` (median and 90th percentile per request), next to the same httpd run on the host.
"""
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time


def timed(cmd, env=None, **kw):
    t0 = time.monotonic()
    p = subprocess.run(cmd, env=env, **kw)
    return (time.monotonic() - t0) * 1e3, p


def pack(microvm, busybox):
    with tempfile.TemporaryDirectory() as d:
        big = os.path.join(d, "tree100")
        shutil.copytree(busybox, big, symlinks=True)
        os.makedirs(os.path.join(big, "data"))
        for i in range(100):
            with open(os.path.join(big, "data", f"f{i}"), "wb") as f:
                f.write(os.urandom(1 << 20))
        for name, tree in (("busybox", busybox), ("~100 MB", big)):
            cold, warm = [], []
            for i in range(5):
                env = dict(os.environ, MICROVM_CACHE=os.path.join(d, f"cache-{name[0]}-{i}"))
                ms, p = timed([microvm, "pack", tree], env=env, capture_output=True)
                assert p.returncode == 0 and b"packed" in p.stderr, p.stderr
                cold.append(ms)
                ms, p = timed([microvm, "pack", tree], env=env, capture_output=True)
                assert p.returncode == 0 and b"cached" in p.stderr, p.stderr
                warm.append(ms)
            print(f"pack {name}: cold median {statistics.median(cold):.0f} ms, cached {statistics.median(warm):.0f} ms (n=5, whole `microvm pack` process)")


def run(microvm, kernel, agent, busybox):
    with tempfile.TemporaryDirectory(dir="/tmp") as d:
        local = os.path.join(d, "rootfs")
        shutil.copytree(busybox, local, symlinks=True)  # off the 9p share in the nested bed
        kernel = shutil.copy(kernel, os.path.join(d, "vmlinux"))  # likewise: 9p reads are noisy
        env = dict(os.environ, MICROVM_CACHE=os.path.join(d, "cache"), MICROVM_AGENT=agent,
                   MICROVM_RUNTIME_DIR=os.path.join(d, "run"), MICROVM_TIMINGS="1")
        base = [microvm, "run", "--kernel", kernel, local, "--"]
        subprocess.run(base + ["true"], env=env, check=True, capture_output=True)  # pack once
        # Confined (the default: jail and seccomp) and not, interleaved so that both see the
        # same machine; the issue "Harden the boundary" allows the first 5% over the second.
        ways = {"confined": [], "unconfined": ["--seccomp", "off", "--no-jail"]}
        phases = {w: {k: [] for k in ("setup", "boot_to_agent", "agent_to_process", "container_setup",
                                      "exit_to_vm_exit", "wall")} for w in ways}
        for _ in range(10):
            for way, flags in ways.items():
                cmd = [microvm, "run", *flags, "--kernel", kernel, local, "--", "true"]
                ms, p = timed(cmd, env=env, capture_output=True, text=True)
                assert p.returncode == 0, p.stderr
                t = phases_of(p.stderr)
                ph = phases[way]
                ph["setup"].append(t["first_kvm_run"])
                ph["boot_to_agent"].append(t["agent_ready"] - t["first_kvm_run"])
                ph["agent_to_process"].append(t["process_start"] - t["agent_ready"])
                # Part of agent_to_process: the agent building the container, as it reports it.
                ph["container_setup"].append(t["container_setup"])
                ph["exit_to_vm_exit"].append(t["vm_exit"] - t["process_exit"])
                ph["wall"].append(ms)
        for way in ways:
            med = {k: statistics.median(v) for k, v in phases[way].items()}
            print(f"run <busybox> true, {way}, median of 10: " + ", ".join(f"{k} {v:.0f} ms" for k, v in med.items()))
        ratio = statistics.median(phases["confined"]["wall"]) / statistics.median(phases["unconfined"]["wall"])
        print(f"confined / unconfined wall: {ratio:.3f}")
        size = 256 << 20
        ms_vm, p = timed(base + ["head", "-c", str(size), "/dev/zero"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        assert p.returncode == 0, p.stderr
        ms_0, _ = timed(base + ["true"], env=env, capture_output=True)
        ms_host, _ = timed(f"head -c {size} /dev/zero | cat > /dev/null", shell=True)
        print(f"stdout throughput: {size / (1 << 20) / ((ms_vm - ms_0) / 1e3):.0f} MiB/s through the agent "
              f"(256 MiB; run minus an empty run); host `head | cat`: {size / (1 << 20) / (ms_host / 1e3):.0f} MiB/s")


def phases_of(stderr):
    line = [l for l in stderr.splitlines() if l.startswith("microvm-timings:")][-1]
    return {k: float(v) for k, v in (kv.split("=") for kv in line.split()[1:]) if v != "-"}


def inputs(microvm, kernel, agent, busybox):
    with tempfile.TemporaryDirectory(dir="/run") as d:
        os.makedirs(os.path.join(d, "bin"))
        ways = {"9p share": (microvm, kernel, agent),
                "L1 memory": tuple(shutil.copy(f, os.path.join(d, "bin", os.path.basename(f)))
                                   for f in (microvm, kernel, agent))}
        for way, phases in interleaved(ways, busybox, d).items():
            print(f"run <busybox> true, inputs on the {way}, median of 10: " + phases)


def versions(before, after, kernel, agent, busybox):
    with tempfile.TemporaryDirectory(dir="/run") as d:
        os.makedirs(os.path.join(d, "bin"))
        k, a = (shutil.copy(f, os.path.join(d, "bin", os.path.basename(f))) for f in (kernel, agent))
        ways = {}
        for name, binary in (("before", before), ("after", after)):
            os.makedirs(os.path.join(d, name))
            ways[name] = (shutil.copy(binary, os.path.join(d, name, "microvm")), k, a)
        for way, phases in interleaved(ways, busybox, d).items():
            print(f"run <busybox> true, {way} ({ways[way][0]}), median of 10: " + phases)


def interleaved(ways, busybox, d):
    """Runs `run <busybox> true` 10 times with each way's (binary, kernel, agent[, flags]), in
    turn, so that all see the same machine state; returns each way's median phases as text."""
    local = os.path.join(d, "rootfs")
    shutil.copytree(busybox, local, symlinks=True)
    env = dict(os.environ, MICROVM_CACHE=os.path.join(d, "cache"),
               MICROVM_RUNTIME_DIR=os.path.join(d, "run"), MICROVM_TIMINGS="1")
    first = next(iter(ways.values()))
    subprocess.run([first[0], "run", "--kernel", first[1], "--agent", first[2], local, "--", "true"],
                   env=env, check=True, capture_output=True)  # pack once
    got = {w: {"setup": [], "boot_to_agent": [], "wall": []} for w in ways}
    for _ in range(10):
        for way, (binary, k, a, *flags) in ways.items():
            ms, p = timed([binary, "run", *flags, "--kernel", k, "--agent", a, local, "--", "true"],
                          env=env, capture_output=True, text=True)
            assert p.returncode == 0, p.stderr
            t = phases_of(p.stderr)
            got[way]["setup"].append(t["first_kvm_run"])
            got[way]["boot_to_agent"].append(t["agent_ready"] - t["first_kvm_run"])
            got[way]["wall"].append(ms)
    return {way: ", ".join(f"{k} {statistics.median(v):.0f} ms" for k, v in ph.items())
            for way, ph in got.items()}


def network(microvm, kernel, agent, busybox):
    import socket
    import threading
    with tempfile.TemporaryDirectory(dir="/run") as d:
        os.makedirs(os.path.join(d, "bin"))
        m, k, a = (shutil.copy(f, os.path.join(d, "bin", os.path.basename(f))) for f in (microvm, kernel, agent))
        ways = {"--network none": (m, k, a, "--network", "none"), "--network user": (m, k, a, "--network", "user")}
        if os.environ.get("BENCH_SKIP_BOOT"):
            shutil.copytree(busybox, os.path.join(d, "rootfs"), symlinks=True)
        else:
            for way, phases in interleaved(ways, busybox, d).items():
                print(f"run <busybox> true, {way}, median of 10: " + phases)
        local = os.path.join(d, "rootfs")
        env = dict(os.environ, MICROVM_CACHE=os.path.join(d, "cache"), MICROVM_RUNTIME_DIR=os.path.join(d, "run"))
        base = [m, "run", "--kernel", k, "--agent", a]
        size = 64 << 20

        def free_port():
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                return s.getsockname()[1]

        def sink(listener, out):
            conn, _ = listener.accept()
            t0, got = None, 0
            while chunk := conn.recv(1 << 16):
                t0 = t0 or time.monotonic()
                got += len(chunk)
            out.append((got, time.monotonic() - t0))

        def host_to(port, size):
            with socket.create_connection(("127.0.0.1", port), timeout=300) as c:
                t0 = time.monotonic()
                c.sendall(bytes(size))
                c.shutdown(socket.SHUT_WR)
                while c.recv(1 << 16):
                    pass
                return time.monotonic() - t0

        def mib_s(seconds, size=size):
            return f"{size / (1 << 20) / seconds:.1f} MiB/s"

        # Container -> host: the host's sink counts from the first byte to end of file.
        with socket.create_server(("0.0.0.0", 0)) as listener:
            port, got = listener.getsockname()[1], []
            t = threading.Thread(target=sink, args=(listener, got))
            t.start()
            p = subprocess.run(base + [local, "--", "sh", "-c", f"head -c {size} /dev/zero | nc 10.0.2.2 {port}"],
                               env=env, capture_output=True, text=True)
            t.join()
            assert p.returncode == 0 and got[0][0] == size, (p.stderr, got)
            vm = got[0][1]
        with socket.create_server(("127.0.0.1", 0)) as listener:
            port, got = listener.getsockname()[1], []
            t = threading.Thread(target=sink, args=(listener, got))
            t.start()
            subprocess.run(f"head -c {size} /dev/zero | busybox nc 127.0.0.1 {port}", shell=True, check=True)
            t.join()
            print(f"TCP container -> host: {mib_s(vm)} (64 MiB); host loopback, busybox nc: {mib_s(got[0][1])}")

        # Host -> container, through -p: the guest's nc reads to end of file and exits. Its
        # stdin stays open: a guest that half-closes first trips passt's defect (DESIGN.md).
        port = free_port()
        guest = subprocess.Popen(base + ["-p", f"{port}:5001", local, "--", "sh", "-c", "echo ready; sleep 1000 | nc -l -p 5001 > /dev/null"],
                                 env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert guest.stdout.readline() == "ready\n"
        time.sleep(1)
        # Smaller: each frame into the guest costs an interrupt, slow under emulation.
        size_in = 16 << 20
        vm = host_to(port, size_in)
        guest.wait(timeout=120)
        port = free_port()
        server = subprocess.Popen(["busybox", "nc", "-l", "-p", str(port)], stdout=subprocess.DEVNULL)
        time.sleep(0.5)
        print(f"TCP host -> container (-p): {mib_s(vm, size_in)} (16 MiB, until the container's side closed); "
              f"host loopback, busybox nc: {mib_s(host_to(port, size_in), size_in)}")
        server.wait(timeout=60)

        # Request latency: 100 GETs of a small page, each on a new connection.
        def gets(port):
            times = []
            for _ in range(100):
                t0 = time.monotonic()
                with socket.create_connection(("127.0.0.1", port), timeout=30) as c:
                    c.sendall(b"GET / HTTP/1.0\r\n\r\n")
                    while c.recv(1 << 16):
                        pass
                times.append((time.monotonic() - t0) * 1e3)
            times.sort()
            return f"median {statistics.median(times):.2f} ms, p90 {times[89]:.2f} ms"
        port = free_port()
        script = "mkdir /www && echo hello > /www/index.html && echo ready && exec httpd -f -p 80 -h /www"
        guest = subprocess.Popen(base + ["--init", "-p", f"{port}:80", local, "--", "sh", "-c", script],
                                 env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert guest.stdout.readline() == "ready\n"
        time.sleep(1)
        vm = gets(port)
        guest.terminate()
        guest.wait(timeout=60)
        www = os.path.join(d, "www")
        os.makedirs(www)
        with open(os.path.join(www, "index.html"), "w") as f:
            f.write("hello\n")
        port = free_port()
        server = subprocess.Popen(["busybox", "httpd", "-f", "-p", f"127.0.0.1:{port}", "-h", www])
        time.sleep(0.5)
        print(f"100 HTTP GETs (busybox httpd): behind -p {vm}; on the host {gets(port)}")
        server.terminate()


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "pack":
        pack(*sys.argv[2:])
    elif len(sys.argv) == 6 and sys.argv[1] == "run":
        run(*sys.argv[2:])
    elif len(sys.argv) == 6 and sys.argv[1] == "inputs":
        inputs(*sys.argv[2:])
    elif len(sys.argv) == 7 and sys.argv[1] == "versions":
        versions(*sys.argv[2:])
    elif len(sys.argv) == 6 and sys.argv[1] == "network":
        network(*sys.argv[2:])
    else:
        raise SystemExit(__doc__)
