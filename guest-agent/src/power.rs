//! Powering the VM off: the agent's only way out, since PID 1 must never exit.

use nix::sys::reboot::{reboot, RebootMode};

/// Syncs filesystems, lets the console send what was written to it, and powers the VM off.
/// If the reboot call fails, it says so and sleeps for good: exiting would panic the kernel.
pub fn off() -> ! {
    nix::unistd::sync();
    drain_console();
    let Err(error) = reboot(RebootMode::RB_POWER_OFF);
    eprintln!("microvm-agent: error: power off: {error}");
    drain_console();
    loop {
        // SAFETY: pause takes no arguments and only returns when a signal handler ran.
        unsafe { libc::pause() };
    }
}

/// Waits until the console has transmitted what was written to stdout and stderr: a write to
/// a tty returns once the bytes are queued, and powering off right after can cut them off.
fn drain_console() {
    for fd in [libc::STDOUT_FILENO, libc::STDERR_FILENO] {
        // SAFETY: tcdrain only waits on the given descriptor and touches no memory of this
        // process; a non-tty descriptor makes it fail, which is fine.
        unsafe { libc::tcdrain(fd) };
    }
}
