//! Seccomp for containers, in two halves.
//!
//! 1. Host side ([`parse_profile`], [`to_oci`], [`default_profile`]): a profile in Docker's
//!    format (what `docker run --security-opt seccomp=profile.json` takes) or in OCI's
//!    `linux.seccomp` form is parsed and checked, then resolved for one container (its
//!    capabilities, its architecture) into the OCI `linux.seccomp` object of its config.
//! 2. Guest side ([`compile`], [`apply`]): that object is compiled into a stack of seccomp
//!    BPF filters (seccompiler generates them; one per action, see the `filter` module for
//!    why the stack behaves like libseccomp's single filter) and installed on the container's
//!    process between fork and exec.
//!
//! ```no_run
//! # fn main() -> Result<(), oci_seccomp::Error> {
//! let caps = vec!["CAP_CHOWN".to_string(), "CAP_KILL".to_string()];
//! // Host: resolve the default profile for the container.
//! let seccomp = oci_seccomp::to_oci(oci_seccomp::default_profile()?, &caps, oci_spec::runtime::Arch::ScmpArchX86_64)?;
//! // Guest: compile before fork; install in the child, then exec.
//! let compiled = oci_seccomp::compile(&seccomp)?;
//! oci_seccomp::apply(&compiled.programs)?;
//! # Ok(()) }
//! ```
//!
//! Compiling needs nothing of the guest, so the host can also run [`compile`] to refuse a
//! profile the guest would refuse (SCMP_ACT_NOTIFY, another architecture) before booting.
//!
//! # The default profile
//! `profiles/default.json`, in Docker's format and in the spirit of Docker's default: default
//! action ERRNO(EPERM); an allowlist of what an ordinary x86_64 userland calls (files,
//! memory, processes, credentials, signals, time, polling, sockets but AF_VSOCK, IPC, AIO);
//! `personality` only with the harmless personas; `clone` only without namespace flags and
//! `clone3` ENOSYS (so that glibc falls back to `clone`), both lifted by CAP_SYS_ADMIN; and
//! the calls that each capability unlocks (CAP_SYS_ADMIN: mount, the new mount API, unshare,
//! setns, pivot_root, sethostname, ...; CAP_SYS_PTRACE, CAP_SYS_MODULE, CAP_SYS_BOOT,
//! CAP_SYS_TIME, CAP_SYS_CHROOT, CAP_SYS_NICE, CAP_SYS_RAWIO, CAP_SYSLOG, CAP_SYS_PACCT,
//! CAP_DAC_READ_SEARCH, CAP_BPF, CAP_PERFMON, CAP_SYS_TTY_CONFIG). Never allowed: the keyring
//! (keyctl, add_key, request_key: not namespaced), kexec, swapon/swapoff, userfaultfd,
//! io_uring, modify_ldt, uselib, and the obsolete calls. Unlike Docker's, ptrace needs
//! CAP_SYS_PTRACE whatever the kernel version, and it lists x86_64 syscalls only.

mod docker;
mod error;
mod filter;

use std::sync::OnceLock;

pub use docker::{
    parse_profile, to_oci, ArchMapEntry, DockerArg, DockerFilter, DockerProfile, DockerSyscall,
};
pub use error::{Error, RuleError};
pub use filter::{apply, compile, Compiled};
pub use seccompiler::BpfProgram;

/// Docker's default capability set, for the unit tests.
#[cfg(test)]
pub(crate) const DOCKER_CAPS: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// The project's default profile, `profiles/default.json`.
const DEFAULT_PROFILE_JSON: &str = include_str!("../profiles/default.json");

/// The project's default profile (see the crate documentation), parsed once.
pub fn default_profile() -> Result<&'static DockerProfile, Error> {
    static PARSED: OnceLock<DockerProfile> = OnceLock::new();
    if let Some(profile) = PARSED.get() {
        return Ok(profile);
    }
    // Two threads may both parse; the first to finish is kept.
    let profile = parse_profile(DEFAULT_PROFILE_JSON.as_bytes())?;
    Ok(PARSED.get_or_init(|| profile))
}
