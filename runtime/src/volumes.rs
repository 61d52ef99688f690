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

/// The virtio-fs tag of the shared directory, and the kernel parameter that tells the agent to
/// mount it on [`protocol::GUEST_SHARED_DIR`].
pub const SHARED_TAG: &str = "microvm-shared";
pub const KERNEL_PARAM: &str = "microvm.shared";
/// virtiofsd's log, in the sandbox directory: the first lines of a failed start.
const LOG: &str = "virtiofsd.log";

/// One host path shared into the guest, at `shared/INDEX`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    pub host: PathBuf,
    pub read_only: bool,
}

/// A running virtiofsd and our connected end of its vhost-user socket.
pub struct Virtiofsd {
    child: Option<Child>,
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
    /// Starts virtiofsd serving `shares` from `dir/shared`, with `binary`.
    pub fn start(binary: &Path, dir: &Path, shares: &[Share]) -> anyhow::Result<Self> {
        let root = dir.join("shared");
        std::fs::create_dir(&root).with_context(|| format!("volumes: {}", root.display()))?;
        let mut binds = Vec::with_capacity(shares.len());
        for (index, share) in shares.iter().enumerate() {
            let target = root.join(index.to_string());
            // The mount point has the source's kind: a directory, or a file for a file.
            let made = if share.host.is_dir() { std::fs::create_dir(&target) } else { File::create(&target).map(drop) };
            made.with_context(|| format!("volumes: mount point {}", target.display()))?;
            binds.push(Bind { source: c_path(&share.host)?, target: c_path(&target)?, read_only: share.read_only });
        }

        let socket_path = dir.join("virtiofs.sock");
        let listener = UnixListener::bind(&socket_path)
            .with_context(|| format!("volumes: virtiofsd socket {}", socket_path.display()))?;
        // dup(2) leaves close-on-exec off, so virtiofsd inherits this copy (std's are all
        // close-on-exec).
        let inherited = nix::unistd::dup(&listener).context("volumes: dup")?;
        let log = dir.join(LOG);
        let log_file = File::create(&log).with_context(|| format!("volumes: {}", log.display()))?;
        let mut command = Command::new(binary);
        command
            .arg("--fd")
            .arg(inherited.as_raw_fd().to_string())
            .arg("--shared-dir")
            .arg(&root)
            .args(["--tag", SHARED_TAG, "--sandbox", "namespace", "--seccomp", "kill", "--log-level", "error"])
            // Guest page cache as the host's files change underneath (`auto`: revalidated on
            // open and after a timeout), which is what a volume shared with the host wants.
            .args(["--cache", "auto"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .process_group(0);
        // SAFETY: between fork and exec the closure makes only system calls (unshare, mount,
        // prctl) on C strings built before the fork; it allocates nothing and takes no lock.
        unsafe { command.pre_exec(move || enter_namespace(&binds)) };
        let spawned = command.spawn();
        drop(inherited);
        let mut child = spawned.with_context(|| format!("volumes: start {}", binary.display()))?;
        let connected = UnixStream::connect(&socket_path);
        // Once our copy of the listener is closed, virtiofsd holds the only one: if it dies
        // before accepting, our connection is reset rather than left waiting in the backlog.
        drop(listener);
        let _ = std::fs::remove_file(&socket_path);
        match connected {
            Ok(socket) => Ok(Self { child: Some(child), log, socket: Arc::new(socket) }),
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
        match &mut self.child {
            Some(child) => said_on_exit(child, &self.log, error),
            None => error,
        }
    }

    /// From now on virtiofsd's life is tied to the VMM's socket (it exits when that closes),
    /// so it is no longer killed on drop; the process is reaped by whoever inherits it.
    pub fn handed_over(mut self) {
        self.child = None;
    }
}

impl Drop for Virtiofsd {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
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

fn c_path(path: &Path) -> anyhow::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| anyhow!("volumes: {}: a NUL byte in the path", path.display()))
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
