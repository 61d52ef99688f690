//! A sandbox's runtime directory (its vsock socket, initramfs, console log), removed with
//! everything in it when the run ends, however it ends short of SIGKILL.
//!
//! Its owner holds an exclusive flock(2) on the directory's `.lock` for its whole life. The
//! kernel drops the lock when the owner dies, SIGKILL included, so a directory whose lock can
//! be taken was left by a dead run: `create` removes it and takes the name (runc's users
//! expect a name to be free again once its container is gone). The directory is built under
//! a temporary name with the lock already held and renamed into place, so no directory ever
//! stands under its real name without a live lock, and two runs racing for a name cannot
//! both win it.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

/// Longest sandbox name, as runc bounds container ids.
const MAX_NAME: usize = 64;

/// The file whose flock(2) its owner holds (see the module's documentation).
const LOCK_FILE: &str = ".lock";

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("name {0:?}: use 1 to {MAX_NAME} characters from [A-Za-z0-9_.-], not starting with '.'")]
    BadName(String),
    #[error("sandbox {0:?} already exists ({1})")]
    Exists(String, PathBuf),
    #[error("runtime directory {path}: {source}")]
    Create { path: PathBuf, source: std::io::Error },
}

pub struct SandboxDir {
    path: PathBuf,
    /// The runtime directory holding it, opened O_PATH: inside the jail the sandbox directory
    /// is a mount point and cannot be removed by its path, but through this handle on the
    /// real parent it can.
    parent: Option<OwnedFd>,
    /// The lock file, locked: the lock goes when this file is closed or the process dies.
    _lock: std::fs::File,
}

