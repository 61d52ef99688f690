//! The VMM's jail, entered once the VM is built and before the guest runs its first
//! instruction (issue "Harden the boundary"). After it the process:
//! - sees a filesystem holding only its sandbox directory, at the same absolute path (so the
//!   vsock socket paths stay valid): a new mount namespace whose root is an empty, read-only
//!   tmpfs into which the sandbox directory is bound, entered with `pivot_root` and the old
//!   root detached. The kernel, initrd and images are already loaded or open.
//! - has an empty environment (libc's, and /proc/PID/environ where the kernel lets us point
//!   it at nothing: with CAP_SYS_RESOURCE);
//! - may hold at most [`MAX_OPEN_FILES`] descriptors and write files no larger than
//!   [`MAX_FILE_SIZE`] (the console log, which a guest fills at will; disk writes never grow
//!   a file), with SIGXFSZ ignored so that an oversized write fails instead of killing us;
//! - runs, when asked (`--jail-uid/--jail-gid`, as root), as that unprivileged user, with no
//!   supplementary groups: the KVM descriptors it needs are open already.
//!
//! The mount namespace needs CAP_SYS_ADMIN; without it (microvm run by a user in the kvm
//! group) that part is skipped and said so in the debug log. Inherited descriptors are closed
//! at start-up ([`close_fds_from`]); seccomp comes right after the jail
//! (`vmm::seccomp`).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::resource::{setrlimit, Resource};
use nix::unistd::{Gid, Uid};

/// Descriptors the jailed VMM may hold: vsock allows 1024 connections, plus the VM's own.
pub const MAX_OPEN_FILES: u64 = 2048;
/// Largest file the jailed VMM may write (the console log).
pub const MAX_FILE_SIZE: u64 = 1 << 30;
/// The new root's mount point, inside the sandbox directory.
const ROOT_DIR: &str = ".jail-root";

#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("jail: {step}: {source}")]
    Sys { step: String, source: nix::Error },
    #[error("jail: {step}: {source}")]
    Io { step: String, source: std::io::Error },
    #[error("jail: --jail-uid/--jail-gid need microvm to run as root")]
    NotRoot,
}

fn sys(step: impl Into<String>) -> impl FnOnce(nix::Error) -> JailError {
    let step = step.into();
    move |source| JailError::Sys { step, source }
}

fn io(step: impl Into<String>) -> impl FnOnce(std::io::Error) -> JailError {
    let step = step.into();
    move |source| JailError::Io { step, source }
}

/// Closes every descriptor from `first` on: nothing a caller left open reaches the VMM.
pub fn close_fds_from(first: u32) {
    // SAFETY: close_range(2) on descriptors this process does not use (called first thing in
    // main, before anything is opened); flags 0.
    unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, 0u32) };
}

/// Enters the jail; see the module documentation. Must run while the process has one thread.
pub fn enter(sandbox: &Path, ids: Option<(u32, u32)>) -> Result<(), JailError> {
    let root = nix::unistd::geteuid().is_root();
    if ids.is_some() && !root {
        return Err(JailError::NotRoot);
    }
    // First: it reads /proc, which the jail's view lacks.
    clear_environment();
    if root {
        enter_mount_namespace(sandbox)?;
    } else {
        tracing::debug!("jail: not root, so no mount namespace");
    }
    limit_resources()?;
    if let Some((uid, gid)) = ids {
        drop_to(sandbox, uid, gid)?;
    }
    Ok(())
}

