//! The container the guest agent builds (issue "Sandbox"): capabilities, seccomp,
//! no_new_privs, a read-only root, PID and UTS namespaces, reaping, the pids cgroup, an
//! escape drill through a cgroup v1 `release_agent`, and `run --bundle`.
//!
//! Inputs as for run.rs (set by tests/run.sh).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::time::Duration;

use guest_tests::{suite, Case};
use test_support::{input, TempDir};

const BUSYBOX: &str = "rootfs-busybox";
/// Docker's default capability set as /proc/PID/status shows it.
const DOCKER_CAPS: &str = "00000000a80425fb";

/// For workloads that are slow under emulation.
const LONG: Duration = Duration::from_secs(600);

/// The value of `field` in the process status lines `out` printed.
fn status_field<'a>(out: &'a str, field: &str) -> Option<&'a str> {
    out.lines().find_map(|l| l.strip_prefix(field)?.strip_prefix(':').map(str::trim))
}

#[test]
fn capabilities_are_dockers_by_default_and_none_after_cap_drop_all() {
    let case = Case::new("caps");
    let show = ["grep", "-E", "^(Cap|NoNewPrivs|Seccomp:)", "/proc/self/status"];
    let out = case.run(BUSYBOX, &[], &show);
    assert_eq!(out.code, Some(0), "{out:?}");
    for set in ["CapPrm", "CapEff", "CapBnd"] {
        assert_eq!(status_field(&out.stdout, set), Some(DOCKER_CAPS), "{set}: {out:?}");
    }
    assert_eq!(status_field(&out.stdout, "CapInh"), Some("0000000000000000"), "{out:?}");
    assert_eq!(status_field(&out.stdout, "Seccomp"), Some("2"), "{out:?}");

    let out = case.run(BUSYBOX, &["--cap-drop", "ALL"], &show);
    for set in ["CapPrm", "CapEff", "CapBnd"] {
        assert_eq!(status_field(&out.stdout, set), Some("0000000000000000"), "{set}: {out:?}");
    }
    // A non-root user keeps nothing across exec, as under docker.
    let out = case.run(BUSYBOX, &["-u", "1000"], &show);
    assert_eq!(status_field(&out.stdout, "CapEff"), Some("0000000000000000"), "{out:?}");
    assert_eq!(status_field(&out.stdout, "CapBnd"), Some(DOCKER_CAPS), "{out:?}");
    case.assert_nothing_left();
}

/// The project's default profile without chmod, fchmod and fchmodat: a profile that "omits"
/// them, in Docker's format.
fn profile_without_chmod(dir: &TempDir) -> PathBuf {
    let default = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../seccomp/profiles/default.json")).unwrap();
    let mut stripped = default.clone();
    for name in ["\"chmod\"", "\"fchmod\"", "\"fchmodat\"", "\"fchmodat2\""] {
        // Names sit in lists as `"name",` or `, "name"`; drop them with their separator.
        stripped = stripped.replace(&format!("{name}, "), "").replace(&format!(", {name}"), "").replace(&format!("{name},"), "");
    }
    assert!(!stripped.contains("\"chmod\""), "chmod is still in the profile");
    assert_ne!(stripped, default);
    let path = dir.path("no-chmod.json");
    std::fs::write(&path, stripped).unwrap();
    path
}

