//! A sandbox's runtime directory (its vsock socket, initramfs, console log), removed with
//! everything in it when the run ends, however it ends short of SIGKILL.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

/// Longest sandbox name, as runc bounds container ids.
const MAX_NAME: usize = 64;

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
        match std::fs::create_dir(&dir) {
            Ok(()) => Ok(Self { path: dir, parent }),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(SandboxError::Exists(name, dir)),
            Err(source) => Err(SandboxError::Create { path: dir, source }),
        }
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
        std::fs::remove_dir_all(&base).unwrap();
    }
}