impl SandboxDir {
    /// Creates `$MICROVM_RUNTIME_DIR/<name>` (default /run/microvm), `name` generated if none.
    pub fn create(name: Option<&str>) -> Result<Self, SandboxError> {
        let name = match name {
            Some(n) => {
                check_name(n)?;
                n.to_string()
            }
            None => format!("run-{}-{}", std::process::id(), nanos()),
        };
        let base = std::env::var_os("MICROVM_RUNTIME_DIR").map_or_else(|| PathBuf::from("/run/microvm"), PathBuf::from);
        std::fs::create_dir_all(&base).map_err(|source| SandboxError::Create { path: base.clone(), source })?;
        let dir = base.join(&name);
        let parent = nix::fcntl::open(&base, OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty()).ok();
        // Two tries: the second after removing a directory left by a dead run.
        for _ in 0..2 {
            let new = base.join(format!(".new-{name}-{}-{}", std::process::id(), nanos()));
            let lock = new_locked_dir(&new).map_err(|source| SandboxError::Create { path: new.clone(), source })?;
            // rename(2) replaces an empty directory but never one with files, such as a
            // live sandbox's (it holds its .lock).
            let Err(e) = std::fs::rename(&new, &dir) else {
                return Ok(Self { path: dir, parent, _lock: lock });
            };
            let _ = std::fs::remove_dir_all(&new);
            let taken = e.kind() == std::io::ErrorKind::AlreadyExists || e.raw_os_error() == Some(libc::ENOTEMPTY);
            if !taken {
                return Err(SandboxError::Create { path: dir, source: e });
            }
            if !remove_if_abandoned(&base, &dir) {
                return Err(SandboxError::Exists(name, dir));
            }
        }
        Err(SandboxError::Exists(name, dir))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SandboxDir {
    fn drop(&mut self) {
        self.remove();
    }
}

impl SandboxDir {
    /// Removes the directory and everything in it (also done on drop; for exit paths that
    /// skip drops).
    pub fn remove(&self) {
        // The contents by path (the same directory inside the jail or out), then the
        // directory itself through its parent.
        if let Ok(entries) = std::fs::read_dir(&self.path) {
            for entry in entries.flatten() {
                let path = entry.path();
                let _ = match entry.file_type() {
                    Ok(t) if t.is_dir() => std::fs::remove_dir_all(&path),
                    _ => std::fs::remove_file(&path),
                };
            }
        }
        let name = self.path.file_name().unwrap_or_default();
        let removed = self.parent.as_ref().is_some_and(|parent| {
            nix::unistd::unlinkat(parent, name, nix::unistd::UnlinkatFlags::RemoveDir).is_ok()
        });
        if !removed {
            let _ = std::fs::remove_dir(&self.path);
        }
    }
}

/// Creates `dir` with its .lock, locked; on failure nothing of it stays.
fn new_locked_dir(dir: &Path) -> std::io::Result<std::fs::File> {
    std::fs::create_dir(dir)?;
    let locked = std::fs::File::create(dir.join(LOCK_FILE)).and_then(|file| try_lock(&file).map(|()| file));
    if locked.is_err() {
        let _ = std::fs::remove_dir_all(dir);
    }
    locked
}

/// Takes an exclusive flock(2) on `file`, without waiting. Not nix's `Flock`: its drop calls
/// flock(LOCK_UN), a call the VMM's seccomp filters do not allow and need not; closing the
/// file releases the lock as well.
fn try_lock(file: &std::fs::File) -> std::io::Result<()> {
    // SAFETY: flock(2) on a descriptor this File owns; no memory is passed.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// Removes `dir` when the run that made it is dead (its lock can be taken), and says whether
/// it did. A directory without a lock file is not one of ours to judge, and stays.
fn remove_if_abandoned(base: &Path, dir: &Path) -> bool {
    let Ok(file) = std::fs::File::open(dir.join(LOCK_FILE)) else {
        return false;
    };
    if try_lock(&file).is_err() {
        return false;
    }
    // Moved aside first, under the lock, so that the name is free at once and a second run
    // reclaiming the same name cannot remove what this one is about to create.
    let aside = base.join(format!(".stale-{}-{}", std::process::id(), nanos()));
    let moved = std::fs::rename(dir, &aside).is_ok();
    drop(file);
    if moved {
        let _ = std::fs::remove_dir_all(&aside);
    }
    moved
}

fn check_name(name: &str) -> Result<(), SandboxError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if ok { Ok(()) } else { Err(SandboxError::BadName(name.to_string())) }
}

fn nanos() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for bad in ["", ".hidden", "a/b", "..", &"x".repeat(65), "sp ace"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        for good in ["web", "a.b-c_1", &"x".repeat(64)] {
            assert!(check_name(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn directory_is_unique_and_removed_on_drop() {
        let base = std::env::temp_dir().join(format!("microvm-sandbox-{}", std::process::id()));
        std::env::set_var("MICROVM_RUNTIME_DIR", &base);
        let a = SandboxDir::create(Some("one")).unwrap();
        std::fs::write(a.path().join("f"), b"x").unwrap();
        assert!(matches!(SandboxDir::create(Some("one")), Err(SandboxError::Exists(..))));
        let path = a.path().to_owned();
        drop(a);
        assert!(!path.exists());

        // What a run killed by SIGKILL leaves: its directory and lock file, the lock released
        // by the kernel. The name is taken back and the old files go.
        let dead = base.join("two");
        std::fs::create_dir(&dead).unwrap();
        std::fs::write(dead.join(LOCK_FILE), b"").unwrap();
        std::fs::write(dead.join("console.log"), b"old").unwrap();
        let b = SandboxDir::create(Some("two")).unwrap();
        assert!(!b.path().join("console.log").exists());
        assert!(matches!(SandboxDir::create(Some("two")), Err(SandboxError::Exists(..))));
        drop(b);
        // A directory without a lock file is not ours to judge: refused, left as it is.
        let foreign = base.join("three");
        std::fs::create_dir(&foreign).unwrap();
        std::fs::write(foreign.join("data"), b"keep").unwrap();
        assert!(matches!(SandboxDir::create(Some("three")), Err(SandboxError::Exists(..))));
        assert_eq!(std::fs::read(foreign.join("data")).unwrap(), b"keep");
        std::fs::remove_dir_all(&foreign).unwrap();
        let left: Vec<_> = std::fs::read_dir(&base).unwrap().flatten().map(|e| e.file_name()).collect();
        assert!(left.is_empty(), "{left:?}");
        std::fs::remove_dir_all(&base).unwrap();
    }
}
