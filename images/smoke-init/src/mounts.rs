//! The pseudo filesystems init mounts: proc on /proc and sysfs on /sys.

use std::ffi::{CStr, OsStr};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::ptr;

/// One pseudo filesystem and where it goes.
pub struct PseudoFs {
    fstype: &'static CStr,
    target: &'static CStr,
}

/// What init mounts, in order.
pub const PSEUDO_FILESYSTEMS: [PseudoFs; 2] = [
    PseudoFs {
        fstype: c"proc",
        target: c"/proc",
    },
    PseudoFs {
        fstype: c"sysfs",
        target: c"/sys",
    },
];

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("create mount point {path}: {source}")]
    CreateDir { path: String, source: io::Error },
    #[error("mount {fstype} on {path}: {source}")]
    Mount {
        fstype: String,
        path: String,
        source: io::Error,
    },
}

impl PseudoFs {
    fn path(&self) -> &Path {
        Path::new(OsStr::from_bytes(self.target.to_bytes()))
    }

    /// Creates the mount point if missing and mounts the filesystem there (nosuid, nodev,
    /// noexec). Already mounted (EBUSY) counts as done.
    pub fn mount(&self) -> Result<(), MountError> {
        let path = self.path();
        std::fs::create_dir_all(path).map_err(|source| MountError::CreateDir {
            path: path.display().to_string(),
            source,
        })?;
        let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        // SAFETY: source, target and fstype are NUL-terminated 'static strings, data is null
        // (allowed for proc and sysfs), and the return value is checked below.
        let rc = unsafe {
            libc::mount(
                self.fstype.as_ptr(),
                self.target.as_ptr(),
                self.fstype.as_ptr(),
                flags,
                ptr::null(),
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let source = io::Error::last_os_error();
        if source.raw_os_error() == Some(libc::EBUSY) {
            return Ok(());
        }
        Err(MountError::Mount {
            fstype: self.fstype.to_string_lossy().into_owned(),
            path: path.display().to_string(),
            source,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn mounts_proc_before_sys() {
        let paths: Vec<_> = PSEUDO_FILESYSTEMS
            .iter()
            .map(|fs| fs.path().to_owned())
            .collect();
        assert_eq!(paths, [Path::new("/proc"), Path::new("/sys")]);
    }
}
