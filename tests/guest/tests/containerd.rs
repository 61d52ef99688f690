//! containerd drives microvm through its runtime v2 shim (`ctr run --runtime
//! io.containerd.microvm.v2`), in the nested bed: a containerd of its own (scratch root,
//! state and socket, no CRI plugin) started with PATH alone, the shim and microvm installed
//! under a scratch prefix as install.sh lays them out and found on that PATH with no
//! MICROVM_* variable, and an image imported from the busybox rootfs as an OCI archive.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use guest_tests::suite;
use test_support::{input, processes_matching, run_in_pty, KillAfter, Outcome, TempDir};

const RUNTIME: &str = "io.containerd.microvm.v2";
const IMAGE: &str = "localhost/busybox:latest";
const NAMESPACE: &str = "microvm-test";

/// The tests run one at a time: each checks that no shim or VMM process is left anywhere.
static SERIAL: Mutex<()> = Mutex::new(());

struct Containerd {
    _serial: MutexGuard<'static, ()>,
    dir: TempDir,
    socket: PathBuf,
    path: String,
    daemon: Child,
}

impl Containerd {
    fn start() -> Self {
        let serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
        let dir = TempDir::new("containerd");
        let prefix = dir.path("prefix");
        for (from, to) in [
            (input("MICROVM_BIN"), "bin/microvm"),
            (input("MICROVM_SHIM"), "bin/containerd-shim-microvm-v2"),
            (input("MICROVM_KERNEL_DIR").join("vmlinux"), "lib/microvm/vmlinux"),
            (input("MICROVM_AGENT"), "lib/microvm/microvm-agent"),
            (input("MICROVM_VIRTIOFSD"), "lib/microvm/virtiofsd"),
        ] {
            std::fs::create_dir_all(prefix.join(to).parent().unwrap()).unwrap();
            std::fs::copy(&from, prefix.join(to)).unwrap();
        }
        let socket = dir.path("containerd.sock");
        let config = format!(
            "version = 2\nroot = '{}'\nstate = '{}'\ndisabled_plugins = ['io.containerd.grpc.v1.cri']\n[grpc]\naddress = '{}'\n",
            dir.path("root").display(),
            dir.path("state").display(),
            socket.display()
        );
        std::fs::write(dir.path("config.toml"), config).unwrap();
        let path = format!("{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", prefix.join("bin").display());
        let log = std::fs::File::create(dir.path("containerd.log")).unwrap();
        let daemon = Command::new("containerd")
            .arg("--config")
            .arg(dir.path("config.toml"))
            .env_clear()
            .env("PATH", &path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start containerd (Debian's containerd package: tests/bed/setup.sh)");
        let containerd = Self { _serial: serial, dir, socket, path, daemon };
        let deadline = Instant::now() + Duration::from_secs(60);
        while containerd.ctr(&["version"]).code != Some(0) {
            assert!(Instant::now() < deadline, "containerd did not answer: {}", containerd.log());
            std::thread::sleep(Duration::from_millis(200));
        }
        containerd.import_busybox();
        containerd
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path("containerd.log")).unwrap_or_default()
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("ctr");
        command.env_clear().env("PATH", &self.path);
        command.arg("--address").arg(&self.socket).arg("--namespace").arg(NAMESPACE).args(args);
        command
    }

    fn ctr(&self, args: &[&str]) -> Outcome {
        let child = self
            .command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = {
            let _limit = KillAfter::new(child.id(), Duration::from_secs(300), &format!("ctr {}", args.join(" ")));
            child.wait_with_output().unwrap()
        };
        Outcome {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `ctr run` of the busybox image in a microVM, with ARGS before the image.
    fn run(&self, args: &[&str], id: &str, cmd: &[&str]) -> Outcome {
        let mut all = vec!["run", "--runtime", RUNTIME, "--snapshotter", "native"];
        all.extend(args);
        all.extend([IMAGE, id]);
        all.extend(cmd);
        self.ctr(&all)
    }

    /// An OCI image archive of one uncompressed layer, the busybox rootfs, named IMAGE.
    fn import_busybox(&self) {
        let layout = self.dir.path("image");
        let blobs = layout.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).unwrap();
        let layer = self.dir.path("layer.tar");
        let status = Command::new("tar")
            .arg("-C")
            .arg(suite().rootfs.join("rootfs-busybox"))
            .arg("-cf")
            .arg(&layer)
            .arg(".")
            .status()
            .unwrap();
        assert!(status.success());
        let put = |bytes: &[u8]| -> (String, usize) {
            let file = self.dir.path("blob");
            std::fs::write(&file, bytes).unwrap();
            let digest = sha256(&file);
            std::fs::rename(&file, blobs.join(&digest)).unwrap();
            (format!("sha256:{digest}"), bytes.len())
        };
        let (layer_digest, layer_size) = put(&std::fs::read(&layer).unwrap());
        let config = format!(
            r#"{{"architecture":"amd64","os":"linux","config":{{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]}},"rootfs":{{"type":"layers","diff_ids":["{layer_digest}"]}}}}"#
        );
        let (config_digest, config_size) = put(config.as_bytes());
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{config_size}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer_digest}","size":{layer_size}}}]}}"#
        );
        let (manifest_digest, manifest_size) = put(manifest.as_bytes());
        let index = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{manifest_digest}","size":{manifest_size},"annotations":{{"io.containerd.image.name":"{IMAGE}","org.opencontainers.image.ref.name":"latest"}}}}]}}"#
        );
        std::fs::write(layout.join("index.json"), index).unwrap();
        std::fs::write(layout.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        let archive = self.dir.path("busybox-oci.tar");
        let status = Command::new("tar").arg("-C").arg(&layout).arg("-cf").arg(&archive).arg(".").status().unwrap();
        assert!(status.success());
        let out = self.ctr(&["image", "import", "--snapshotter", "native", archive.to_str().unwrap()]);
        assert_eq!(out.code, Some(0), "{out:?}");
        let out = self.ctr(&["image", "ls", "-q"]);
        assert!(out.stdout.lines().any(|l| l == IMAGE), "{out:?}");
    }

