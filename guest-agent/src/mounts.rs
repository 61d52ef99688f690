//! What the agent mounts at boot, in order, once its root has moved off the initramfs onto a
//! tmpfs ([`enter_tmpfs_root`]):
//! 1. its own pseudo filesystems: /proc, /sys, /sys/fs/cgroup, /dev (devtmpfs), /dev/pts (a private devpts
//!    instance), /dev/shm and /run (tmpfs) — [`mount_pseudo_filesystems`];
//! 2. the container image, the block device [`ROOTFS_DEVICE`] (erofs, or ext4), or the rootfs
//!    directory shared over virtio-fs (`microvm.rootfs=N`), read-only on [`ROOTFS_LOWER`],
//!    and on top of it [`ROOTFS`]: an overlay whose upper and work dirs live on a tmpfs
//!    (writes stay in guest memory) — [`mount_rootfs`]. Always an overlay, also for a
//!    read-only root (`root.readonly`): the spec's mount points are made in it first, and the
//!    container's root is remounted read-only last, as runc does ([`crate::sandbox`]).
//!    Except with `microvm.rootfs.writable` (an OCI bundle's root): the root's own virtio-fs
//!    device is [`ROOTFS`], written in place, so the container's writes reach the bundle on
//!    the host as under runc;

use std::io;
use std::os::unix::fs::{chown, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};
use protocol::{GUEST_ROOTFS_SHARED_DIR, ROOTFS_PARAM, ROOTFS_TAG, ROOTFS_WRITABLE_PARAM, SHARED_PARAM, SHARED_TAG};

/// The block device holding the container image (the VMM's first virtio-blk disk).
pub const ROOTFS_DEVICE: &str = "/dev/vda";
/// Where the image is mounted read-only.
pub const ROOTFS_LOWER: &str = "/rootfs-ro";
/// The tmpfs holding the overlay's upper and work directories.
pub const ROOTFS_RW: &str = "/rootfs-rw";
/// The root the container process is chrooted into.
pub const ROOTFS: &str = "/rootfs";
/// Where the agent's tmpfs root is mounted before it is moved onto `/`.
const NEW_ROOT: &str = "/newroot";
/// How long to wait for [`ROOTFS_DEVICE`] to appear in devtmpfs.
const DEVICE_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("create mount point {path}: {source}")]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("mount {fstype} on {path}: {source}")]
    Mount {
        fstype: &'static str,
        path: PathBuf,
        source: Errno,
    },
    #[error("mount {ROOTFS_DEVICE} on {ROOTFS_LOWER}: no such device after {DEVICE_WAIT:?} (no disk attached?)")]
    NoDevice,
    #[error("mount {ROOTFS_DEVICE} on {ROOTFS_LOWER}: not erofs ({erofs}), not ext4 ({ext4})")]
    Image { erofs: Errno, ext4: Errno },
    #[error("prepare overlay upper dir {path}: {source}")]
    Upper { path: PathBuf, source: io::Error },
}

/// One mount: `mount(source, target, fstype, flags, data)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub source: &'static str,
    pub target: PathBuf,
    pub fstype: &'static str,
    pub flags: MsFlags,
    pub data: Option<String>,
}

impl Mount {
    fn new(source: &'static str, target: impl Into<PathBuf>, fstype: &'static str) -> Self {
        Mount {
            source,
            target: target.into(),
            fstype,
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            data: None,
        }
    }

    fn flags(self, flags: MsFlags) -> Self {
        Mount { flags, ..self }
    }

    fn data(self, data: impl Into<String>) -> Self {
        Mount {
            data: Some(data.into()),
            ..self
        }
    }

    /// Creates the mount point if missing, then mounts.
    pub fn mount(&self) -> Result<(), MountError> {
        create_dir(&self.target)?;
        self.mount_only()
    }

    fn mount_only(&self) -> Result<(), MountError> {
        mount(
            Some(self.source),
            &self.target,
            Some(self.fstype),
            self.flags,
            self.data.as_deref(),
        )
        .map_err(|source| MountError::Mount {
            fstype: self.fstype,
            path: self.target.clone(),
            source,
        })
    }
}

fn create_dir(path: &Path) -> Result<(), MountError> {
    std::fs::create_dir_all(path).map_err(|source| MountError::CreateDir {
        path: path.to_owned(),
        source,
    })
}

