//! The real guest kernel (kernel-config/) booted by `microvm boot` with the smoke initramfs
//! (images/): both kernel formats and entry protocols, SMP, each way a guest can stop.
//!
//! Inputs, set by tests/run.sh: MICROVM_BIN (the binary under test), MICROVM_KERNEL_DIR
//! (holding vmlinux and bzImage), MICROVM_SMOKE_INITRAMFS. Missing inputs fail the test.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::path::PathBuf;

use guest_tests::retry_once_after_emulator_boot_fault;
use test_support::tiny::{elf, INT3};
use test_support::{input, Microvm, Outcome, TempDir};

fn require_real_kvm() {
    assert!(
        !std::path::Path::new("/sys/module/kvm_pvm").exists(),
        "/dev/kvm here is PVM: Linux guests would run ~1000x slower; run through tests/run.sh"
    );
}

fn kernel(name: &str) -> PathBuf {
    input("MICROVM_KERNEL_DIR").join(name)
}

/// `microvm boot` of the smoke initramfs. A boot the nested bed's emulator broke is tried
/// once more (see `retry_once_after_emulator_boot_fault`).
fn boot(kernel_file: &str, extra: &[&str]) -> Outcome {
    require_real_kvm();
    let once = || {
        Microvm::new(input("MICROVM_BIN"))
            .args(["boot", "--kernel"])
            .arg(kernel(kernel_file))
            .arg("--initrd")
            .arg(input("MICROVM_SMOKE_INITRAMFS"))
            .args(extra)
            .run()
    };
    retry_once_after_emulator_boot_fault(1, once, |o| (o.code, &o.stderr))
}

fn assert_smoke_ran(out: &Outcome, cpus: u32) {
    let line = format!("microvm-smoke: init running, {cpus} CPUs online");
    assert!(out.stdout.contains(&line), "{line:?} missing: {out:?}");
    assert!(
        !out.stderr.contains("guest init -"),
        "boot timer not written: {out:?}"
    );
}

#[test]
fn vmlinux_boots_through_pvh_and_powers_off() {
    let out = boot("vmlinux", &[]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_smoke_ran(&out, 1);
    assert!(out.stderr.contains("microvm: guest powered off"), "{out:?}");
}

#[test]
fn bzimage_boots_through_the_linux_boot_protocol_and_powers_off() {
    let out = boot("bzImage", &[]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_smoke_ran(&out, 1);
    assert!(out.stderr.contains("microvm: guest powered off"), "{out:?}");
}

#[test]
fn two_vcpus_come_online_with_either_entry() {
    for k in ["vmlinux", "bzImage"] {
        let out = boot(k, &["--cpus", "2"]);
        assert_eq!(out.code, Some(0), "{k}: {out:?}");
        assert_smoke_ran(&out, 2);
    }
}

#[test]
fn guest_reboot_ends_the_vm_cleanly() {
    let out = boot("vmlinux", &["--append", "smoke_action=reboot"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_smoke_ran(&out, 1);
    assert!(out.stderr.contains("microvm: guest rebooted"), "{out:?}");
}

#[test]
fn guest_panic_fails_with_the_panic_message() {
    let out = boot("vmlinux", &["--append", "smoke_action=panic"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr.contains(
            "microvm: guest kernel panic: Kernel panic - not syncing: Attempted to kill init!"
        ),
        "{out:?}"
    );
}

#[test]
fn guest_larger_than_the_mmio_gap_boots() {
    let out = boot(
        "vmlinux",
        &["--memory", "3584", "--append", "smoke_action=reboot"],
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_smoke_ran(&out, 1);
}

#[test]
fn console_file_takes_the_guest_output() {
    let dir = TempDir::new("console");
    let log = dir.path("console.log");
    let out = boot("bzImage", &["--console", log.to_str().unwrap_or_default()]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(!out.stdout.contains("microvm-smoke"), "{out:?}");
    let console = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        console.contains("microvm-smoke: init running, 1 CPUs online"),
        "{console}"
    );
}

#[test]
fn triple_fault_on_hardware_kvm_fails_with_registers() {
    require_real_kvm();
    let dir = TempDir::new("tf");
    let k = dir.path("int3.elf");
    std::fs::write(&k, elf(INT3)).unwrap_or_else(|e| panic!("write {}: {e}", k.display()));
    let out = Microvm::new(input("MICROVM_BIN"))
        .args(["boot", "--kernel"])
        .arg(&k)
        .run();
    assert_eq!(out.code, Some(1), "{out:?}");
    // Intel KVM keeps the faulting state; AMD's resets the vCPU before reporting the shutdown,
    // so only the presence of the registers is common to both.
    assert!(
        out.stderr.contains("microvm: guest triple fault: rip=0x"),
        "{out:?}"
    );
}

#[test]
fn virtio_disks_are_read_and_written_through_the_guest() {
    let dir = TempDir::new("disk");
    let (rw, ro) = (dir.path("rw.img"), dir.path("ro.img"));
    for (path, tag) in [(&rw, b"RW-DISK-HEADER.."), (&ro, b"RO-DISK-HEADER..")] {
        let mut image = tag.to_vec();
        image.resize(1 << 20, 0);
        std::fs::write(path, image).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }
    let rw_arg = format!("--disk={}", rw.display());
    let out = boot(
        "vmlinux",
        &[&rw_arg, "--append", "smoke_write=written-by-guest"],
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout
            .contains("microvm-smoke: disk vda 1048576 bytes, starts with \"RW-DISK-HEADER..\""),
        "{out:?}"
    );
    assert!(
        out.stdout
            .contains("microvm-smoke: disk vda wrote 16 bytes at 512"),
        "{out:?}"
    );
    let image = std::fs::read(&rw).unwrap_or_default();
    assert_eq!(&image[512..528], b"written-by-guest");

    // Read-only: the guest sees the disk and cannot write it; the image stays as it was.
    let ro_arg = format!("--ro-disk={}", ro.display());
    let before = std::fs::read(&ro).unwrap_or_default();
    let out = boot(
        "vmlinux",
        &[&ro_arg, "--append", "smoke_write=should-not-land"],
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout
            .contains("disk vda 1048576 bytes, starts with \"RO-DISK-HEADER..\""),
        "{out:?}"
    );
    // The guest's stderr is the console too, which `boot` puts on stdout. Linux refuses either
    // the open for writing or the write itself, depending on version.
    assert!(
        out.stdout.contains("microvm-smoke: error: disk vda: "),
        "{out:?}"
    );
    assert!(!out.stdout.contains("disk vda wrote"), "{out:?}");
    assert_eq!(std::fs::read(&ro).unwrap_or_default(), before);
}
