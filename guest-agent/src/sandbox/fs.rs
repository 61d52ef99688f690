//! The container's filesystem view, built in its own mount namespace (runc's order):
//! 1. every mount private, so nothing propagates back to the agent;
//! 2. the root (the agent's [`ROOTFS`](crate::mounts::ROOTFS)) bound onto itself;
//! 3. `mounts` from the spec, in order, each destination resolved inside the root;
//! 4. a minimal /dev when /dev is a fresh tmpfs: null, zero, full, random, urandom, tty, the
//!    spec's devices, and the usual links; the process's working directory made if it is
//!    missing (mode 0755, root's, as runc and docker make it);
//! 5. `pivot_root` into the root, the old root detached;
//! 6. (after the sysctls: [`protect`]) masked paths (empty files or read-only tmpfs over
//!    them) and read-only paths;
//! 7. the root remounted read-only when `root.readonly` says so.
//!
//! `pivot_root` needs the current root to be a mount with a parent; the agent moved itself off
//! the initramfs onto a tmpfs at boot for that reason ([`crate::mounts::enter_tmpfs_root`]).
//!
//! A spec without a mount namespace (runc allows one) shares the agent's: step 1 is skipped
//! (the agent's mounts keep their propagation), the mounts of step 3 are made there, and step
//! 5 is a `chroot`, as runc does, since `pivot_root` would move the agent's own root too. The
//! host refuses such a spec if it has masked or read-only paths (step 6).

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType, LinuxNamespaceType, Mount, Spec};

use super::fail::{At, Failure};

/// Symbolic links followed while resolving one path, as the kernel's limit.
const MAX_SYMLINKS: usize = 40;

/// Devices every container gets when /dev is a tmpfs: (name, major, minor), all mode 0666.
const DEFAULT_DEVICES: [(&str, u64, u64); 6] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// Links in /dev: (link, target).
const DEFAULT_LINKS: [(&str, &str); 6] = [
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("ptmx", "pts/ptmx"),
    ("core", "/proc/kcore"),
];

/// Steps 1 to 5 for `spec`, with `root` as the container's root directory.
pub fn build(spec: &Spec, root: &Path) -> Result<(), Failure> {
    let linux = spec.linux().clone().unwrap_or_default();
    let own_namespace = super::has_namespace(spec, LinuxNamespaceType::Mount);
    // In a user namespace: the container's cgroup, bound where cgroup2 cannot be mounted.
    let userns = super::has_namespace(spec, LinuxNamespaceType::User).then(|| super::cgroup::path_of(spec));
    if own_namespace {
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .at(|| "make every mount private")?;
    }
    mount(
        Some(root),
        root,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .at(|| format!("bind {} onto itself", root.display()))?;

    let mut fresh_dev = false;
    for m in spec.mounts().as_deref().unwrap_or_default() {
        mount_one(root, m, userns.as_deref())?;
        fresh_dev |= m.destination() == Path::new("/dev") && m.typ().as_deref() == Some("tmpfs");
    }
    if fresh_dev {
        populate_dev(
            &root.join("dev"),
            linux.devices().as_deref().unwrap_or_default(),
            userns.is_some(),
        )?;
    }
    if let Some(process) = spec.process() {
        let step = || format!("make the working directory {}", process.cwd().display());
        let cwd = resolve_in_root(root, process.cwd()).map_err(|f| Failure::new(step(), f.message))?;
        if !cwd.exists() {
            std::fs::DirBuilder::new().recursive(true).mode(0o755).create(&cwd).at(step)?;
        }
    }

    if own_namespace {
        pivot_root(root)
    } else {
        enter_by_chroot(root)
    }
}

/// Steps 6 and 7, after the sysctls are written (runc's order: /proc/sys is read-only after).
pub fn protect(spec: &Spec) -> Result<(), Failure> {
    let linux = spec.linux().clone().unwrap_or_default();
    for path in linux.masked_paths().as_deref().unwrap_or_default() {
        mask(Path::new(path))?;
    }
    for path in linux.readonly_paths().as_deref().unwrap_or_default() {
        make_readonly(Path::new(path))?;
    }
    if spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false)
    {
        let mut flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY;
        if super::has_namespace(spec, LinuxNamespaceType::User) {
            flags |= locked_flags(Path::new("/"));
        }
        mount(None::<&str>, "/", None::<&str>, flags, None::<&str>).at(|| "remount / read-only")?;
    }
    Ok(())
}

/// Mount flags and data from OCI mount options, as mount(8) reads them.
#[derive(Debug, PartialEq, Eq)]
pub struct Options {
    pub flags: MsFlags,
    /// Flags to clear (`rw` after `ro`, `suid`, ...).
    pub cleared: MsFlags,
    pub propagation: MsFlags,
    pub data: Vec<String>,
}

