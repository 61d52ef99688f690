pub mod boot;
pub mod check;
pub mod pack;
pub mod run;

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
