//! Why a VM stopped, and the one place the first reason is recorded.

use std::sync::{Condvar, Mutex};
use std::time::Duration;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmExit {
    /// The guest reset itself through the i8042 (Linux `reboot` with `reboot=k`).
    Reboot,
    /// Every vCPU is halted with interrupts disabled, or never started: nothing can run again.
    /// This is how a guest kernel without ACPI ends `poweroff` and `halt`.
    PowerOff,
    /// The guest kernel panicked (its console said so) and then reset.
    Panic(String),
    /// KVM_EXIT_SHUTDOWN: a triple fault.
    TripleFault(String),
    /// KVM_EXIT_INTERNAL_ERROR, KVM_EXIT_FAIL_ENTRY, an unexpected exit or a failed ioctl.
    VcpuFailure(String),
}

impl VmExit {
    /// Whether the guest stopped the way a guest is meant to.
    pub fn is_clean(&self) -> bool {
        matches!(self, VmExit::Reboot | VmExit::PowerOff)
    }
}

impl std::fmt::Display for VmExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VmExit::Reboot => write!(f, "guest rebooted"),
            VmExit::PowerOff => write!(f, "guest powered off (all vCPUs halted)"),
            VmExit::Panic(line) => write!(f, "guest kernel panic: {line}"),
            VmExit::TripleFault(regs) => write!(f, "guest triple fault: {regs}"),
            VmExit::VcpuFailure(what) => write!(f, "vCPU failure: {what}"),
        }
    }
}

/// The first exit reason wins; the VMM's main thread waits for it.
#[derive(Default)]
pub struct ExitState {
    reason: Mutex<Option<VmExit>>,
    changed: Condvar,
}

impl ExitState {
    pub fn set(&self, exit: VmExit) {
        if let Ok(mut reason) = self.reason.lock() {
            if reason.is_none() {
                *reason = Some(exit);
                self.changed.notify_all();
            }
        }
    }

    pub fn get(&self) -> Option<VmExit> {
        self.reason.lock().ok().and_then(|r| r.clone())
    }

    pub fn is_set(&self) -> bool {
        self.reason.lock().map(|r| r.is_some()).unwrap_or(true)
    }

    /// Waits up to `timeout` for a reason.
    pub fn wait(&self, timeout: Duration) -> Option<VmExit> {
        let reason = self.reason.lock().ok()?;
        let (reason, _) = self.changed.wait_timeout_while(reason, timeout, |r| r.is_none()).ok()?;
        reason.clone()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn first_reason_wins_and_wakes_the_waiter() {
        let s = Arc::new(ExitState::default());
        assert_eq!(s.wait(Duration::from_millis(1)), None);
        let s2 = s.clone();
        let t = std::thread::spawn(move || s2.wait(Duration::from_secs(10)));
        s.set(VmExit::PowerOff);
        s.set(VmExit::Reboot);
        assert_eq!(t.join().unwrap(), Some(VmExit::PowerOff));
        assert!(VmExit::Reboot.is_clean() && !VmExit::Panic(String::new()).is_clean());
    }
}