impl Options {
    pub fn parse(options: &[String]) -> Self {
        let mut parsed = Options {
            flags: MsFlags::empty(),
            cleared: MsFlags::empty(),
            propagation: MsFlags::empty(),
            data: Vec::new(),
        };
        for option in options {
            let (set, clear) = match option.as_str() {
                "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
                "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
                "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
                "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
                "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
                "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
                "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
                "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
                "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
                "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
                "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty()),
                "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
                "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME),
                "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
                "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME),
                "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
                "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME),
                "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
                "nostrictatime" => (MsFlags::empty(), MsFlags::MS_STRICTATIME),
                "bind" => (MsFlags::MS_BIND, MsFlags::empty()),
                "rbind" => (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty()),
                "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave"
                | "unbindable" | "runbindable" => {
                    parsed.propagation |= propagation(option);
                    continue;
                }
                // Hints for other runtimes (tmpcopyup, x-*), and defaults: nothing to do.
                "tmpcopyup" | "notmpcopyup" | "defaults" => continue,
                other if other.starts_with("x-") => continue,
                other => {
                    parsed.data.push(other.to_owned());
                    continue;
                }
            };
            parsed.flags = (parsed.flags | set) - clear;
            parsed.cleared = (parsed.cleared | clear) - set;
        }
        parsed
    }
}

fn propagation(option: &str) -> MsFlags {
    let kind = match option.trim_start_matches('r') {
        "private" => MsFlags::MS_PRIVATE,
        "shared" => MsFlags::MS_SHARED,
        "slave" => MsFlags::MS_SLAVE,
        _ => MsFlags::MS_UNBINDABLE,
    };
    if option.starts_with('r') {
        kind | MsFlags::MS_REC
    } else {
        kind
    }
}

/// The flags of the mount at `path` that a user namespace locks (it inherited the mount from
/// the guest's namespace): a remount there must keep them or fail with EPERM. runc reads them
/// the same way.
fn locked_flags(path: &Path) -> MsFlags {
    use nix::sys::statvfs::{statvfs, FsFlags};
    let Ok(stat) = statvfs(path) else { return MsFlags::empty() };
    [
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ]
    .into_iter()
    .filter(|(st, _)| stat.flags().contains(*st))
    .fold(MsFlags::empty(), |all, (_, ms)| all | ms)
}

/// One entry of `mounts`, under `root`. In a user namespace (`userns`: the container's
/// cgroup directory) what it refuses is bound instead, as runc does: sysfs can be mounted only
/// by the owner of the network namespace, which the container shares with the guest, so the
/// guest's /sys is bound; that brings the guest's cgroup2 mount along, and cgroup2 cannot be
/// mounted on itself (EBUSY), so the container's own cgroup directory is bound there.
fn mount_one(root: &Path, m: &Mount, userns: Option<&Path>) -> Result<(), Failure> {
    let destination = m.destination();
    let options = Options::parse(m.options().as_deref().unwrap_or_default());
    let bind = options.flags.contains(MsFlags::MS_BIND) || m.typ().as_deref() == Some("bind");
    // The guest has cgroup v2 only; "cgroup" in a bundle means the container's cgroup.
    let fstype = match m.typ().as_deref() {
        Some("cgroup") => "cgroup2",
        Some(other) => other,
        None if bind => "none",
        None => {
            return Err(Failure::new(
                format!("mount {}", destination.display()),
                "no type",
            ))
        }
    };
    let source = m.source().clone().unwrap_or_else(|| PathBuf::from(fstype));
    let step = || format!("mount {fstype} on {}", destination.display());
    let target = resolve_in_root(root, destination).map_err(|f| Failure::new(step(), f.message))?;
    let source_is_file = bind && source.metadata().is_ok_and(|meta| !meta.is_dir());
    create_mount_point(&target, source_is_file).at(step)?;

    let flags = if bind {
        MsFlags::MS_BIND | (options.flags & MsFlags::MS_REC)
    } else {
        options.flags
    };
    let data = options.data.join(",");
    let data = (!data.is_empty()).then_some(data.as_str());
    use nix::errno::Errno::{EBUSY, EPERM};
    let instead = match (mount(Some(&source), &target, Some(fstype), flags, data), userns) {
        (Err(EPERM), Some(_)) if fstype == "sysfs" => Some(Path::new("/sys")),
        (Err(EPERM | EBUSY), Some(cgroup)) if fstype == "cgroup2" => Some(cgroup),
        (other, _) => other.map(|()| None).at(step)?,
    };
    if let Some(instead) = instead {
        let flags = MsFlags::MS_BIND | MsFlags::MS_REC;
        mount(Some(instead), &target, None::<&str>, flags, None::<&str>)
            .at(|| format!("bind the guest's {} on {} (a user namespace cannot mount {fstype})", instead.display(), destination.display()))?;
    }
    // A bind takes its other flags (ro, nosuid, ...) only from a remount.
    let remount = options.flags - (MsFlags::MS_BIND | MsFlags::MS_REC);
    if (bind || instead.is_some()) && !remount.is_empty() {
        let mut flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | remount;
        if userns.is_some() {
            flags |= locked_flags(&target);
        }
        mount(None::<&str>, &target, None::<&str>, flags, None::<&str>).at(step)?;
    }
    if !options.propagation.is_empty() {
        mount(
            None::<&str>,
            &target,
            None::<&str>,
            options.propagation,
            None::<&str>,
        )
        .at(step)?;
    }
    Ok(())
}

