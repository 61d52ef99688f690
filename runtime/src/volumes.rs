//! Volumes: host directories (and files too large to copy) shared into the guest over
//! virtio-fs, served by one virtiofsd per sandbox (Kata's model).
//!
//! The guest never sees a host path the config does not name. virtiofsd shares one directory,
//! `DIR/shared` in the sandbox directory, in which each volume is bind-mounted at its index
//! (`shared/0`, `shared/1`, ...), read-only where the mount says `ro`, so read-only holds on
//! the host side and not only by a guest mount flag. Those bind mounts are made in a mount
//! namespace of virtiofsd's own, just before it starts: the host's mount table never holds
//! them, and they vanish with virtiofsd however it ends (a `kill -9` of the VMM included), so
//! nothing is left to unmount.
//!
//! virtiofsd sandboxes itself as upstream recommends: `--sandbox namespace` (its own user-
//! visible root is the shared directory, pivot_root'ed, in new mount, pid and net namespaces)
//! and `--seccomp kill`. It runs as root, as Kata runs it: the container's root must be able
//! to chown and write root-owned files in a volume, as under runc.
//!
//! No setuid or setgid file reaches the host through a volume: the guest's root is root in
//! the guest only, and a setuid-root binary it leaves in a shared directory would be a way up
//! for anyone on the host who can run it. virtiofsd starts under a seccomp filter of ours,
//! stacked under its own, that refuses (EPERM) every chmod and file creation asking for
//! S_ISUID or S_ISGID. `openat2` is refused with ENOSYS, since its mode sits in a struct a
//! filter cannot read; virtiofsd then uses `openat`, as on kernels before 5.6. The guest sees
//! `chmod u+s` fail with EPERM, as on a `nosuid` file system that enforces it.
//!
//! The socket: we bind a listener in the sandbox directory, hand it to virtiofsd (`--fd`),
//! connect, and remove the file, so no socket file outlives the start and a virtiofsd that
//! dies before answering resets our connection instead of leaving us waiting.

use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use anyhow::{anyhow, Context};

use protocol::{ROOTFS_TAG, SHARED_TAG};
/// The descriptor virtiofsd gets its listening socket on; it inherits no other beyond stdio.
const LISTEN_FD: i32 = 3;

/// What one virtiofsd serves: its virtio-fs tag, the directory under the sandbox directory
/// it shares (each share bind-mounted in it at its index), and whether a setuid or setgid
/// file may be made there and extended attributes (file capabilities among them) pass.
pub struct Service {
    pub tag: &'static str,
    pub dir: &'static str,
    pub setid: bool,
    pub xattr: bool,
}

/// The volumes: host directories a user names, which other host users may reach, so no
/// setuid or setgid file is made in them (the module's comment), and no file capability
/// either (no xattrs).
pub const VOLUMES: Service = Service { tag: SHARED_TAG, dir: "shared", setid: false, xattr: false };
/// An OCI bundle's root, written in place. Its own virtiofsd, without the setid filter and
/// with xattrs: under runc the container's root makes setuid files and sets file
/// capabilities there too (a package install does: openssh-client's ssh-keysign,
/// iputils-ping's cap_net_raw), an image's own file capabilities must hold in the guest,
/// and the engines keep container roots in storage only root can reach (podman's and
/// docker's 0700 and 0710 directories), where a volume is any host directory.
pub const ROOTFS: Service = Service { tag: ROOTFS_TAG, dir: "rootfs-shared", setid: true, xattr: true };

/// One host path shared into the guest, at `shared/INDEX`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    pub host: PathBuf,
    pub read_only: bool,
}

/// A running virtiofsd and our connected end of its vhost-user socket.
pub struct Virtiofsd {
    process: crate::helper::Helper,
    log: PathBuf,
    pub socket: Arc<UnixStream>,
}

/// A bind mount to make in virtiofsd's mount namespace, as C strings made before the fork.
struct Bind {
    source: CString,
    target: CString,
    read_only: bool,
}