/// The filesystem view: an empty read-only tmpfs root holding the sandbox directory alone.
fn enter_mount_namespace(sandbox: &Path) -> Result<(), JailError> {
    unshare(CloneFlags::CLONE_NEWNS).map_err(sys("unshare the mount namespace"))?;
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
        .map_err(sys("make every mount private"))?;
    let new_root = sandbox.join(ROOT_DIR);
    std::fs::create_dir(&new_root).map_err(io(format!("create {}", new_root.display())))?;
    mount(Some("tmpfs"), &new_root, Some("tmpfs"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC, Some("mode=0755,size=64k"))
        .map_err(sys(format!("mount the jail's root on {}", new_root.display())))?;
    let inside: PathBuf = new_root.join(sandbox.strip_prefix("/").unwrap_or(sandbox));
    std::fs::create_dir_all(&inside).map_err(io(format!("create {}", inside.display())))?;
    mount(Some(sandbox), &inside, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .map_err(sys(format!("bind {} into the jail", sandbox.display())))?;

    nix::unistd::chdir(&new_root).map_err(sys("enter the jail's root"))?;
    nix::unistd::pivot_root(".", ".").map_err(sys("pivot_root into the jail"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(sys("detach the old root"))?;
    nix::unistd::chdir("/").map_err(sys("chdir to the jail's root"))?;
    let read_only = MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(None::<&str>, "/", None::<&str>, read_only, None::<&str>).map_err(sys("make the jail's root read-only"))
}

fn limit_resources() -> Result<(), JailError> {
    setrlimit(Resource::RLIMIT_NOFILE, MAX_OPEN_FILES, MAX_OPEN_FILES).map_err(sys("limit open files"))?;
    setrlimit(Resource::RLIMIT_FSIZE, MAX_FILE_SIZE, MAX_FILE_SIZE).map_err(sys("limit file size"))?;
    // SAFETY: SIG_IGN for SIGXFSZ: a write past the limit then fails with EFBIG.
    unsafe { nix::sys::signal::signal(nix::sys::signal::Signal::SIGXFSZ, nix::sys::signal::SigHandler::SigIgn) }
        .map(drop)
        .map_err(sys("ignore SIGXFSZ"))
}

/// Empties libc's environment and, where allowed, the block /proc/PID/environ shows.
fn clear_environment() {
    let names: Vec<OsString> = std::env::vars_os().map(|(name, _)| name).collect();
    for name in names {
        // The process has one thread at this point: no other reads the environment meanwhile.
        std::env::remove_var(name);
    }
    // /proc/PID/environ shows the memory between env_start and env_end (fields 50 and 51 of
    // /proc/self/stat), the strings the kernel put on the stack at exec.
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return };
    // The command name (field 2) may hold spaces: count fields after its closing parenthesis.
    let Some(rest) = stat.rsplit_once(')').map(|(_, rest)| rest) else { return };
    let field = |n: usize| rest.split_whitespace().nth(n - 3).and_then(|f| f.parse::<usize>().ok());
    let (Some(start), Some(end)) = (field(50), field(51)) else { return };
    // With CAP_SYS_RESOURCE the range can be made empty.
    // SAFETY: prctl(PR_SET_MM) with an address inside our own stack; the kernel checks it.
    if unsafe { libc::prctl(libc::PR_SET_MM, libc::PR_SET_MM_ENV_START, end, 0, 0) } == 0 {
        return;
    }
    // Otherwise blank the strings themselves: libc no longer points at them (every variable
    // was removed above, and glibc's unsetenv only drops the pointers).
    if start < end {
        // SAFETY: [start, end) is this process's initial environment block on its own stack,
        // mapped and writable, and nothing refers to it any more.
        unsafe { std::ptr::write_bytes(start as *mut u8, 0, end - start) };
    }
}

/// Hands the sandbox directory to `uid`:`gid` (the VMM removes its socket at the end), then
/// becomes that user with no supplementary groups.
fn drop_to(sandbox: &Path, uid: u32, gid: u32) -> Result<(), JailError> {
    let (uid, gid) = (Uid::from_raw(uid), Gid::from_raw(gid));
    let entries = std::fs::read_dir(sandbox).map_err(io(format!("read {}", sandbox.display())))?;
    for path in entries.flatten().map(|e| e.path()).chain([sandbox.to_path_buf()]) {
        nix::unistd::chown(&path, Some(uid), Some(gid)).map_err(sys(format!("chown {}", path.display())))?;
    }
    nix::unistd::setgroups(&[]).map_err(sys("drop supplementary groups"))?;
    nix::unistd::setresgid(gid, gid, gid).map_err(sys(format!("setgid {gid}")))?;
    nix::unistd::setresuid(uid, uid, uid).map_err(sys(format!("setuid {uid}")))
}
