//! docker (Debian 12's docker.io: dockerd 20.10, containerd 1.6 and its runc v2 shim) drives
//! microvm as a runtime named in daemon.json (`docker run --runtime=microvm`), in the nested
//! bed, with an image imported from a busybox rootfs tar (no registry here): `run --rm` with
//! its output and exit code, `run -it` under a terminal, a detached container seen by `ps`, its `logs`, `exec`, `stop`
//! (SIGTERM, then SIGKILL after the timeout: the container's PID 1 ignores SIGTERM) and `rm`,
//! and nothing left behind.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use guest_tests::{suite, Case};
use test_support::{http_get, input, processes_matching, run_in_pty, KillAfter, Outcome, TempDir};

/// The docker CLI of the docker.io package (another may come first on PATH).
const DOCKER: &str = "/usr/bin/docker";
/// How long the daemons may take to start: under the nested bed's emulation containerd alone
/// has taken over a minute.
const START_LIMIT: Duration = Duration::from_secs(300);
/// The whole test's limit on the daemons: past it they are killed and what is left fails.
const DAEMON_LIMIT: Duration = Duration::from_secs(900);

/// A running daemon, its limit, and the log it writes.
struct Daemon {
    child: Child,
    _limit: KillAfter,
    log: PathBuf,
}

impl Daemon {
    fn spawn(command: &mut Command, log: PathBuf, what: &str) -> Self {
        let file = std::fs::File::create(&log).unwrap();
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let limit = KillAfter::new(child.id(), DAEMON_LIMIT, what);
        Daemon { child, _limit: limit, log }
    }

