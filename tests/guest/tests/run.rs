//! `microvm run` end to end: the guest agent over vsock, the rootfs as an EROFS disk, stdio,
//! exit codes, signals, and what a failed run leaves behind (nothing).
//!
//! Inputs, set by tests/run.sh: MICROVM_BIN, MICROVM_KERNEL_DIR, MICROVM_AGENT (the static
//! agent), MICROVM_TEST_ROOTFS_DIR (holding rootfs-busybox and rootfs-dynamic).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use guest_tests::{suite, Case};

use test_support::{run_in_pty, KillAfter};

/// How long a test waits for a `microvm run` it drives by hand (boots take seconds, even
/// under emulation): past it the run is killed and the test fails instead of hanging.
const LIMIT: Duration = Duration::from_secs(300);

/// Starts `microvm run` with piped stdio and waits until the command has written `first`, its
/// first bytes: the guest is up and the command running. The run is killed if it outlives
/// LIMIT (the guard returned).
fn start_until(case: &Case, extra: &[&str], cmd: &[&str], first: &[u8]) -> (std::process::Child, KillAfter) {
    let mut child = case
        .command("rootfs-busybox", extra, cmd)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let limit = KillAfter::new(child.id(), LIMIT, "microvm run");
    let mut got = vec![0u8; first.len()];
    std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut got).unwrap();
    assert_eq!(got, first);
    (child, limit)
}

#[test]
fn echo_prints_and_exit_codes_come_back() {
    let case = Case::new("echo");
    let out = case.run("rootfs-busybox", &[], &["echo", "hello"]);
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (Some(0), "hello\n"),
        "{out:?}"
    );
    let out = case.run(
        "rootfs-busybox",
        &[],
        &["sh", "-c", "echo out; echo err >&2; exit 7"],
    );
    assert_eq!(out.code, Some(7), "{out:?}");
    assert_eq!(out.stdout, "out\n");
    assert!(out.stderr.contains("err\n"), "{out:?}");
    // The command is PID 1 of its namespace, which SIGKILL from inside cannot kill; under
    // --init it is PID 2 and init reports its death as 128 + 9.
    let out = case.run("rootfs-busybox", &["--init"], &["sh", "-c", "kill -9 $$"]);
    assert_eq!(out.code, Some(137), "{out:?}");
    case.assert_nothing_left();
}

/// The VMM offers the local APIC's TSC-deadline mode (KVM emulates it but leaves it out of
/// its supported CPUID), so the guest kernel skips calibrating the APIC timer at boot.
#[test]
fn the_guest_cpu_has_the_tsc_deadline_timer() {
    let case = Case::new("tscdl");
    let out = case.run("rootfs-busybox", &[], &["grep", "-c", "tsc_deadline_timer", "/proc/cpuinfo"]);
    assert_eq!((out.code, out.stdout.as_str()), (Some(0), "1\n"), "{out:?}");
    case.assert_nothing_left();
}

#[test]
fn missing_and_non_executable_commands_are_127_and_126() {
    let case = Case::new("127");
    let out = case.run("rootfs-busybox", &[], &["no-such-command"]);
    assert_eq!(out.code, Some(127), "{out:?}");
    assert!(out.stderr.contains("no-such-command"), "{out:?}");
    let out = case.run("rootfs-busybox", &[], &["/bin/not-executable"]);
    assert_eq!(out.code, Some(126), "{out:?}");
    case.assert_nothing_left();
}

#[test]
fn the_image_libraries_are_the_ones_used() {
    let case = Case::new("libc");
    let out = case.run("rootfs-dynamic", &[], &["/bin/libc-hello"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.starts_with("libc-hello: glibc "), "{out:?}");
    assert!(
        out.stdout.contains(" from /lib/x86_64-linux-gnu/libc.so.6"),
        "{out:?}"
    );
}

#[test]
fn env_workdir_user_and_read_only_root() {
    let case = Case::new("env");
    let out = case.run(
        "rootfs-busybox",
        &["-e", "GREETING=hi", "-w", "/tmp", "-u", "1000:1000"],
        &["sh", "-c", "echo $GREETING $(pwd) $(id -u):$(id -g)"],
    );
    assert_eq!(out.stdout, "hi /tmp 1000:1000\n", "{out:?}");
    let out = case.run(
        "rootfs-busybox",
        &[],
        &["sh", "-c", "echo x > /etc/written && cat /etc/written"],
    );
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (Some(0), "x\n"),
        "overlay is writable: {out:?}"
    );
    let out = case.run(
        "rootfs-busybox",
        &["--read-only"],
        &["sh", "-c", "echo x > /etc/written"],
    );
    assert_ne!(out.code, Some(0), "{out:?}");
    assert!(out.stderr.contains("Read-only file system"), "{out:?}");
    // A working directory the image lacks is made (0755, root's), as docker makes it, also
    // under a read-only root (mount points and the directory are made before the root is
    // remounted read-only, as runc does).
    let out = case.run(
        "rootfs-busybox",
        &["--read-only", "-w", "/made/here"],
        &["sh", "-c", "pwd; stat -c %a:%u /made/here; touch /made/here/x 2>&1 | grep -c Read-only"],
    );
    assert_eq!(out.stdout, "/made/here\n755:0\n1\n", "{out:?}");
    case.assert_nothing_left();
}

