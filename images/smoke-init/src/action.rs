//! What init does after reporting, from the `smoke_action` kernel parameter. The kernel hands
//! unknown `key=value` parameters without a dot to init as environment variables
//! (Documentation/admin-guide/kernel-parameters.rst).

use std::ffi::OsString;
use std::io;

/// The environment variable (kernel parameter) that picks the action.
pub const ENV_VAR: &str = "smoke_action";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `poweroff`, the default: reboot(RB_POWER_OFF).
    PowerOff,
    /// `reboot`: reboot(RB_AUTOBOOT).
    Reboot,
    /// `panic`: init exits with status 1 and the kernel panics ("Attempted to kill init").
    Panic,
    /// `halt`: reboot(RB_HALT_SYSTEM).
    Halt,
    /// `idle`: stay up, asleep, until the VMM is stopped (for measuring a running VM).
    Idle,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown {ENV_VAR}={0:?} (expected poweroff, reboot, panic, halt or idle)")]
pub struct UnknownAction(pub String);

#[derive(Debug, thiserror::Error)]
#[error("reboot({name}): {source}")]
pub struct RebootError {
    name: &'static str,
    source: io::Error,
}

impl Action {
    /// The action for a `smoke_action` value; none means the default, power off.
    pub fn parse(value: Option<&str>) -> Result<Self, UnknownAction> {
        match value {
            None | Some("poweroff") => Ok(Self::PowerOff),
            Some("reboot") => Ok(Self::Reboot),
            Some("panic") => Ok(Self::Panic),
            Some("halt") => Ok(Self::Halt),
            Some("idle") => Ok(Self::Idle),
            Some(other) => Err(UnknownAction(other.to_owned())),
        }
    }

    /// The action named by [`ENV_VAR`] in this process's environment.
    pub fn from_env() -> Result<Self, UnknownAction> {
        match std::env::var_os(ENV_VAR).map(OsString::into_string) {
            None => Self::parse(None),
            Some(Ok(value)) => Self::parse(Some(&value)),
            Some(Err(raw)) => Err(UnknownAction(raw.to_string_lossy().into_owned())),
        }
    }

    /// Does the action. It only returns when the reboot syscall failed.
    pub fn run(self) -> RebootError {
        match self {
            // PID 1 exiting is what makes the kernel panic.
            Self::Panic => std::process::exit(1),
            Self::PowerOff => reboot(libc::RB_POWER_OFF, "RB_POWER_OFF"),
            Self::Reboot => reboot(libc::RB_AUTOBOOT, "RB_AUTOBOOT"),
            Self::Halt => reboot(libc::RB_HALT_SYSTEM, "RB_HALT_SYSTEM"),
            Self::Idle => loop {
                // SAFETY: pause only suspends the thread until a signal arrives.
                unsafe { libc::pause() };
            },
        }
    }
}

/// sync(2), then reboot(2) with `cmd`; returns the error if the kernel refused.
fn reboot(cmd: libc::c_int, name: &'static str) -> RebootError {
    // SAFETY: sync takes no arguments and cannot fail.
    unsafe { libc::sync() };
    // SAFETY: reboot takes a plain integer command and touches no memory of this process; on
    // success it does not return, and a failure is read from errno below.
    let rc = unsafe { libc::reboot(cmd) };
    let source = if rc == 0 {
        io::Error::other("returned without ending the system")
    } else {
        io::Error::last_os_error()
    };
    RebootError { name, source }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn default_is_poweroff() {
        assert_eq!(Action::parse(None), Ok(Action::PowerOff));
    }

    #[test]
    fn known_values() {
        assert_eq!(Action::parse(Some("poweroff")), Ok(Action::PowerOff));
        assert_eq!(Action::parse(Some("reboot")), Ok(Action::Reboot));
        assert_eq!(Action::parse(Some("panic")), Ok(Action::Panic));
        assert_eq!(Action::parse(Some("halt")), Ok(Action::Halt));
        assert_eq!(Action::parse(Some("idle")), Ok(Action::Idle));
    }

    #[test]
    fn unknown_values_are_errors_that_name_the_value() {
        for value in ["", "Reboot", "poweroff ", "kexec"] {
            let err = Action::parse(Some(value));
            assert_eq!(err, Err(UnknownAction(value.to_owned())));
        }
        let msg = UnknownAction("kexec".to_owned()).to_string();
        assert!(msg.contains("smoke_action=\"kexec\""), "{msg}");
    }
}
