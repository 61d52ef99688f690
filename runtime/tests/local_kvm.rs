//! End-to-end tests of `microvm boot` with tiny hand-assembled guests (no Linux). They run
//! against any /dev/kvm, the emulating PVM one of our build machines included, in
//! milliseconds: each guest executes a handful of instructions.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use test_support::tiny::{self, elf, program, serial_print};
use test_support::{Microvm, Outcome, TempDir};

fn boot_code(code: &[u8], extra: &[&str]) -> Outcome {
    let dir = TempDir::new("tiny");
    let kernel = dir.path("tiny.elf");
    std::fs::write(&kernel, elf(code)).unwrap();
    Microvm::new(env!("CARGO_BIN_EXE_microvm"))
        .args(["boot", "--kernel"])
        .arg(&kernel)
        .args(extra)
        .run()
}

fn assert_one_line_error(out: &Outcome, code: i32, needle: &str) {
    assert_eq!(out.code, Some(code), "{out:?}");
    let lines = out.error_lines();
    assert_eq!(lines.len(), 1, "expected one line: {out:?}");
    assert!(lines[0].starts_with("microvm: "), "{out:?}");
    assert!(lines[0].contains(needle), "{needle:?} not in {out:?}");
    assert!(!out.stderr.contains("panicked"), "{out:?}");
}

#[test]
fn guest_reset_through_the_i8042_is_a_clean_reboot_and_the_boot_timer_fires() {
    let out = boot_code(&program(&[tiny::BOOT_TIMER, tiny::I8042_RESET, tiny::HLT_LOOP]), &[]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stderr.contains("microvm: guest rebooted;"), "{out:?}");
    assert!(out.stderr.contains("guest init ") && !out.stderr.contains("guest init -"), "{out:?}");
}

#[test]
fn a_guest_halted_with_interrupts_off_is_powered_off() {
    let out = boot_code(tiny::CLI_HLT, &[]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stderr.contains("guest powered off"), "{out:?}");
    assert!(out.stderr.contains("guest init -"), "no boot-timer write: {out:?}");
}

#[test]
fn second_vcpu_never_started_does_not_keep_the_vm_alive() {
    let out = boot_code(tiny::CLI_HLT, &["--cpus", "2"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stderr.contains("guest powered off"), "{out:?}");
}

/// Hardware KVM reports this as KVM_EXIT_SHUTDOWN (the guest suite checks for "triple
/// fault" there); PVM reports an internal error. Either way: status 1 and the registers.
#[test]
fn a_faulting_guest_fails_with_the_registers() {
    let out = boot_code(tiny::INT3, &[]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("rip=0x100000 "), "{out:?}");
    assert!(out.stderr.contains("cr3=0x9000"), "{out:?}");
}

#[test]
fn serial_output_reaches_stdout_or_the_console_file() {
    let code = program(&[&serial_print(b"hello from com1\n"), tiny::I8042_RESET]);
    let out = boot_code(&code, &[]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stdout, "hello from com1\n");

    let dir = TempDir::new("console");
    let log = dir.path("console.log");
    let out = boot_code(&code, &["--console", log.to_str().unwrap()]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stdout, "");
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "hello from com1\n");
}

#[test]
fn missing_kernel_is_a_one_line_error_naming_it() {
    let out = Microvm::new(env!("CARGO_BIN_EXE_microvm"))
        .args(["boot", "--kernel", "/nonexistent/vmlinux"])
        .run();
    assert_one_line_error(&out, 125, "kernel /nonexistent/vmlinux: No such file");
}

#[test]
fn corrupt_or_empty_kernel_is_a_one_line_error_naming_it() {
    let dir = TempDir::new("corrupt");
    for (name, bytes) in [("garbage", vec![0x42u8; 8192]), ("empty", Vec::new())] {
        let path = dir.path(name);
        std::fs::write(&path, bytes).unwrap();
        let out = Microvm::new(env!("CARGO_BIN_EXE_microvm")).args(["boot", "--kernel"]).arg(&path).run();
        assert_one_line_error(&out, 125, &format!("kernel {}: not an ELF vmlinux or a bzImage", path.display()));
    }
    // An ELF whose segment points below 1 MiB is refused by the loader, not loaded.
    let mut bad = elf(tiny::CLI_HLT);
    bad[24..32].copy_from_slice(&0x1000u64.to_le_bytes());
    let path = dir.path("low-entry.elf");
    std::fs::write(&path, bad).unwrap();
    let out = Microvm::new(env!("CARGO_BIN_EXE_microvm")).args(["boot", "--kernel"]).arg(&path).run();
    assert_one_line_error(&out, 125, &format!("kernel {}:", path.display()));
}

#[test]
fn bad_sizes_are_one_line_errors() {
    let out = boot_code(tiny::CLI_HLT, &["--memory", "1"]);
    assert_one_line_error(&out, 125, "memory 1 MiB: a guest needs at least 16 MiB");
    let out = boot_code(tiny::CLI_HLT, &["--cpus", "0"]);
    assert_one_line_error(&out, 125, "cpus 0: between 1 and 32 vCPUs");
    let out = boot_code(tiny::CLI_HLT, &["--cpus", "33"]);
    assert_one_line_error(&out, 125, "cpus 33");
}

#[test]
fn missing_initrd_and_unwritable_console_are_named() {
    let out = boot_code(tiny::CLI_HLT, &["--initrd", "/nonexistent/initrd.cpio"]);
    assert_one_line_error(&out, 125, "initrd /nonexistent/initrd.cpio: No such file");
    let out = boot_code(tiny::CLI_HLT, &["--console", "/nonexistent/dir/console.log"]);
    assert_one_line_error(&out, 125, "console /nonexistent/dir/console.log: No such file");
}

