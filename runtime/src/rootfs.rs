//! Packing a root filesystem directory into a read-only image for the guest's virtio-blk disk.
//!
//! Format: EROFS, built by Debian's `mkfs.erofs` (erofs-utils). Measured on this project's
//! machines against `mkfs.ext4 -d`: the busybox tree packs in 12 ms vs 38 ms into a 1.9 MiB
//! image vs 18 MiB, a 1.4 GiB tree in 6.5 s vs 8.1 s; EROFS is read-only by design (the guest
//! writes to a tmpfs overlay), needs no free-space guess and no fsck.
//!
//! Cache: images live in `<cache>/rootfs/<key>.erofs`, where the key hashes every entry's
//! relative path, type, mode, owner, size, modification time and link target (what a build
//! tool's up-to-date check reads), plus the packer's flags. A second `run` of an unchanged
//! tree reuses the image without reading file contents. An image is written to a temporary
//! name and renamed into place, so a killed pack leaves no half image under the final name.
//!
//! Bound: each use of an image sets its modification time to now, and after a pack the
//! least recently used images are removed until the images fit the cache's limit (the config
//! file's `cache_limit_mib`, 8 GiB by default); an image used within the last minute is never
//! removed (another `run` may be about to open it; a running VM holds its image open, so
//! removing the name does not disturb it). `microvm cache prune` does the same on demand.

use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// mkfs.erofs flags: fixed timestamps off (mtimes are kept), quiet.
const MKFS_FLAGS: &[&str] = &["--quiet"];
/// Guards against symlink loops and absurd trees while hashing.
const MAX_DEPTH: usize = 256;
/// An image used this recently is never pruned.
const IN_USE_GRACE: std::time::Duration = std::time::Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("rootfs {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("rootfs {0}: not a directory")]
    NotDirectory(PathBuf),
    #[error("rootfs {0}: deeper than {MAX_DEPTH} levels")]
    TooDeep(PathBuf),
    #[error("image cache {path}: {source}")]
    Cache { path: PathBuf, source: std::io::Error },
    #[error("mkfs.erofs not found: install erofs-utils")]
    NoPacker,
    #[error("mkfs.erofs {path}: {stderr}")]
    Pack { path: PathBuf, stderr: String },
}

/// A packed image and whether it came from the cache.
#[derive(Debug)]
pub struct Packed {
    pub image: PathBuf,
    pub cached: bool,
}

/// Packs `rootfs` (a directory) into an EROFS image under `cache_dir`, or finds it there.
pub fn pack(rootfs: &Path, cache_dir: &Path) -> Result<Packed, RootfsError> {
    let meta = fs::metadata(rootfs).map_err(|source| RootfsError::Read { path: rootfs.to_owned(), source })?;
    if !meta.is_dir() {
        return Err(RootfsError::NotDirectory(rootfs.to_owned()));
    }
    let key = tree_key(rootfs)?;
    let dir = cache_dir.join("rootfs");
    let image = dir.join(format!("{key}.erofs"));
    if image.is_file() {
        // Recently used, for the pruning's LRU order; a cache it cannot touch still serves.
        let _ = fs::File::options().append(true).open(&image).and_then(|f| f.set_modified(std::time::SystemTime::now()));
        return Ok(Packed { image, cached: true });
    }
    fs::create_dir_all(&dir).map_err(|source| RootfsError::Cache { path: dir.clone(), source })?;
    let tmp = dir.join(format!(".{key}.{}.tmp", std::process::id()));
    // Made here so that a cache that cannot be written is named as such (mkfs.erofs would
    // print its list of compressors last instead).
    fs::File::create(&tmp).map_err(|source| RootfsError::Cache { path: dir.clone(), source })?;
    let result = Command::new("mkfs.erofs").args(MKFS_FLAGS).arg(&tmp).arg(rootfs).output();
    let outcome = match result {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(RootfsError::NoPacker),
        Err(e) => Err(RootfsError::Pack { path: rootfs.to_owned(), stderr: e.to_string() }),
        Ok(out) if !out.status.success() => Err(RootfsError::Pack { path: rootfs.to_owned(), stderr: failure(&out) }),
        Ok(_) => fs::rename(&tmp, &image).map_err(|source| RootfsError::Cache { path: image.clone(), source }),
    };
    if outcome.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    outcome.map(|()| Packed { image, cached: false })
}