    /// The daemon's log, for a failure's message.
    fn tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<_> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// SIGTERM, then SIGKILL if it has not gone within `grace`.
    fn stop(&mut self, grace: Duration) {
        let pid = i32::try_from(self.child.id()).unwrap();
        // SAFETY: kill takes plain integers; the pid is our unreaped child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A docker of its own: its own containerd (dockerd's managed one gives up before it has
/// started under the bed's emulation), state, sockets and images in a scratch directory, vfs
/// storage, cgroupfs (L1 runs no systemd), no bridge or iptables, and microvm through a wrapper
/// that sets its environment. Dropping it stops the daemons and whatever they left running.
struct Docker {
    dir: TempDir,
    socket: String,
    runtime_root: PathBuf,
    containerd: Option<Daemon>,
    dockerd: Option<Daemon>,
}

impl Docker {
    fn new(case: &Case) -> Self {
        Self::start(case, false)
    }

    /// With `bridge`, dockerd makes its default bridge (docker0) with iptables rules, as a
    /// stock install does; without, no bridge and no iptables.
    fn start(case: &Case, bridge: bool) -> Self {
        let dir = TempDir::new("docker");
        let wrapper = dir.path("microvm-runtime");
        let mut script = String::from("#!/bin/sh\n");
        for (key, value) in case.vars() {
            script.push_str(&format!("export {key}='{}'\n", value.display()));
        }
        // containerd's shim passes --root: dockerd 20.10 gives every runtime
        // <exec root>/runtime-runc, and the shim adds containerd's namespace (moby).
        script.push_str(&format!(
            "export MICROVM_KERNEL='{}'\nexec '{}' \"$@\"\n",
            input("MICROVM_KERNEL_DIR").join("vmlinux").display(),
            input("MICROVM_BIN").display(),
        ));
        std::fs::write(&wrapper, script).unwrap();
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = |name: &str| dir.path(name).to_string_lossy().into_owned();
        let dockerd_socket = path("docker.sock");
        let mut dockerd_args = vec![
            ("--containerd", path("containerd.sock")),
            ("--data-root", path("data")),
            ("--exec-root", path("exec")),
            ("--pidfile", path("docker.pid")),
            ("--host", format!("unix://{dockerd_socket}")),
            ("--config-file", path("daemon.json")),
            ("--storage-driver", "vfs".into()),
            ("--exec-opt", "native.cgroupdriver=cgroupfs".into()),
            ("--iptables", "false".into()),
            ("--ip6tables", "false".into()),
            ("--ip-masq", "false".into()),
            ("--bridge", "none".into()),
            ("--shutdown-timeout", "5".into()),
        ];
        if bridge {
            dockerd_args.retain(|(flag, _)| !["--iptables", "--ip6tables", "--ip-masq", "--bridge"].contains(flag));
        }

        let containerd_socket = path("containerd.sock");
        std::fs::write(
            dir.path("containerd.toml"),
            format!(
                "version = 2\nroot = '{}'\nstate = '{}'\n\
                 disabled_plugins = ['io.containerd.grpc.v1.cri', 'io.containerd.snapshotter.v1.btrfs', \
                 'io.containerd.snapshotter.v1.zfs', 'io.containerd.snapshotter.v1.aufs', \
                 'io.containerd.snapshotter.v1.devmapper']\n[grpc]\n  address = '{containerd_socket}'\n",
                path("containerd-root"),
                path("containerd-state"),
            ),
        )
        .unwrap();
        std::fs::write(
            dir.path("daemon.json"),
            format!(
                r#"{{"runtimes": {{"microvm": {{"path": "{}"}}}}, "deprecated-key-path": "{}"}}"#,
                wrapper.display(),
                path("key.json")
            ),
        )
        .unwrap();

        let mut docker = Docker {
            socket: format!("unix://{dockerd_socket}"),
            runtime_root: dir.path("exec").join("runtime-runc"),
            containerd: None,
            dockerd: None,
            dir,
        };
        docker.containerd = Some(Daemon::spawn(
            Command::new("containerd").arg("--config").arg(docker.dir.path("containerd.toml")),
            docker.dir.path("containerd.log"),
            "containerd",
        ));
        docker.wait_for("containerd", || Path::new(&containerd_socket).exists());
        docker.dockerd = Some(Daemon::spawn(
            Command::new("dockerd").args(dockerd_args.iter().map(|(k, v)| format!("{k}={v}"))),
            docker.dir.path("dockerd.log"),
            "dockerd",
        ));
        let (socket, cli) = (docker.socket.clone(), docker.dir.path("cli"));
        docker.wait_for("dockerd", || {
            Path::new(&dockerd_socket).exists() && self::docker(&socket, &cli, &["version"]).code == Some(0)
        });

        let tar = docker.dir.path("busybox.tar");
        let status = Command::new("tar")
            .arg("-C")
            .arg(suite().rootfs.join("rootfs-busybox"))
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .unwrap();
        assert!(status.success());
        let out = docker.run(&["import", tar.to_str().unwrap(), "localhost/busybox"]);
        assert_eq!(out.code, Some(0), "{out:?}");
        docker
    }

    /// Polls `ready` until it holds; fails, with the daemons' logs, if either daemon exits or
    /// START_LIMIT passes first.
    fn wait_for(&mut self, what: &str, ready: impl Fn() -> bool) {
        let deadline = Instant::now() + START_LIMIT;
        loop {
            if ready() {
                return;
            }
            for daemon in [&mut self.containerd, &mut self.dockerd].into_iter().flatten() {
                if let Some(status) = daemon.child.try_wait().unwrap() {
                    panic!("{what} not ready: a daemon exited ({status}):\n{}", daemon.tail());
                }
            }
            assert!(Instant::now() < deadline, "{what} not ready after {START_LIMIT:?}");
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn run(&self, args: &[&str]) -> Outcome {
        docker(&self.socket, &self.dir.path("cli"), args)
    }

    /// `docker run` in microvm, without a network or an AppArmor profile (the bed has no
    /// apparmor_parser to load docker's default one).
    fn run_container(&self, args: &[&str]) -> Outcome {
        let mut all = vec!["run", "--runtime=microvm", "--network", "none", "--security-opt", "apparmor=unconfined"];
        all.extend_from_slice(args);
        self.run(&all)
    }

    /// No container of docker's, no container state in the runtime's root, no VMM process, no
    /// mount from its root.
    fn assert_nothing_left(&self) {
        let out = self.run(&["ps", "--all", "--quiet"]);
        assert_eq!((out.code, out.stdout.as_str()), (Some(0), ""), "{out:?}");
        // The shim's --root is <runtime root>/<containerd namespace>: look one level down.
        let mut left = Vec::new();
        for namespace in std::fs::read_dir(&self.runtime_root).into_iter().flatten().flatten() {
            left.extend(std::fs::read_dir(namespace.path()).into_iter().flatten().flatten().map(|e| e.path()));
        }
        assert!(left.is_empty(), "left behind: {left:?}");
        let root = self.runtime_root.to_string_lossy().to_string();
        guest_tests::assert_no_process_left(|| processes_matching(&root));
        assert!(!std::fs::read_to_string("/proc/self/mountinfo").unwrap().contains(&root));
    }
}

/// A docker command against the daemon at `socket`, with the CLI's config in `cli`.
fn docker(socket: &str, cli: &Path, args: &[&str]) -> Outcome {
    let child = Command::new(DOCKER)
        .args(["--host", socket])
        .args(args)
        .env("DOCKER_CONFIG", cli)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = {
        let _limit = KillAfter::new(child.id(), Duration::from_secs(300), &format!("docker {}", args.join(" ")));
        child.wait_with_output().unwrap()
    };
    Outcome {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for (name, daemon) in [("containerd", &self.containerd), ("dockerd", &self.dockerd)] {
                if let Some(daemon) = daemon {
                    eprintln!("--- {name} log (last lines):\n{}", daemon.tail());
                }
            }
        }
        if let Some(mut dockerd) = self.dockerd.take() {
            dockerd.stop(Duration::from_secs(30));
        }
        if let Some(mut containerd) = self.containerd.take() {
            containerd.stop(Duration::from_secs(10));
        }
        // What the daemons left (after a failure): shims and VMM processes name this
        // directory on their command lines; mounts (network namespaces) lie under it.
        let dir = self.dir.0.to_string_lossy().to_string();
        for pid in processes_matching(&dir) {
            if let Ok(pid) = i32::try_from(pid) {
                // SAFETY: kill takes plain integers.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut points: Vec<&str> =
            mounts.lines().filter_map(|l| l.split(' ').nth(4)).filter(|p| p.starts_with(&dir)).collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for point in points {
            let _ = Command::new("umount").args(["--lazy", point]).status();
        }
    }
}

#[test]
fn docker_runs_containers_in_microvms() {
    assert!(Path::new(DOCKER).is_file(), "docker.io is not installed: run tests/bed/setup.sh");
    let case = Case::new("docker");
    let docker = Docker::new(&case);
    let image = "localhost/busybox";

    // Each run boots a VM under emulation: one run checks the output and an exit code.
    let out = docker.run_container(&["--rm", image, "sh", "-c", "echo hi; exit 7"]);
    assert_eq!((out.code, out.stdout.as_str()), (Some(7), "hi\n"), "{out:?}");

    // A host directory over virtio-fs, both ways; and --init, whose docker-init (over the
    // 64 KiB copy limit) is shared the same way.
    let data = TempDir::new("docker-vol");
    std::fs::write(data.path("in.txt"), "from the host\n").unwrap();
    let v = format!("{}:/data", data.0.display());
    let script = "cat /data/in.txt; echo from docker > /data/out.txt; cat /proc/1/comm";
    let out = docker.run_container(&["--rm", "--init", "-v", &v, image, "sh", "-c", script]);
    assert_eq!((out.code, out.stdout.as_str()), (Some(0), "from the host\ndocker-init\n"), "{out:?}");
    assert_eq!(std::fs::read_to_string(data.path("out.txt")).unwrap(), "from docker\n");

    // -it: the container gets a terminal of docker's size and docker exits with its status.
    let mut command = Command::new(DOCKER);
    command
        .args(["--host", &docker.socket])
        .env("DOCKER_CONFIG", docker.dir.path("cli"))
        .args(["run", "-it", "--rm", "--runtime=microvm", "--network", "none", "--security-opt", "apparmor=unconfined", image])
        .args(["sh", "-c", "while [ \"$(stty size)\" != '31 101' ]; do sleep 0.1; done; tty; echo size $(stty size); exit 3"])
        .env("TERM", "xterm");
    let (code, screen) = run_in_pty(command, 31, 101);
    assert_eq!(code, Some(3), "{screen}");
    assert!(screen.contains("/dev/pts/0") && screen.contains("size 31 101"), "{screen}");

    let out = docker.run_container(&["-d", image, "sh", "-c", "echo started; sleep 1000"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let id = out.stdout.trim().to_owned();
    let ps = docker.run(&["ps", "--quiet", "--no-trunc"]);
    assert_eq!(ps.stdout.trim(), id, "{ps:?}");
    let logs = docker.run(&["logs", &id]);
    assert_eq!(logs.stdout, "started\n", "{logs:?}");
    // A second process in the same container: it sees the first as PID 1 (busybox sh -c
    // execs its last command in place: PID 1 is sleep by now).
    let exec = docker.run(&["exec", &id, "sh", "-c", "tr '\\0' ' ' < /proc/1/cmdline; exit 4"]);
    assert_eq!((exec.code, exec.stdout.as_str()), (Some(4), "sleep 1000 "), "{exec:?}");
    // exec -it: a terminal of its own, and docker exits with the process's status.
    let mut command = Command::new(DOCKER);
    command
        .args(["--host", &docker.socket])
        .env("DOCKER_CONFIG", docker.dir.path("cli"))
        .args(["exec", "-it", &id, "sh", "-c", "tty; exit 5"])
        .env("TERM", "xterm");
    let (code, screen) = run_in_pty(command, 31, 101);
    assert_eq!(code, Some(5), "{screen}");
    assert!(screen.contains("/dev/pts/"), "{screen}");
    // PID 1 of the container has no SIGTERM handler: stop falls back to SIGKILL.
    let stop = docker.run(&["stop", "-t", "2", &id]);
    assert_eq!(stop.code, Some(0), "{stop:?}");
    let code = docker.run(&["inspect", "-f", "{{.State.ExitCode}}", &id]);
    assert_eq!(code.stdout.trim(), "137", "{code:?}");
    let rm = docker.run(&["rm", &id]);
    assert_eq!(rm.code, Some(0), "{rm:?}");
    docker.assert_nothing_left();
}

/// docker's default bridge (docker0, iptables on): libnetwork fills the network namespace
/// from its prestart hook, which microvm runs before the VM is built around that namespace;
/// a published port reaches the container's httpd from L1, and so does its bridge address,
/// from L1 and from a second container.
#[test]
fn docker_bridge_network_publishes_ports() {
    let case = Case::new("docker-net");
    let docker = Docker::start(&case, true);
    let image = "localhost/busybox";
    let run = ["run", "--runtime=microvm", "--security-opt", "apparmor=unconfined"];
    let out = docker.run(&[&run[..], &["-d", "-p", "18081:80", image, "httpd", "-f", "-p", "80", "-h", "/etc"]].concat());
    assert_eq!(out.code, Some(0), "{out:?}");
    let id = out.stdout.trim().to_owned();
    let hostname = format!("{}\n", &id[..12]);
    let deadline = Instant::now() + Duration::from_secs(120);
    let page = loop {
        match http_get("127.0.0.1:18081", "/hostname") {
            Some(page) => break page,
            None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(250)),
            None => panic!("the published port never answered; logs: {:?}", docker.run(&["logs", &id])),
        }
    };
    assert_eq!(page, hostname);
    let ip = docker.run(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", &id]).stdout.trim().to_owned();
    assert!(ip.starts_with("172."), "{ip:?}");
    assert_eq!(http_get(&format!("{ip}:80"), "/hostname").as_deref(), Some(hostname.as_str()));
    // (This image's busybox wget crashes with -T under runc as well: no timeout flag.)
    let url = format!("http://{ip}/hostname");
    let out = docker.run(&[&run[..], &["--rm", image, "wget", "-q", "-O", "-", &url]].concat());
    assert_eq!((out.code, out.stdout.as_str()), (Some(0), hostname.as_str()), "{out:?}");
    let rm = docker.run(&["rm", "-f", &id]);
    assert_eq!(rm.code, Some(0), "{rm:?}");
    docker.assert_nothing_left();
}
