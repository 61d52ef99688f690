pub mod boot;
pub mod cache;
pub mod check;
pub mod oci;
pub mod pack;
pub mod run;

use crate::confinement::{Confinement, Jail};

/// `--seccomp`: how the VMM's threads are confined (see vmm::seccomp).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SeccompArg {
    /// A call outside a thread's allow-list kills the VMM with SIGSYS
    Enforce,
    /// Such calls are allowed and logged by the kernel (dmesg), for debugging
    Log,
    /// No filters
    Off,
}

impl From<SeccompArg> for vmm::seccomp::SeccompMode {
    fn from(arg: SeccompArg) -> Self {
        match arg {
            SeccompArg::Enforce => Self::Enforce,
            SeccompArg::Log => Self::Log,
            SeccompArg::Off => Self::Off,
        }
    }
}

/// How `boot` and `run` confine the VMM: seccomp, and the jail (see crate::jail).
#[derive(Debug, clap::Args)]
pub struct ConfinementArgs {
    /// Seccomp filters on the VMM's threads: enforce, log (allow and log to the kernel log) or off
    #[arg(long, value_enum, default_value = "enforce", env = "MICROVM_SECCOMP")]
    pub seccomp: SeccompArg,
    /// Run the jailed VMM as this unprivileged uid (needs root; with --jail-gid)
    #[arg(long, value_name = "UID", requires = "jail_gid")]
    jail_uid: Option<u32>,
    /// ... and this gid
    #[arg(long, value_name = "GID", requires = "jail_uid")]
    jail_gid: Option<u32>,
    /// Skip the jail (mount namespace, closed fds, empty environment, rlimits): for
    /// debugging and for measuring what it costs
    #[arg(long, conflicts_with = "jail_uid")]
    no_jail: bool,
}

impl ConfinementArgs {
    /// The plain value below the command line.
    pub fn confinement(&self) -> Confinement {
        let jail = match (self.no_jail, self.jail_uid.zip(self.jail_gid)) {
            (true, _) => Jail::Off,
            (false, None) => Jail::Entered,
            (false, Some((uid, gid))) => Jail::AsUser { uid, gid },
        };
        Confinement { seccomp: self.seccomp.into(), jail }
    }
}
