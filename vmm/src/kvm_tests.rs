//! Tests on the local /dev/kvm with a tiny hand-assembled guest (no Linux): a few instructions
//! in an ELF that the VMM enters in 64-bit mode, so they run even on an emulating /dev/kvm.
//! They live in the crate to read the guest's memory.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::process::Command;
use std::time::{Duration, Instant};

use test_support::tiny::elf;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::config::{Console, VmConfig};
use crate::exit::VmExit;
use crate::seccomp::{self, SeccompMode, ThreadKind};
use crate::{PauseError, PauseHandle, RunReport, Vmm};

/// Where the guest counts, and where the test tells it to stop (free RAM below 1 MiB).
const COUNTER: u32 = 0x5_0000;
const STOP: u32 = 0x5_1000;
/// A bound on every wait for the guest: failing, not hanging, when it stalls.
const PATIENCE: Duration = Duration::from_secs(60);

/// `loop: inc dword [COUNTER]; cmp dword [STOP], 0; je loop`, then an i8042 reset (a clean
/// reboot that ends `run`) and `hlt; jmp $-1`.
fn counting_guest() -> Vec<u8> {
    let mut code = vec![0xff, 0x04, 0x25];
    code.extend_from_slice(&COUNTER.to_le_bytes());
    code.extend_from_slice(&[0x83, 0x3c, 0x25]);
    code.extend_from_slice(&STOP.to_le_bytes());
    code.extend_from_slice(&[0x00, 0x74, 0xef]); // imm8 0; je -17, back to the inc
    code.extend_from_slice(&[0xb0, 0xfe, 0xe6, 0x64, 0xf4, 0xeb, 0xfd]);
    code
}

/// Runs this test again in a child process with `MICROVM_TEST_CHILD` set: seccomp's mode is
/// per process and its filters last for a thread's life, so the confined run gets its own.
/// Returns whether this is the child.
fn in_child(test: &str) -> bool {
    const CHILD: &str = "MICROVM_TEST_CHILD";
    if std::env::var_os(CHILD).is_some() {
        return true;
    }
    let name = format!("{}::{test}", module_path!().split_once("::").unwrap().1);
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", &name, "--nocapture"])
        .env(CHILD, "1")
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && stdout.contains("1 passed"), "{}\n{stdout}\n{stderr}", out.status);
    false
}

/// Waits until the counter differs from `from`.
fn wait_for_progress(read: &impl Fn() -> u32, from: u32, what: &str) {
    let start = Instant::now();
    while read() == from {
        assert!(start.elapsed() < PATIENCE, "no progress {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The OCI monitor's case: a two-vCPU VM (the second never started, as a guest leaves it
/// before its startup IPI), confined as in production, paused and resumed from a runtime
/// thread. No guest instruction runs while paused, the guest runs on after each resume, and
/// the pauses are not taken for a power-off.
#[test]
fn a_paused_guest_makes_no_progress_until_resumed() {
    if !in_child("a_paused_guest_makes_no_progress_until_resumed") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("vmm-pause-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kernel = dir.join("counting.elf");
    std::fs::write(&kernel, elf(&counting_guest())).unwrap();
    let mut config = VmConfig::new(&kernel);
    config.mem_mib = 32;
    config.vcpus = 2;
    config.console = Console::Discard;
    config.seccomp = SeccompMode::Enforce;
    let vmm = Vmm::boot(&config, Instant::now()).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let mem = vmm._mem.clone();
    let handle = vmm.pause_handle();

    let runtime = {
        let handle = handle.clone();
        std::thread::spawn(move || {
            seccomp::install(ThreadKind::Runtime).unwrap();
            run_paused_and_resumed(vmm, &handle, &mem)
        })
    };
    let report = runtime.join().unwrap();
    assert_eq!(report.exit, VmExit::Reboot);
    assert_eq!(handle.pause(PATIENCE), Err(PauseError::Stopped));
    assert!(!handle.is_paused());
}

/// Runs the counting guest, pauses and resumes it three times, then stops it.
fn run_paused_and_resumed(vmm: Vmm, handle: &PauseHandle, mem: &GuestMemoryMmap) -> RunReport {
    let read = || mem.read_obj::<u32>(GuestAddress(COUNTER.into())).unwrap();
    let vm = std::thread::spawn(move || vmm.run());
    wait_for_progress(&read, 0, "before the first pause");
    for round in 0..3 {
        handle.pause(PATIENCE).unwrap();
        assert!(handle.is_paused());
        let paused_at = read();
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(read(), paused_at, "round {round}: the guest ran while paused");
        assert!(!vm.is_finished(), "round {round}: the VM stopped while paused");
        handle.resume();
        assert!(!handle.is_paused());
        wait_for_progress(&read, paused_at, "after resume");
    }
    mem.write_obj(1u32, GuestAddress(STOP.into())).unwrap();
    let start = Instant::now();
    while !vm.is_finished() {
        assert!(start.elapsed() < PATIENCE, "the guest did not stop");
        std::thread::sleep(Duration::from_millis(1));
    }
    vm.join().unwrap().unwrap()
}
