//! Guest side of the VMM's boot timer (`vmm/src/devices/boot_timer.rs`, the same port and byte
//! as Firecracker's boot-timer device): the agent writes [`INIT_RUNNING`] to [`PORT`] as its
//! very first act, and [`PROCESS_STARTING`] just before it starts the container process, so the
//! VMM can log the time to init and from init to the process.
//!
//! The port permission is taken for each write and dropped right after: `ioperm` permissions
//! survive `fork` and `execve`, and the container process has no business with I/O ports.

use std::arch::asm;
use std::io;

/// The I/O port the VMM's boot timer listens on.
pub const PORT: u16 = 0x3f0;
/// The byte that means "init is running".
pub const INIT_RUNNING: u8 = 123;
/// The byte that means "the agent is about to start the container process".
pub const PROCESS_STARTING: u8 = 124;

#[derive(Debug, thiserror::Error)]
#[error("boot timer: ioperm(port {PORT:#x}): {0}")]
pub struct BootTimerError(#[source] io::Error);

/// Writes `byte` to [`PORT`], holding the port permission only for the write.
pub fn signal(byte: u8) -> Result<(), BootTimerError> {
    set_permission(true)?;
    // SAFETY: ioperm above granted this process exactly this port, so `out` cannot fault; it
    // touches no memory and no stack of this process, and leaves the flags alone.
    unsafe {
        asm!(
            "out dx, al",
            in("dx") PORT,
            in("al") byte,
            options(nomem, nostack, preserves_flags),
        );
    }
    set_permission(false)
}

fn set_permission(on: bool) -> Result<(), BootTimerError> {
    // SAFETY: ioperm only changes this thread's I/O permission bitmap, for one port; it takes
    // plain integers and its return value is checked right below.
    let rc = unsafe { libc::ioperm(PORT.into(), 1, libc::c_int::from(on)) };
    if rc != 0 {
        return Err(BootTimerError(io::Error::last_os_error()));
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
        assert_eq!(PROCESS_STARTING, 124);
    }
}