#[test]
fn seccomp_profiles_deny_what_they_omit_and_unconfined_lifts_them() {
    let case = Case::new("seccomp");
    let scratch = TempDir::new("seccomp-profile");
    let profile = profile_without_chmod(&scratch);
    let opt = format!("seccomp={}", profile.display());
    let out = case.run(BUSYBOX, &["--security-opt", &opt], &["chmod", "777", "/"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("Operation not permitted"), "{out:?}");
    // The same as root without the profile: allowed.
    let out = case.run(BUSYBOX, &[], &["chmod", "777", "/"]);
    assert_eq!(out.code, Some(0), "{out:?}");

    // The default profile refuses unshare and mount...
    let attempts = "unshare -m true && echo unshare-ok; mkdir -p /mnt && mount -t tmpfs none /mnt && echo mount-ok; grep Seccomp: /proc/self/status";
    let out = case.run(BUSYBOX, &[], &["sh", "-c", attempts]);
    let unshare_line = out.stderr.lines().find(|l| l.starts_with("unshare:"));
    assert!(unshare_line.is_some_and(|l| l.contains("Operation not permitted")), "{out:?}");
    // busybox's words for EPERM from mount(2).
    assert!(out.stderr.contains("mount: permission denied"), "{out:?}");
    assert!(!out.stdout.contains("-ok"), "{out:?}");
    // ...while unconfined (with the capability mount needs) they succeed.
    let out = case.run(BUSYBOX, &["--security-opt", "seccomp=unconfined", "--cap-add", "SYS_ADMIN"], &["sh", "-c", attempts]);
    assert!(out.stdout.contains("unshare-ok\nmount-ok\n"), "{out:?}");
    assert_eq!(status_field(&out.stdout, "Seccomp"), Some("0"), "{out:?}");
    case.assert_nothing_left();
}

#[test]
fn no_new_privileges_keeps_a_setuid_program_unprivileged() {
    let case = Case::new("nnp");
    // Without the option the setuid bit works: the effective uid becomes 0.
    let out = case.run(BUSYBOX, &["-u", "1000"], &["/bin/showids-suid"]);
    assert_eq!(out.stdout, "uid=1000 euid=0\n", "{out:?}");
    let out = case.run(BUSYBOX, &["-u", "1000", "--security-opt", "no-new-privileges"], &["sh", "-c", "/bin/showids-suid; grep NoNewPrivs /proc/self/status"]);
    assert_eq!(out.stdout, "uid=1000 euid=1000\nNoNewPrivs:\t1\n", "{out:?}");
    case.assert_nothing_left();
}

#[test]
fn read_only_root_with_a_writable_tmpfs() {
    let case = Case::new("ro");
    let out = case.run(BUSYBOX, &["--read-only", "--tmpfs", "/tmp"], &["sh", "-c", "touch /etc/x; touch /tmp/x && echo tmp-ok; grep ' /tmp ' /proc/self/mounts"]);
    assert!(out.stderr.contains("Read-only file system"), "{out:?}");
    assert!(out.stdout.starts_with("tmp-ok\ntmpfs /tmp tmpfs rw,nosuid,nodev,noexec"), "{out:?}");
    case.assert_nothing_left();
}

#[test]
fn pid_and_uts_namespaces() {
    let case = Case::new("pidns");
    let script = "echo pid=$$; hostname; ps -o pid,comm | tail -n +2 | wc -l";
    let out = case.run(BUSYBOX, &["--hostname", "boxed"], &["sh", "-c", script]);
    assert_eq!(out.code, Some(0), "{out:?}");
    // Only the container's processes: sh itself and the pipeline's ps, tail and wc.
    let lines: Vec<_> = out.stdout.lines().collect();
    assert_eq!(lines[..2], ["pid=1", "boxed"], "{out:?}");
    assert!(lines[2].trim().parse::<u32>().unwrap() <= 4, "{out:?}");
    let out = case.run(BUSYBOX, &["--init"], &["sh", "-c", "echo pid=$$; cat /proc/1/cmdline | tr '\\0' ' '"]);
    assert_eq!(out.stdout.lines().next(), Some("pid=2"), "{out:?}");
    assert!(out.stdout.contains("microvm-container"), "PID 1 is our init: {out:?}");
    case.assert_nothing_left();
}

/// Creates 10,000 orphans (100 subshells each start 100 background children and exit at once:
/// half the forks of one subshell per orphan, which matters under emulation), then counts the
/// zombies left in the container's PID namespace.
const ZOMBIE_STORM: &str = r#"
n=0
while [ $n -lt 100 ]; do
  ( j=0; while [ $j -lt 100 ]; do true & j=$((j + 1)); done )
  n=$((n + 1))
done
sleep 2
zombies=$(grep -l '^State:.Z' /proc/[0-9]*/status 2>/dev/null | wc -l)
echo "orphans=$((n * 100)) zombies=$zombies"
"#;

#[test]
fn a_zombie_storm_leaves_no_zombies_with_or_without_init() {
    let case = Case::new("zombies");
    for extra in [&[][..], &["--init"][..]] {
        let out = case.run_for(LONG, BUSYBOX, extra, &["sh", "-c", ZOMBIE_STORM]);
        assert_eq!(out.code, Some(0), "{extra:?}: {out:?}");
        assert_eq!(out.stdout.trim(), "orphans=10000 zombies=0", "{extra:?}: {out:?}");
    }
    case.assert_nothing_left();
}

#[test]
fn pids_limit_contains_a_fork_bomb() {
    let case = Case::new("forkbomb");
    // The bomb runs in the background; PID 1 waits, reports the cgroup's count and exits,
    // which kills the whole namespace. PID 1 itself only uses shell builtins from then on:
    // with the limit reached, it could not fork a `sleep` or a `cat` either.
    let script = "bomb() { bomb | bomb & }; (bomb) 2>/dev/null; i=0; while [ $i -lt 200000 ]; do i=$((i + 1)); done; \
                  read max < /sys/fs/cgroup/pids.max; read current < /sys/fs/cgroup/pids.current; echo $max; echo $current; exit 0";
    let out = case.run_for(LONG, BUSYBOX, &["--pids-limit", "100"], &["sh", "-c", script]);
    assert_eq!(out.code, Some(0), "the run returns: {out:?}");
    let lines: Vec<_> = out.stdout.lines().collect();
    assert_eq!(lines.first(), Some(&"100"), "{out:?}");
    let current: u32 = lines[1].parse().unwrap();
    assert!(current <= 100, "{out:?}");
    case.assert_nothing_left();
}

/// Every file named release_agent under the host's /sys/fs/cgroup, with its content, and the
/// host's cgroup mounts: what the drill must not change.
fn host_cgroup_snapshot() -> String {
    let mut snapshot: String = std::fs::read_to_string("/proc/self/mounts").unwrap().lines().filter(|l| l.contains("cgroup")).collect::<Vec<_>>().join("\n");
    let mut stack = vec![PathBuf::from("/sys/fs/cgroup")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(path);
            } else if entry.file_name() == "release_agent" {
                snapshot += &format!("\n{}={}", path.display(), std::fs::read_to_string(&path).unwrap_or_default());
            }
        }
    }
    snapshot
}

