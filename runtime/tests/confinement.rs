//! The VMM's confinement, seen from outside (issue "Harden the boundary"): every thread under
//! seccomp, a forbidden call killing the VMM with SIGSYS, a panic not looking like one. Tiny
//! hand-assembled guests (no Linux), so these run on any /dev/kvm.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use test_support::tiny::{self, elf, program};
use test_support::TempDir;

const SIGSYS: i32 = 31;

/// A guest that parks its vCPUs with interrupts on: the VM stays up until killed.
fn parked_guest(dir: &TempDir) -> std::path::PathBuf {
    let kernel = dir.path("park.elf");
    std::fs::write(&kernel, elf(&program(&[tiny::STI_HLT_LOOP]))).unwrap();
    kernel
}

fn boot(kernel: &std::path::Path, env: &[(&str, &str)], extra: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_microvm"));
    command.args(["boot", "--kernel"]).arg(kernel).args(extra).envs(env.iter().copied());
    // As in production: no backtrace (symbolizing one opens files no filter allows).
    command.env_remove("MICROVM_SECCOMP").env_remove("RUST_BACKTRACE").env_remove("RUST_LIB_BACKTRACE");
    command.stdout(Stdio::null()).stderr(Stdio::piped());
    command
}

/// Waits for `command` with a limit, killing it if it does not end.
fn wait(mut child: std::process::Child) -> (ExitStatus, String) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
            return (status, stderr);
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("the VMM did not end");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// (thread name, Seccomp field) of every thread of `pid`.
fn threads(pid: u32) -> Vec<(String, String)> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("status")).ok())
        .map(|status| {
            let field = |name: &str| {
                status.lines().find_map(|l| l.strip_prefix(name)).unwrap_or_default().trim().to_owned()
            };
            (field("Name:"), field("Seccomp:"))
        })
        .collect()
}

#[test]
fn every_vmm_thread_runs_under_seccomp() {
    let dir = TempDir::new("seccomp-threads");
    let mut child = boot(&parked_guest(&dir), &[], &["--cpus", "2"]).spawn().unwrap();
    let pid = child.id();
    // The VMM is up once both vCPU threads exist.
    let deadline = Instant::now() + Duration::from_secs(10);
    let seen = loop {
        let seen = threads(pid);
        if seen.iter().filter(|(name, _)| name.starts_with("vcpu")).count() == 2 || Instant::now() > deadline {
            break seen;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    // Main, two vCPUs, and any worker the host's KVM adds to the process (kvm-nx-lpage-recovery).
    assert!(seen.len() >= 3, "main and two vCPUs: {seen:?}");
    for (name, mode) in &seen {
        assert_eq!(mode, "2", "thread {name} is not filtered: {seen:?}");
    }
}

#[test]
fn a_forbidden_call_kills_the_vmm_with_sigsys_and_a_panic_does_not() {
    let dir = TempDir::new("seccomp-trigger");
    let kernel = parked_guest(&dir);
    let (status, _) = wait(boot(&kernel, &[("MICROVM_TEST_TRIGGER", "seccomp")], &[]).spawn().unwrap());
    assert_eq!(status.signal(), Some(SIGSYS), "{status:?}");

    let (status, stderr) = wait(boot(&kernel, &[("MICROVM_TEST_TRIGGER", "panic")], &[]).spawn().unwrap());
    assert_ne!(status.signal(), Some(SIGSYS), "{status:?}");
    assert!(stderr.contains("MICROVM_TEST_TRIGGER=panic"), "{stderr}");

    // Without filters the same call is only refused, and the VM goes on: a reset guest ends it.
    let reset = dir.path("reset.elf");
    std::fs::write(&reset, elf(&program(&[tiny::I8042_RESET, tiny::HLT_LOOP]))).unwrap();
    let (status, stderr) = wait(boot(&reset, &[("MICROVM_TEST_TRIGGER", "seccomp")], &["--seccomp", "off"]).spawn().unwrap());
    assert_eq!(status.code(), Some(0), "{stderr}");
    let (status, stderr) = wait(boot(&reset, &[("MICROVM_TEST_TRIGGER", "seccomp")], &["--seccomp", "log"]).spawn().unwrap());
    assert_eq!(status.code(), Some(0), "logged, not killed: {stderr}");
}

#[test]
fn the_jailed_vmm_sees_only_its_own_files_fds_and_no_environment() {
    let dir = TempDir::new("jail");
    let kernel = parked_guest(&dir);
    let console = dir.path("console.log");
    let stray = dir.path("stray");
    std::fs::write(&stray, "left open by the caller").unwrap();
    let stray = std::fs::File::open(&stray).unwrap();
    let mut command = boot(&kernel, &[("MICROVM_SECRET", "do-not-leak")], &["--console"]);
    command.arg(&console).env("MICROVM_RUNTIME_DIR", dir.path("runtime"));
    let stray_fd = std::os::fd::AsRawFd::as_raw_fd(&stray);
    // SAFETY: dup2 in the child before exec: async-signal-safe, on a descriptor it inherited.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, move || {
            if libc::dup2(stray_fd, 9) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().unwrap();
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !threads(pid).iter().any(|(name, _)| name == "vcpu0") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let root = std::path::PathBuf::from(format!("/proc/{pid}/root"));
    let mut seen = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(path) = stack.pop() {
        for entry in std::fs::read_dir(&path).unwrap().flatten() {
            seen.push(entry.path().strip_prefix(&root).unwrap().to_owned());
            if entry.file_type().unwrap().is_dir() {
                stack.push(entry.path());
            }
        }
    }
    let fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .map(|e| format!("{} -> {}", e.file_name().to_string_lossy(), std::fs::read_link(e.path()).unwrap().display()))
        .collect();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();

    // Only the path down to its (removed, empty) sandbox directory.
    let runtime = dir.path("runtime");
    let sandbox_parent = runtime.strip_prefix("/").unwrap();
    assert!(seen.iter().all(|p| sandbox_parent.starts_with(p) || p.starts_with(sandbox_parent)), "{seen:?}");
    assert!(seen.len() <= sandbox_parent.components().count() + 1, "{seen:?}");
    // stdio, the console, KVM's own descriptors and the SIGUSR2 handler's socket pair; not
    // the caller's fd 9.
    for fd in &fds {
        let target = fd.split(" -> ").nth(1).unwrap();
        let expected = ["anon_inode:kvm-vm", "anon_inode:kvm-vcpu:", "anon_inode:[eventfd]", "/dev/null", "pipe:", "socket:["];
        assert!(
            expected.iter().any(|e| target.starts_with(e)) || target == console.to_str().unwrap(),
            "unexpected descriptor {fd}: {fds:?}"
        );
    }
    assert!(!fds.iter().any(|fd| fd.ends_with("/stray")), "the caller's fd 9: {fds:?}");
    // Empty, or (without CAP_SYS_RESOURCE to shrink it) blanked.
    assert!(environ.iter().all(|b| *b == 0), "environment: {:?}", String::from_utf8_lossy(&environ));
    assert!(std::fs::read_dir(&runtime).map(|d| d.count() == 0).unwrap_or(true), "sandbox directory left behind");
}
