//! The crate's errors: one line each, naming the profile field, rule or filter at fault.
//!
//! Rules are numbered from 0 in the order of the profile's `syscalls` array (the Docker
//! profile's on the host, the OCI object's in the guest), and named by their first syscall.

/// What went wrong, from parsing a profile to installing its filters.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Not JSON, or not the shape of a seccomp profile (the message has line and column).
    #[error("seccomp profile: invalid JSON: {0}")]
    Json(#[source] serde_json::Error),
    /// `defaultAction` is not a libseccomp action name.
    #[error("seccomp profile: unknown action {0:?}")]
    UnknownAction(String),
    /// An `architectures` or `archMap` entry is not a libseccomp architecture name.
    #[error("seccomp profile: unknown architecture {0:?}")]
    UnknownArch(String),
    /// A `flags` entry is not a seccomp filter flag name.
    #[error("seccomp profile: unknown flag {0:?}")]
    UnknownFlag(String),
    /// Docker refuses profiles that set both.
    #[error("seccomp profile: \"architectures\" and \"archMap\" are both set; use one")]
    ArchitecturesAndArchMap,
    /// One `syscalls` entry is wrong.
    #[error("seccomp profile: syscall rule {index} ({names}): {problem}")]
    Rule {
        /// Position in the `syscalls` array, from 0.
        index: usize,
        /// The rule's first syscall name, and how many more it has.
        names: String,
        /// What is wrong with it.
        problem: RuleError,
    },
    /// The filters run on x86_64 only.
    #[error("seccomp profile: architectures [{0}] do not include SCMP_ARCH_X86_64, the only one supported")]
    UnsupportedArch(String),
    /// `SCMP_ACT_NOTIFY` needs a seccomp agent, which there is none of.
    #[error("seccomp profile: default action SCMP_ACT_NOTIFY is not supported")]
    DefaultNotify,
    /// seccompiler refused a filter (too many instructions, ...).
    #[error("seccomp filter: {0}")]
    Build(#[source] seccompiler::BackendError),
    /// Two filters of the stack could each refuse seccomp(2) or prctl(2), so whichever is
    /// installed first would stop the other from being installed (see the `filter` module).
    #[error(
        "seccomp profile: cannot be installed: more than one of its actions restricts seccomp or \
         prctl, which installing the filters needs; allow both, or restrict them with one action"
    )]
    Uninstallable,
    /// The kernel refused a filter.
    #[error("seccomp: install filter {index}: {source}")]
    Apply {
        /// Position of the filter in the list given to `apply`.
        index: usize,
        /// prctl(PR_SET_NO_NEW_PRIVS) or seccomp(SECCOMP_SET_MODE_FILTER) failed.
        #[source]
        source: seccompiler::Error,
    },
}

/// What is wrong with one syscall rule.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    /// `action` is not a libseccomp action name.
    #[error("unknown action {0:?}")]
    UnknownAction(String),
    /// An argument's `op` is not a libseccomp comparison name.
    #[error("unknown op {0:?}")]
    UnknownOp(String),
    /// Syscalls have six arguments, 0 to 5.
    #[error("argument index {0} is not in 0..=5")]
    ArgIndex(usize),
    /// Docker refuses rules that set both.
    #[error("\"name\" and \"names\" are both set; use one")]
    NameAndNames,
    /// Neither `name` nor `names`.
    #[error("no syscall names")]
    NoNames,
    /// `minKernel` must read `MAJOR.MINOR`, as in Docker.
    #[error("minKernel {0:?} is not MAJOR.MINOR")]
    MinKernel(String),
    /// `SCMP_ACT_NOTIFY` needs a seccomp agent, which there is none of.
    #[error("action SCMP_ACT_NOTIFY is not supported")]
    Notify,
    /// oci-spec refused an argument condition.
    #[error("{0}")]
    Oci(#[source] oci_spec::OciSpecError),
    /// seccompiler refused a condition.
    #[error("{0}")]
    Condition(#[source] seccompiler::BackendError),
}

/// How an error names a rule: `"mount"`, or `"mount" and 22 more`.
pub(crate) fn describe_names(names: &[String]) -> String {
    match names {
        [] => "no names".to_string(),
        [one] => format!("{one:?}"),
        [first, rest @ ..] => format!("{first:?} and {} more", rest.len()),
    }
}