#[test]
fn escape_drill_through_release_agent_stays_in_the_guest() {
    let case = Case::new("escape");
    let scratch = TempDir::new("escape-host");
    let host_marker = scratch.path("pwned");
    let before = host_cgroup_snapshot();
    // The classic privileged-container escape: a cgroup v1 hierarchy whose release_agent runs
    // as root in the kernel's initial namespaces when the cgroup empties. Here that is the
    // guest's root, where the container's files sit under /rootfs.
    let drill = format!(
        r#"set -e
mkdir -p /tmp/cg
mount -t cgroup -o none,name=drill cgroup /tmp/cg
mkdir -p /tmp/cg/x
echo 1 > /tmp/cg/x/notify_on_release
printf '#!/rootfs/bin/sh\necho escaped > /rootfs/marker\necho pwned > {host}\n' > /payload
chmod +x /payload
echo /rootfs/payload > /tmp/cg/release_agent
sh -c 'echo $$ > /tmp/cg/x/cgroup.procs'
i=0
while [ ! -e /marker ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
echo "guest marker: $(cat /marker)"
"#,
        host = host_marker.display()
    );
    let out = case.run(BUSYBOX, &["--privileged"], &["sh", "-c", &drill]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("guest marker: escaped"), "the drill ran as root in the guest: {out:?}");
    assert!(!host_marker.exists(), "the payload reached the host");
    assert_eq!(host_cgroup_snapshot(), before, "the host's cgroup files changed");
    case.assert_nothing_left();
}

/// The busybox image copied to `to` (a bundle's rootfs of its own).
fn copy_busybox(to: &Path) {
    let status = std::process::Command::new("cp").arg("-a").arg(suite().rootfs.join(BUSYBOX)).arg(to).status().unwrap();
    assert!(status.success());
}

/// `microvm run --bundle` of `bundle` (its config.json as written), to completion.
fn run_bundle(case: &Case, bundle: &TempDir) -> test_support::Outcome {
    case.microvm().args(["run", "--kernel"]).arg(input("MICROVM_KERNEL_DIR").join("vmlinux")).arg("--bundle").arg(&bundle.0).run()
}

#[test]
fn a_bundle_runs_as_its_config_says() {
    let case = Case::new("bundle");
    let bundle = TempDir::new("bundle");
    copy_busybox(&bundle.path("rootfs"));
    let config = r#"{
  "ociVersion": "1.0.2",
  "root": { "path": "rootfs", "readonly": true },
  "process": {
    "args": ["sh", "-c", "echo $GREETING from $(hostname) as $(id -u); touch /x"],
    "env": ["PATH=/bin", "GREETING=hello"],
    "cwd": "/",
    "user": { "uid": 1000, "gid": 1000 },
    "capabilities": { "bounding": ["CAP_KILL"], "effective": [], "permitted": [] }
  },
  "hostname": "bundled",
  "mounts": [{ "destination": "/proc", "type": "proc", "source": "proc" }],
  "linux": { "namespaces": [{ "type": "pid" }, { "type": "mount" }, { "type": "uts" }] }
}"#;
    std::fs::write(bundle.path("config.json"), config).unwrap();
    let out = run_bundle(&case, &bundle);
    assert_eq!(out.stdout, "hello from bundled as 1000\n", "{out:?}");
    assert!(out.stderr.contains("Read-only file system"), "{out:?}");
    case.assert_nothing_left();
}

