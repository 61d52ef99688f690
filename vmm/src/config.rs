//! What to boot: kernel, initrd, command line, memory, vCPUs, console.

use std::path::PathBuf;

use crate::arch::x86_64::{layout::MIN_MEM_MIB, mptable::MAX_CPUS};

/// The command line our guests boot with unless told otherwise.
/// - `console=ttyS0`: kernel messages on COM1; `quiet` keeps them few (every byte is a VM exit).
/// - `reboot=k`: reboot through the i8042 reset line, which ends the VM.
/// - `panic=-1`: a panicking guest resets at once instead of spinning forever.
/// - `io_delay=none`: no port-0x80 writes, each of which would be a VM exit.
/// - `8250.nr_uarts=1`: probe COM1 only.
pub const DEFAULT_CMDLINE: &str =
    "console=ttyS0 reboot=k panic=-1 io_delay=none 8250.nr_uarts=1 quiet";

/// Largest guest we accept, 1 TiB: guest-chosen sizes are still bounded by the host.
pub const MAX_MEM_MIB: u64 = 1 << 20;

/// Where the guest's serial console goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Console {
    Stdout,
    File(PathBuf),
    Discard,
}

/// A virtio-blk disk backed by a host file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskConfig {
    pub path: PathBuf,
    pub read_only: bool,
}

/// A virtio-vsock device whose host side is a Unix socket at `uds_path` (see
/// `devices::virtio::vsock`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VsockConfig {
    pub guest_cid: u64,
    pub uds_path: PathBuf,
}

/// A virtio-net card whose frames travel over `backend` (see `devices::virtio::net`).
#[derive(Clone, Debug)]
pub struct NetConfig {
    pub mac: [u8; 6],
    pub backend: NetBackend,
}

/// A card's backend, shared with the caller (which may keep its own end or handle).
#[derive(Clone, Debug)]
pub enum NetBackend {
    /// A connected Unix stream socket speaking the length-prefixed protocol of QEMU's
    /// `-netdev stream` and passt.
    Stream(std::sync::Arc<std::os::unix::net::UnixStream>),
    /// A tap device (`IFF_TAP | IFF_NO_PI`) the caller opened.
    Tap(std::sync::Arc<std::fs::File>),
}

/// A virtio-fs device served by a vhost-user backend (virtiofsd) over `socket`, which the caller
/// connected; the guest mounts it as `mount -t virtiofs TAG DIR` (see `devices::virtio::fs`).
#[derive(Clone, Debug)]
pub struct FsConfig {
    pub tag: String,
    pub socket: std::sync::Arc<std::os::unix::net::UnixStream>,
}

/// Most virtio devices: one interrupt line each, from IRQ 5 to IOAPIC pin 23.
pub const MAX_VIRTIO_DEVICES: usize = 19;

#[derive(Clone, Debug)]
pub struct VmConfig {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub mem_mib: u64,
    pub vcpus: u8,
    pub console: Console,
    pub disks: Vec<DiskConfig>,
    pub vsock: Option<VsockConfig>,
    /// Network cards, eth0 first.
    pub nets: Vec<NetConfig>,
    /// Shared directories. Any makes guest memory a shared memfd (the backend maps it).
    pub filesystems: Vec<FsConfig>,
    /// Seccomp for the VMM's threads (see [`crate::seccomp`]).
    pub seccomp: crate::seccomp::SeccompMode,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("memory {0} MiB: a guest needs at least {MIN_MEM_MIB} MiB")]
    MemoryTooSmall(u64),
    #[error("memory {0} MiB: more than the {MAX_MEM_MIB} MiB we allow")]
    MemoryTooLarge(u64),
    #[error("cpus {0}: between 1 and {MAX_CPUS} vCPUs are supported")]
    Vcpus(u8),
    #[error("{0} virtio devices: at most {MAX_VIRTIO_DEVICES} are supported")]
    TooManyDevices(usize),
}

impl VmConfig {
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        Self {
            kernel: kernel.into(),
            initrd: None,
            cmdline: DEFAULT_CMDLINE.to_string(),
            mem_mib: 128,
            vcpus: 1,
            console: Console::Stdout,
            disks: Vec::new(),
            vsock: None,
            nets: Vec::new(),
            filesystems: Vec::new(),
            seccomp: crate::seccomp::SeccompMode::default(),
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.mem_mib < MIN_MEM_MIB {
            return Err(ConfigError::MemoryTooSmall(self.mem_mib));
        }
        if self.mem_mib > MAX_MEM_MIB {
            return Err(ConfigError::MemoryTooLarge(self.mem_mib));
        }
        if self.vcpus == 0 || self.vcpus > MAX_CPUS {
            return Err(ConfigError::Vcpus(self.vcpus));
        }
        let devices = self.disks.len() + usize::from(self.vsock.is_some()) + self.nets.len() + self.filesystems.len();
        if devices > MAX_VIRTIO_DEVICES {
            return Err(ConfigError::TooManyDevices(devices));
        }
        Ok(())
    }

    pub fn mem_bytes(&self) -> u64 {
        self.mem_mib << 20
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn bounds_are_checked_with_named_errors() {
        let mut c = VmConfig::new("k");
        assert_eq!(c.validate(), Ok(()));
        c.mem_mib = 1;
        assert_eq!(c.validate(), Err(ConfigError::MemoryTooSmall(1)));
        assert_eq!(c.validate().unwrap_err().to_string(), "memory 1 MiB: a guest needs at least 16 MiB");
        c.mem_mib = MAX_MEM_MIB + 1;
        assert!(matches!(c.validate(), Err(ConfigError::MemoryTooLarge(_))));
        c.mem_mib = 128;
        c.vcpus = 0;
        assert_eq!(c.validate(), Err(ConfigError::Vcpus(0)));
        c.vcpus = MAX_CPUS + 1;
        assert_eq!(c.validate(), Err(ConfigError::Vcpus(MAX_CPUS + 1)));
    }
}
