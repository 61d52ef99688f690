//! Host side: Docker's seccomp profile format, resolved into the OCI `linux.seccomp` object.
//!
//! A Docker profile (`docker run --security-opt seccomp=profile.json`, moby's
//! `profiles/seccomp`) is the OCI object plus what lets one file serve every container:
//! `archMap` (architectures per native architecture), a single `name` per rule (older form),
//! `comment`, and `includes`/`excludes` that keep or drop a rule by the container's
//! capabilities, the architecture and the kernel version. No crate models this format, so the
//! serde types below are written by hand from moby's Go types. An OCI `linux.seccomp` object
//! is a valid Docker profile (it just uses none of the extras), so [`parse_profile`] takes
//! both.
//!
//! [`to_oci`] resolves a profile for one container the way moby's `setupSeccomp` does:
//! 1. `architectures`, or the `archMap` entry of the container's architecture with its
//!    sub-architectures (a profile may not set both);
//! 2. each rule is dropped when any `excludes` condition holds (an excluded arch is the
//!    container's, an excluded cap is in its set, the kernel is at least `minKernel`) or any
//!    `includes` condition fails (the arch is not listed, a listed cap is missing, the kernel
//!    is older than `minKernel`);
//! 3. the kept rules lose `includes`, `excludes`, `comment`, and `name` becomes `names`.
//!
//! Everything named in the profile is checked (actions, ops, architectures, flags, minKernel)
//! in every rule, kept or not, so a typo fails for every container, not only for the ones
//! whose capabilities happen to keep the rule.

use std::path::PathBuf;
use std::str::FromStr;

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompFilterFlag,
    LinuxSeccompOperator, LinuxSyscall,
};
use serde::{Deserialize, Deserializer, Serialize};

use crate::error::{describe_names, Error, RuleError};

/// The kernel a rule's `minKernel` is compared with. Docker compares with the host's kernel;
/// our containers run on the guest kernel, which kernel-config/build.sh builds from Linux 6.1.
const GUEST_KERNEL: (u32, u32) = (6, 1);

/// A Docker seccomp profile, or an OCI `linux.seccomp` object (a profile with no extras).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DockerProfile {
    /// Action for syscalls no rule matches, e.g. `SCMP_ACT_ERRNO`.
    pub default_action: String,
    /// errno for a default action of `SCMP_ACT_ERRNO` (EPERM when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_errno_ret: Option<u32>,
    /// libseccomp architecture names, e.g. `SCMP_ARCH_X86_64`.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub architectures: Vec<String>,
    /// Architectures per native architecture.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub arch_map: Vec<ArchMapEntry>,
    /// Seccomp filter flags, e.g. `SECCOMP_FILTER_FLAG_LOG`; passed on to OCI.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub flags: Vec<String>,
    /// Socket of a seccomp agent for `SCMP_ACT_NOTIFY`; passed on to OCI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener_path: Option<String>,
    /// Opaque data for that agent; passed on to OCI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener_metadata: Option<String>,
    /// The rules, in order.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub syscalls: Vec<DockerSyscall>,
}

/// One `archMap` entry: the architectures a container on `architecture` gets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArchMapEntry {
    /// The native architecture, e.g. `SCMP_ARCH_X86_64`.
    pub architecture: String,
    /// The architectures it also runs, e.g. `SCMP_ARCH_X86`, `SCMP_ARCH_X32`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub sub_architectures: Vec<String>,
}

/// One rule: an action for some syscalls, maybe only for some argument values.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DockerSyscall {
    /// The syscall names.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub names: Vec<String>,
    /// The older single-name form; empty when unused.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub name: String,
    /// e.g. `SCMP_ACT_ALLOW`.
    pub action: String,
    /// errno for `SCMP_ACT_ERRNO`, value for `SCMP_ACT_TRACE` (EPERM when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno_ret: Option<u32>,
    /// Argument conditions, all of which must hold.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub args: Vec<DockerArg>,
    /// Free text.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub comment: String,
    /// Conditions that must all hold for the rule to apply.
    #[serde(default, deserialize_with = "null_as_default")]
    pub includes: DockerFilter,
    /// Conditions any of which drops the rule.
    #[serde(default, deserialize_with = "null_as_default")]
    pub excludes: DockerFilter,
}

