//! Bind mounts from the host, which a VM cannot see: a small regular file is copied into the
//! guest (podman and docker bind /etc/hosts, /etc/hostname, /etc/resolv.conf and
//! /run/.containerenv this way); an empty tmpfs directory (podman's /dev/shm) becomes a fresh
//! tmpfs in the guest, as Kata does; anything else is refused by name. A copy is the
//! container's own: its writes stay in the guest. Sharing directories needs virtio-fs, which
//! comes later.

use std::path::PathBuf;

use oci_spec::runtime::Spec;
use protocol::{GuestFile, GUEST_FILES_DIR};

/// Largest file copied in place of a bind mount.
pub const MAX_COPY: u64 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("mount {destination}: bind mount of {host} from the host: {reason} (only regular files up to {} KiB are copied into the VM; sharing directories is not supported yet)", MAX_COPY / 1024)]
    Refused {
        destination: PathBuf,
        host: PathBuf,
        reason: String,
    },
}

/// Replaces each bind mount's host source by a copy in the guest; returns the copies.
pub fn copy_into_guest(spec: &mut Spec) -> Result<Vec<GuestFile>, BindError> {
    let mut files = Vec::new();
    let Some(mounts) = spec.mounts().clone() else { return Ok(files) };
    let mut rewritten = Vec::with_capacity(mounts.len());
    for mut mount in mounts {
        let bind = mount.typ().as_deref() == Some("bind")
            || mount
                .options()
                .as_ref()
                .is_some_and(|o| o.iter().any(|o| o == "bind" || o == "rbind"));
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
                let kept = mount.options().clone().unwrap_or_default().into_iter();
                let mut options: Vec<String> = kept.filter(|o| !matches!(o.as_str(), "bind" | "rbind")).collect();
                options.push("mode=1777".into());
                mount.set_options(Some(options));
                rewritten.push(mount);
                continue;
            }
            if !meta.is_file() {
                return Err(refuse("not a regular file".into()));
            }
            if meta.len() > MAX_COPY {
                return Err(refuse(format!("{} bytes", meta.len())));
            }
            let contents = std::fs::read(&source).map_err(|e| refuse(e.to_string()))?;
            let path = format!("{GUEST_FILES_DIR}/{}", files.len());
            mount.set_source(Some(PathBuf::from(&path)));
            files.push(GuestFile { path, contents });
        }
        rewritten.push(mount);
    }
    spec.set_mounts(Some(rewritten));
    Ok(files)
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
    fn small_files_are_copied_and_the_rest_refused_by_name() {
        let dir = std::env::temp_dir().join(format!("microvm-binds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let hosts = dir.join("hosts");
        std::fs::write(&hosts, b"127.0.0.1 localhost\n").unwrap();
        let proc_mount = MountBuilder::default().destination("/proc").typ("proc").source("proc").build().unwrap();
        let mut spec = spec_with(vec![proc_mount.clone(), bind(&hosts, "/etc/hosts")]);
        let files = copy_into_guest(&mut spec).unwrap();
        assert_eq!(files, [GuestFile { path: format!("{GUEST_FILES_DIR}/0"), contents: b"127.0.0.1 localhost\n".to_vec() }]);
        let mounts = spec.mounts().clone().unwrap();
        assert_eq!(mounts[0], proc_mount);
        assert_eq!(mounts[1].source().as_deref(), Some(std::path::Path::new("/run/microvm-files/0")));

        // An empty tmpfs directory (podman's /dev/shm) becomes a tmpfs of the guest's own.
        let shm = std::path::Path::new("/dev/shm").join(format!("microvm-binds-{}", std::process::id()));
        std::fs::create_dir_all(&shm).unwrap();
        let mut spec = spec_with(vec![bind(&shm, "/dev/shm")]);
        assert!(copy_into_guest(&mut spec).unwrap().is_empty());
        let m = &spec.mounts().clone().unwrap()[0];
        assert_eq!((m.typ().as_deref(), m.source().as_deref()), (Some("tmpfs"), Some(std::path::Path::new("tmpfs"))));
        assert_eq!(m.options().clone().unwrap(), ["rw", "mode=1777"]);
        std::fs::remove_dir(&shm).unwrap();

        let err = copy_into_guest(&mut spec_with(vec![bind(&dir, "/data")])).unwrap_err();
        assert!(err.to_string().starts_with(&format!("mount /data: bind mount of {} from the host: not a regular file", dir.display())), "{err}");
        std::fs::write(&hosts, vec![b'x'; MAX_COPY as usize + 1]).unwrap();
        let err = copy_into_guest(&mut spec_with(vec![bind(&hosts, "/etc/hosts")])).unwrap_err();
        assert!(err.to_string().contains("65537 bytes"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
