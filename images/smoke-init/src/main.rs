//! `/init` of the smoke-test initramfs (built by `images/build-smoke-initramfs.sh`).
//!
//! As PID 1 in the guest it:
//! 1. tells the VMM's boot timer that init runs (one byte to an I/O port),
//! 2. mounts /proc and /sys,
//! 3. prints one line, `microvm-smoke: init running, N CPUs online`, to the console, then one
//!    per virtio disk (size, first bytes; writes `smoke_write` at byte 512 when set),
//! 4. does what the `smoke_action` kernel parameter says: power off (default), reboot, halt, or
//!    exit so that the kernel panics.
//!
//! Errors never stop it early: each is printed to stderr (also the console) and init goes on to
//! step 4, so a broken guest still ends the VM and the missing line shows what failed.

#[cfg(not(target_arch = "x86_64"))]
compile_error!("smoke-init signals the boot timer through an x86 I/O port");

mod action;
mod boot_timer;
mod cpus;
mod disks;
mod mounts;

use std::io::Write;

use action::Action;

fn main() {
    // 1. First, before anything else: the VMM's boot timer measures from the VMM's start to this
    //    write, so it should count the time to reach init and nothing init does afterwards.
    //    ioperm + out need no mounts, so nothing has to come before them.
    if let Err(e) = boot_timer::signal() {
        complain(&e);
    }

    // 2. /sys is where the CPU count comes from; /proc is there for anything poking around.
    for fs in &mounts::PSEUDO_FILESYSTEMS {
        if let Err(e) = fs.mount() {
            complain(&e);
        }
    }

    // 3. The one line on stdout (/dev/console) that smoke tests look for.
    match cpus::online() {
        Ok(n) => report(&format!("microvm-smoke: init running, {n} CPUs online")),
        Err(e) => complain(&e),
    }
    for disk in disks::check_all() {
        match disk {
            Ok(line) => report(&line),
            Err(e) => complain(&e),
        }
    }

    // 4. End the VM the way the test asked, once the console has sent what init wrote.
    drain_console();
    let action = Action::from_env().unwrap_or_else(|e| {
        complain(&format_args!("{e}; powering off"));
        Action::PowerOff
    });
    let err = action.run();
    // Only reached when the reboot syscall failed: exiting makes the kernel panic
    // ("Attempted to kill init"), a failure nobody can miss.
    complain(&err);
    drain_console();
    std::process::exit(1);
}

/// Writes one line to stdout and flushes it; a console that cannot be written has no better
/// place to report to, so a failure is ignored rather than panicking PID 1.
fn report(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Waits until the console has transmitted everything written to stdout and stderr. A write to
/// a tty returns once the bytes are queued, and a panic or reboot right after it can overtake
/// them (seen under QEMU: the panic message came out before the report line). Errors, such as
/// ENOTTY when the output is not a terminal, leave nothing to wait for and are ignored.
fn drain_console() {
    for fd in [libc::STDOUT_FILENO, libc::STDERR_FILENO] {
        // SAFETY: tcdrain only waits on the given descriptor and touches no memory of this
        // process; a bad or non-tty descriptor makes it fail, which is fine.
        unsafe { libc::tcdrain(fd) };
    }
}

/// Writes one error line to stderr, prefixed so it is found next to the report line.
fn complain(err: &dyn std::fmt::Display) {
    let _ = writeln!(std::io::stderr(), "microvm-smoke: error: {err}");
}
