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
use test_support::{http_get, input, processes_matching, run_in_pty, KillAfter, Outcome, TempDir};

/// A podman of its own: vfs storage and state in scratch directories, cgroupfs (L1 runs no
/// systemd), events to a file, and microvm either through a wrapper that sets its environment
/// (`new`) or installed, found by path with nothing set (`installed`).
struct Podman {
    dir: TempDir,
    base: Vec<String>,
    runtime_root: PathBuf,
    /// podman started with only PATH and HOME, as a user's shell or a unit file would.
    bare_env: bool,
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
        Self::with_runtime(dir, &wrapper, runtime_root, false)
    }

    /// microvm laid out as install.sh lays it out under a scratch prefix, and podman given
    /// its path (`--runtime PREFIX/bin/microvm`) and no MICROVM_* variable; the runtime's
    /// state goes to its default root, /run/microvm.
    fn installed() -> Self {
        let dir = TempDir::new("podman-installed");
        let prefix = dir.path("prefix");
        for (from, to) in [
            (input("MICROVM_BIN"), "bin/microvm"),
            (input("MICROVM_KERNEL_DIR").join("vmlinux"), "lib/microvm/vmlinux"),
            (input("MICROVM_AGENT"), "lib/microvm/microvm-agent"),
            (input("MICROVM_VIRTIOFSD"), "lib/microvm/virtiofsd"),
        ] {
            std::fs::create_dir_all(prefix.join(to).parent().unwrap()).unwrap();
            std::fs::copy(&from, prefix.join(to)).unwrap();
        }
        let runtime = prefix.join("bin/microvm");
        Self::with_runtime(dir, &runtime, PathBuf::from("/run/microvm"), true)
    }

    fn with_runtime(dir: TempDir, runtime: &Path, runtime_root: PathBuf, bare_env: bool) -> Self {
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
            runtime.to_string_lossy().into_owned(),
        ];
        let podman = Podman { dir, base, runtime_root, bare_env };
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
        let mut command = Command::new("podman");
        if self.bare_env {
            command.env_clear().envs(["PATH", "HOME"].map(|k| (k, std::env::var_os(k).unwrap_or_default())));
        }
        let child = command
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
        guest_tests::assert_no_process_left(|| processes_matching(&root));
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
    // --read-only: podman's tmpfs mounts (/run, /tmp) are made and writable, the root is not.
    let script = "touch /run/ok /tmp/ok && echo tmpfs-writable; touch /x 2>&1 | grep -q Read-only && echo root-read-only";
    let out = podman.run(&["run", "--rm", "--read-only", "--network", "none", image, "sh", "-c", script]);
    assert_eq!((out.code, out.stdout.as_str()), (Some(0), "tmpfs-writable\nroot-read-only\n"), "{out:?}");

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