#[test]
fn stdin_round_trips_64_mib_byte_for_byte_and_the_last_bytes_arrive() {
    let case = Case::new("stdin");
    let data: Vec<u8> = (0..64u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut child = case
        .command(
            "rootfs-busybox",
            &["-i"],
            &["sh", "-c", "cat; printf last-bytes"],
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _limit = KillAfter::new(child.id(), LIMIT, "microvm run");
    let mut stdin = child.stdin.take().unwrap();
    let feeder = std::thread::spawn({
        let data = data.clone();
        move || stdin.write_all(&data)
    });
    let out = child.wait_with_output().unwrap();
    let fed = feeder.join().unwrap();
    assert!(fed.is_ok(), "stdin cut short ({fed:?}); microvm {}: {}", out.status, String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout.len(), data.len() + 10);
    assert!(out.stdout[..data.len()] == data[..], "bytes differ");
    assert_eq!(&out.stdout[data.len()..], b"last-bytes");
    case.assert_nothing_left();
}

#[test]
fn sigterm_reaches_the_process() {
    // PID 1 of a namespace ignores signals it has no handler for (as under docker without
    // --init), so the reaping init forwards SIGTERM to the command.
    let case = Case::new("sigterm");
    let mut child = case
        .command(
            "rootfs-busybox",
            &["--init"],
            &["sh", "-c", "echo started; exec sleep 100"],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _limit = KillAfter::new(child.id(), LIMIT, "microvm run");
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 8];
    std::io::Read::read_exact(&mut stdout, &mut first).unwrap();
    assert_eq!(&first, b"started\n");
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(143));
    case.assert_nothing_left();
}

#[test]
fn bad_input_is_a_one_line_125_and_leaves_nothing() {
    let case = Case::new("bad");
    let out = case.run("no-such-rootfs", &[], &["true"]);
    assert_eq!(out.code, Some(125), "{out:?}");
    assert!(
        out.stderr.trim().lines().count() == 1 && out.stderr.contains("no-such-rootfs"),
        "{out:?}"
    );
    let out = case
        .microvm()
        .args(["run", "--kernel", "/nonexistent/vmlinux"])
        .arg(suite().rootfs.join("rootfs-busybox"))
        .args(["--", "true"])
        .run();
    assert_eq!(out.code, Some(125), "{out:?}");
    assert!(
        out.stderr.contains("kernel /nonexistent/vmlinux"),
        "{out:?}"
    );
    let out = case.run("rootfs-busybox", &["--memory", "0"], &["true"]);
    assert_eq!(out.code, Some(125), "{out:?}");
    assert!(out.stderr.contains("memory 0 MiB"), "{out:?}");
    case.assert_nothing_left();
}

#[test]
fn tty_gives_a_pts_of_the_host_terminal_size() {
    let case = Case::new("tty");
    let (code, screen) = run_in_pty(
        case.command("rootfs-busybox", &["-t"], &["sh", "-c", "tty; stty size"]),
        31,
        101,
    );
    assert_eq!(code, Some(0), "{screen}");
    assert!(screen.contains("/dev/pts/"), "{screen}");
    assert!(screen.contains("31 101"), "{screen}");
    case.assert_nothing_left();
}

#[test]
fn two_runs_at_once_do_not_interfere_and_a_name_in_use_is_refused() {
    let case = Case::new("two");
    let (mut first, _limit) = start_until(
        &case,
        &["--name", "busy", "--init"],
        &["sh", "-c", "echo first-up; sleep 30; echo first-done"],
        b"first-up\n",
    );

    // Same name: its socket path is taken; refused without touching the running one.
    let out = case.run("rootfs-busybox", &["--name", "busy"], &["true"]);
    assert_eq!(out.code, Some(125), "{out:?}");
    assert!(out.stderr.contains("\"busy\" already exists"), "{out:?}");
    // Another run at the same time works.
    let out = case.run("rootfs-busybox", &[], &["echo", "second"]);
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (Some(0), "second\n"),
        "{out:?}"
    );

    let status = Command::new("kill")
        .args(["-TERM", &first.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(first.wait().unwrap().code(), Some(143));
    case.assert_nothing_left();
}

/// As with docker's IMAGE, everything after ROOTFS is the command, options included.
#[test]
fn the_command_may_follow_the_rootfs_without_a_separator() {
    let case = Case::new("nosep");
    let out = case
        .microvm()
        .timeout(LIMIT)
        .arg("run")
        .arg("--kernel")
        .arg(test_support::input("MICROVM_KERNEL_DIR").join("vmlinux"))
        .arg(suite().rootfs.join("rootfs-busybox"))
        .args(["sh", "-c", "echo -n $0; exit 7", "--name"])
        .run();
    assert_eq!((out.code, out.stdout.as_str()), (Some(7), "--name"), "{out:?}");
    case.assert_nothing_left();
}

/// A run killed by SIGKILL cannot clean up; the next run under its name takes the name back
/// (the dead run's lock is gone) instead of failing on "already exists".
#[test]
fn a_name_left_by_a_killed_run_is_taken_back() {
    let case = Case::new("phoenix");
    let (mut first, _limit) = start_until(&case, &["--name", "phoenix"], &["sh", "-c", "echo up; sleep 600"], b"up\n");
    assert!(Command::new("kill").args(["-KILL", &first.id().to_string()]).status().unwrap().success());
    let status = first.wait().unwrap();
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(9));
    assert!(case.runtime.0.join("phoenix").exists(), "SIGKILL left no directory to reclaim");

    let out = case.run("rootfs-busybox", &["--name", "phoenix"], &["echo", "again"]);
    assert_eq!((out.code, out.stdout.as_str()), (Some(0), "again\n"), "{out:?}");
    case.assert_nothing_left();
}

#[test]
fn a_second_sigterm_kills_the_vm_when_the_process_ignores_the_first() {
    let case = Case::new("force");
    let (child, _limit) = start_until(
        &case,
        &[],
        &["sh", "-c", "trap '' TERM; echo up; while :; do sleep 1; done"],
        b"up\n",
    );
    let term = || {
        assert!(Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success())
    };
    term();
    std::thread::sleep(Duration::from_millis(500));
    term();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(143));
    assert!(String::from_utf8_lossy(&out.stderr).contains("second signal, killing the VM"));
    case.assert_nothing_left();
}