/// A condition on a syscall argument.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DockerArg {
    /// Which argument, 0 to 5.
    pub index: usize,
    /// The datum, or the mask for `SCMP_CMP_MASKED_EQ`.
    #[serde(default)]
    pub value: u64,
    /// The datum for `SCMP_CMP_MASKED_EQ` (0 when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_two: Option<u64>,
    /// e.g. `SCMP_CMP_EQ`.
    pub op: String,
}

/// The `includes` or `excludes` of a rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DockerFilter {
    /// Capability names, e.g. `CAP_SYS_ADMIN`.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub caps: Vec<String>,
    /// Docker's architecture names, e.g. `amd64`, `x32`, `arm64`.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub arches: Vec<String>,
    /// `MAJOR.MINOR`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_kernel: Option<String>,
}

/// Go's encoding/json reads `null` as the zero value; so do we.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// Parses a seccomp profile in Docker's form or OCI's `linux.seccomp` form, and checks every
/// name in it (see the module documentation).
pub fn parse_profile(bytes: &[u8]) -> Result<DockerProfile, Error> {
    let profile: DockerProfile = serde_json::from_slice(bytes).map_err(Error::Json)?;
    // Resolving checks every rule, whatever the capabilities and architecture.
    to_oci(&profile, &[], Arch::ScmpArchX86_64)?;
    Ok(profile)
}

