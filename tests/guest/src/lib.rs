//! Tests that boot the project's Linux guest kernel. They need hardware KVM (or real KVM
//! nested in the test bed, tests/bed/nested.sh); `tests/run.sh` decides where they run.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use test_support::{input, processes_matching, processes_with_env, Microvm, Outcome, TempDir};

/// Suite-wide scratch: the image cache, and local copies of the test root filesystems (in
/// the nested bed the repo is a slow 9p share, and packing reads every inode).
pub struct Suite {
    _dir: TempDir,
    pub cache: PathBuf,
    pub rootfs: PathBuf,
}

pub fn suite() -> &'static Suite {
    static SUITE: OnceLock<Suite> = OnceLock::new();
    SUITE.get_or_init(|| {
        assert!(
            !Path::new("/sys/module/kvm_pvm").exists(),
            "/dev/kvm here is PVM: run through tests/run.sh"
        );
        let dir = TempDir::new("run-suite");
        let rootfs = dir.path("rootfs");
        let status = Command::new("cp")
            .arg("-a")
            .arg(input("MICROVM_TEST_ROOTFS_DIR"))
            .arg(&rootfs)
            .status()
            .unwrap();
        assert!(status.success(), "copy the test root filesystems");
        Suite {
            cache: dir.path("cache"),
            rootfs,
            _dir: dir,
        }
    })
}

/// One test's runs, with a runtime directory of its own so that what a run leaves behind is
/// that test's to see.
pub struct Case {
    pub runtime: TempDir,
}

impl Case {
    pub fn new(tag: &str) -> Self {
        Self {
            runtime: TempDir::new(tag),
        }
    }

    pub fn vars(&self) -> [(&'static str, PathBuf); 4] {
        [
            ("MICROVM_CACHE", suite().cache.clone()),
            ("MICROVM_RUNTIME_DIR", self.runtime.0.clone()),
            ("MICROVM_AGENT", input("MICROVM_AGENT")),
            ("MICROVM_VIRTIOFSD", input("MICROVM_VIRTIOFSD")),
        ]
    }

    pub fn microvm(&self) -> Microvm {
        self.vars()
            .into_iter()
            .fold(Microvm::new(input("MICROVM_BIN")), |m, (k, v)| m.env(k, v))
    }

    /// The same, as a plain Command, for tests that drive stdin or send signals.
    pub fn command(&self, image: &str, extra: &[&str], cmd: &[&str]) -> Command {
        let mut c = Command::new(input("MICROVM_BIN"));
        c.envs(self.vars())
            .arg("run")
            .arg("--kernel")
            .arg(input("MICROVM_KERNEL_DIR").join("vmlinux"));
        c.args(extra)
            .arg(suite().rootfs.join(image))
            .arg("--")
            .args(cmd);
        c
    }

    pub fn run(&self, image: &str, extra: &[&str], cmd: &[&str]) -> Outcome {
        self.run_for(Duration::from_secs(120), image, extra, cmd)
    }

    /// `run` with a time limit of its own, for workloads that are slow under emulation.
    pub fn run_for(&self, limit: Duration, image: &str, extra: &[&str], cmd: &[&str]) -> Outcome {
        let once = || {
            self.microvm()
                .timeout(limit)
                .arg("run")
                .arg("--kernel")
                .arg(input("MICROVM_KERNEL_DIR").join("vmlinux"))
                .args(extra)
                .arg(suite().rootfs.join(image))
                .arg("--")
                .args(cmd)
                .run()
        };
        retry_once_after_emulator_boot_fault(125, once, |o| (o.code, &o.stderr))
    }

    /// Nothing of a finished run stays: no sandbox directory, no mount under it, no VMM process
/// (nor virtiofsd or passt).
    pub fn assert_nothing_left(&self) {
        let left: Vec<_> = std::fs::read_dir(&self.runtime.0)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "left behind: {left:?}");
        let runtime = self.runtime.0.to_string_lossy().to_string();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        assert!(!mounts.contains(&runtime), "a mount under {runtime} is left");
        // passt (`--network user`) inherits MICROVM_RUNTIME_DIR rather than naming it.
        assert_no_process_left(|| {
            let mut pids = processes_matching(&runtime);
            pids.extend(processes_with_env(&runtime));
            pids
        });
    }
}

/// In the nested bed (QEMU's emulated SVM under L1's KVM) a guest now and then triple-faults,
/// mostly while it boots, before its agent answers or the smoke init runs, and then and again
/// under a running container (the runtime says so since the VMM closes the agent's connections
/// when the guest stops): about one boot in a few hundred, with nothing on the console and the
/// registers KVM leaves after an SVM shutdown (the reset state, rip=0xfff0). The same emulator has been seen to crash L1's own kernel
/// (a page fault on a %gs access right after a VM exit: L2's GS base left in L1) and to lock
/// up both of L1's CPUs, so the fault is taken for the emulator's; the cause is not known.
/// Such a boot is tried once more, and only there: on hardware KVM a triple fault is a failure
/// like any other.
///
/// Runs `once`, and once more when it failed with `code` and a stderr (both read through
/// `view`) that tells of such a fault in the nested bed; the retry is announced on stderr,
/// past libtest's capture, where tests/run.sh counts it.
pub fn retry_once_after_emulator_boot_fault<T>(
    code: i32,
    once: impl Fn() -> T,
    view: impl Fn(&T) -> (Option<i32>, &str),
) -> T {
    let out = once();
    let (got, stderr) = view(&out);
    if got == Some(code) && emulator_boot_fault(stderr) {
        let line = format!("microvm-test-retry: {}\n", stderr.trim());
        let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
        return once();
    }
    out
}

fn emulator_boot_fault(stderr: &str) -> bool {
    std::env::var("MICROVM_BED").as_deref() == Ok("nested")
        && (stderr.contains("the VM stopped before its agent answered: guest triple fault")
            || stderr.contains("the VM stopped while its container ran: guest triple fault: rip=0xfff0 ")
            || stderr.contains("microvm: guest triple fault: rip=0xfff0 "))
}

/// The virtiofsd processes (volumes) whose command line holds `needle`: a sandbox's runtime
/// directory or state root names its shared directory.
pub fn virtiofsd_processes(needle: &str) -> Vec<u32> {
    processes_matching(needle)
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains("virtiofsd"))
        })
        .collect()
}

/// No process that `left` finds outlives the run (or the `delete`) by more than 5 s. The
/// VMM process has ended (the caller waited for it, or `delete` killed it); its helpers end by
/// themselves right after: passt when the VMM's end of its socket closes, each virtiofsd
/// (whose command line names the sandbox directory) by its parent-death signal. Under the
/// bed's emulation either can take a moment to be gone.
pub fn assert_no_process_left(left: impl Fn() -> Vec<u32>) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !left().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "a process outlived its container by 5 s: {:?}",
            left()
                .iter()
                .map(|pid| std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default())
                .collect::<Vec<_>>()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
