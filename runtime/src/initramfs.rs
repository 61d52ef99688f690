//! The guest's initramfs for `run`: the guest agent as `/init` plus the few nodes the kernel
//! and the agent need before any filesystem is mounted. Written directly in the newc cpio
//! format (Documentation/driver-api/early-userspace/buffer-format.rst): six fixed-width
//! records, no tool, no root needed for the device node, the same bytes for the same agent.

use std::io::{self, Write};

const S_IFDIR: u32 = 0o040000;
const S_IFCHR: u32 = 0o020000;
const S_IFREG: u32 = 0o100000;

/// Writes an initramfs holding `agent` as /init.
pub fn write(out: &mut impl Write, agent: &[u8]) -> io::Result<()> {
    let mut w = Newc { out, ino: 0 };
    w.entry("dev", S_IFDIR | 0o755, (0, 0), &[])?;
    w.entry("dev/console", S_IFCHR | 0o600, (5, 1), &[])?;
    for dir in ["proc", "sys", "run", "rootfs", "rootfs-ro"] {
        w.entry(dir, S_IFDIR | 0o755, (0, 0), &[])?;
    }
    w.entry("init", S_IFREG | 0o755, (0, 0), agent)?;
    w.entry("TRAILER!!!", 0, (0, 0), &[])
}

struct Newc<'a, W> {
    out: &'a mut W,
    ino: u32,
}

impl<W: Write> Newc<'_, W> {
    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) -> io::Result<()> {
        self.ino += 1;
        let nlink = if mode & S_IFDIR != 0 { 2 } else { 1 };
        let fields = [
            self.ino, mode, 0, 0, nlink, 0, data.len() as u32, 0, 0, rdev.0, rdev.1,
            name.len() as u32 + 1, 0,
        ];
        let mut header = String::from("070701");
        for f in fields {
            header.push_str(&format!("{f:08x}"));
        }
        self.out.write_all(header.as_bytes())?;
        self.out.write_all(name.as_bytes())?;
        self.out.write_all(&[0])?;
        self.pad(110 + name.len() + 1)?;
        self.out.write_all(data)?;
        self.pad(data.len())
    }

    fn pad(&mut self, len: usize) -> io::Result<()> {
        self.out.write_all(&[0u8; 3][..(4 - len % 4) % 4])
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn archive_lists_init_and_console_for_cpio() {
        let mut buf = Vec::new();
        write(&mut buf, b"\x7fELF-agent").unwrap();
        assert_eq!(buf.len() % 4, 0);
        assert!(buf.starts_with(b"070701"));
        let dir = std::env::temp_dir().join(format!("microvm-initramfs-{}", std::process::id()));
        std::fs::write(&dir, &buf).unwrap();
        let listing = std::process::Command::new("cpio").arg("-itv").stdin(std::fs::File::open(&dir).unwrap()).output();
        std::fs::remove_file(&dir).unwrap();
        let Ok(listing) = listing else { return assert!(buf.windows(4).any(|w| w == b"init")) };
        let text = String::from_utf8_lossy(&listing.stdout);
        assert!(text.contains("crw-------") && text.contains("dev/console"), "{text}");
        assert!(text.lines().any(|l| l.starts_with("-rwxr-xr-x") && l.ends_with(" init")), "{text}");
    }
}