#[test]
fn an_initrd_too_large_for_guest_memory_is_refused() {
    let dir = TempDir::new("bigrd");
    let rd = dir.path("big.cpio");
    let f = std::fs::File::create(&rd).unwrap();
    f.set_len(64 << 20).unwrap();
    let out = boot_code(tiny::CLI_HLT, &["--memory", "32", "--initrd", rd.to_str().unwrap()]);
    assert_one_line_error(&out, 125, "do not fit in guest memory");
}

#[test]
fn hostile_virtio_chains_are_rejected_and_the_vmm_keeps_running() {
    let dir = TempDir::new("hostile");
    let disk = dir.path("disk.img");
    std::fs::write(&disk, vec![0u8; 4096]).unwrap();
    let disk_arg = format!("--disk={}", disk.display());
    let out = boot_code(&tiny::hostile_blk_driver(), &[&disk_arg]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stderr.contains("virtio-blk: request 0 rejected: descriptor chain loops back on itself"), "{out:?}");
    assert!(out.stderr.contains("virtio-blk: request 2 rejected:"), "{out:?}");
    assert!(out.stderr.contains("microvm: guest rebooted;"), "the guest ran on after both: {out:?}");
    assert_eq!(std::fs::read(&disk).unwrap(), vec![0u8; 4096], "nothing written to the disk");
}

/// The silent-guest diagnosis: SIGUSR2 makes a running `microvm boot` (confined as in
/// production) write every vCPU's state and the console's end to stderr, and it runs on.
#[test]
fn sigusr2_reports_the_guest_state_and_the_vm_runs_on() {
    use std::io::Read;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    const MARKER: &[u8] = b"tiny guest: spinning now\n";
    // After the marker: `spin: inc rax; pause; jmp spin`, a guest that never exits to the VMM.
    let print = serial_print(MARKER);
    let spin = [0x48, 0xff, 0xc0, 0xf3, 0x90, 0xeb, 0xf9];
    let spin_start = tiny::LOAD_ADDR + print.len() as u64;
    let spin_end = spin_start + spin.len() as u64;
    let dir = TempDir::new("sigusr2");
    let kernel = dir.path("spin.elf");
    std::fs::write(&kernel, elf(&program(&[&print, &spin]))).unwrap();

    // The console goes nowhere: the report's tail is the VMM's own copy.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_microvm"))
        .args(["boot", "--cpus", "2", "--console", "/dev/null", "--kernel"])
        .arg(&kernel)
        .env_remove("MICROVM_SECCOMP")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let _limit = test_support::KillAfter::new(child.id(), Duration::from_secs(120), "microvm boot (SIGUSR2 test)");
    let stderr = Arc::new(Mutex::new(String::new()));
    let reader = {
        let (mut pipe, stderr) = (child.stderr.take().unwrap(), stderr.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = pipe.read(&mut buf) {
                stderr.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        })
    };
    let pid = i32::try_from(child.id()).unwrap();
    // SIGUSR2 is caught once microvm has started its VM: until then it would kill the process.
    let vcpu_thread = || {
        std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten().any(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim_end() == "vcpu0")
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !vcpu_thread() {
        assert!(Instant::now() < deadline && child.try_wait().unwrap().is_none(), "no vCPU thread");
        std::thread::sleep(Duration::from_millis(20));
    }
    const HEADER: &str = "microvm: guest state (SIGUSR2):\n";
    let report = |text: &str| text.rsplit_once(HEADER).map(|(_, r)| r.to_owned());
    let rip = |report: &str| {
        report
            .split("vCPU 0: rip=0x")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|hex| u64::from_str_radix(hex, 16).ok())
    };
    // Until a report shows vCPU 0 in the spin loop: the vCPU threads may not have started yet,
    // and a loaded host may catch the guest still printing.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    while !rip(&last).is_some_and(|rip| (spin_start..spin_end).contains(&rip)) {
        assert!(Instant::now() < deadline, "no report with the guest in its loop: {}", stderr.lock().unwrap());
        if let Some(status) = child.try_wait().unwrap() {
            reader.join().unwrap();
            panic!("microvm ended ({status}): {}", stderr.lock().unwrap());
        }
        // SAFETY: kill takes plain integers; the pid is our unreaped child.
        unsafe { libc::kill(pid, libc::SIGUSR2) };
        let asked = Instant::now();
        // The report is written in one go; a complete one ends with the console's tail.
        while asked.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(50));
            if let Some(r) = report(&stderr.lock().unwrap()).filter(|r| r.contains("console, last ") && r.ends_with('\n')) {
                last = r;
                break;
            }
        }
    }
    assert!(child.try_wait().unwrap().is_none(), "the VM runs on after the report: {}", stderr.lock().unwrap());
    child.kill().unwrap();
    child.wait().unwrap();
    reader.join().unwrap();
    let all = stderr.lock().unwrap().clone();
    println!("{all}");

    for needle in ["cr3=0x9000", "mp_state=RUNNABLE interrupts=off", "r15=0x", "events: exception=none", "vCPU 1: "] {
        assert!(last.contains(needle), "{needle:?} not in the report: {last}");
    }
    let console = last.split_once("console, last ").unwrap().1;
    assert!(console.ends_with("tiny guest: spinning now\n"), "console tail: {console:?}");
    assert!(!all.contains("panicked"), "{all}");
}
