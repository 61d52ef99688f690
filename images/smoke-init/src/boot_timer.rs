//! Guest side of the VMM's boot timer (`vmm/src/devices/boot_timer.rs`, the same port and byte
//! as Firecracker's boot-timer device): init writes [`INIT_RUNNING`] to [`PORT`] once it runs.
//!
//! 0x3f0 is unused on the VMM's machine; on a QEMU PC it is the floppy controller's read-only
//! status register, so the write is harmless there too.

use std::arch::asm;
use std::io;

/// The I/O port the VMM's boot timer listens on.
pub const PORT: u16 = 0x3f0;
/// The byte that means "init is running".
pub const INIT_RUNNING: u8 = 123;

#[derive(Debug, thiserror::Error)]
#[error("boot timer: ioperm(port {PORT:#x}): {0}")]
pub struct BootTimerError(#[source] io::Error);

/// Grants this process access to [`PORT`] and writes [`INIT_RUNNING`] to it.
pub fn signal() -> Result<(), BootTimerError> {
    // SAFETY: ioperm only changes this process's I/O permission bitmap, for one port; it takes
    // plain integers and its return value is checked right below.
    let rc = unsafe { libc::ioperm(PORT.into(), 1, 1) };
    if rc != 0 {
        return Err(BootTimerError(io::Error::last_os_error()));
    }
    // SAFETY: ioperm above granted this process exactly this port, so `out` cannot fault; it
    // touches no memory and no stack of this process, and leaves the flags alone.
    unsafe {
        asm!(
            "out dx, al",
            in("dx") PORT,
            in("al") INIT_RUNNING,
            options(nomem, nostack, preserves_flags),
        );
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    /// The VMM's side (vmm/src/devices/boot_timer.rs) expects exactly these.
    #[test]
    fn protocol_matches_the_vmm() {
        assert_eq!(PORT, 0x3f0);
        assert_eq!(INIT_RUNNING, 123);
    }
}
