//! Bind mounts from the host, which a VM cannot see:
//! - a directory, or a regular file too large to copy, is shared over virtio-fs
//!   ([`crate::volumes`]): the mount's source becomes its place under
//!   [`GUEST_SHARED_DIR`] in the guest, and its writes reach the host;
//! - a small regular file is copied into the guest (podman and docker bind /etc/hosts,
//!   /etc/hostname, /etc/resolv.conf and /run/.containerenv this way: copying them spares
//!   most containers a virtiofsd). A read-write copy's changes are written back to the host
//!   file when the container's first process exits ([`write_back`]): the agent reports each
//!   copy whose contents changed. Unlike runc's bind mount, the host sees them then, not as
//!   they are made;
//! - an empty tmpfs directory (podman's /dev/shm) becomes a fresh tmpfs in the guest, as Kata
//!   does;
//! - anything else (a socket, a device, a FIFO) is refused by name.

use std::fs::File;
use std::path::PathBuf;

use oci_spec::runtime::Spec;
use protocol::{GuestFile, GUEST_FILES_DIR, GUEST_SHARED_DIR};

use crate::volumes::Share;

/// Largest file copied in place of a bind mount; larger ones are shared.
pub const MAX_COPY: u64 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("mount {destination}: bind mount of {host} from the host: {reason}")]
    Refused {
        destination: PathBuf,
        host: PathBuf,
        reason: String,
    },
}

/// What the host gives the guest for the spec's bind mounts.
#[derive(Debug, Default)]
pub struct HostBinds {
    /// Copied into the guest, under [`GUEST_FILES_DIR`].
    pub files: Vec<GuestFile>,
    /// Shared over virtio-fs, at `GUEST_SHARED_DIR/INDEX`.
    pub shares: Vec<Share>,
    /// The read-write copies among `files`: where each is written back.
    pub write_back: Vec<WriteBack>,
}

/// A read-write copied file: its path in the guest, its source on the host, and the source
/// opened for writing now, while the host's files can be seen: at the container's end this
/// process is in its jail, which holds none of them.
#[derive(Debug)]
pub struct WriteBack {
    pub guest: String,
    pub host: PathBuf,
    pub file: std::io::Result<File>,
}

impl WriteBack {
    fn open(guest: String, host: PathBuf) -> Self {
        let file = std::fs::OpenOptions::new().write(true).open(&host);
        WriteBack { guest, host, file }
    }
}

/// Writes the container's changes to read-write copied files back to their host sources, in
/// place (a bind-mounted file keeps its inode: pwrite, then ftruncate); `changed` is what the
/// agent reported (path in the guest, contents or `None` when too large to carry). Returns a
/// warning for each change that could not be written back. A read-only copy is never written.
pub fn write_back(targets: &[WriteBack], changed: Vec<(String, Option<Vec<u8>>)>) -> Vec<String> {
    use std::os::unix::fs::FileExt;
    let mut warnings = Vec::new();
    for (guest, contents) in changed {
        let Some(target) = targets.iter().find(|t| t.guest == guest) else { continue };
        let failed = |why: String| format!("{}: the container's changes were not written back: {why}", target.host.display());
        let written = match (contents, &target.file) {
            (None, _) => Err(format!("the file grew past {} KiB", protocol::MAX_FILE_BACK / 1024)),
            (Some(_), Err(e)) => Err(format!("open: {e}")),
            (Some(contents), Ok(file)) => file
                .write_all_at(&contents, 0)
                .and_then(|()| file.set_len(contents.len() as u64))
                .map_err(|e| e.to_string()),
        };
        if let Err(why) = written {
            warnings.push(failed(why));
        }
    }
    warnings
}