/// Resolves `profile` for a container with the capability set `caps` (names such as
/// `CAP_CHOWN`; Docker uses the bounding set) on `arch`, the way Docker does: see the module
/// documentation. A rule's `minKernel` is compared with the guest kernel's version, 6.1.
pub fn to_oci(profile: &DockerProfile, caps: &[String], arch: Arch) -> Result<LinuxSeccomp, Error> {
    let default_action = action(&profile.default_action)
        .ok_or_else(|| Error::UnknownAction(profile.default_action.clone()))?;
    let mut seccomp = LinuxSeccomp::default();
    seccomp.set_default_action(default_action);
    seccomp.set_default_errno_ret(profile.default_errno_ret);
    seccomp.set_architectures(architectures(profile, arch)?);
    let flags = profile
        .flags
        .iter()
        .map(|flag| {
            LinuxSeccompFilterFlag::from_str(flag).map_err(|_| Error::UnknownFlag(flag.clone()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    seccomp.set_flags((!flags.is_empty()).then_some(flags));
    seccomp.set_listener_path(profile.listener_path.as_ref().map(PathBuf::from));
    seccomp.set_listener_metadata(profile.listener_metadata.clone());

    let arch_name = docker_arch_name(arch);
    let mut syscalls = Vec::new();
    for (index, rule) in profile.syscalls.iter().enumerate() {
        let names = if rule.name.is_empty() {
            rule.names.clone()
        } else {
            vec![rule.name.clone()]
        };
        let fail = |problem| Error::Rule {
            index,
            names: describe_names(&names),
            problem,
        };
        let syscall = convert_rule(rule, names.clone()).map_err(fail)?;
        if applies(rule, caps, arch_name).map_err(fail)? {
            syscalls.push(syscall);
        }
    }
    seccomp.set_syscalls((!syscalls.is_empty()).then_some(syscalls));
    Ok(seccomp)
}

/// Step 1: `architectures` as they are, or the container's `archMap` entry.
fn architectures(profile: &DockerProfile, arch: Arch) -> Result<Option<Vec<Arch>>, Error> {
    if !profile.architectures.is_empty() && !profile.arch_map.is_empty() {
        return Err(Error::ArchitecturesAndArchMap);
    }
    let parse = |name: &String| Arch::from_str(name).map_err(|_| Error::UnknownArch(name.clone()));
    let mut arches = profile
        .architectures
        .iter()
        .map(parse)
        .collect::<Result<Vec<_>, _>>()?;
    let mut found = false;
    for entry in &profile.arch_map {
        let native = parse(&entry.architecture)?;
        let subs = entry
            .sub_architectures
            .iter()
            .map(parse)
            .collect::<Result<Vec<_>, _>>()?;
        // The first entry for the architecture wins, as in Docker; the others are still checked.
        if native == arch && !found {
            found = true;
            arches.push(native);
            arches.extend(subs);
        }
    }
    Ok((!arches.is_empty()).then_some(arches))
}

/// Step 3, and the checks of every name in a rule.
fn convert_rule(rule: &DockerSyscall, names: Vec<String>) -> Result<LinuxSyscall, RuleError> {
    if !rule.name.is_empty() && !rule.names.is_empty() {
        return Err(RuleError::NameAndNames);
    }
    if names.is_empty() {
        return Err(RuleError::NoNames);
    }
    let rule_action =
        action(&rule.action).ok_or_else(|| RuleError::UnknownAction(rule.action.clone()))?;
    for version in rule
        .includes
        .min_kernel
        .iter()
        .chain(&rule.excludes.min_kernel)
    {
        kernel_version(version)?;
    }
    let mut args = Vec::with_capacity(rule.args.len());
    for arg in &rule.args {
        if arg.index > 5 {
            return Err(RuleError::ArgIndex(arg.index));
        }
        let op = LinuxSeccompOperator::from_str(&arg.op)
            .map_err(|_| RuleError::UnknownOp(arg.op.clone()))?;
        let mut builder = LinuxSeccompArgBuilder::default()
            .index(arg.index)
            .value(arg.value)
            .op(op);
        if let Some(value_two) = arg.value_two {
            builder = builder.value_two(value_two);
        }
        // Every field has a default, so build() cannot fail; the error is passed on anyway.
        args.push(builder.build().map_err(RuleError::Oci)?);
    }
    let mut syscall = LinuxSyscall::default();
    syscall
        .set_names(names)
        .set_action(rule_action)
        .set_errno_ret(rule.errno_ret)
        .set_args((!args.is_empty()).then_some(args));
    Ok(syscall)
}

/// Step 2: whether the rule applies to this container.
fn applies(rule: &DockerSyscall, caps: &[String], arch_name: &str) -> Result<bool, RuleError> {
    let (includes, excludes) = (&rule.includes, &rule.excludes);
    let has_cap = |cap: &String| caps.contains(cap);
    let excluded = excludes.arches.iter().any(|a| a == arch_name)
        || excludes.caps.iter().any(has_cap)
        || match &excludes.min_kernel {
            Some(version) => GUEST_KERNEL >= kernel_version(version)?,
            None => false,
        };
    let included = (includes.arches.is_empty() || includes.arches.iter().any(|a| a == arch_name))
        && includes.caps.iter().all(has_cap)
        && match &includes.min_kernel {
            Some(version) => GUEST_KERNEL >= kernel_version(version)?,
            None => true,
        };
    Ok(included && !excluded)
}

/// `"4.8"` -> (4, 8).
fn kernel_version(version: &str) -> Result<(u32, u32), RuleError> {
    let bad = || RuleError::MinKernel(version.to_string());
    let (major, minor) = version.split_once('.').ok_or_else(bad)?;
    Ok((
        major.parse().map_err(|_| bad())?,
        minor.parse().map_err(|_| bad())?,
    ))
}

/// An action name such as `SCMP_ACT_KILL_PROCESS`.
fn action(name: &str) -> Option<LinuxSeccompAction> {
    LinuxSeccompAction::from_str(name).ok()
}

/// Docker's name for an architecture in `includes.arches` / `excludes.arches` (moby's
/// `goToNative` values; libseccomp's names).
fn docker_arch_name(arch: Arch) -> &'static str {
    match arch {
        // Native: the guest, which is x86_64.
        Arch::ScmpArchNative | Arch::ScmpArchX86_64 => "amd64",
        Arch::ScmpArchX86 => "x86",
        Arch::ScmpArchX32 => "x32",
        Arch::ScmpArchArm => "arm",
        Arch::ScmpArchAarch64 => "arm64",
        Arch::ScmpArchMips => "mips",
        Arch::ScmpArchMips64 => "mips64",
        Arch::ScmpArchMips64n32 => "mips64n32",
        Arch::ScmpArchMipsel => "mipsel",
        Arch::ScmpArchMipsel64 => "mipsel64",
        Arch::ScmpArchMipsel64n32 => "mipsel64n32",
        Arch::ScmpArchPpc => "ppc",
        Arch::ScmpArchPpc64 => "ppc64",
        Arch::ScmpArchPpc64le => "ppc64le",
        Arch::ScmpArchS390 => "s390",
        Arch::ScmpArchS390x => "s390x",
        Arch::ScmpArchParisc => "parisc",
        Arch::ScmpArchParisc64 => "parisc64",
        Arch::ScmpArchRiscv64 => "riscv64",
        Arch::ScmpArchLoongarch64 => "loong64",
        Arch::ScmpArchM68k => "m68k",
        Arch::ScmpArchSh => "sh",
        Arch::ScmpArchSheb => "sheb",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn caps(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    use crate::DOCKER_CAPS;

    /// The names of the resolved rules with `action`, in order.
    fn names_with(seccomp: &LinuxSeccomp, action: LinuxSeccompAction) -> Vec<String> {
        seccomp
            .syscalls()
            .iter()
            .flatten()
            .filter(|s| s.action() == action)
            .flat_map(|s| s.names().clone())
            .collect()
    }

    #[test]
    fn oci_form_resolves_to_what_oci_spec_reads() {
        let json = r#"{
            "defaultAction": "SCMP_ACT_ERRNO",
            "defaultErrnoRet": 1,
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
            "flags": ["SECCOMP_FILTER_FLAG_LOG"],
            "syscalls": [
                {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
                {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 2114060288, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]},
                {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 8, "valueTwo": 0, "op": "SCMP_CMP_EQ"}]},
                {"names": ["ptrace"], "action": "SCMP_ACT_KILL_PROCESS"}
            ]
        }"#;
        let profile = parse_profile(json.as_bytes()).unwrap();
        let resolved = to_oci(&profile, &[], Arch::ScmpArchX86_64).unwrap();
        let expected: LinuxSeccomp = serde_json::from_str(json).unwrap();
        assert_eq!(resolved, expected);
    }

    #[test]
    fn docker_form_with_every_field() {
        let json = r#"{
            "defaultAction": "SCMP_ACT_ERRNO",
            "archMap": [
                {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
                {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]},
                {"architecture": "SCMP_ARCH_RISCV64", "subArchitectures": null}
            ],
            "listenerPath": "/run/agent.sock",
            "listenerMetadata": "meta",
            "syscalls": [
                {"name": "getpid", "action": "SCMP_ACT_ALLOW", "comment": "older single form",
                 "args": null, "includes": {}, "excludes": null},
                {"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["amd64", "x32"]}},
                {"names": ["set_tls"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["arm", "arm64"]}},
                {"names": ["ptrace"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "4.8"}},
                {"names": ["futex_waitv"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "99.0"}},
                {"names": ["uselib"], "action": "SCMP_ACT_ALLOW", "excludes": {"minKernel": "5.0"}}
            ]
        }"#;
        let profile = parse_profile(json.as_bytes()).unwrap();
        assert_eq!(profile.syscalls[0].comment, "older single form");

        let amd64 = to_oci(&profile, &[], Arch::ScmpArchX86_64).unwrap();
        assert_eq!(
            amd64.architectures().as_deref(),
            Some(&[Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32][..])
        );
        assert_eq!(
            amd64.listener_path().as_deref(),
            Some(std::path::Path::new("/run/agent.sock"))
        );
        assert_eq!(amd64.listener_metadata().as_deref(), Some("meta"));
        assert_eq!(
            names_with(&amd64, LinuxSeccompAction::ScmpActAllow),
            ["getpid", "arch_prctl", "ptrace"]
        );

        let arm64 = to_oci(&profile, &[], Arch::ScmpArchAarch64).unwrap();
        assert_eq!(
            arm64.architectures().as_deref(),
            Some(&[Arch::ScmpArchAarch64, Arch::ScmpArchArm][..])
        );
        assert_eq!(
            names_with(&arm64, LinuxSeccompAction::ScmpActAllow),
            ["getpid", "set_tls", "ptrace"]
        );

        // No archMap entry: libseccomp's default, the native architecture.
        let s390x = to_oci(&profile, &[], Arch::ScmpArchS390x).unwrap();
        assert_eq!(s390x.architectures(), &None);
    }

    #[test]
    fn includes_and_excludes_follow_capabilities() {
        let json = r#"{
            "defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [
                {"names": ["mount", "unshare"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
                {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 2114060288, "op": "SCMP_CMP_MASKED_EQ"}],
                 "excludes": {"caps": ["CAP_SYS_ADMIN"], "arches": ["s390", "s390x"]}},
                {"names": ["clone"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
                {"names": ["bpf"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN", "CAP_BPF"]}}
            ]
        }"#;
        let profile = parse_profile(json.as_bytes()).unwrap();

        let plain = to_oci(&profile, &caps(&DOCKER_CAPS), Arch::ScmpArchX86_64).unwrap();
        let rules = plain.syscalls().as_ref().unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].names(), &["clone"]);
        assert!(rules[0].args().is_some(), "the masked clone rule");

        let admin = to_oci(
            &profile,
            &caps(&["CAP_CHOWN", "CAP_SYS_ADMIN"]),
            Arch::ScmpArchX86_64,
        )
        .unwrap();
        assert_eq!(
            names_with(&admin, LinuxSeccompAction::ScmpActAllow),
            ["mount", "unshare", "clone"]
        );
        let clone = &admin.syscalls().as_ref().unwrap()[1];
        assert!(clone.args().is_none(), "the unconditional clone rule");

        let both = to_oci(
            &profile,
            &caps(&["CAP_SYS_ADMIN", "CAP_BPF"]),
            Arch::ScmpArchX86_64,
        )
        .unwrap();
        assert_eq!(
            names_with(&both, LinuxSeccompAction::ScmpActAllow),
            ["mount", "unshare", "clone", "bpf"]
        );

        // Excluded by arch, whatever the capabilities.
        let s390x = to_oci(&profile, &[], Arch::ScmpArchS390x).unwrap();
        assert_eq!(s390x.syscalls(), &None);
    }

    #[test]
    fn default_profile_denies_what_it_should() {
        let profile = crate::default_profile().unwrap();
        let plain = to_oci(profile, &caps(&DOCKER_CAPS), Arch::ScmpArchX86_64).unwrap();
        let allowed = names_with(&plain, LinuxSeccompAction::ScmpActAllow);
        for name in [
            "chmod",
            "fchmodat",
            "read",
            "execve",
            "clone",
            "socket",
            "chroot",
            "personality",
        ] {
            assert!(
                allowed.iter().any(|n| n == name),
                "{name} should be allowed"
            );
        }
        for name in [
            "mount",
            "umount2",
            "unshare",
            "setns",
            "keyctl",
            "add_key",
            "request_key",
            "init_module",
            "finit_module",
            "delete_module",
            "kexec_load",
            "kexec_file_load",
            "reboot",
            "swapon",
            "swapoff",
            "pivot_root",
            "open_by_handle_at",
            "bpf",
            "perf_event_open",
            "userfaultfd",
            "iopl",
            "ioperm",
            "acct",
            "quotactl",
            "fsopen",
            "fsmount",
            "fsconfig",
            "fspick",
            "move_mount",
            "open_tree",
            "mount_setattr",
            "lookup_dcookie",
            "ptrace",
            "io_uring_setup",
        ] {
            assert!(
                !allowed.iter().any(|n| n == name),
                "{name} should be denied"
            );
        }
        let enosys = plain
            .syscalls()
            .iter()
            .flatten()
            .find(|s| s.names() == &["clone3"])
            .unwrap();
        assert_eq!(
            (enosys.action(), enosys.errno_ret()),
            (LinuxSeccompAction::ScmpActErrno, Some(38))
        );

        let admin = to_oci(profile, &caps(&["CAP_SYS_ADMIN"]), Arch::ScmpArchX86_64).unwrap();
        let allowed = names_with(&admin, LinuxSeccompAction::ScmpActAllow);
        for name in [
            "mount",
            "umount2",
            "unshare",
            "setns",
            "clone3",
            "pivot_root",
            "sethostname",
        ] {
            assert!(
                allowed.iter().any(|n| n == name),
                "{name} should be allowed with CAP_SYS_ADMIN"
            );
        }
        assert!(
            !allowed.iter().any(|n| n == "chroot"),
            "chroot needs CAP_SYS_CHROOT"
        );
        assert!(!admin
            .syscalls()
            .iter()
            .flatten()
            .any(|s| s.action() == LinuxSeccompAction::ScmpActErrno));
    }

    #[test]
    fn bad_json_names_line_and_column() {
        let error = parse_profile(b"{\n  \"defaultAction\": SCMP_ACT_ERRNO\n}")
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("seccomp profile: invalid JSON: "),
            "{error}"
        );
        assert!(error.contains("line 2 column"), "{error}");

        let error = parse_profile(br#"{"syscalls": []}"#)
            .unwrap_err()
            .to_string();
        assert!(error.contains("missing field `defaultAction`"), "{error}");
    }

    #[test]
    fn unknown_names_are_named() {
        let error = |json: &str| parse_profile(json.as_bytes()).unwrap_err().to_string();
        assert_eq!(
            error(r#"{"defaultAction": "SCMP_ACT_FOO"}"#),
            r#"seccomp profile: unknown action "SCMP_ACT_FOO""#
        );
        assert_eq!(
            error(
                r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                {"names": ["read"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["mount", "umount2"], "action": "SCMP_ACT_ERRNO", "includes": {"caps": ["CAP_X"]},
                 "args": [{"index": 1, "value": 2, "op": "SCMP_CMP_ALMOST"}]}]}"#
            ),
            r#"seccomp profile: syscall rule 1 ("mount" and 1 more): unknown op "SCMP_CMP_ALMOST""#
        );
        assert_eq!(
            error(
                r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_NOPE"}]}"#
            ),
            r#"seccomp profile: syscall rule 0 ("read"): unknown action "SCMP_ACT_NOPE""#
        );
        assert_eq!(
            error(r#"{"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_VAX"]}"#),
            r#"seccomp profile: unknown architecture "SCMP_ARCH_VAX""#
        );
        assert_eq!(
            error(r#"{"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_FAST"]}"#),
            r#"seccomp profile: unknown flag "SECCOMP_FILTER_FLAG_FAST""#
        );
        assert!(error(
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"name": "a", "names": ["b"], "action": "SCMP_ACT_LOG"}]}"#
        )
        .ends_with(r#"syscall rule 0 ("a"): "name" and "names" are both set; use one"#));
        assert!(error(
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": [], "action": "SCMP_ACT_LOG"}]}"#
        )
        .ends_with("syscall rule 0 (no names): no syscall names"));
        assert!(error(
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["a"], "action": "SCMP_ACT_LOG",
                "args": [{"index": 6, "op": "SCMP_CMP_EQ"}]}]}"#
        )
        .ends_with(r#"syscall rule 0 ("a"): argument index 6 is not in 0..=5"#));
        assert!(error(
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["a"], "action": "SCMP_ACT_LOG",
                "excludes": {"minKernel": "five"}}]}"#
        )
        .ends_with(r#"syscall rule 0 ("a"): minKernel "five" is not MAJOR.MINOR"#));
        assert!(error(
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"],
                "archMap": [{"architecture": "SCMP_ARCH_X86_64"}]}"#
        )
        .contains(r#""architectures" and "archMap" are both set"#));
    }
}