fn create_mount_point(target: &Path, file: bool) -> std::io::Result<()> {
    if target.exists() {
        return Ok(());
    }
    if file {
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::File::create(target).map(drop)
    } else {
        std::fs::create_dir_all(target)
    }
}

/// `path` (absolute, as in the container) resolved under `root` the way the container would
/// see it: symbolic links are followed inside `root` (an absolute link starts again at `root`,
/// `..` stops at it), so an image cannot point a mount outside itself. Components that do not
/// exist yet are kept as they are.
pub fn resolve_in_root(root: &Path, path: &Path) -> Result<PathBuf, Failure> {
    let mut resolved = PathBuf::new(); // relative to root
    let mut pending: Vec<PathBuf> = path
        .components()
        .rev()
        .map(|c| PathBuf::from(c.as_os_str()))
        .collect();
    let mut links = 0;
    while let Some(component) = pending.pop() {
        match component.components().next() {
            None | Some(Component::RootDir | Component::CurDir) => continue,
            Some(Component::ParentDir) => {
                resolved.pop();
                continue;
            }
            _ => {}
        }
        let candidate = resolved.join(&component);
        match std::fs::read_link(root.join(&candidate)) {
            Ok(target) => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(Failure::new(
                        format!("resolve {}", path.display()),
                        "too many symbolic links",
                    ));
                }
                if target.is_absolute() {
                    resolved = PathBuf::new();
                }
                pending.extend(
                    target
                        .components()
                        .rev()
                        .map(|c| PathBuf::from(c.as_os_str())),
                );
            }
            Err(_) => resolved = candidate,
        }
    }
    Ok(root.join(resolved))
}

/// Device nodes and links in a fresh /dev. In a user namespace, where mknod is not allowed,
/// each node is the guest's own of that path bound in its place, as runc binds the host's.
fn populate_dev(dev: &Path, devices: &[LinuxDevice], userns: bool) -> Result<(), Failure> {
    for (name, major, minor) in DEFAULT_DEVICES {
        let guest = Path::new("/dev").join(name);
        let node = Node { kind: SFlag::S_IFCHR, major, minor, mode: 0o666 };
        make_device(&dev.join(name), &node, userns.then_some(guest.as_path()))?;
    }
    for device in devices {
        let kind = match device.typ() {
            LinuxDeviceType::B => SFlag::S_IFBLK,
            LinuxDeviceType::P => SFlag::S_IFIFO,
            _ => SFlag::S_IFCHR,
        };
        let path = resolve_in_root(
            dev,
            device.path().strip_prefix("/dev").unwrap_or(device.path()),
        )?;
        let major = u64::try_from(device.major()).unwrap_or(0);
        let minor = u64::try_from(device.minor()).unwrap_or(0);
        let node = Node { kind, major, minor, mode: device.file_mode().unwrap_or(0o666) };
        if make_device(&path, &node, userns.then_some(device.path().as_path()))? == Made::Bound {
            continue;
        }
        if let (Some(uid), Some(gid)) = (device.uid(), device.gid()) {
            std::os::unix::fs::chown(&path, Some(uid), Some(gid))
                .at(|| format!("chown {}", path.display()))?;
        }
    }
    for (link, target) in DEFAULT_LINKS {
        let path = dev.join(link);
        if path.symlink_metadata().is_err() {
            std::os::unix::fs::symlink(target, &path)
                .at(|| format!("link {} to {target}", path.display()))?;
        }
    }
    Ok(())
}

/// A device node to make.
struct Node {
    kind: SFlag,
    major: u64,
    minor: u64,
    mode: u32,
}

/// How a device node came to be.
#[derive(Debug, PartialEq, Eq)]
enum Made {
    Node,
    /// The guest's node bound over an empty file: its mode and owner are the guest's.
    Bound,
}