/// Replaces each bind mount's host source by its place in the guest; returns what to copy and
/// what to share.
pub fn from_host(spec: &mut Spec) -> Result<HostBinds, BindError> {
    let mut binds = HostBinds::default();
    let Some(mounts) = spec.mounts().clone() else { return Ok(binds) };
    let mut rewritten = Vec::with_capacity(mounts.len());
    for mut mount in mounts {
        let options = mount.options().clone().unwrap_or_default();
        let bind = mount.typ().as_deref() == Some("bind") || options.iter().any(|o| o == "bind" || o == "rbind");
        if let (true, Some(source)) = (bind, mount.source().clone()) {
            let refuse = |reason: String| BindError::Refused {
                destination: mount.destination().clone(),
                host: source.clone(),
                reason,
            };
            let meta = std::fs::metadata(&source).map_err(|e| refuse(e.to_string()))?;
            if meta.is_dir() && empty_tmpfs(&source) {
                mount.set_typ(Some("tmpfs".into()));
                mount.set_source(Some(PathBuf::from("tmpfs")));
                let mut options: Vec<String> = options.into_iter().filter(|o| !matches!(o.as_str(), "bind" | "rbind")).collect();
                options.push("mode=1777".into());
                mount.set_options(Some(options));
                rewritten.push(mount);
                continue;
            }
            // The last of `ro` and `rw` decides, as for mount(8).
            let read_only = options.iter().rev().find(|o| matches!(o.as_str(), "ro" | "rw")).is_some_and(|o| o == "ro");
            if meta.is_file() && meta.len() <= MAX_COPY {
                let contents = std::fs::read(&source).map_err(|e| refuse(e.to_string()))?;
                let path = format!("{GUEST_FILES_DIR}/{}", binds.files.len());
                mount.set_source(Some(PathBuf::from(&path)));
                if !read_only {
                    binds.write_back.push(WriteBack::open(path.clone(), source.clone()));
                }
                binds.files.push(GuestFile { path, contents });
            } else if meta.is_dir() || meta.is_file() {
                mount.set_source(Some(PathBuf::from(format!("{GUEST_SHARED_DIR}/{}", binds.shares.len()))));
                binds.shares.push(Share { host: source.clone(), read_only });
            } else {
                return Err(refuse(format!("{}: only directories and regular files can be shared", kind(&meta))));
            }
        }
        rewritten.push(mount);
    }
    spec.set_mounts(Some(rewritten));
    Ok(binds)
}

/// What a file that is neither a directory nor a regular file is, for messages.
fn kind(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_socket() {
        "a socket"
    } else if t.is_block_device() || t.is_char_device() {
        "a device"
    } else if t.is_fifo() {
        "a FIFO"
    } else {
        "not a directory or regular file"
    }
}

