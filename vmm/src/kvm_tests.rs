//! Tests on the local /dev/kvm with a tiny hand-assembled guest (no Linux): a few instructions
//! in an ELF that the VMM enters in 64-bit mode, so they run even on an emulating /dev/kvm.
//! They live in the crate to read the guest's memory.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::process::Command;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::config::{Console, VmConfig};
use crate::exit::VmExit;
use crate::seccomp::{self, SeccompMode, ThreadKind};
use crate::{PauseError, PauseHandle, RunReport, Vmm};

/// Where the guest counts, and where the test tells it to stop (free RAM below 1 MiB).
const COUNTER: u32 = 0x5_0000;
const STOP: u32 = 0x5_1000;
/// Where the ELF's code is loaded and entered (1 MiB).
const LOAD_ADDR: u64 = 0x10_0000;
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

/// An ELF64 executable with one PT_LOAD segment holding `code` at [`LOAD_ADDR`] (as
/// tests/support's `tiny::elf`, which this crate does not depend on).
fn elf(code: &[u8]) -> Vec<u8> {
    const EHDR: u64 = 64;
    const PHDR: u64 = 56;
    let mut f = Vec::new();
    f.extend_from_slice(b"\x7fELF");
    f.extend_from_slice(&[2, 1, 1, 0]); // 64-bit, little-endian, version 1, System V
    f.extend_from_slice(&[0; 8]);
    f.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f.extend_from_slice(&0x3eu16.to_le_bytes()); // EM_X86_64
    f.extend_from_slice(&1u32.to_le_bytes());
    f.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // e_entry
    f.extend_from_slice(&EHDR.to_le_bytes()); // e_phoff
    f.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    f.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    f.extend_from_slice(&(EHDR as u16).to_le_bytes());
    f.extend_from_slice(&(PHDR as u16).to_le_bytes());
    f.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
    f.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
    f.extend_from_slice(&[0; 4]); // e_shnum, e_shstrndx
    f.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    f.extend_from_slice(&5u32.to_le_bytes()); // R+X
    f.extend_from_slice(&(EHDR + PHDR).to_le_bytes()); // p_offset
    f.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // p_vaddr
    f.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // p_paddr
    f.extend_from_slice(&(code.len() as u64).to_le_bytes()); // p_filesz
    f.extend_from_slice(&(code.len() as u64).to_le_bytes()); // p_memsz
    f.extend_from_slice(&0x1000u64.to_le_bytes()); // p_align
    f.extend_from_slice(code);
    f
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
