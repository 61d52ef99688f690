//! podman drives microvm as its OCI runtime (`podman --runtime`), in the nested bed, with an
//! image imported from a busybox rootfs tar (no registry here): `run --rm`, exit codes, a
//! detached container seen by `ps`, its `logs`, `stop` (SIGTERM, then SIGKILL after the
//! timeout: the container's PID 1 ignores SIGTERM) and `rm`, and nothing left behind.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use guest_tests::{suite, Case};
use test_support::{input, processes_matching, run_in_pty, KillAfter, Outcome, TempDir};

/// A podman of its own: vfs storage and state in scratch directories, cgroupfs (L1 runs no
/// systemd), events to a file, and microvm through a wrapper that sets its environment.
struct Podman {
    dir: TempDir,
    base: Vec<String>,
    runtime_root: PathBuf,
}

impl Podman {
    fn new(case: &Case) -> Self {
        let dir = TempDir::new("podman");
        let runtime_root = dir.path("microvm-root");
        let wrapper = dir.path("microvm-runtime");
        let mut script = String::from("#!/bin/sh\n");
        for (key, value) in case.vars() {
            script.push_str(&format!("export {key}='{}'\n", value.display()));
        }
        script.push_str(&format!(
            "export MICROVM_KERNEL='{}'\nexec '{}' --root '{}' \"$@\"\n",
            input("MICROVM_KERNEL_DIR").join("vmlinux").display(),
            input("MICROVM_BIN").display(),
            runtime_root.display()
        ));
        std::fs::write(&wrapper, script).unwrap();
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = |name: &str| dir.path(name).to_string_lossy().into_owned();
        let base = vec![
            "--storage-driver".into(),
            "vfs".into(),
            "--cgroup-manager".into(),
            "cgroupfs".into(),
            "--events-backend".into(),
            "file".into(),
            "--root".into(),
            path("storage"),
            "--runroot".into(),
            path("run"),
            "--runtime".into(),
            path("microvm-runtime"),
        ];
        let podman = Podman { dir, base, runtime_root };
        let tar = podman.dir.path("busybox.tar");
        let status = Command::new("tar")
            .arg("-C")
            .arg(suite().rootfs.join("rootfs-busybox"))
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .unwrap();
        assert!(status.success());
        let out = podman.run(&["import", tar.to_str().unwrap(), "localhost/busybox"]);
        assert_eq!(out.code, Some(0), "{out:?}");
        podman
    }

    fn run(&self, args: &[&str]) -> Outcome {
        let child = Command::new("podman")
            .args(&self.base)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = {
            let _limit = KillAfter::new(child.id(), Duration::from_secs(300), &format!("podman {}", args.join(" ")));
            child.wait_with_output().unwrap()
        };
        Outcome {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn assert_nothing_left(&self) {
        let out = self.run(&["ps", "--all", "--quiet"]);
        assert_eq!(out.stdout, "", "{out:?}");
        let left: Vec<_> = std::fs::read_dir(&self.runtime_root)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "left behind: {left:?}");
        let root = self.runtime_root.to_string_lossy().to_string();
        assert!(processes_matching(&root).is_empty(), "a VMM process is still running");
        assert!(!std::fs::read_to_string("/proc/self/mountinfo").unwrap().contains(&root));
    }
}

#[test]
fn podman_runs_containers_in_microvms() {
    assert!(Path::new("/usr/bin/podman").is_file(), "podman is not installed: run tests/bed/setup.sh");
    let case = Case::new("podman");
    let podman = Podman::new(&case);
    let image = "localhost/busybox";

    let out = podman.run(&["run", "--rm", "--network", "none", image, "echo", "hi"]);
    assert_eq!((out.code, out.stdout.as_str()), (Some(0), "hi\n"), "{out:?}");
    let out = podman.run(&["run", "--rm", "--network", "none", image, "sh", "-c", "exit 7"]);
    assert_eq!(out.code, Some(7), "{out:?}");

    let out = podman.run(&["run", "-d", "--network", "none", image, "sh", "-c", "echo started; sleep 1000"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let id = out.stdout.trim().to_owned();
    let ps = podman.run(&["ps", "--quiet", "--no-trunc"]);
    assert_eq!(ps.stdout.trim(), id, "{ps:?}");
    let logs = podman.run(&["logs", &id]);
    assert_eq!(logs.stdout, "started\n", "{logs:?}");
    // A second process in the same container sees its PID 1 (busybox sh execed the sleep).
    let exec = podman.run(&["exec", &id, "sh", "-c", "tr '\\0' ' ' < /proc/1/cmdline; exit 4"]);
    assert_eq!((exec.code, exec.stdout.as_str()), (Some(4), "sleep 1000 "), "{exec:?}");
    // PID 1 of the container has no SIGTERM handler: stop falls back to SIGKILL.
    let stop = podman.run(&["stop", "-t", "2", &id]);
    assert_eq!(stop.code, Some(0), "{stop:?}");
    let code = podman.run(&["inspect", "-f", "{{.State.ExitCode}}", &id]);
    assert_eq!(code.stdout.trim(), "137", "{code:?}");
    let rm = podman.run(&["rm", &id]);
    assert_eq!(rm.code, Some(0), "{rm:?}");
    podman.assert_nothing_left();
}

#[test]
fn podman_run_it_gives_the_container_the_terminal() {
    let case = Case::new("podman-tty");
    let podman = Podman::new(&case);
    let mut command = Command::new("podman");
    command
        .args(&podman.base)
        .args(["run", "-it", "--rm", "--network", "none", "localhost/busybox"])
        // The size reaches the guest after the process starts (conmon sets it on the pty,
        // the VMM process passes it on): wait until it has.
        .args(["sh", "-c", "while [ \"$(stty size)\" != '31 101' ]; do sleep 0.1; done; tty; echo size $(stty size); exit 3"])
        .env("TERM", "xterm");
    let (code, screen) = run_in_pty(command, 31, 101);
    assert_eq!(code, Some(3), "{screen}");
    assert!(screen.contains("/dev/pts/0"), "{screen}");
    assert!(screen.contains("size 31 101"), "{screen}");
    podman.assert_nothing_left();
}
