//! Virtio disks the guest sees: for each `/sys/block/vd*`, its size and first bytes, and, when
//! the `smoke_write` kernel parameter is set, its value written at byte 512 and synced. The
//! guest tests use this to check the VMM's virtio-blk end to end.

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// The environment variable (kernel parameter) holding what to write to each disk.
pub const WRITE_VAR: &str = "smoke_write";
/// Where the marker goes: the second sector, leaving the first as the test wrote it.
pub const WRITE_OFFSET: u64 = 512;

#[derive(Debug, thiserror::Error)]
#[error("disk {name}: {what}: {source}")]
pub struct DiskError {
    name: String,
    what: &'static str,
    source: io::Error,
}

/// One report line per disk (or an error), after any write asked for.
pub fn check_all() -> Vec<Result<String, DiskError>> {
    let marker = std::env::var(WRITE_VAR).ok();
    let Ok(entries) = fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("vd"))
        .collect();
    names.sort();
    let mut lines = Vec::new();
    for name in &names {
        lines.push(inspect(name));
        if let Some(m) = &marker {
            lines.push(write_marker(name, m));
        }
    }
    lines
}

/// Size and first bytes of `/dev/NAME` (the node is made from sysfs if missing).
fn inspect(name: &str) -> Result<String, DiskError> {
    let err = |what| {
        move |source| DiskError {
            name: name.to_owned(),
            what,
            source,
        }
    };
    let sys = Path::new("/sys/block").join(name);
    let sectors: u64 = fs::read_to_string(sys.join("size"))
        .map_err(err("read size"))?
        .trim()
        .parse()
        .map_err(|e| err("parse size")(io::Error::new(io::ErrorKind::InvalidData, e)))?;
    let node = Path::new("/dev").join(name);
    if !node.exists() {
        let dev = fs::read_to_string(sys.join("dev")).map_err(err("read dev"))?;
        make_node(&node, dev.trim()).map_err(err("mknod"))?;
    }
    let file = fs::File::open(&node).map_err(err("open"))?;
    let mut head = [0u8; 16];
    file.read_exact_at(&mut head, 0).map_err(err("read"))?;
    Ok(format!(
        "microvm-smoke: disk {name} {} bytes, starts with \"{}\"",
        sectors * 512,
        printable(&head)
    ))
}

/// Writes `marker` at [`WRITE_OFFSET`] of `/dev/NAME` and syncs it to the device.
fn write_marker(name: &str, marker: &str) -> Result<String, DiskError> {
    let err = |what| {
        move |source| DiskError {
            name: name.to_owned(),
            what,
            source,
        }
    };
    let node = Path::new("/dev").join(name);
    let file = OpenOptions::new()
        .write(true)
        .open(&node)
        .map_err(err("open for writing"))?;
    file.write_all_at(marker.as_bytes(), WRITE_OFFSET)
        .map_err(err("write"))?;
    file.sync_all().map_err(err("sync"))?;
    Ok(format!(
        "microvm-smoke: disk {name} wrote {} bytes at {WRITE_OFFSET}",
        marker.len()
    ))
}

/// `major:minor` from sysfs into a block device node.
fn make_node(path: &Path, dev: &str) -> io::Result<()> {
    let bad = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("bad device number {dev:?}"),
        )
    };
    let (major, minor) = dev.split_once(':').ok_or_else(bad)?;
    let (major, minor): (u32, u32) = (
        major.parse().map_err(|_| bad())?,
        minor.parse().map_err(|_| bad())?,
    );
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| bad())?;
    // SAFETY: c_path is a valid NUL-terminated string for the duration of the call; mknod
    // reads nothing else of ours, and its result is checked.
    let rc = unsafe {
        libc::mknod(
            c_path.as_ptr(),
            libc::S_IFBLK | 0o600,
            libc::makedev(major, minor),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Bytes as text, anything unprintable as '.'.
pub fn printable(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '.'
            }
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn printable_masks_control_and_high_bytes() {
        assert_eq!(printable(b"ab c\0\xff\n\"z"), "ab c...\"z");
    }
}