    /// The shim process serving container `id` (its command line names it with `-id`).
    fn shim_of(&self, id: &str) -> Option<u32> {
        processes_matching("containerd-shim-microvm-v2").into_iter().find(|&pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
            args.windows(2).any(|w| w[0] == b"-id" && w[1] == id.as_bytes())
        })
    }

    fn task_status(&self, id: &str) -> Option<String> {
        let out = self.ctr(&["task", "ls"]);
        out.stdout.lines().find(|l| l.split_whitespace().next() == Some(id)).and_then(|l| l.split_whitespace().nth(2)).map(str::to_string)
    }

    fn wait_for_status(&self, id: &str, wanted: Option<&str>) {
        self.wait_until(id, &format!("{wanted:?}"), |status| status == wanted);
    }

    /// Waits until task `id`'s status (`None`: no such task) passes `ok`.
    fn wait_until(&self, id: &str, what: &str, ok: impl Fn(Option<&str>) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let status = self.task_status(id);
            if ok(status.as_deref()) {
                return;
            }
            assert!(Instant::now() < deadline, "task {id}: {status:?}, not {what}\n{}", self.log());
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// No task, container, shim, VMM process, runtime state or mount is left.
    fn assert_nothing_left(&self) {
        let out = self.ctr(&["task", "ls", "-q"]);
        assert_eq!(out.stdout, "", "{out:?}");
        let out = self.ctr(&["container", "ls", "-q"]);
        assert_eq!(out.stdout, "", "{out:?}");
        let deadline = Instant::now() + Duration::from_secs(60);
        while !processes_matching("containerd-shim-microvm-v2").is_empty() {
            assert!(Instant::now() < deadline, "a shim is still running");
            std::thread::sleep(Duration::from_millis(250));
        }
        let state = Path::new("/run/containerd/microvm").join(NAMESPACE);
        let left: Vec<_> = std::fs::read_dir(&state).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
        assert!(left.is_empty(), "left behind: {left:?}");
        guest_tests::assert_no_process_left(|| processes_matching(&state.to_string_lossy()));
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mounts.contains(&self.dir.0.to_string_lossy().to_string()), "a mount is left:\n{mounts}");
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // After a failed test: its tasks go, so that the next test starts clean.
        for id in self.ctr(&["task", "ls", "-q"]).stdout.lines() {
            let _ = self.ctr(&["task", "delete", "--force", id]);
        }
        for id in self.ctr(&["container", "ls", "-q"]).stdout.lines() {
            let _ = self.ctr(&["container", "rm", id]);
        }
        // SAFETY: kill takes plain integers; the daemon is our unreaped child.
        unsafe { libc::kill(self.daemon.id() as i32, libc::SIGTERM) };
        let _ = self.daemon.wait();
    }
}

fn sha256(file: &Path) -> String {
    let out = Command::new("sha256sum").arg(file).output().unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().to_string()
}

