#!/usr/bin/env python3
"""Boot benchmarks for microvm (issue "Boot"). Standard library only.

  bench/boot.py local  MICROVM TINY_RESET TINY_PARK
      (a) VMM setup: process start to the first KVM_RUN, as the VMM reports it, and the wall
          time of the whole `microvm boot` process, tiny guest, median of 20;
      (b) VMM non-guest RSS with the tiny guest parked.
  bench/boot.py nested MICROVM KERNEL_DIR INITRAMFS
      (run where real KVM is, e.g. inside tests/bed/nested.sh)
      (c) wall time VMM start -> VMM exit after the smoke init reboots, and the boot-timer
          figure, median of 5, ours and `qemu-system-x86_64 -M microvm` side by side, same
          kernel, initramfs and command line, for vmlinux (PVH) and bzImage;
      (b) non-guest RSS of both VMMs with the smoke guest up (idle).
"""
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

CMDLINE = "console=ttyS0 reboot=k panic=-1 io_delay=none 8250.nr_uarts=1 quiet"
MEM_MIB = 128


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def timed(cmd, **kw):
    t0 = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True, **kw)
    return (time.monotonic() - t0) * 1e3, p


def ms_field(text, name):
    m = re.search(name + r" ([0-9.]+) ms", text)
    return float(m.group(1)) if m else None


def non_guest_rss_kib(pid, guest_bytes):
    """Sum of Rss over every mapping of `pid` except guest RAM (the anonymous mapping(s) the
    size of guest memory), from /proc/PID/smaps."""
    total, current_is_guest = 0, False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split()
            if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                start, end = (int(x, 16) for x in head[0].split("-"))
                anonymous = len(head) < 6
                current_is_guest = anonymous and (end - start) == guest_bytes
            elif head[0] == "Rss:" and not current_is_guest:
                total += int(head[1])
    return total


def rss_while_up(cmd, ready, console, timeout=120):
    """Starts `cmd`, waits for `ready` in the console file, returns non-guest RSS in KiB."""
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready is None or (os.path.exists(console) and ready in open(console, errors="replace").read()):
                time.sleep(0.5)
                return non_guest_rss_kib(p.pid, MEM_MIB << 20)
            if p.poll() is not None:
                raise SystemExit(f"{cmd[0]} exited with {p.returncode} before the guest was up")
            time.sleep(0.05)
        raise SystemExit(f"{cmd[0]}: guest not up within {timeout}s")
    finally:
        p.kill()
        p.wait()


def local(microvm, tiny_reset, tiny_park):
    firsts, walls = [], []
    for _ in range(20):
        wall, p = timed([microvm, "boot", "--kernel", tiny_reset])
        if p.returncode != 0:
            raise SystemExit(f"tiny guest failed: {p.stderr}")
        firsts.append(ms_field(p.stderr, "first KVM_RUN"))
        walls.append(wall)
    print(f"(a) VMM start -> first KVM_RUN (tiny guest, local /dev/kvm): median {median(firsts):.2f} ms "
          f"(min {min(firsts):.2f}, max {max(firsts):.2f}, n=20)")
    print(f"    whole `microvm boot` process, exec to exit:                median {median(walls):.2f} ms")
    with tempfile.TemporaryDirectory() as d:
        rss = rss_while_up([microvm, "boot", "--kernel", tiny_park, "--console", f"{d}/c"], None, None)
    print(f"(b) VMM non-guest RSS, tiny guest parked: {rss} KiB ({rss / 1024:.2f} MiB)")


def nested(microvm, kdir, initramfs):
    runs = 5
    with tempfile.TemporaryDirectory(dir="/run") as d:
        console = f"{d}/console"
        for kernel in ("vmlinux", "bzImage"):
            k = os.path.join(kdir, kernel)
            ours = [microvm, "boot", "--kernel", k, "--initrd", initramfs, "--memory", str(MEM_MIB),
                    "--cmdline", CMDLINE + " smoke_action=reboot", "--console", console]
            qemu = ["qemu-system-x86_64", "-M", "microvm,acpi=off", "-enable-kvm", "-cpu", "host",
                    "-m", str(MEM_MIB), "-smp", "1", "-device", "i8042", "-no-reboot", "-nodefaults",
                    "-nographic", "-serial", f"file:{console}", "-kernel", k, "-initrd", initramfs,
                    "-append", CMDLINE + " smoke_action=reboot"]
            ours_wall, ours_init, qemu_wall = [], [], []
            for _ in range(runs):  # interleaved, so both see the same machine state
                wall, p = timed(ours)
                if p.returncode != 0 or "guest rebooted" not in p.stderr:
                    raise SystemExit(f"microvm boot failed: {p.stderr}")
                ours_wall.append(wall)
                ours_init.append(ms_field(p.stderr, "guest init"))
                wall, p = timed(qemu)
                if p.returncode != 0 or "init running" not in open(console, errors="replace").read():
                    raise SystemExit(f"qemu failed ({p.returncode}): {p.stderr}")
                qemu_wall.append(wall)
            print(f"(c) {kernel}: microvm start->exit median {median(ours_wall):.0f} ms "
                  f"(boot-timer: guest init at {median(ours_init):.0f} ms); "
                  f"qemu -M microvm median {median(qemu_wall):.0f} ms; "
                  f"ratio ours/qemu {median(ours_wall) / median(qemu_wall):.2f} (n={runs} each)")
        k = os.path.join(kdir, "vmlinux")
        idle = CMDLINE + " smoke_action=idle"
        ours = rss_while_up([microvm, "boot", "--kernel", k, "--initrd", initramfs, "--memory", str(MEM_MIB),
                             "--cmdline", idle, "--console", console], "init running", console)
        os.unlink(console)
        qemu = rss_while_up(["qemu-system-x86_64", "-M", "microvm,acpi=off", "-enable-kvm", "-cpu", "host",
                             "-m", str(MEM_MIB), "-device", "i8042", "-nodefaults", "-nographic",
                             "-serial", f"file:{console}", "-kernel", k, "-initrd", initramfs, "-append", idle],
                            "init running", console)
        print(f"(b) non-guest RSS with the smoke guest up: microvm {ours / 1024:.2f} MiB, "
              f"qemu -M microvm {qemu / 1024:.2f} MiB")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "local":
        local(*sys.argv[2:])
    elif len(sys.argv) == 5 and sys.argv[1] == "nested":
        nested(*sys.argv[2:])
    else:
        raise SystemExit(__doc__)