/// Why mkfs.erofs failed: its last line that says something, else how it ended (a packer
/// killed for memory, or out of space with `--quiet`, can say nothing at all).
fn failure(out: &std::process::Output) -> String {
    use std::os::unix::process::ExitStatusExt;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let said = stderr.split(['\n', '\r']).map(str::trim).rfind(|l| !l.is_empty());
    match (said, out.status.code(), out.status.signal()) {
        (Some(line), _, _) => line.to_string(),
        (None, _, Some(signal)) => format!("killed by signal {signal}, with no message (out of memory?)"),
        (None, code, _) => format!("exited with status {}, with no message (out of space?)", code.unwrap_or(-1)),
    }
}

/// What [`prune`] removed and what is left.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    pub removed: usize,
    pub freed: u64,
    pub kept: usize,
    pub size: u64,
}

/// Removes the least recently used images under `cache_dir` until the rest take at most
/// `limit` bytes, sparing any used within [`IN_USE_GRACE`] (see the module's comment).
pub fn prune(cache_dir: &Path, limit: u64) -> Result<Pruned, RootfsError> {
    let dir = cache_dir.join("rootfs");
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Pruned::default()),
        Err(source) => return Err(RootfsError::Cache { path: dir, source }),
    };
    let mut images: Vec<(std::time::SystemTime, u64, PathBuf)> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "erofs"))
        .filter_map(|p| {
            let meta = fs::metadata(&p).ok()?;
            Some((meta.modified().ok()?, meta.len(), p))
        })
        .collect();
    images.sort(); // oldest use first
    let mut pruned = Pruned { kept: images.len(), size: images.iter().map(|i| i.1).sum(), ..Pruned::default() };
    let now = std::time::SystemTime::now();
    for (used, len, path) in images {
        if pruned.size <= limit {
            break;
        }
        if now.duration_since(used).unwrap_or_default() < IN_USE_GRACE {
            continue;
        }
        match fs::remove_file(&path) {
            Ok(()) => {}
            // Another process pruned it first.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(RootfsError::Cache { path, source }),
        }
        pruned.removed += 1;
        pruned.freed += len;
        pruned.kept -= 1;
        pruned.size -= len;
    }
    Ok(pruned)
}

/// The cache key of a tree: sha256 over every entry's metadata, in sorted path order.
pub fn tree_key(root: &Path) -> Result<String, RootfsError> {
    let mut hasher = Sha256::new();
    hasher.update(b"erofs\0");
    for flag in MKFS_FLAGS {
        hasher.update(flag.as_bytes());
    }
    hash_dir(root, Path::new(""), 0, &mut hasher)?;
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

fn hash_dir(root: &Path, rel: &Path, depth: usize, hasher: &mut Sha256) -> Result<(), RootfsError> {
    let dir = root.join(rel);
    if depth > MAX_DEPTH {
        return Err(RootfsError::TooDeep(dir));
    }
    let read_err = |path: &Path| {
        let path = path.to_owned();
        move |source| RootfsError::Read { path, source }
    };
    let mut names: Vec<_> = fs::read_dir(&dir)
        .map_err(read_err(&dir))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(read_err(&dir))?;
    names.sort();
    for name in names {
        let rel_path = rel.join(&name);
        let path = root.join(&rel_path);
        let m = fs::symlink_metadata(&path).map_err(read_err(&path))?;
        let _ = write!(
            HashWriter(hasher),
            "{}\0{:o}\0{}:{}\0{}\0{}.{}\0",
            rel_path.display(),
            m.mode(),
            m.uid(),
            m.gid(),
            m.size(),
            m.mtime(),
            m.mtime_nsec()
        );
        if m.file_type().is_symlink() {
            let target = fs::read_link(&path).map_err(read_err(&path))?;
            hasher.update(target.as_os_str().as_encoded_bytes());
        } else if m.is_dir() {
            hash_dir(root, &rel_path, depth + 1, hasher)?;
        }
        hasher.update(b"\n");
    }
    Ok(())
}

/// Lets `write!` feed a hasher.
struct HashWriter<'a>(&'a mut Sha256);

impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("microvm-rootfs-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        p
    }

    #[test]
    fn a_packer_failure_always_says_something() {
        use std::os::unix::process::ExitStatusExt;
        let out = |raw: i32, stderr: &str| std::process::Output {
            status: std::process::ExitStatus::from_raw(raw),
            stdout: Vec::new(),
            stderr: stderr.as_bytes().to_vec(),
        };
        assert_eq!(failure(&out(1 << 8, "<E> erofs: No space left on device\n \n")), "<E> erofs: No space left on device");
        assert_eq!(failure(&out(1 << 8, "")), "exited with status 1, with no message (out of space?)");
        assert_eq!(failure(&out(9, "\n")), "killed by signal 9, with no message (out of memory?)");
    }

    #[test]
    fn key_changes_with_content_metadata_and_names_only() {
        let d = scratch("key");
        fs::create_dir(d.join("bin")).unwrap();
        fs::write(d.join("bin/a"), b"one").unwrap();
        std::os::unix::fs::symlink("a", d.join("bin/b")).unwrap();
        let k1 = tree_key(&d).unwrap();
        assert_eq!(k1, tree_key(&d).unwrap());
        fs::write(d.join("bin/a"), b"three").unwrap();
        let k2 = tree_key(&d).unwrap();
        assert_ne!(k1, k2, "size changed");
        fs::remove_file(d.join("bin/b")).unwrap();
        std::os::unix::fs::symlink("c", d.join("bin/b")).unwrap();
        assert_ne!(k2, tree_key(&d).unwrap(), "link target changed");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn packs_once_then_reuses_and_names_bad_input() {
        let d = scratch("pack");
        let tree = d.join("tree");
        fs::create_dir_all(tree.join("etc")).unwrap();
        fs::write(tree.join("etc/hostname"), b"guest\n").unwrap();
        let cache = d.join("cache");
        let first = pack(&tree, &cache).unwrap();
        assert!(!first.cached);
        let bytes = fs::read(&first.image).unwrap();
        assert_eq!(&bytes[1024..1028], &0xe0f5_e1e2u32.to_le_bytes(), "EROFS superblock magic");
        let second = pack(&tree, &cache).unwrap();
        assert!(second.cached);
        assert_eq!(first.image, second.image);
        let leftovers: Vec<_> = fs::read_dir(cache.join("rootfs")).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "only the image, no temporary files");

        let missing = pack(&d.join("nope"), &cache).unwrap_err();
        assert!(missing.to_string().starts_with(&format!("rootfs {}: ", d.join("nope").display())), "{missing}");
        let file = pack(&tree.join("etc/hostname"), &cache).unwrap_err();
        assert!(matches!(file, RootfsError::NotDirectory(_)), "{file}");
        fs::remove_dir_all(&d).unwrap();
    }

    /// An image last used `age` ago, of `len` bytes.
    fn image(cache: &Path, name: &str, len: usize, age: std::time::Duration) -> PathBuf {
        let path = cache.join("rootfs").join(format!("{name}.erofs"));
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, vec![0u8; len]).unwrap();
        let f = fs::File::options().append(true).open(&path).unwrap();
        f.set_modified(std::time::SystemTime::now() - age).unwrap();
        path
    }

    #[test]
    fn pruning_removes_the_least_recently_used_down_to_the_limit_and_spares_fresh_ones() {
        let d = scratch("prune");
        let hour = std::time::Duration::from_secs(3600);
        let oldest = image(&d, "a", 100, hour * 3);
        let middle = image(&d, "b", 100, hour * 2);
        let newest = image(&d, "c", 100, hour);
        let fresh = image(&d, "d", 100, std::time::Duration::ZERO);
        fs::write(d.join("rootfs/.e.1.tmp"), b"a pack in progress").unwrap();
        let pruned = prune(&d, 250).unwrap();
        assert_eq!(pruned, Pruned { removed: 2, freed: 200, kept: 2, size: 200 });
        assert!(!oldest.exists() && !middle.exists() && newest.exists() && fresh.exists());
        assert!(d.join("rootfs/.e.1.tmp").exists(), "only images are pruned");
        // Under the grace period an image stays even past the limit.
        let pruned = prune(&d, 0).unwrap();
        assert_eq!((pruned.removed, pruned.kept), (1, 1));
        assert!(fresh.exists());
        assert_eq!(prune(&d.join("none"), 0).unwrap(), Pruned::default());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_cache_hit_marks_the_image_used() {
        let d = scratch("touch");
        let tree = d.join("tree");
        fs::create_dir_all(&tree).unwrap();
        let packed = pack(&tree, &d.join("cache")).unwrap();
        let f = fs::File::options().append(true).open(&packed.image).unwrap();
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        f.set_modified(old).unwrap();
        assert!(pack(&tree, &d.join("cache")).unwrap().cached);
        assert!(fs::metadata(&packed.image).unwrap().modified().unwrap() > old);
        fs::remove_dir_all(&d).unwrap();
    }
}
