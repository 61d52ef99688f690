//! Hostile-guest tests (issue "Harden the boundary"): a tiny guest of ours (not Linux) drives
//! the virtio-blk device by hand with the malformed requests that broke VMMs before. For each
//! the VMM must reject the request, keep running (the guest goes on to reset the machine, a
//! clean exit), leave the disk untouched, and stay small. Runs on any /dev/kvm.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use test_support::tiny::{blk::*, blk_driver, elf};
use test_support::TempDir;

/// A read (header at HDR is zeroed: type IN, sector 0) into `data`, then the status byte.
fn read_request(data: (u32, u32, u32, u32)) -> Vec<(u32, u32, u32, u32)> {
    vec![(HDR, 0, 16, NEXT | 1 << 16), data, (HDR + 0x20, 0, 1, WRITE)]
}

struct Attack {
    name: &'static str,
    descs: Vec<(u32, u32, u32, u32)>,
    avail_idx: u16,
    notifies: u32,
    /// The used ring idx the guest waits for (bounded): how many chains come back.
    used: u8,
    memory_mib: u32,
    /// What the VMM's log must say, if anything.
    logged: Option<&'static str>,
    /// Guest memory the device must leave alone: (address, value the guest put there).
    canary: Option<(u32, u32)>,
}

impl Attack {
    fn new(name: &'static str, descs: Vec<(u32, u32, u32, u32)>) -> Self {
        Attack { name, descs, avail_idx: 1, notifies: 1, used: 1, memory_mib: 128, logged: Some("virtio-blk: request 0 rejected"), canary: None }
    }
}

/// Boots the attack; returns (exit code, stderr, peak RSS in KiB of the VMM).
fn run(attack: &Attack) -> (Option<i32>, String, u64) {
    let dir = TempDir::new("hostile-guest");
    let kernel = dir.path("guest.elf");
    std::fs::write(&kernel, elf(&blk_driver(&attack.descs, &[0], attack.avail_idx, attack.notifies, attack.used, attack.canary))).unwrap();
    let disk = dir.path("disk.img");
    std::fs::write(&disk, vec![0x5au8; 8192]).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_microvm"))
        .args(["boot", "--memory", &attack.memory_mib.to_string(), "--kernel"])
        .arg(&kernel)
        .arg(format!("--disk={}", disk.display()))
        .env_remove("MICROVM_SECCOMP")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status_path = format!("/proc/{}/status", child.id());
    let (mut peak, deadline) = (0, Instant::now() + Duration::from_secs(60));
    let status = loop {
        // VmHWM: the most resident memory the VMM had so far.
        if let Ok(status) = std::fs::read_to_string(&status_path) {
            let hwm = status.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.trim().trim_end_matches(" kB").parse().ok());
            peak = peak.max(hwm.unwrap_or(0));
        }
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "{}: the VMM hangs", attack.name);
        std::thread::sleep(Duration::from_millis(5));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert_eq!(std::fs::read(&disk).unwrap(), vec![0x5au8; 8192], "{}: the disk changed", attack.name);
    (status.code(), stderr, peak)
}

#[test]
fn malformed_requests_are_rejected_and_the_vmm_stays_up_and_small() {
    let attacks = vec![
        // A next index past the queue's end (a chain "longer than the queue").
        Attack::new("next out of range", vec![(HDR, 0, 16, NEXT | 9 << 16)]),
        // Harmless (a read of nothing) but must not trip anything.
        Attack { logged: None, ..Attack::new("zero-length data", read_request((HDR + 0x100, 0, 0, NEXT | WRITE | 2 << 16))) },
        Attack::new("4 GiB length", read_request((HDR + 0x100, 0, u32::MAX, NEXT | WRITE | 2 << 16))),
        // A read whose data buffer the device may only read: it must not write into it (it
        // takes only device-writable descriptors as a read's destination: it reads nothing).
        Attack {
            logged: None,
            canary: Some((HDR + 0x100, 0xa5a5_a5a5)),
            ..Attack::new("device write into a readable buffer", read_request((HDR + 0x100, 0, 512, NEXT | 2 << 16)))
        },
        // 128 MiB of memory: a buffer that starts inside it and ends outside.
        Attack::new("buffer past the end of memory", read_request(((128 << 20) - 256, 0, 512, NEXT | WRITE | 2 << 16))),
        // 4 GiB of memory: RAM stops at 3 GiB, the MMIO gap follows.
        Attack { memory_mib: 4096, ..Attack::new("buffer across the MMIO gap", read_request((0xc000_0000 - 256, 0, 512, NEXT | WRITE | 2 << 16))) },
        // The avail index jumps far past what the queue can hold: nothing to process, and
        // nothing comes back (the guest's wait gives up).
        Attack { avail_idx: 0x8000, used: 1, logged: None, ..Attack::new("avail index jump", read_request((HDR + 0x100, 0, 512, NEXT | WRITE | 2 << 16))) },
        // A valid read notified 20,000 times.
        Attack { notifies: 20_000, logged: None, ..Attack::new("notification storm", read_request((HDR + 0x100, 0, 512, NEXT | WRITE | 2 << 16))) },
    ];
    // The canary works: a proper read into a device-writable buffer does change it, and the
    // guest then faults instead of resetting.
    let control = Attack {
        logged: None,
        canary: Some((HDR + 0x100, 0xa5a5_a5a5)),
        ..Attack::new("control", read_request((HDR + 0x100, 0, 512, NEXT | WRITE | 2 << 16)))
    };
    let (code, stderr, _) = run(&control);
    assert_eq!(code, Some(1), "the canary saw no write: {stderr}");
    for attack in &attacks {
        let (code, stderr, peak_kib) = run(attack);
        assert_eq!(code, Some(0), "{}: {stderr}", attack.name);
        assert!(stderr.contains("microvm: guest rebooted;"), "{}: the guest ran on: {stderr}", attack.name);
        if let Some(logged) = attack.logged {
            assert!(stderr.contains(logged), "{}: {logged:?} not in {stderr}", attack.name);
        }
        // Guest memory is mapped lazily and this guest touches little of it; the VMM's own
        // memory is a few MiB. A guest-sized allocation on the host would show here.
        assert!(peak_kib < 64 * 1024, "{}: peak RSS {peak_kib} KiB", attack.name);
    }
}