impl Virtiofsd {
    /// Starts virtiofsd serving `shares` from `dir/SERVICE.DIR`, with `binary`; its socket is
    /// bound at `socket` for the moment of the start (a name relative to the working
    /// directory keeps long sandbox paths within a socket address's 107 bytes).
    pub fn start(binary: &Path, dir: &Path, socket: &Path, service: &Service, shares: &[Share]) -> anyhow::Result<Self> {
        let root = dir.join(service.dir);
        std::fs::create_dir(&root).with_context(|| format!("volumes: {}", root.display()))?;
        let mut binds = Vec::with_capacity(shares.len());
        for (index, share) in shares.iter().enumerate() {
            let target = root.join(index.to_string());
            // The mount point has the source's kind: a directory, or a file for a file.
            let made = if share.host.is_dir() { std::fs::create_dir(&target) } else { File::create(&target).map(drop) };
            made.with_context(|| format!("volumes: mount point {}", target.display()))?;
            binds.push(Bind { source: c_path(&share.host)?, target: c_path(&target)?, read_only: share.read_only });
        }

        let listener = UnixListener::bind(socket)
            .with_context(|| format!("volumes: virtiofsd socket {}", socket.display()))?;
        // dup(2) leaves close-on-exec off, so virtiofsd inherits this copy (std's are all
        // close-on-exec).
        let inherited = nix::unistd::dup(&listener).context("volumes: dup")?;
        // Its log, in the sandbox directory: the last line of a failed start.
        let log = dir.join(format!("virtiofsd-{}.log", service.dir));
        let log_file = File::create(&log).with_context(|| format!("volumes: {}", log.display()))?;
        let inherited_fd = inherited.as_raw_fd();
        let mut command = Command::new(binary);
        command
            .arg("--fd")
            .arg(LISTEN_FD.to_string())
            .arg("--shared-dir")
            .arg(&root)
            .args(["--tag", service.tag, "--sandbox", "namespace", "--seccomp", "kill", "--log-level", "error"])
            // Guest page cache as the host's files change underneath (`auto`: revalidated on
            // open and after a timeout), which is what a volume shared with the host wants.
            .args(["--cache", "auto"])
            .args(service.xattr.then_some("--xattr"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .process_group(0);
        let filters = if service.setid { Vec::new() } else { no_setid_filters()? };
        // SAFETY: between fork and exec the closure makes only system calls (unshare, mount,
        // prctl, seccomp) on C strings and filters built before the fork; it allocates
        // nothing and takes no lock.
        unsafe {
            command.pre_exec(move || {
                keep_only_listener(inherited_fd)?;
                enter_namespace(&binds)?;
                for filter in &filters {
                    // The errno of the failed prctl or seccomp call (no allocation here).
                    seccompiler::apply_filter(filter).map_err(|_| std::io::Error::last_os_error())?;
                }
                Ok(())
            })
        };
        let spawned = command.spawn();
        drop(inherited);
        let mut child = spawned.with_context(|| format!("volumes: start {}", binary.display()))?;
        let connected = UnixStream::connect(socket);
        // Once our copy of the listener is closed, virtiofsd holds the only one: if it dies
        // before accepting, our connection is reset rather than left waiting in the backlog.
        drop(listener);
        let _ = std::fs::remove_file(socket);
        match connected {
            Ok(socket) => Ok(Self { process: crate::helper::Helper::new(child), log, socket: Arc::new(socket) }),
            Err(e) => {
                let error = said_on_exit(&mut child, &log, anyhow!("volumes: connect to virtiofsd: {e}"));
                let _ = child.kill();
                let _ = child.wait();
                Err(error)
            }
        }
    }

    /// Adds what virtiofsd said to `error` if it has exited (the VMM's handshake with it failed).
    pub fn explain(&mut self, error: anyhow::Error) -> anyhow::Error {
        match self.process.child() {
            Some(child) => said_on_exit(child, &self.log, error),
            None => error,
        }
    }

    /// The VMM holds its socket now: see [`crate::helper`].
    pub fn handed_over(mut self) {
        self.process.handed_over();
    }
}

fn said_on_exit(child: &mut Child, log: &Path, error: anyhow::Error) -> anyhow::Error {
    // A virtiofsd that refused its arguments or its sandbox is exiting as we get here.
    std::thread::sleep(std::time::Duration::from_millis(50));
    let Ok(Some(status)) = child.try_wait() else { return error };
    let mut said = String::new();
    let _ = File::open(log).and_then(|mut f| f.read_to_string(&mut said));
    let last = said.lines().map(str::trim).rfind(|l| !l.is_empty()).unwrap_or("nothing");
    error.context(format!("virtiofsd exited ({status}) and said: {last}"))
}

/// The two filters of the module's comment: chmod and creation with S_ISUID or S_ISGID fail
/// with EPERM; openat2 fails with ENOSYS.
fn no_setid_filters() -> anyhow::Result<Vec<seccompiler::BpfProgram>> {
    use seccompiler::{SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition as Cond, SeccompFilter, SeccompRule};
    let arch = seccompiler::TargetArch::x86_64;
    let masked = |arg, bits: u64| Cond::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::MaskedEq(bits), bits);
    let build = |e: seccompiler::BackendError| anyhow!("volumes: virtiofsd's seccomp filter: {e}");
    let setid = [u64::from(libc::S_ISUID), u64::from(libc::S_ISGID)];
    let mut rules = std::collections::BTreeMap::new();
    // (system call, mode argument): chmod and the calls that create a file with a mode.
    for (call, mode) in [
        (libc::SYS_chmod, 1),
        (libc::SYS_fchmod, 1),
        (libc::SYS_fchmodat, 2),
        (libc::SYS_mknod, 1),
        (libc::SYS_mknodat, 2),
        (libc::SYS_creat, 1),
    ] {
        let r = setid.iter().map(|&bit| SeccompRule::new(vec![masked(mode, bit)?])).collect::<Result<Vec<_>, _>>();
        rules.insert(call, r.map_err(build)?);
    }
    // open and openat: only when creating (O_CREAT or O_TMPFILE); flags, then mode.
    for (call, flags) in [(libc::SYS_open, 1), (libc::SYS_openat, 2)] {
        let mut r = Vec::new();
        for creating in [libc::O_CREAT as u64, libc::O_TMPFILE as u64] {
            for &bit in &setid {
                r.push(SeccompRule::new(vec![masked(flags, creating).map_err(build)?, masked(flags + 1, bit).map_err(build)?]).map_err(build)?);
            }
        }
        rules.insert(call, r);
    }
    let eperm = SeccompFilter::new(rules, SeccompAction::Allow, SeccompAction::Errno(libc::EPERM as u32), arch).map_err(build)?;
    let openat2 = [(libc::SYS_openat2, Vec::new())].into_iter().collect();
    let enosys = SeccompFilter::new(openat2, SeccompAction::Allow, SeccompAction::Errno(libc::ENOSYS as u32), arch).map_err(build)?;
    [eperm, enosys].into_iter().map(|f| f.try_into().map_err(build)).collect()
}

fn c_path(path: &Path) -> anyhow::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| anyhow!("volumes: {}: a NUL byte in the path", path.display()))
}

