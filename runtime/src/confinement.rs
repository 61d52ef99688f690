//! How the VMM process confines itself before the guest runs: the seccomp filters on its
//! threads and the jail (see crate::jail). A plain value: `cli` builds it from the flags,
//! and `vm`, `boot` and the OCI VMM process take it as it is.

use vmm::seccomp::SeccompMode;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Confinement {
    pub seccomp: SeccompMode,
    pub jail: Jail,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jail {
    /// No jail: for debugging and for measuring what the jail costs.
    Off,
    /// The jail, the VMM keeping the caller's ids.
    Entered,
    /// The jail, the VMM dropping to this uid and gid (needs root).
    AsUser { uid: u32, gid: u32 },
}

impl Confinement {
    /// Enters the jail around `sandbox`, unless the jail is off.
    pub fn enter_jail(&self, sandbox: &std::path::Path) -> Result<(), crate::jail::JailError> {
        match self.jail {
            Jail::Off => Ok(()),
            Jail::Entered => crate::jail::enter(sandbox, None),
            Jail::AsUser { uid, gid } => crate::jail::enter(sandbox, Some((uid, gid))),
        }
    }
}