/// A config without a mount namespace (runc takes one): the container is chrooted in the
/// guest's own mount namespace, where the agent is PID 1 (no pid namespace either), its root
/// is still the bundle's rootfs, read-only when root.readonly says so.
#[test]
fn a_bundle_without_a_mount_namespace_is_chrooted_in_the_guest() {
    let case = Case::new("no-mntns");
    let bundle = TempDir::new("no-mntns");
    copy_busybox(&bundle.path("rootfs"));
    std::fs::write(bundle.path("rootfs/marker"), "from the bundle\n").unwrap();
    let script = "cat /marker; [ $(readlink /proc/1/ns/mnt) = $(readlink /proc/self/ns/mnt) ] && echo shared; touch /x";
    let config = format!(
        r#"{{
  "ociVersion": "1.0.2",
  "root": {{ "path": "rootfs", "readonly": true }},
  "process": {{ "args": ["sh", "-c", {script:?}], "env": ["PATH=/bin"], "cwd": "/", "user": {{ "uid": 0, "gid": 0 }},
    "capabilities": {{ "bounding": ["CAP_SYS_PTRACE"], "effective": ["CAP_SYS_PTRACE"], "permitted": ["CAP_SYS_PTRACE"] }} }},
  "mounts": [{{ "destination": "/proc", "type": "proc", "source": "proc" }}],
  "linux": {{ "namespaces": [{{ "type": "uts" }}] }}
}}"#
    );
    std::fs::write(bundle.path("config.json"), config).unwrap();
    let out = run_bundle(&case, &bundle);
    assert_eq!(out.stdout, "from the bundle\nshared\n", "{out:?}");
    assert!(out.stderr.contains("Read-only file system"), "{out:?}");
    assert_eq!(out.code, Some(1), "{out:?}");
    case.assert_nothing_left();
}