/// In the forked child: the listener on [`LISTEN_FD`] and every other inherited descriptor
/// made close-on-exec (not closed: std's own pipe, which reports a failed exec, is among them).
/// The OCI runtime's VMM process holds create's pipes and the caller's (conmon's sync pipe,
/// containerd's FIFOs), which are not close-on-exec; a virtiofsd holding one would keep its
/// reader waiting for an end that never comes.
fn keep_only_listener(fd: i32) -> std::io::Result<()> {
    // SAFETY: dup2 and close_range on descriptors, integer arguments only.
    unsafe {
        if libc::dup2(fd, LISTEN_FD) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::syscall(libc::SYS_close_range, LISTEN_FD + 1, u32::MAX, libc::CLOSE_RANGE_CLOEXEC) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// In the forked child: a private mount namespace holding the shares' bind mounts, and death
/// with the parent.
fn enter_namespace(binds: &[Bind]) -> std::io::Result<()> {
    use nix::mount::{mount, MsFlags};
    use nix::sched::{unshare, CloneFlags};
    let none: Option<&std::ffi::CStr> = None;
    unshare(CloneFlags::CLONE_NEWNS)?;
    // Nothing of ours propagates back to the host's mounts.
    mount(none, c"/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)?;
    for bind in binds {
        mount(Some(bind.source.as_c_str()), bind.target.as_c_str(), none, MsFlags::MS_BIND | MsFlags::MS_REC, none)?;
        if bind.read_only {
            let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
            mount(none, bind.target.as_c_str(), none, flags, none)?;
        }
    }
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    /// Needs root (a mount namespace) and virtiofsd (images/build-virtiofsd.sh; CI builds it).
    #[test]
    fn virtiofsd_sees_the_shares_mounted_the_host_does_not_and_answers_a_frontend() {
        let binary = crate::layout::Layout::load().unwrap().virtiofsd().unwrap().path;
        let dir = test_support::TempDir::new("volumes");
        let (rw, ro) = (dir.path("rw"), dir.path("ro"));
        std::fs::create_dir(&rw).unwrap();
        std::fs::create_dir(&ro).unwrap();
        let sandbox = dir.path("sandbox");
        std::fs::create_dir(&sandbox).unwrap();
        let shares = [Share { host: rw, read_only: false }, Share { host: ro, read_only: true }];
        let socket = sandbox.join("virtiofs.sock");
        let mut virtiofsd = Virtiofsd::start(&binary, &sandbox, &socket, &VOLUMES, &shares).unwrap();
        assert!(!socket.exists(), "the socket file is removed once connected");

        let pid = virtiofsd.process.child().unwrap().id();
        let theirs = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
        let mount_of = |table: &str, target: &Path| {
            let target = target.to_str().unwrap().to_string();
            table.lines().find(|l| l.split(' ').nth(4) == Some(target.as_str())).map(str::to_string)
        };
        let (shared0, shared1) = (sandbox.join("shared/0"), sandbox.join("shared/1"));
        let rw_mount = mount_of(&theirs, &shared0).expect("shared/0 mounted for virtiofsd");
        let ro_mount = mount_of(&theirs, &shared1).expect("shared/1 mounted for virtiofsd");
        assert!(rw_mount.split(' ').nth(5).unwrap().starts_with("rw"), "{rw_mount}");
        assert!(ro_mount.split(' ').nth(5).unwrap().starts_with("ro"), "{ro_mount}");
        let ours = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert_eq!(mount_of(&ours, &shared0), None, "the host's mount table holds no share");

        // The vhost-user handshake the VMM makes at boot.
        let socket = virtiofsd.socket.try_clone().unwrap();
        vmm::devices::virtio::fs::Fs::new(socket, SHARED_TAG).unwrap();

        // Killing it (what a failed boot does) leaves no process.
        drop(virtiofsd);
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "virtiofsd {pid} is gone");
    }

    #[test]
    fn a_virtiofsd_that_exits_at_once_is_named_with_what_it_said() {
        let dir = test_support::TempDir::new("volumes");
        let sandbox = dir.path("sandbox");
        std::fs::create_dir(&sandbox).unwrap();
        let fake = dir.path("virtiofsd");
        std::fs::write(&fake, "#!/bin/sh\necho 'fake virtiofsd: bad day' >&2\nexit 3\n").unwrap();
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let shares = [Share { host: dir.path("sandbox"), read_only: false }];
        let mut v = Virtiofsd::start(&fake, &sandbox, &sandbox.join("s"), &VOLUMES, &shares).unwrap();
        // The connection was queued before it died; the handshake then fails, and explain
        // adds its last words.
        let socket = v.socket.try_clone().unwrap();
        let err = vmm::devices::virtio::fs::Fs::new(socket, SHARED_TAG).err().unwrap();
        let err = format!("{:#}", v.explain(err.into()));
        assert!(err.contains("virtiofsd exited (exit status: 3) and said: fake virtiofsd: bad day"), "{err}");
    }
}
