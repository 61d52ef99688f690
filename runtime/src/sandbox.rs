//! A sandbox's runtime directory (its vsock socket, initramfs, console log), removed with
//! everything in it when the run ends, however it ends short of SIGKILL.

use std::path::{Path, PathBuf};

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

pub struct SandboxDir(PathBuf);

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
        match std::fs::create_dir(&dir) {
            Ok(()) => Ok(Self(dir)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(SandboxError::Exists(name, dir)),
            Err(source) => Err(SandboxError::Create { path: dir, source }),
        }
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for SandboxDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
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