/// A user namespace with uid and gid mappings, made as runc makes it: the container's root is
/// uid 0 inside and 100000 outside (a file it makes in its root, shared in place, is owned by
/// 100000 on the host, as under runc), and it owns its other namespaces (it sets its hostname,
/// mounts its own proc, devpts and a fresh /dev; sysfs, which only the network namespace's
/// owner may mount, is the guest's bound in).
#[test]
fn a_user_namespace_maps_the_containers_root() {
    let case = Case::new("userns");
    let bundle = TempDir::new("userns");
    let rootfs = bundle.path("rootfs");
    copy_busybox(&rootfs);
    let status = std::process::Command::new("chown").args(["-R", "100000:100000"]).arg(&rootfs).status().unwrap();
    assert!(status.success());
    let script = "id -u; awk '{print $1, $2, $3}' /proc/self/uid_map /proc/self/gid_map; hostname mapped && hostname; \
                  touch /made; ls /sys/kernel >/dev/null && echo sysfs; echo > /dev/null && echo devices";
    let caps = r#"["CAP_SYS_ADMIN", "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_SETUID", "CAP_SETGID"]"#;
    let config = format!(
        r#"{{
  "ociVersion": "1.0.2",
  "root": {{ "path": "rootfs" }},
  "process": {{ "args": ["sh", "-c", {script:?}], "env": ["PATH=/bin"], "cwd": "/", "user": {{ "uid": 0, "gid": 0 }},
    "capabilities": {{ "bounding": {caps}, "effective": {caps}, "permitted": {caps} }} }},
  "mounts": [
    {{ "destination": "/proc", "type": "proc", "source": "proc" }},
    {{ "destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"] }},
    {{ "destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"] }},
    {{ "destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"] }}
  ],
  "linux": {{
    "namespaces": [{{ "type": "pid" }}, {{ "type": "mount" }}, {{ "type": "uts" }}, {{ "type": "ipc" }}, {{ "type": "user" }}],
    "uidMappings": [{{ "containerID": 0, "hostID": 100000, "size": 65536 }}],
    "gidMappings": [{{ "containerID": 0, "hostID": 100000, "size": 65536 }}]
  }}
}}"#
    );
    std::fs::write(bundle.path("config.json"), config).unwrap();
    let out = run_bundle(&case, &bundle);
    assert_eq!(out.stdout, "0\n0 100000 65536\n0 100000 65536\nmapped\nsysfs\ndevices\n", "{out:?}");
    assert_eq!(out.code, Some(0), "{out:?}");
    let made = std::fs::metadata(rootfs.join("made")).unwrap();
    assert_eq!((std::os::unix::fs::MetadataExt::uid(&made), std::os::unix::fs::MetadataExt::gid(&made)), (100000, 100000));

    // Without mappings: refused in one line naming the fields, nothing left.
    let text = std::fs::read_to_string(bundle.path("config.json")).unwrap();
    let start = text.find(",\n    \"uidMappings\"").unwrap();
    let end = text.find("\n  }\n}").unwrap();
    std::fs::write(bundle.path("config.json"), format!("{}{}", &text[..start], &text[end..])).unwrap();
    let out = run_bundle(&case, &bundle);
    assert_eq!(out.code, Some(125), "{out:?}");
    assert!(out.stderr.contains("linux.uidMappings and linux.gidMappings: a user namespace needs both"), "{out:?}");
    case.assert_nothing_left();
}

/// File capabilities in a bundle's root (its own virtiofsd passes extended attributes, as an
/// image's `ping` needs them): a copy of busybox with cap_net_bind_service in its
/// security.capability, set on the host, raises that capability for a non-root process (within
/// the bounding set, no_new_privs off), where busybox itself gets none.
#[test]
fn file_capabilities_in_a_bundle_root_hold() {
    let case = Case::new("filecaps");
    let bundle = TempDir::new("filecaps");
    let rootfs = bundle.path("rootfs");
    copy_busybox(&rootfs);
    // Named busybox (it picks the applet by its name), in a directory of its own.
    std::fs::create_dir(rootfs.join("capbin")).unwrap();
    std::fs::copy(rootfs.join("bin/busybox"), rootfs.join("capbin/busybox")).unwrap();
    // struct vfs_cap_data, revision 2, effective: permitted = 1 << CAP_NET_BIND_SERVICE (10).
    let words: [u32; 5] = [0x0200_0001, 1 << 10, 0, 0, 0];
    let value: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    let path = std::ffi::CString::new(rootfs.join("capbin/busybox").into_os_string().into_encoded_bytes()).unwrap();
    // SAFETY: setxattr with NUL-terminated strings and a buffer of the length given.
    let rc = unsafe { libc::setxattr(path.as_ptr(), c"security.capability".as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    assert_eq!(rc, 0, "setxattr: {}", std::io::Error::last_os_error());
    let script = "grep CapEff /proc/self/status; /capbin/busybox grep CapEff /proc/self/status";
    let config = format!(
        r#"{{
  "ociVersion": "1.0.2",
  "root": {{ "path": "rootfs" }},
  "process": {{ "args": ["sh", "-c", {script:?}], "env": ["PATH=/bin"], "cwd": "/", "user": {{ "uid": 1000, "gid": 1000 }},
    "capabilities": {{ "bounding": ["CAP_NET_BIND_SERVICE"] }} }},
  "mounts": [{{ "destination": "/proc", "type": "proc", "source": "proc" }}],
  "linux": {{ "namespaces": [{{ "type": "pid" }}, {{ "type": "mount" }}] }}
}}"#
    );
    std::fs::write(bundle.path("config.json"), config).unwrap();
    let out = run_bundle(&case, &bundle);
    assert_eq!(out.stdout, "CapEff:\t0000000000000000\nCapEff:\t0000000000000400\n", "{out:?}");
    assert_eq!(out.code, Some(0), "{out:?}");
    case.assert_nothing_left();
}