/// Whether `dir` is an empty directory on a tmpfs: nothing to share, so a guest tmpfs is the same.
fn empty_tmpfs(dir: &std::path::Path) -> bool {
    let tmpfs = nix::sys::statfs::statfs(dir).is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC);
    tmpfs && std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_none())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use oci_spec::runtime::MountBuilder;

    fn spec_with(mounts: Vec<oci_spec::runtime::Mount>) -> Spec {
        let mut spec = Spec::default();
        spec.set_mounts(Some(mounts));
        spec
    }

    fn bind(source: &std::path::Path, destination: &str) -> oci_spec::runtime::Mount {
        MountBuilder::default()
            .destination(destination)
            .typ("bind")
            .source(source)
            .options(vec!["rbind".to_string(), "rw".to_string()])
            .build()
            .unwrap()
    }

    #[test]
    fn small_files_are_copied_directories_and_large_files_shared_the_rest_refused_by_name() {
        let dir = std::env::temp_dir().join(format!("microvm-binds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let hosts = dir.join("hosts");
        std::fs::write(&hosts, b"127.0.0.1 localhost\n").unwrap();
        let proc_mount = MountBuilder::default().destination("/proc").typ("proc").source("proc").build().unwrap();
        let mut spec = spec_with(vec![proc_mount.clone(), bind(&hosts, "/etc/hosts")]);
        let binds = from_host(&mut spec).unwrap();
        assert_eq!(binds.files, [GuestFile { path: format!("{GUEST_FILES_DIR}/0"), contents: b"127.0.0.1 localhost\n".to_vec() }]);
        assert_eq!(binds.write_back.len(), 1);
        assert_eq!((binds.write_back[0].guest.as_str(), &binds.write_back[0].host), ("/run/microvm-files/0", &hosts));
        let mounts = spec.mounts().clone().unwrap();
        assert_eq!(mounts[0], proc_mount);
        assert_eq!(mounts[1].source().as_deref(), Some(std::path::Path::new("/run/microvm-files/0")));

        // An empty tmpfs directory (podman's /dev/shm) becomes a tmpfs of the guest's own.
        let shm = std::path::Path::new("/dev/shm").join(format!("microvm-binds-{}", std::process::id()));
        std::fs::create_dir_all(&shm).unwrap();
        let mut spec = spec_with(vec![bind(&shm, "/dev/shm")]);
        let binds = from_host(&mut spec).unwrap();
        assert!(binds.files.is_empty() && binds.shares.is_empty());
        let m = &spec.mounts().clone().unwrap()[0];
        assert_eq!((m.typ().as_deref(), m.source().as_deref()), (Some("tmpfs"), Some(std::path::Path::new("tmpfs"))));
        assert_eq!(m.options().clone().unwrap(), ["rw", "mode=1777"]);
        std::fs::remove_dir(&shm).unwrap();

        // A directory and a file too large to copy are shared, read-only as the options say.
        let big = dir.join("big");
        std::fs::write(&big, vec![b'x'; MAX_COPY as usize + 1]).unwrap();
        let mut ro = bind(&big, "/big");
        ro.set_options(Some(vec!["rbind".into(), "rw".into(), "ro".into()]));
        let mut spec = spec_with(vec![bind(&dir, "/data"), ro]);
        let binds = from_host(&mut spec).unwrap();
        assert!(binds.files.is_empty());
        assert_eq!(binds.shares, [Share { host: dir.clone(), read_only: false }, Share { host: big, read_only: true }]);
        let mounts = spec.mounts().clone().unwrap();
        assert_eq!(mounts[0].source().as_deref(), Some(std::path::Path::new("/run/microvm-shared/0")));
        assert_eq!(mounts[1].source().as_deref(), Some(std::path::Path::new("/run/microvm-shared/1")));

        // A socket is refused, naming the mount; so is a missing source.
        let sock = dir.join("sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let err = from_host(&mut spec_with(vec![bind(&sock, "/s")])).unwrap_err().to_string();
        assert!(err.starts_with(&format!("mount /s: bind mount of {} from the host: a socket:", sock.display())), "{err}");
        let err = from_host(&mut spec_with(vec![bind(&dir.join("gone"), "/g")])).unwrap_err().to_string();
        assert!(err.starts_with("mount /g: bind mount of ") && err.contains("No such file"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn read_write_copies_are_written_back_and_read_only_ones_never() {
        let dir = std::env::temp_dir().join(format!("microvm-binds-back-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (rw, ro) = (dir.join("rw"), dir.join("ro"));
        std::fs::write(&rw, "before\n").unwrap();
        std::fs::write(&ro, "before\n").unwrap();
        let mut ro_bind = bind(&ro, "/ro");
        ro_bind.set_options(Some(vec!["rbind".into(), "ro".into()]));
        let binds = from_host(&mut spec_with(vec![bind(&rw, "/rw"), ro_bind])).unwrap();
        assert_eq!(binds.files.len(), 2);
        assert_eq!(binds.write_back.len(), 1);
        assert_eq!((binds.write_back[0].guest.as_str(), &binds.write_back[0].host), ("/run/microvm-files/0", &rw));
        // Opened now, before any jail hides the host's files.
        assert!(binds.write_back[0].file.is_ok());

        let changed = vec![
            (format!("{GUEST_FILES_DIR}/0"), Some(b"after\n".to_vec())),
            (format!("{GUEST_FILES_DIR}/1"), Some(b"after\n".to_vec())),
        ];
        std::fs::write(&rw, "a longer line than the change\n").unwrap();
        assert!(write_back(&binds.write_back, changed).is_empty());
        assert_eq!(std::fs::read_to_string(&rw).unwrap(), "after\n");
        assert_eq!(std::fs::read_to_string(&ro).unwrap(), "before\n");

        let warnings = write_back(&binds.write_back, vec![(format!("{GUEST_FILES_DIR}/0"), None)]);
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].starts_with(&format!("{}: the container's changes were not written back: the file grew past", rw.display())));
        assert_eq!(std::fs::read_to_string(&rw).unwrap(), "after\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