#[test]
fn stdout_carries_64_mib_under_the_vmms_seccomp_filters() {
    // Enough output for the vsock worker's heap to grow and shrink: glibc then tries to
    // open /proc/sys/vm/overcommit_memory, which the filters must refuse, not punish.
    let case = Case::new("stdout");
    let out = case.run("rootfs-busybox", &[], &["head", "-c", "67108864", "/dev/zero"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(out.stdout.len(), 64 << 20);
    assert!(out.stdout.bytes().all(|b| b == 0));
    case.assert_nothing_left();
}

#[test]
fn sigterm_while_the_vm_boots_ends_the_run_and_leaves_nothing() {
    let case = Case::new("early-term");
    let child = case
        .command("rootfs-busybox", &[], &["sleep", "100"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _limit = KillAfter::new(child.id(), LIMIT, "microvm run");
    // The sandbox directory appears once run handles its signals, a whole guest boot before
    // the agent can start the process.
    let deadline = std::time::Instant::now() + LIMIT;
    while std::fs::read_dir(&case.runtime.0).map_or(0, Iterator::count) == 0 {
        assert!(std::time::Instant::now() < deadline, "no sandbox directory appeared");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(143), "{stderr}");
    assert!(stderr.contains("signal 15 before the process started"), "{stderr}");
    case.assert_nothing_left();
}

/// A guest that dies under a running container (here its kernel panics on running out of
/// memory) ends the run at once with the guest's reason: the VMM closes the agent's
/// connections when the guest stops, so nothing waits for an answer that cannot come.
#[test]
fn a_guest_that_dies_under_its_container_ends_the_run_with_the_reason() {
    let case = Case::new("guest-dies");
    let fill = "echo 1 > /proc/sys/vm/panic_on_oom && mkdir -p /fill && mount -t tmpfs -o size=100% fill /fill \
                && cat /dev/zero > /fill/zero; sleep 600";
    let out = case.run("rootfs-busybox", &["--privileged", "--memory", "128"], &["sh", "-c", fill]);
    assert_eq!(out.code, Some(125), "{out:?}");
    assert!(
        out.stderr.contains("microvm: the VM stopped while its container ran: guest kernel panic")
            && out.stderr.contains("Out of memory"),
        "{out:?}"
    );
    case.assert_nothing_left();
}
