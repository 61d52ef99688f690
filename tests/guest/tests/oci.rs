//! The OCI runtime's verbs end to end, as podman's conmon drives them: `create` leaves the
//! container's VMM process (its pid in the pid file, a child of `create` that the caller
//! adopts: this test process is a subreaper, as conmon is), `start` lets the process run, that
//! VMM process exits with the container's status, and `delete` leaves nothing behind.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use guest_tests::{retry_once_after_emulator_boot_fault, suite, virtiofsd_processes, Case};
use test_support::{input, processes_matching, KillAfter, Outcome, TempDir};

/// Like conmon: orphans of `create` (the VMM processes) become this process's children.
fn become_subreaper() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: prctl with integer arguments only.
        let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        assert_eq!(rc, 0, "PR_SET_CHILD_SUBREAPER");
    });
}

/// The exit code a reaped process reported, shell style (128+N for signal N).
fn wait_for(pid: i32, limit: Duration) -> i32 {
    let deadline = Instant::now() + limit;
    loop {
        let mut status = 0;
        // SAFETY: waitpid on one pid with a valid out pointer; WNOHANG never blocks.
        let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        assert!(rc >= 0, "waitpid {pid}: {}", std::io::Error::last_os_error());
        if rc == pid {
            return if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                128 + libc::WTERMSIG(status)
            };
        }
        assert!(Instant::now() < deadline, "VMM process {pid} still runs after {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One test's containers: a `--root` of their own and a bundle to create them from.
struct Oci {
    case: Case,
    root: PathBuf,
    bundle: PathBuf,
    logs: TempDir,
}

impl Oci {
    fn new(tag: &str) -> Self {
        become_subreaper();
        let case = Case::new(tag);
        let logs = TempDir::new(&format!("{tag}-io"));
        let root = logs.path("root");
        let bundle = logs.path("bundle");
        std::fs::create_dir_all(&bundle).unwrap();
        let copied = Command::new("cp")
            .arg("-a")
            .arg(suite().rootfs.join("rootfs-busybox"))
            .arg(bundle.join("rootfs"))
            .status()
            .unwrap();
        assert!(copied.success());
        let oci = Oci { case, root, bundle, logs };
        let out = oci.verb(&["spec", "--bundle", oci.bundle.to_str().unwrap()]);
        assert_eq!(out.code, Some(0), "{out:?}");
        oci
    }

    /// Sets the process's args in config.json (no terminal; root writable for the shell).
    fn set_args(&self, args: &[&str]) {
        let path = self.bundle.join("config.json");
        let text = std::fs::read_to_string(&path).unwrap();
        let args = args.iter().map(|a| format!("{a:?}")).collect::<Vec<_>>().join(",");
        let text = text
            .replacen("\"terminal\": true", "\"terminal\": false", 1)
            .replacen("\"readonly\": true", "\"readonly\": false", 1);
        let start = text.find("\"args\": [").unwrap();
        let end = start + text[start..].find(']').unwrap() + 1;
        let text = format!("{}\"args\": [{args}]{}", &text[..start], &text[end..]);
        std::fs::write(&path, text).unwrap();
    }

    fn command(&self) -> Command {
        let mut c = Command::new(input("MICROVM_BIN"));
        c.envs(self.case.vars())
            .env("MICROVM_KERNEL", input("MICROVM_KERNEL_DIR").join("vmlinux"))
            .arg("--root")
            .arg(&self.root);
        c
    }

    /// A verb other than create, to completion.
    fn verb(&self, args: &[&str]) -> Outcome {
        let mut m = self.case.microvm().env("MICROVM_KERNEL", input("MICROVM_KERNEL_DIR").join("vmlinux"));
        m = m.arg("--root").arg(&self.root).args(args);
        m.run()
    }

    /// `create --bundle ... --pid-file ... ID` with the container's stdio in files (the VMM
    /// process keeps create's stdio, so pipes would stay open). Returns create's exit code and
    /// its stderr. A boot the nested bed's emulator broke is tried once more.
    fn create(&self, id: &str) -> (Option<i32>, String) {
        retry_once_after_emulator_boot_fault(1, || self.create_once(id), |(code, err)| (*code, err))
    }

    fn create_once(&self, id: &str) -> (Option<i32>, String) {
        let mut c = self.command();
        c.args(["create", "--bundle"])
            .arg(&self.bundle)
            .arg("--pid-file")
            .arg(self.pid_file(id))
            .arg(id)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(self.logs.path(&format!("{id}.out"))).unwrap())
            .stderr(std::fs::File::create(self.logs.path(&format!("{id}.err"))).unwrap());
        let mut child = c.spawn().unwrap();
        let status = {
            let _limit = KillAfter::new(child.id(), Duration::from_secs(300), "microvm create");
            child.wait().unwrap()
        };
        (status.code(), self.output(id, "err"))
    }

    fn pid_file(&self, id: &str) -> PathBuf {
        self.logs.path(&format!("{id}.pid"))
    }

    fn pid(&self, id: &str) -> i32 {
        std::fs::read_to_string(self.pid_file(id)).unwrap().trim().parse().unwrap()
    }

    fn output(&self, id: &str, stream: &str) -> String {
        std::fs::read_to_string(self.logs.path(&format!("{id}.{stream}"))).unwrap_or_default()
    }

    /// `state ID`'s status and pid.
    fn state(&self, id: &str) -> (String, i64) {
        let out = self.verb(&["state", id]);
        assert_eq!(out.code, Some(0), "{out:?}");
        let field = |name: &str| {
            let line = out.stdout.lines().find(|l| l.trim_start().starts_with(&format!("\"{name}\""))).unwrap();
            line.split_once(':').unwrap().1.trim().trim_end_matches(',').trim_matches('"').to_owned()
        };
        (field("status"), field("pid").parse().unwrap())
    }

    /// Nothing of the containers stays: no directory under the root, no process, no mount.
    fn assert_nothing_left(&self) {
        let left: Vec<_> = std::fs::read_dir(&self.root)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "left behind: {left:?}");
        let root = self.root.to_string_lossy().to_string();
        guest_tests::assert_no_process_left(|| processes_matching(&root));
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mounts.contains(&root), "a mount is left: {mounts}");
    }
}

fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn create_start_state_delete_follow_the_runc_contract() {
    let oci = Oci::new("oci-lifecycle");
    oci.set_args(&["sh", "-c", "echo out; echo err >&2; exit 7"]);
    let (code, err) = oci.create("c1");
    assert_eq!(code, Some(0), "{err}");
    let pid = oci.pid("c1");
    assert!(alive(pid), "the pid file names a live VMM process");
    assert_eq!(oci.state("c1"), ("created".into(), i64::from(pid)));
    let list = oci.verb(&["list", "--quiet"]);
    assert_eq!(list.stdout, "c1\n", "{list:?}");
    // Created, not started: the process has not run.
    assert_eq!(oci.output("c1", "out"), "");

    let out = oci.verb(&["start", "c1"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(wait_for(pid, Duration::from_secs(60)), 7, "the VMM process exits with the container's status");
    assert_eq!(oci.output("c1", "out"), "out\n");
    assert!(oci.output("c1", "err").contains("err\n"), "{}", oci.output("c1", "err"));
    assert_eq!(oci.state("c1"), ("stopped".into(), 0));
    let again = oci.verb(&["start", "c1"]);
    assert_eq!(again.code, Some(1));
    assert!(again.stderr.contains("container not running"), "{again:?}");
    let exec = oci.verb(&["exec", "c1", "true"]);
    assert_eq!(exec.code, Some(1));
    assert!(exec.stderr.contains("cannot exec in a stopped container"), "{exec:?}");

    let out = oci.verb(&["delete", "c1"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let gone = oci.verb(&["state", "c1"]);
    assert_eq!(gone.code, Some(1));
    assert!(gone.stderr.contains("does not exist"), "{gone:?}");
    oci.assert_nothing_left();
}

#[test]
fn kill_reaches_a_created_container_and_delete_force_ends_a_running_one() {
    let oci = Oci::new("oci-kill");
    oci.set_args(&["sleep", "1000"]);
    assert_eq!(oci.create("held").0, Some(0));
    let held = oci.pid("held");
    let out = oci.verb(&["kill", "held", "KILL"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(wait_for(held, Duration::from_secs(60)), 137);
    assert_eq!(oci.state("held").0, "stopped");
    assert_eq!(oci.verb(&["delete", "held"]).code, Some(0));

    assert_eq!(oci.create("busy").0, Some(0));
    let busy = oci.pid("busy");
    assert_eq!(oci.verb(&["start", "busy"]).code, Some(0));
    assert_eq!(oci.state("busy"), ("running".into(), i64::from(busy)));
    let refused = oci.verb(&["delete", "busy"]);
    assert_eq!(refused.code, Some(1));
    assert!(refused.stderr.contains("not stopped: running"), "{refused:?}");
    let out = oci.verb(&["delete", "--force", "busy"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(wait_for(busy, Duration::from_secs(10)), 128 + libc::SIGKILL);
    oci.assert_nothing_left();
}

#[test]
fn bad_input_is_one_line_and_leaves_nothing() {
    let oci = Oci::new("oci-bad");
    let bad_id = oci.verb(&["create", "--bundle", oci.bundle.to_str().unwrap(), "a/b"]);
    assert_eq!(bad_id.code, Some(1));
    assert!(bad_id.stderr.contains("container id \"a/b\""), "{bad_id:?}");
    // The default spec has a terminal: without a console socket create refuses.
    let (code, err) = oci.create("tty");
    assert_eq!(code, Some(1));
    assert_eq!(err.trim(), "microvm: process.terminal is set but no --console-socket was given");
    // A network namespace path that does not exist: one line naming it, nothing booted.
    oci.set_args(&["true"]);
    let path = oci.bundle.join("config.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let named = "\"type\": \"network\", \"path\": \"/run/netns/no-such-ns\"";
    std::fs::write(&path, text.replacen("\"type\": \"network\"", named, 1)).unwrap();
    let (code, err) = oci.create("nons");
    assert_eq!(code, Some(1));
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("linux.namespaces (network).path /run/netns/no-such-ns: No such file"), "{err}");
    // A path to a namespace of another type; and a host namespace the guest cannot join (as
    // podman's --ipc container:X gives, pointing at the other container's VMM process).
    std::fs::write(&path, text.replacen("\"type\": \"network\"", "\"type\": \"network\", \"path\": \"/proc/self/ns/ipc\"", 1)).unwrap();
    let (code, err) = oci.create("wrongns");
    assert_eq!((code, err.lines().count()), (Some(1), 1), "{err}");
    assert!(err.ends_with("linux.namespaces (network).path /proc/self/ns/ipc: not a network namespace\n"), "{err}");
    std::fs::write(&path, text.replacen("\"type\": \"ipc\"", "\"type\": \"ipc\", \"path\": \"/proc/1/ns/ipc\"", 1)).unwrap();
    let (code, err) = oci.create("hostns");
    assert_eq!((code, err.lines().count()), (Some(1), 1), "{err}");
    assert!(err.contains("linux.namespaces (ipc).path /proc/1/ns/ipc: a namespace of the host cannot be joined"), "{err}");
    std::fs::write(oci.bundle.join("config.json"), "{ not json").unwrap();
    let (code, err) = oci.create("junk");
    assert_eq!(code, Some(1));
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("config.json"), "{err}");
    let log = oci.logs.path("log.json");
    let out = oci.verb(&["--log", log.to_str().unwrap(), "--log-format", "json", "kill", "nosuch"]);
    assert_eq!(out.code, Some(1));
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.starts_with("{\"level\":\"error\",\"msg\":\"container nosuch does not exist\",\"time\":\""), "{logged}");
    oci.assert_nothing_left();
}

/// config.json with `hooks` set to the JSON object `hooks`.
fn with_hooks(oci: &Oci, hooks: &str) {
    let path = oci.bundle.join("config.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let text = match text.find("\"hooks\"") {
        None => text.replacen('{', &format!("{{\"hooks\": {hooks},"), 1),
        Some(_) => panic!("config.json already has hooks"),
    };
    std::fs::write(&path, text).unwrap();
}

/// A hook that appends "STAGE STATE" to `log`.
fn logging_hook(stage: &str, log: &Path) -> String {
    let script = format!("read -r state; echo {stage} \"$state\" >> {}", log.display());
    format!("{{\"path\": \"/bin/sh\", \"args\": [\"sh\", \"-c\", {script:?}]}}")
}

#[test]
fn hooks_run_on_the_host_in_runc_order_and_a_failing_one_fails_create() {
    let oci = Oci::new("oci-hooks");
    oci.set_args(&["true"]);
    let log = oci.logs.path("hooks.log");
    let stages = ["prestart", "createRuntime", "createContainer", "poststart", "poststop"];
    let hooks: Vec<String> = stages.iter().map(|s| format!("{s:?}: [{}]", logging_hook(s, &log))).collect();
    let config = std::fs::read_to_string(oci.bundle.join("config.json")).unwrap();
    with_hooks(&oci, &format!("{{{}}}", hooks.join(", ")));
    let (code, err) = oci.create("h1");
    assert_eq!(code, Some(0), "{err}");
    let pid = oci.pid("h1");
    assert_eq!(oci.verb(&["start", "h1"]).code, Some(0));
    assert_eq!(wait_for(pid, Duration::from_secs(60)), 0);
    assert_eq!(oci.verb(&["delete", "h1"]).code, Some(0));
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let ran: Vec<&str> = lines.iter().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(ran, stages, "{text}");
    for (line, status) in lines.iter().zip(["creating", "creating", "creating", "running", "stopped"]) {
        assert!(line.contains("\"id\":\"h1\"") && line.contains(&format!("\"status\":\"{status}\"")), "{line}");
    }
    assert!(lines[1].contains(&format!("\"pid\":{pid}")), "createRuntime sees the VMM process: {}", lines[1]);
    oci.assert_nothing_left();

    // A failing createRuntime hook fails create with its message and undoes it.
    std::fs::write(oci.bundle.join("config.json"), &config).unwrap();
    with_hooks(&oci, r#"{"createRuntime": [{"path": "/bin/sh", "args": ["sh", "-c", "echo no GPU here >&2; exit 3"]}]}"#);
    let (code, err) = oci.create("h2");
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(err.trim(), "microvm: hook createRuntime[0] /bin/sh: exit status: 3: no GPU here");
    oci.assert_nothing_left();

    // startContainer hooks would have to run inside the guest: refused before anything starts.
    std::fs::write(oci.bundle.join("config.json"), &config).unwrap();
    with_hooks(&oci, r#"{"startContainer": [{"path": "/bin/true"}]}"#);
    let (code, err) = oci.create("h3");
    assert_eq!(code, Some(1), "{err}");
    assert!(err.trim().starts_with("microvm: hooks.startContainer (/bin/true): "), "{err}");
    oci.assert_nothing_left();
}

/// A network namespace with a veth in it named eth0 (as CNI's bridge plugin leaves one), its
/// peer on the host; removed when dropped.
struct NetNs(String);

impl NetNs {
    fn new(tag: &str) -> Self {
        let name = format!("mv{tag}{}", std::process::id());
        let host_end = format!("h{}", &name[..name.len().min(13)]);
        let ns = NetNs(name.clone());
        for args in [
            vec!["netns", "add", &name],
            vec!["link", "add", &host_end, "type", "veth", "peer", "name", "eth0", "netns", &name],
            vec!["-n", &name, "addr", "add", "10.99.0.2/24", "dev", "eth0"],
            vec!["-n", &name, "link", "set", "eth0", "up"],
            vec!["link", "set", &host_end, "up"],
        ] {
            ns.ip(&args);
        }
        ns
    }

    fn ip(&self, args: &[&str]) -> String {
        let out = Command::new("ip").args(args).output().unwrap();
        assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn tc(&self, args: &[&str]) -> String {
        let out = Command::new("tc").arg("-n").arg(&self.0).args(args).output().unwrap();
        assert!(out.status.success(), "tc {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // The veth pair goes with the namespace that holds one end.
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Twenty containers in a network namespace with a veth (as podman's CNI gives): each gets a
/// tap beside the veth joined by tc filters while it exists, and after twenty created and
/// deleted no tap, no filter, no state and no process is left.
#[test]
fn twenty_networked_containers_created_and_deleted_leave_nothing() {
    let oci = Oci::new("oci-loop");
    oci.set_args(&["sleep", "1000"]);
    let netns = NetNs::new("loop");
    let path = oci.bundle.join("config.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let named = format!("\"type\": \"network\", \"path\": \"/run/netns/{}\"", netns.0);
    assert!(text.contains("\"type\": \"network\""));
    std::fs::write(&path, text.replacen("\"type\": \"network\"", &named, 1)).unwrap();
    for n in 0..20 {
        let id = format!("c{n}");
        let (code, err) = oci.create(&id);
        assert_eq!(code, Some(0), "{id}: {err}");
        let pid = oci.pid(&id);
        if n == 0 {
            let links = netns.ip(&["-n", &netns.0, "link"]);
            assert!(links.contains("microvm0"), "the tap beside the veth: {links}");
            let filters = netns.tc(&["filter", "show", "dev", "eth0", "ingress"]);
            assert!(filters.contains("mirred (Egress Redirect to device microvm0)"), "{filters}");
        }
        // A created container is deleted without --force (its process never ran).
        let out = oci.verb(&["delete", &id]);
        assert_eq!(out.code, Some(0), "{out:?}");
        assert_eq!(wait_for(pid, Duration::from_secs(10)), 128 + libc::SIGKILL);
    }
    oci.assert_nothing_left();
    let links = netns.ip(&["-n", &netns.0, "link"]);
    assert!(!links.contains("microvm0"), "a tap is left: {links}");
    let qdiscs = netns.tc(&["qdisc", "show", "dev", "eth0"]);
    assert!(!qdiscs.contains("ingress"), "a filter is left: {qdiscs}");
}

/// Twenty containers with a host directory bind-mounted (a volume over virtio-fs): while one
/// runs, its writes reach the host and its virtiofsd is running; after twenty created and
/// deleted no virtiofsd, mount, socket, state or process is left.
#[test]
fn twenty_containers_with_volumes_created_and_deleted_leave_nothing() {
    let oci = Oci::new("oci-vol");
    oci.set_args(&["sh", "-c", "echo written > /data/mark; exec sleep 1000"]);
    let data = TempDir::new("oci-vol-data");
    let path = oci.bundle.join("config.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let volume = format!(
        "\"mounts\": [{{\"destination\": \"/data\", \"type\": \"bind\", \"source\": \"{}\", \"options\": [\"rbind\", \"rw\"]}}, ",
        data.0.display()
    );
    std::fs::write(&path, text.replacen("\"mounts\": [", &volume, 1)).unwrap();
    let root = oci.root.to_string_lossy().to_string();
    let virtiofsd = || virtiofsd_processes(&root).len();
    for n in 0..20 {
        let id = format!("v{n}");
        let (code, err) = oci.create(&id);
        assert_eq!(code, Some(0), "{id}: {err}");
        let pid = oci.pid(&id);
        assert!(virtiofsd() > 0, "{id}: no virtiofsd while created");
        if n == 0 {
            assert_eq!(oci.verb(&["start", &id]).code, Some(0));
            // The file exists from the shell's open on; its line follows.
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while std::fs::read_to_string(data.path("mark")).ok().as_deref() != Some("written\n") {
                assert!(std::time::Instant::now() < deadline, "the container's write never reached the host");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let out = oci.verb(&["delete", "--force", &id]);
        assert_eq!(out.code, Some(0), "{out:?}");
        assert_eq!(wait_for(pid, Duration::from_secs(10)), 128 + libc::SIGKILL);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while virtiofsd() > 0 {
        assert!(std::time::Instant::now() < deadline, "a virtiofsd outlived its container");
        std::thread::sleep(Duration::from_millis(50));
    }
    oci.assert_nothing_left();
}

/// The bundle's rootfs is the container's own, as under runc: what the container writes and
/// removes there is on the host while it runs (what `docker cp` and `podman diff` read) and
/// stays after `delete`; what the host puts there the container sees. Unlike a volume, the
/// root may hold a setuid file the container made (a package install makes them).
#[test]
fn the_containers_writes_reach_the_bundles_rootfs_as_under_runc() {
    let oci = Oci::new("oci-rootfs-rw");
    let rootfs = oci.bundle.join("rootfs");
    std::fs::write(rootfs.join("old"), "from the bundle\n").unwrap();
    oci.set_args(&["sh", "-c", "cat /old && rm /old && mkdir -p /var/made && echo new > /var/made/file && chmod 4755 /var/made/file && exec sleep 1000"]);
    let (code, err) = oci.create("c1");
    assert_eq!(code, Some(0), "{err}");
    let pid = oci.pid("c1");
    assert_eq!(oci.verb(&["start", "c1"]).code, Some(0));
    let written = rootfs.join("var/made/file");
    assert!(
        eventually(Duration::from_secs(60), || std::fs::read_to_string(&written).ok().as_deref() == Some("new\n")),
        "the container's write never reached the bundle's rootfs: {}",
        oci.output("c1", "err")
    );
    assert!(!rootfs.join("old").exists(), "the container removed /old");
    assert!(
        eventually(Duration::from_secs(10), || std::fs::metadata(&written).unwrap().permissions().mode() & 0o7777 == 0o4755),
        "the container's chmod 4755 did not reach the host: {}",
        oci.output("c1", "err")
    );
    assert_eq!(oci.output("c1", "out"), "from the bundle\n");

    std::fs::write(rootfs.join("from-host"), "put there by the host\n").unwrap();
    let seen = oci.verb(&["exec", "c1", "cat", "/from-host"]);
    assert_eq!(seen.stdout, "put there by the host\n", "{seen:?}");

    assert_eq!(oci.verb(&["delete", "--force", "c1"]).code, Some(0));
    assert_eq!(wait_for(pid, Duration::from_secs(10)), 128 + libc::SIGKILL);
    assert_eq!(std::fs::read_to_string(&written).unwrap(), "new\n", "the writes outlive the container");
    oci.assert_nothing_left();
}

/// `runc spec`'s config with a user namespace added (uids and gids 0-65535 mapped to
/// 100000-165535, the root chowned to match, as podman and docker prepare it): the container
/// and a process exec'd into it are root inside and mapped outside, and the default mounts
/// (proc, sysfs, cgroup, mqueue, devpts), masked and read-only paths all hold in it.
#[test]
fn a_user_namespace_holds_for_the_container_and_its_execs() {
    let oci = Oci::new("oci-userns");
    let chowned = Command::new("chown").args(["-R", "100000:100000"]).arg(oci.bundle.join("rootfs")).status().unwrap();
    assert!(chowned.success());
    oci.set_args(&["sh", "-c", "id -u; awk '{print $2}' /proc/self/uid_map; touch /made; exec sleep 1000"]);
    let path = oci.bundle.join("config.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let map = r#"[{"containerID": 0, "hostID": 100000, "size": 65536}]"#;
    let user = format!(r#""uidMappings": {map}, "gidMappings": {map}, "namespaces": [{{"type": "user"}}, "#);
    std::fs::write(&path, text.replacen("\"namespaces\": [", &user, 1)).unwrap();
    let (code, err) = oci.create("u1");
    assert_eq!(code, Some(0), "{err}");
    let pid = oci.pid("u1");
    assert_eq!(oci.verb(&["start", "u1"]).code, Some(0));
    let made = oci.bundle.join("rootfs/made");
    assert!(eventually(Duration::from_secs(60), || made.exists()), "{}", oci.output("u1", "err"));
    assert_eq!(oci.output("u1", "out"), "0\n100000\n");
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&made).unwrap()), 100000);
    let exec = oci.verb(&["exec", "u1", "sh", "-c", "id -u; awk '{print $2}' /proc/self/uid_map; cat /proc/1/cmdline | tr '\\0' ' '"]);
    assert_eq!(exec.stdout, "0\n100000\nsleep 1000 ", "{exec:?}");
    assert_eq!(oci.verb(&["delete", "--force", "u1"]).code, Some(0));
    assert_eq!(wait_for(pid, Duration::from_secs(10)), 128 + libc::SIGKILL);
    oci.assert_nothing_left();
}

#[test]
fn exec_runs_more_processes_inside_the_running_container() {
    let oci = Oci::new("oci-exec");
    oci.set_args(&["sh", "-c", "echo made-by-pid-1 > /tmp/mark; exec sleep 1000"]);
    assert_eq!(oci.create("box").0, Some(0));
    let vmm = oci.pid("box");
    assert_eq!(oci.verb(&["start", "box"]).code, Some(0));

    // In the foreground: the verb relays the process's output and exits with its status. The
    // process sees the container's files, its PID namespace (PID 1 is the container's sleep)
    // and its hostname.
    let mut seen = None;
    for _ in 0..50 {
        let out = oci.verb(&["exec", "box", "cat", "/tmp/mark"]);
        if out.code == Some(0) {
            seen = Some(out.stdout);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(seen.as_deref(), Some("made-by-pid-1\n"));
    let out = oci.verb(&["exec", "box", "sh", "-c", "tr '\\0' ' ' < /proc/1/cmdline; hostname; echo oops >&2; exit 5"]);
    assert_eq!(out.code, Some(5), "{out:?}");
    assert_eq!(out.stdout, "sleep 1000 microvm\n");
    assert_eq!(out.stderr, "oops\n");
    let missing = oci.verb(&["exec", "box", "no-such-command"]);
    assert_eq!(missing.code, Some(1), "{missing:?}");
    assert!(missing.stderr.contains("executable file not found"), "{missing:?}");

    // Detached, as conmon asks: the pid file names a stand-in that this subreaper adopts and
    // that exits with the process's status; its output went where the verb's stdout did.
    let pid_file = oci.logs.path("exec.pid");
    let out_file = oci.logs.path("exec.out");
    let mut c = oci.command();
    c.args(["exec", "--detach", "--pid-file"])
        .arg(&pid_file)
        .args(["box", "sh", "-c", "sleep 1; echo detached; exit 3"])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_file).unwrap())
        .stderr(Stdio::piped());
    let out = c.output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let stand_in: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    assert_ne!(stand_in, vmm);
    assert_eq!(wait_for(stand_in, Duration::from_secs(60)), 3);
    assert_eq!(std::fs::read_to_string(&out_file).unwrap(), "detached\n");
    assert_eq!(oci.state("box").0, "running", "an exec's end is not the container's");

    let out = oci.verb(&["delete", "--force", "box"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(wait_for(vmm, Duration::from_secs(10)), 128 + libc::SIGKILL);
    let late = oci.verb(&["exec", "box", "true"]);
    assert_eq!(late.code, Some(1));
    assert!(late.stderr.contains("does not exist"), "{late:?}");
    oci.assert_nothing_left();
}

/// Polls `check` every 100 ms for up to `limit`.
fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    check()
}

#[test]
fn pause_parks_the_vm_resume_wakes_it_and_update_sets_the_guest_cgroup() {
    let oci = Oci::new("oci-pause");
    oci.set_args(&["sh", "-c", "while :; do echo tick; sleep 0.2; done"]);
    assert_eq!(oci.create("p").0, Some(0));
    let vmm = oci.pid("p");
    assert_eq!(oci.verb(&["start", "p"]).code, Some(0));
    let ticks = || oci.output("p", "out").len();
    assert!(eventually(Duration::from_secs(30), || ticks() > 0), "the container never printed");

    let out = oci.verb(&["pause", "p"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(oci.state("p"), ("paused".into(), i64::from(vmm)));
    // What was in flight when the vCPUs stopped arrives; then nothing, for as long as it lasts.
    std::thread::sleep(Duration::from_secs(1));
    let frozen = ticks();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(ticks(), frozen, "the guest ran while paused");
    let exec = oci.verb(&["exec", "p", "true"]);
    assert!(exec.code == Some(1) && exec.stderr.contains("paused"), "{exec:?}");
    let term = oci.verb(&["kill", "p", "TERM"]);
    assert!(term.code == Some(1) && term.stderr.contains("paused"), "{term:?}");
    assert_eq!(oci.verb(&["pause", "p"]).code, Some(1), "paused twice");

    let out = oci.verb(&["resume", "p"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(oci.state("p").0, "running");
    assert!(eventually(Duration::from_secs(30), || ticks() > frozen), "no output after resume");
    assert_eq!(oci.verb(&["resume", "p"]).code, Some(1), "resumed while running");

    // update: the limits land in the container's cgroup in the guest.
    let cgroup = |file: &str| oci.verb(&["exec", "p", "cat", &format!("/sys/fs/cgroup/{file}")]).stdout;
    let out = oci.verb(&["update", "--pids-limit", "42", "--memory", "67108864", "p"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(cgroup("pids.max"), "42\n");
    assert_eq!(cgroup("memory.max"), "67108864\n");
    let resources = oci.logs.path("resources.json");
    std::fs::write(&resources, r#"{"pids": {"limit": 50}}"#).unwrap();
    let out = oci.verb(&["update", "--resources", resources.to_str().unwrap(), "p"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(cgroup("pids.max"), "50\n");

    // A paused container still dies by SIGKILL, with the status of a killed process.
    assert_eq!(oci.verb(&["pause", "p"]).code, Some(0));
    assert_eq!(oci.verb(&["kill", "p", "KILL"]).code, Some(0));
    assert_eq!(wait_for(vmm, Duration::from_secs(10)), 128 + libc::SIGKILL);
    assert_eq!(oci.verb(&["delete", "p"]).code, Some(0));
    oci.assert_nothing_left();
}