#[test]
fn ctr_runs_tasks_in_microvms_through_the_shim() {
    let containerd = Containerd::start();

    let out = containerd.run(&["--rm"], "echo", &["echo", "hi"]);
    assert_eq!((out.code, out.stdout.as_str()), (Some(0), "hi\n"), "{out:?}\n{}", containerd.log());
    let out = containerd.run(&["--rm"], "exit7", &["sh", "-c", "exit 7"]);
    assert_eq!(out.code, Some(7), "{out:?}");
    // stdin reaches the container and its end reaches it too.
    let mut cat = containerd.command(&["run", "--rm", "--runtime", RUNTIME, "--snapshotter", "native", IMAGE, "cat", "cat"]);
    let child = cat.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let out = {
        let _limit = KillAfter::new(child.id(), Duration::from_secs(300), "ctr run cat");
        let mut child = child;
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"through stdin\n").unwrap();
        child.wait_with_output().unwrap()
    };
    assert_eq!(String::from_utf8_lossy(&out.stdout), "through stdin\n", "{out:?}");

    // A detached task: exec, ps, SIGKILL (137), delete.
    let out = containerd.run(&["-d"], "detached", &["sleep", "1000"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    containerd.wait_for_status("detached", Some("RUNNING"));
    let out = containerd.ctr(&["task", "exec", "--exec-id", "e1", "detached", "sh", "-c", "echo in-exec; exit 3"]);
    assert_eq!((out.code, out.stdout.as_str()), (Some(3), "in-exec\n"), "{out:?}");
    let out = containerd.ctr(&["task", "ps", "detached"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.lines().count() >= 2, "no process listed: {out:?}");
    // The guest cgroup's counters, through Stats (microvm events --stats).
    let out = containerd.ctr(&["task", "metrics", "--format", "json", "detached"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let metrics: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"));
    let counter = |pointer: &str| metrics.pointer(pointer).and_then(serde_json::Value::as_u64).unwrap_or(0);
    assert!(counter("/pids/current") >= 1, "{metrics}");
    assert!(counter("/memory/usage") > 0 && counter("/cpu/usage_usec") > 0, "{metrics}");
    // SIGKILL to an exec'd process: its stand-in cannot forward it, and the guest process
    // goes with the stand-in's connection.
    let out = containerd.ctr(&["task", "exec", "--detach", "--exec-id", "e2", "detached", "sleep", "777"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let out = containerd.ctr(&["task", "kill", "--exec-id", "e2", "--signal", "SIGKILL", "detached"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let check = "for i in 1 2 3 4 5; do ps | grep -q '[s]leep 777' || { echo gone; exit 0; }; sleep 1; done; echo alive";
    let out = containerd.ctr(&["task", "exec", "--exec-id", "e3", "detached", "sh", "-c", check]);
    assert_eq!(out.stdout, "gone\n", "{out:?}");
    let out = containerd.ctr(&["task", "kill", "--signal", "SIGKILL", "detached"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    containerd.wait_for_status("detached", Some("STOPPED"));
    // ctr 1.6 reports the deleted task's status as a warning.
    let out = containerd.ctr(&["task", "delete", "detached"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stderr.contains("exit code 137"), "{out:?}");
    let out = containerd.ctr(&["container", "rm", "detached"]);
    assert_eq!(out.code, Some(0), "{out:?}");

    // A terminal: ctr's own is a pty, the container's is one too.
    let mut tty = containerd.command(&["run", "-t", "--rm", "--runtime", RUNTIME, "--snapshotter", "native", IMAGE, "tty", "sh", "-c", "tty; stty size"]);
    tty.stderr(Stdio::piped());
    let (code, screen) = run_in_pty(tty, 30, 100);
    assert_eq!(code, Some(0), "{screen}");
    assert!(screen.contains("/dev/pts/"), "{screen}");
    containerd.assert_nothing_left();
}

#[test]
fn a_shim_killed_mid_run_leaves_a_stopped_task_and_nothing_behind() {
    let containerd = Containerd::start();
    let out = containerd.run(&["-d"], "orphan", &["sleep", "1000"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    containerd.wait_for_status("orphan", Some("RUNNING"));
    let shim = containerd.shim_of("orphan").expect("the task's shim process");
    // SAFETY: kill takes plain integers; the pid was read from /proc just now.
    unsafe { libc::kill(shim as i32, libc::SIGKILL) };
    // containerd sees its shim go, runs `containerd-shim-microvm-v2 delete` (which stops
    // the VM and removes its state) and reports the task exited (containerd 1.6 then drops
    // the task: stopped or gone both say so).
    containerd.wait_until("orphan", "stopped or gone", |status| matches!(status, None | Some("STOPPED")));
    let _ = containerd.ctr(&["task", "delete", "orphan"]);
    containerd.wait_for_status("orphan", None);
    let out = containerd.ctr(&["container", "rm", "orphan"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    containerd.assert_nothing_left();
}