/// The agent's own pseudo filesystems, in mount order.
pub fn pseudo_filesystems() -> Vec<Mount> {
    let no_exec = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    vec![
        Mount::new("proc", "/proc", "proc"),
        Mount::new("sysfs", "/sys", "sysfs"),
        // Containers' cgroups live under this (guest) root cgroup.
        Mount::new("cgroup2", "/sys/fs/cgroup", "cgroup2"),
        Mount::new("devtmpfs", "/dev", "devtmpfs")
            .flags(MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC)
            .data("mode=0755"),
        // A private instance; ptmxmode lets /dev/pts/ptmx be opened, and /dev/ptmx of
        // devtmpfs finds this instance as its sibling "pts" (Linux >= 4.7).
        Mount::new("devpts", "/dev/pts", "devpts")
            .flags(MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC)
            .data("newinstance,ptmxmode=0666,mode=0620,gid=5"),
        Mount::new("shm", "/dev/shm", "tmpfs")
            .flags(no_exec)
            .data("mode=1777"),
        Mount::new("tmpfs", "/run", "tmpfs")
            .flags(MsFlags::MS_NOSUID | MsFlags::MS_NODEV)
            .data("mode=0755"),
    ]
}

/// Step 1: mounts [`pseudo_filesystems`].
pub fn mount_pseudo_filesystems() -> Result<(), MountError> {
    pseudo_filesystems().iter().try_for_each(Mount::mount)
}

/// Step 2: the image on [`ROOTFS_LOWER`], then [`ROOTFS`] as an overlay. The image is the
/// disk, or, when the command line says `microvm.rootfs=N`, the shared directory's entry N
/// (the runtime shared the rootfs directory over virtio-fs instead of packing it; it is
/// read-only on the host side), bind-mounted read-only.
///
/// With `microvm.rootfs.writable` instead, [`ROOTFS`] is entry 0 of the root's own virtio-fs
/// device, bound read-write with no overlay: the host wants the container's writes (an OCI
/// bundle's root).
pub fn mount_rootfs(cmdline: &str) -> Result<(), MountError> {
    if has_param(cmdline, ROOTFS_WRITABLE_PARAM) {
        return mount_writable_rootfs();
    }
    match param_value(cmdline, ROOTFS_PARAM) {
        Some(entry) => mount_shared_rootfs(entry)?,
        None => mount_image()?,
    }
    Mount::new("tmpfs", ROOTFS_RW, "tmpfs")
        .flags(MsFlags::MS_NODEV)
        .data("mode=0755")
        .mount()?;
    let rw = Path::new(ROOTFS_RW);
    let (upper, work) = (rw.join("upper"), rw.join("work"));
    create_dir(&upper)?;
    create_dir(&work)?;
    // The overlay's root directory takes its mode and owner from the upper dir: copy the
    // image's, so that / looks as the image says.
    copy_owner_and_mode(Path::new(ROOTFS_LOWER), &upper).map_err(|source| MountError::Upper {
        path: upper.clone(),
        source,
    })?;
    Mount::new("overlay", ROOTFS, "overlay")
        .flags(MsFlags::empty())
        .data(overlay_options(Path::new(ROOTFS_LOWER), &upper, &work))
        .mount()
}

/// Step 2b: the shared directory (volumes) on [`protocol::GUEST_SHARED_DIR`], when the kernel
/// command line says the VM has one. Without `nosuid` or `nodev` here: each volume's bind
/// mount into the container carries the spec's own options.
pub fn mount_shared(cmdline: &str) -> Result<(), MountError> {
    if !has_param(cmdline, SHARED_PARAM) {
        return Ok(());
    }
    Mount::new(SHARED_TAG, protocol::GUEST_SHARED_DIR, "virtiofs").flags(MsFlags::empty()).mount()
}

fn mount_writable_rootfs() -> Result<(), MountError> {
    let shared = Path::new(GUEST_ROOTFS_SHARED_DIR);
    Mount::new(ROOTFS_TAG, shared, "virtiofs").flags(MsFlags::empty()).mount()?;
    let source = shared.join("0");
    let target = Path::new(ROOTFS);
    create_dir(target)?;
    mount(Some(&source), target, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .map_err(|source| MountError::Mount { fstype: "bind", path: target.to_owned(), source })
}

fn mount_shared_rootfs(entry: &str) -> Result<(), MountError> {
    let source = Path::new(protocol::GUEST_SHARED_DIR).join(entry);
    let target = Path::new(ROOTFS_LOWER);
    create_dir(target)?;
    let step = |source| MountError::Mount { fstype: "bind", path: target.to_owned(), source };
    mount(Some(&source), target, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(step)?;
    let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NODEV;
    mount(None::<&str>, target, None::<&str>, flags, None::<&str>).map_err(step)
}

/// The value of `param=VALUE` on the command line.
fn param_value<'a>(cmdline: &'a str, param: &str) -> Option<&'a str> {
    cmdline.split_whitespace().find_map(|p| p.strip_prefix(param)?.strip_prefix('='))
}

