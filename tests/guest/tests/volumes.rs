//! Volumes: `microvm run -v HOST:CONTAINER[:ro]` shares host directories and files over
//! virtio-fs, served by one virtiofsd per sandbox (runtime/src/volumes.rs).
//!
//! Inputs, set by tests/run.sh: those of run.rs, and MICROVM_VIRTIOFSD.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use guest_tests::{virtiofsd_processes, Case};
use test_support::{KillAfter, TempDir};

fn volume(host: &std::path::Path, container: &str, mode: &str) -> String {
    format!("{}:{container}{mode}", host.display())
}

#[test]
fn a_directory_is_shared_both_ways_and_ro_holds_on_the_host_side() {
    let case = Case::new("vol-rw");
    let data = TempDir::new("vol-rw-data");
    let dir = data.0.clone();
    std::fs::write(dir.join("in.txt"), "from the host\n").unwrap();

    let v = volume(&dir, "/data", "");
    let out = case.run("rootfs-busybox", &["-v", &v], &["sh", "-c", "cat /data/in.txt; echo from the guest > /data/out.txt"]);
    assert_eq!((out.code, out.stdout.as_str()), (Some(0), "from the host\n"), "{out:?}");
    assert_eq!(std::fs::read_to_string(dir.join("out.txt")).unwrap(), "from the guest\n");

    // Read-only in the guest, and on the host side: a privileged container that remounts its
    // view read-write still cannot write, because virtiofsd's own bind mount is read-only.
    let v = volume(&dir, "/data", ":ro");
    let out = case.run("rootfs-busybox", &["-v", &v], &["sh", "-c", "echo x > /data/y"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("Read-only file system"), "{out:?}");
    let out = case.run(
        "rootfs-busybox",
        &["--privileged", "-v", &v],
        &["sh", "-c", "mount -o remount,rw /data && echo x > /data/y"],
    );
    assert_ne!(out.code, Some(0), "{out:?}");
    assert!(!dir.join("y").exists(), "a read-only volume was written on the host");
    case.assert_nothing_left();
}

/// A small file is copied into the guest (not shared): a read-write one has the container's
/// changes written back when it exits; a read-only one cannot be written, and stays as it was.
#[test]
fn a_small_file_volume_gets_the_containers_changes_back() {
    let case = Case::new("vol-file");
    let data = TempDir::new("vol-file-data");
    let note = data.path("note");
    std::fs::write(&note, "from the host\n").unwrap();
    let v = volume(&note, "/note", "");
    let out = case.run("rootfs-busybox", &["-v", &v], &["sh", "-c", "cat /note; echo from the guest > /note"]);
    assert_eq!((out.code, out.stdout.as_str()), (Some(0), "from the host\n"), "{out:?}");
    assert_eq!(std::fs::read_to_string(&note).unwrap(), "from the guest\n");
    let v = volume(&note, "/note", ":ro");
    let out = case.run("rootfs-busybox", &["-v", &v], &["sh", "-c", "echo again > /note"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("Read-only file system"), "{out:?}");
    assert_eq!(std::fs::read_to_string(&note).unwrap(), "from the guest\n");
    case.assert_nothing_left();
}

/// 100 MiB each way; the digests are compared on the other side. The host's side uses the
/// system's `head` and `sha256sum`: this test binary is a debug build, and hashing 100 MiB in
/// it under the nested bed's emulation takes minutes of L1's only CPU.
#[test]
fn a_100_mib_file_has_the_same_sha256_on_both_sides() {
    let case = Case::new("vol-big");
    let data = TempDir::new("vol-big-data");
    let dir = data.0.clone();
    let to_guest = dir.join("to-guest");
    let made = Command::new("sh").arg("-c").arg(format!("head -c 104857600 /dev/urandom > '{}'", to_guest.display())).status().unwrap();
    assert!(made.success());
    let host_digest = sha256sum(&to_guest);

    let v = volume(&dir, "/data", "");
    let script = "sha256sum /data/to-guest; head -c 104857600 /dev/urandom > /data/to-host; sha256sum /data/to-host";
    let out = case.run_for(Duration::from_secs(600), "rootfs-busybox", &["-v", &v], &["sh", "-c", script]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{out:?}");
    assert_eq!(lines[0], format!("{host_digest}  /data/to-guest"));
    let to_host = dir.join("to-host");
    assert_eq!(std::fs::metadata(&to_host).unwrap().len(), 100 << 20);
    assert_eq!(lines[1], format!("{}  /data/to-host", sha256sum(&to_host)));
    case.assert_nothing_left();
}

/// The hex digest `sha256sum` prints for `path`.
fn sha256sum(path: &std::path::Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success(), "sha256sum {}", path.display());
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().to_string()
}

#[test]
fn symlinks_and_setuid_files_do_not_reach_the_host() {
    let case = Case::new("vol-escape");
    let data = TempDir::new("vol-escape");
    let base = data.0.clone();
    let dir = base.join("data");
    std::fs::create_dir_all(&dir).unwrap();
    let secret = base.join("secret");
    std::fs::write(&secret, "HOST SECRET\n").unwrap();
    std::os::unix::fs::symlink(&secret, dir.join("absolute")).unwrap();
    std::os::unix::fs::symlink("../secret", dir.join("relative")).unwrap();
    std::os::unix::fs::symlink("../../../../../../../../etc/shadow", dir.join("up")).unwrap();
    std::os::unix::fs::symlink("/etc/shadow", dir.join("shadow")).unwrap();

    let v = volume(&dir, "/data", "");
    let script = "for f in absolute relative up shadow; do cat /data/$f; done; \
                  cp /bin/busybox /data/suid; chmod 4755 /data/suid; echo chmod=$?; \
                  chmod 2755 /data/suid; echo chgrp=$?; \
                  touch /data/plain; chmod 755 /data/plain; echo plain=$?";
    let out = case.run("rootfs-busybox", &["-v", &v], &["sh", "-c", script]);
    let shadow = std::fs::read_to_string("/etc/shadow").unwrap_or_default();
    assert!(!out.stdout.contains("HOST SECRET"), "a symlink reached the host's file: {out:?}");
    if let Some(line) = shadow.lines().next() {
        assert!(!out.stdout.contains(line), "a symlink reached the host's /etc/shadow: {out:?}");
    }
    // The guest is told no; the host file has neither bit; ordinary chmod works.
    assert!(out.stdout.contains("chmod=1\n") && out.stdout.contains("chgrp=1\n"), "{out:?}");
    assert!(out.stdout.contains("plain=0\n"), "{out:?}");
    let mode = std::fs::metadata(dir.join("suid")).unwrap().permissions().mode();
    assert_eq!(mode & 0o6000, 0, "setuid/setgid bits on the host: {mode:o}");
    assert_eq!(std::fs::metadata(dir.join("plain")).unwrap().permissions().mode() & 0o777, 0o755);
    case.assert_nothing_left();
}

#[test]
fn bad_volumes_are_one_line_naming_them_exit_125_and_leave_nothing() {
    let case = Case::new("vol-bad");
    let data = TempDir::new("vol-bad");
    let base = data.0.clone();
    let socket = base.join("sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let missing = base.join("missing");
    for (v, says) in [
        (volume(&missing, "/data", ""), format!("mount /data: bind mount of {} from the host: No such file", missing.display())),
        (volume(&socket, "/s", ""), format!("mount /s: bind mount of {} from the host: a socket", socket.display())),
        (volume(&base, "../../etc", ""), "mounts[".to_string()),
        (volume(&base, "/data", ":rx"), "volume ".to_string()),
        ("data:/data".to_string(), "named volumes are not supported".to_string()),
    ] {
        let out = case.run("rootfs-busybox", &["-v", &v], &["true"]);
        assert_eq!(out.code, Some(125), "{v}: {out:?}");
        assert_eq!(out.stderr.trim_end().lines().count(), 1, "{v}: {out:?}");
        assert!(out.stderr.contains(&says), "{v}: expected {says:?}: {out:?}");
        case.assert_nothing_left();
    }
    assert!(!missing.exists(), "a missing host directory was made");
}

/// virtiofsd killed under a running container: the container's next file request fails with
/// an I/O error instead of hanging, the run ends, and the log says why.
#[test]
fn a_dying_virtiofsd_gives_io_errors_not_a_hang() {
    let case = Case::new("vol-kill");
    let data = TempDir::new("vol-kill-data");
    let dir = data.0.clone();
    std::fs::write(dir.join("first"), "one\n").unwrap();
    std::fs::write(dir.join("second"), "two\n").unwrap();
    let v = volume(&dir, "/data", "");
    let mut child = case
        .command("rootfs-busybox", &["-i", "-v", &v], &["sh", "-c", "cat /data/first; read x; cat /data/second; echo cat=$?"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _limit = KillAfter::new(child.id(), Duration::from_secs(300), "microvm run");
    let mut first = [0u8; 4];
    child.stdout.as_mut().unwrap().read_exact(&mut first).unwrap();
    assert_eq!(&first, b"one\n");

    let runtime = case.runtime.0.to_string_lossy().to_string();
    let killed = kill_virtiofsd(&runtime);
    assert!(killed > 0, "no virtiofsd found for {runtime}");
    use std::io::Write;
    writeln!(child.stdin.as_mut().unwrap(), "go").unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("cat=1"), "stdout {stdout:?} stderr {stderr:?}");
    assert!(stderr.contains("I/O error") || stderr.contains("Input/output error"), "{stderr:?}");
    assert!(stderr.contains("virtiofsd"), "the run does not say what happened: {stderr:?}");
    case.assert_nothing_left();
}

/// Sends SIGKILL to every virtiofsd whose command line names `runtime`, once one is there;
/// returns how many.
fn kill_virtiofsd(runtime: &str) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pids = virtiofsd_processes(runtime);
        for &pid in &pids {
            // SAFETY: kill with plain integer arguments.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        if !pids.is_empty() || Instant::now() > deadline {
            return pids.len();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `MICROVM_ROOTFS=virtiofs`: the rootfs directory shared read-only over virtio-fs instead of
/// packed; the container sees its files, writes to its root stay in the guest (the overlay),
/// and volumes still work beside it.
#[test]
fn the_rootfs_can_come_over_virtio_fs() {
    let case = Case::new("vol-rootfs");
    let data = TempDir::new("vol-rootfs-data");
    let v = volume(&data.0, "/data", "");
    let script = "cat /etc/passwd | head -n 1; echo changed > /etc/passwd; echo in-volume > /data/f; grep -c virtiofs /proc/mounts";
    let out = case
        .command("rootfs-busybox", &["-v", &v], &["sh", "-c", script])
        .env("MICROVM_ROOTFS", "virtiofs")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout} {}", String::from_utf8_lossy(&out.stderr));
    let host_passwd = std::fs::read_to_string(guest_tests::suite().rootfs.join("rootfs-busybox/etc/passwd")).unwrap();
    let first = host_passwd.lines().next().unwrap();
    assert!(stdout.starts_with(&format!("{first}\n")), "{stdout}");
    assert!(!host_passwd.contains("changed"), "a write to the root reached the host's rootfs");
    assert_eq!(std::fs::read_to_string(data.path("f")).unwrap(), "in-volume\n");
    case.assert_nothing_left();
}