/// What the container writes in its root is in podman's copy of it, as under runc: `podman
/// diff` lists it, `podman cp` copies it out, and `podman commit` keeps it in a new image.
#[test]
fn podman_sees_what_the_container_wrote_in_its_root() {
    let case = Case::new("podman-rootfs");
    let podman = Podman::new(&case);
    let script = "mkdir /made && echo from the container > /made/file";
    let out = podman.run(&["run", "--name", "writer", "--network", "none", "localhost/busybox", "sh", "-c", script]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let diff = podman.run(&["diff", "writer"]);
    assert!(diff.stdout.lines().any(|l| l == "A /made/file"), "{diff:?}");
    let copy = TempDir::new("podman-rootfs-cp");
    let out = podman.run(&["cp", "writer:/made/file", copy.path("file").to_str().unwrap()]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(std::fs::read_to_string(copy.path("file")).unwrap(), "from the container\n");
    let out = podman.run(&["commit", "--quiet", "writer", "localhost/written"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let out = podman.run(&["run", "--rm", "--network", "none", "localhost/written", "cat", "/made/file"]);
    assert_eq!((out.code, out.stdout.as_str()), (Some(0), "from the container\n"), "{out:?}");
    for args in [&["rm", "writer"][..], &["rmi", "localhost/written"]] {
        let out = podman.run(args);
        assert_eq!(out.code, Some(0), "{out:?}");
    }
    podman.assert_nothing_left();
    case.assert_nothing_left();
}

/// `podman run --uidmap/--gidmap`: podman chowns its copy of the image and asks for a user
/// namespace; the container's root is 0 inside and 100000 outside, and what it writes in its
/// root is owned by 100000 in podman's copy, as under runc.
#[test]
fn podman_uidmap_runs_the_container_in_a_user_namespace() {
    let case = Case::new("podman-userns");
    let podman = Podman::new(&case);
    let map = ["--uidmap", "0:100000:65536", "--gidmap", "0:100000:65536"];
    let script = "id -u; awk '{print $2}' /proc/self/uid_map; touch /made; stat -c %u /made";
    let mut args = vec!["run", "--rm", "--network", "none"];
    args.extend(map);
    args.extend(["localhost/busybox", "sh", "-c", script]);
    let out = podman.run(&args);
    assert_eq!((out.code, out.stdout.as_str()), (Some(0), "0\n100000\n0\n"), "{out:?}");
    podman.assert_nothing_left();
    case.assert_nothing_left();
}

/// podman's volumes over virtio-fs: `-v HOSTDIR:/data` both ways, `:ro` refuses writes, a
/// named volume outlives its container, and `--mount type=bind`.
#[test]
fn podman_volumes_share_host_directories() {
    let case = Case::new("podman-vol");
    let podman = Podman::new(&case);
    let image = "localhost/busybox";
    let data = TempDir::new("podman-vol-data");
    std::fs::write(data.path("in.txt"), "from the host\n").unwrap();

    // A small file is copied in rather than shared: a read-write one gets the container's
    // changes back at its exit.
    let note = TempDir::new("podman-vol-note");
    std::fs::write(note.path("note"), "from the host\n").unwrap();
    let v = format!("{}:/data", data.0.display());
    let n = format!("{}:/note", note.path("note").display());
    let script = "cat /data/in.txt; echo from the container > /data/out.txt; echo changed > /note";
    let out = podman.run(&["run", "--rm", "--network", "none", "-v", &v, "-v", &n, image, "sh", "-c", script]);
    assert_eq!((out.code, out.stdout.as_str()), (Some(0), "from the host\n"), "{out:?}");
    assert_eq!(std::fs::read_to_string(data.path("out.txt")).unwrap(), "from the container\n");
    assert_eq!(std::fs::read_to_string(note.path("note")).unwrap(), "changed\n");

    let ro = format!("{v}:ro");
    let out = podman.run(&["run", "--rm", "--network", "none", "-v", &ro, image, "sh", "-c", "echo x > /data/y"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("Read-only file system"), "{out:?}");
    assert!(!data.path("y").exists());

    let out = podman.run(&["volume", "create", "kept"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let out = podman.run(&["run", "--rm", "--network", "none", "-v", "kept:/v", image, "sh", "-c", "echo kept > /v/f"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let mount = format!("type=bind,src={},dst=/m", data.0.display());
    let script = "cat /v/f /m/in.txt";
    let out = podman.run(&["run", "--rm", "--network", "none", "-v", "kept:/v", "--mount", &mount, image, "sh", "-c", script]);
    assert_eq!((out.code, out.stdout.as_str()), (Some(0), "kept\nfrom the host\n"), "{out:?}");
    let out = podman.run(&["volume", "rm", "kept"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    podman.assert_nothing_left();
    case.assert_nothing_left();
}

/// podman given an installed microvm by path, with no MICROVM_* variable: the kernel and agent
/// are found beside the binary, and the container runs and goes. In the nested bed HOME is the
/// host's /root, a read-only share, so the image cache also falls back to a root-owned
/// directory there (the fallback's choice is unit-tested in runtime/src/layout.rs).
#[test]
fn podman_runs_an_installed_microvm_with_no_environment() {
    let podman = Podman::installed();
    let out = podman.run(&["run", "--rm", "--network", "none", "localhost/busybox", "sh", "-c", "echo hi; exit 3"]);
    assert_eq!((out.code, out.stdout.as_str()), (Some(3), "hi\n"), "{out:?}");
    let prefix = podman.dir.path("prefix").to_string_lossy().into_owned();
    guest_tests::assert_no_process_left(|| processes_matching(&prefix));
    let out = podman.run(&["ps", "--all", "--quiet"]);
    assert_eq!(out.stdout, "", "{out:?}");
}

/// podman's default bridge network (CNI: a veth in the container's namespace) carried into
/// the VM: a published port reaches the container's httpd from L1, a second container reaches
/// the first by its IP, and a container reaches a server on L1 through the bridge's gateway.
#[test]
fn podman_bridge_network_publishes_ports_and_joins_containers() {
    let case = Case::new("podman-net");
    let podman = Podman::new(&case);
    let image = "localhost/busybox";
    let out = podman.run(&["run", "-d", "-p", "18080:80", image, "httpd", "-f", "-p", "80", "-h", "/etc"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let id = out.stdout.trim().to_owned();
    // podman writes the container's /etc/hostname without a newline.
    let hostname = id[..12].to_owned();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let page = loop {
        match http_get("127.0.0.1:18080", "/hostname") {
            Some(page) => break page,
            None if std::time::Instant::now() < deadline => std::thread::sleep(Duration::from_millis(250)),
            None => panic!("the published port never answered; logs: {:?}", podman.run(&["logs", &id])),
        }
    };
    assert_eq!(page, hostname);

    let ip = podman.run(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", &id]).stdout.trim().to_owned();
    assert!(ip.starts_with("10.88."), "{ip:?}");
    let url = format!("http://{ip}/hostname");
    let out = podman.run(&["run", "--rm", image, "wget", "-q", "-O", "-", &url]);
    assert_eq!((out.code, out.stdout.as_str()), (Some(0), hostname.as_str()), "{out:?}");

    // A server on L1, reached through the default route's gateway (the bridge's address).
    let server = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = server.local_addr().unwrap().port();
    let serving = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut peer, _) = server.accept().unwrap();
        let mut request = [0u8; 1024];
        let _ = peer.read(&mut request);
        peer.write_all(b"HTTP/1.0 200 OK\r\n\r\nfrom-l1\n").unwrap();
    });
    let script = format!("wget -q -O - http://$(ip route | awk '/^default/ {{print $3}}'):{port}/");
    let out = podman.run(&["run", "--rm", image, "sh", "-c", &script]);
    assert_eq!((out.code, out.stdout.as_str()), (Some(0), "from-l1\n"), "{out:?}");
    serving.join().unwrap();

    let rm = podman.run(&["rm", "-f", "-t", "2", &id]);
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