fn has_param(cmdline: &str, param: &str) -> bool {
    cmdline.split_whitespace().any(|p| p == param)
}

/// The image, read-only: erofs first, then ext4. Waits a little for the device node, in case
/// the disk is probed after init starts.
fn mount_image() -> Result<(), MountError> {
    create_dir(Path::new(ROOTFS_LOWER))?;
    let flags = MsFlags::MS_RDONLY | MsFlags::MS_NODEV;
    let erofs = Mount::new(ROOTFS_DEVICE, ROOTFS_LOWER, "erofs").flags(flags);
    let ext4 = Mount::new(ROOTFS_DEVICE, ROOTFS_LOWER, "ext4").flags(flags);
    let deadline = Instant::now() + DEVICE_WAIT;
    loop {
        let erofs_error = match erofs.mount_only() {
            Ok(()) => return Ok(()),
            Err(MountError::Mount { source, .. }) => source,
            Err(other) => return Err(other),
        };
        if erofs_error == Errno::ENOENT {
            if Instant::now() >= deadline {
                return Err(MountError::NoDevice);
            }
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        return match ext4.mount_only() {
            Ok(()) => Ok(()),
            Err(MountError::Mount { source, .. }) => Err(MountError::Image {
                erofs: erofs_error,
                ext4: source,
            }),
            Err(other) => Err(other),
        };
    }
}

fn copy_owner_and_mode(from: &Path, to: &Path) -> io::Result<()> {
    let meta = std::fs::metadata(from)?;
    chown(to, Some(meta.uid()), Some(meta.gid()))?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(meta.mode() & 0o7777))
}

fn overlay_options(lower: &Path, upper: &Path, work: &Path) -> String {
    format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    )
}

/// Step 0: moves the root off the initramfs onto a fresh tmpfs, as switch_root does (without
/// deleting anything: the agent's binary stays reachable through /proc/self/exe). pivot_root(2)
/// refuses to move a root that has no parent mount, which the initramfs is; a tmpfs moved
/// over it has one, so containers can pivot_root away from the agent's root.
pub fn enter_tmpfs_root() -> Result<(), MountError> {
    let target = Path::new(NEW_ROOT);
    Mount::new("tmpfs", target, "tmpfs")
        .flags(MsFlags::empty())
        .data("mode=0755")
        .mount()?;
    let step = |source| MountError::Mount {
        fstype: "move",
        path: target.to_owned(),
        source,
    };
    nix::unistd::chdir(target).map_err(step)?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>).map_err(step)?;
    nix::unistd::chroot(".").map_err(step)?;
    nix::unistd::chdir("/").map_err(step)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn the_shared_directory_is_asked_for_by_a_whole_parameter() {
        assert!(has_param("console=ttyS0 microvm.shared quiet", SHARED_PARAM));
        assert!(!has_param("console=ttyS0 microvm.shared_not quiet", SHARED_PARAM));
        assert!(!has_param("", SHARED_PARAM));
        assert_eq!(param_value("a microvm.rootfs=3 b", ROOTFS_PARAM), Some("3"));
        assert_eq!(param_value("a microvm.rootfsx=3 microvm.rootfs b", ROOTFS_PARAM), None);
    }

    #[test]
    fn pseudo_filesystems_mount_parents_first() {
        let targets: Vec<_> = pseudo_filesystems().into_iter().map(|m| m.target).collect();
        let expected = [
            "/proc",
            "/sys",
            "/sys/fs/cgroup",
            "/dev",
            "/dev/pts",
            "/dev/shm",
            "/run",
        ];
        assert_eq!(targets, expected.map(PathBuf::from));
        let devpts = &pseudo_filesystems()[4];
        let data = devpts.data.as_deref().unwrap();
        assert!(data.contains("newinstance") && data.contains("ptmxmode=0666"));
    }

    #[test]
    fn overlay_options_name_the_three_dirs() {
        let rw = Path::new(ROOTFS_RW);
        assert_eq!(
            overlay_options(Path::new(ROOTFS_LOWER), &rw.join("upper"), &rw.join("work")),
            "lowerdir=/rootfs-ro,upperdir=/rootfs-rw/upper,workdir=/rootfs-rw/work"
        );
    }

    #[test]
    fn errors_name_the_mount() {
        let error = MountError::Mount {
            fstype: "proc",
            path: "/rootfs/proc".into(),
            source: Errno::EPERM,
        };
        assert_eq!(
            error.to_string(),
            "mount proc on /rootfs/proc: EPERM: Operation not permitted"
        );
    }
}