/// `node` at `path`; when mknod is not allowed (a user namespace) and `guest` names the
/// guest's own node of that path, that node bound there instead.
fn make_device(path: &Path, node: &Node, guest: Option<&Path>) -> Result<Made, Failure> {
    let step = || format!("create device {}", path.display());
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).at(step)?;
    }
    match (mknod(path, node.kind, Mode::from_bits_truncate(node.mode), makedev(node.major, node.minor)), guest) {
        (Ok(()) | Err(nix::errno::Errno::EEXIST), _) => {}
        (Err(nix::errno::Errno::EPERM), Some(guest)) => {
            std::fs::File::create(path).at(step)?;
            mount(Some(guest), path, None::<&str>, MsFlags::MS_BIND, None::<&str>)
                .at(|| format!("bind the guest's {} on {}", guest.display(), path.display()))?;
            return Ok(Made::Bound);
        }
        (Err(errno), _) => return Err(Failure::errno(step(), errno)),
    }
    // mknod applies the umask; the spec's mode is exact.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(node.mode & 0o7777)).at(step)?;
    Ok(Made::Node)
}

/// `pivot_root(root)`, the old root detached, cwd at the new `/`.
fn pivot_root(root: &Path) -> Result<(), Failure> {
    let step = || format!("pivot_root into {}", root.display());
    nix::unistd::chdir(root).at(step)?;
    // pivot_root(".", "."): the old root ends up on top of the new one, then is detached.
    nix::unistd::pivot_root(".", ".").at(step)?;
    umount2(".", MntFlags::MNT_DETACH).at(step)?;
    nix::unistd::chdir("/").at(step)
}

/// `chroot(root)`, cwd at the new `/`: for a container in the agent's mount namespace.
pub fn enter_by_chroot(root: &Path) -> Result<(), Failure> {
    let step = || format!("chroot into {}", root.display());
    nix::unistd::chdir(root).at(step)?;
    nix::unistd::chroot(".").at(step)?;
    nix::unistd::chdir("/").at(step)
}

/// Hides `path`: /dev/null over a file, an empty read-only tmpfs over a directory. A path that
/// does not exist needs no hiding.
fn mask(path: &Path) -> Result<(), Failure> {
    let step = || format!("mask {}", path.display());
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(());
    };
    if meta.is_dir() {
        mount(
            Some("tmpfs"),
            path,
            Some("tmpfs"),
            MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .at(step)
    } else {
        mount(
            Some("/dev/null"),
            path,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .at(step)
    }
}

/// Makes `path` read-only (if it exists): bound onto itself, then remounted read-only.
fn make_readonly(path: &Path) -> Result<(), Failure> {
    let step = || format!("make {} read-only", path.display());
    if std::fs::symlink_metadata(path).is_err() {
        return Ok(());
    }
    mount(
        Some(path),
        path,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .at(step)?;
    let flags = MsFlags::MS_REMOUNT
        | MsFlags::MS_BIND
        | MsFlags::MS_RDONLY
        | MsFlags::MS_NOSUID
        | MsFlags::MS_NODEV
        | MsFlags::MS_NOEXEC;
    mount(None::<&str>, path, None::<&str>, flags, None::<&str>).at(step)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    fn options(list: &[&str]) -> Options {
        Options::parse(&list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
    }

    #[test]
    fn options_split_into_flags_propagation_and_data() {
        let parsed = options(&[
            "nosuid",
            "strictatime",
            "mode=755",
            "size=65536k",
            "rprivate",
        ]);
        assert_eq!(parsed.flags, MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME);
        assert_eq!(parsed.propagation, MsFlags::MS_PRIVATE | MsFlags::MS_REC);
        assert_eq!(parsed.data, ["mode=755", "size=65536k"]);
        let parsed = options(&["ro", "rw", "rbind", "x-foo", "tmpcopyup"]);
        assert_eq!(parsed.flags, MsFlags::MS_BIND | MsFlags::MS_REC);
        assert!(parsed.data.is_empty());
    }

    #[test]
    fn paths_resolve_inside_the_root_even_through_hostile_links() {
        let root = std::env::temp_dir().join(format!("microvm-resolve-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("real/dir")).unwrap();
        std::os::unix::fs::symlink("/real", root.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../../../etc", root.join("up")).unwrap();
        std::os::unix::fs::symlink("loop", root.join("loop")).unwrap();
        let r = |p: &str| resolve_in_root(&root, Path::new(p));
        assert_eq!(r("/abs/dir").unwrap(), root.join("real/dir"));
        assert_eq!(r("/up/passwd").unwrap(), root.join("etc/passwd"));
        assert_eq!(r("/../../x").unwrap(), root.join("x"));
        assert_eq!(r("/new/path").unwrap(), root.join("new/path"));
        assert!(r("/loop")
            .unwrap_err()
            .message
            .contains("too many symbolic links"));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
