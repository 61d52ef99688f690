//! The OCI runtime config (`config.json`) that `microvm run` builds from its flags, as docker
//! builds one from `docker run`'s: docker's default capabilities, mounts, masked and read-only
//! paths, namespaces and seccomp profile, changed by the flags. The guest agent builds the
//! container from it exactly as from a bundle's config.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{anyhow, bail, Context};
use oci_spec::runtime::{
    Arch, Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxMemoryBuilder,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder, LinuxResourcesBuilder,
    LinuxSeccomp, Mount, MountBuilder, PosixRlimit, PosixRlimitBuilder, PosixRlimitType,
    ProcessBuilder, RootBuilder, Spec, UserBuilder,
};

use crate::launch_checks::LaunchError;

/// Docker's default capability set (moby's `caps.DefaultCapabilities`).
pub const DOCKER_DEFAULT_CAPS: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// `--security-opt seccomp=...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seccomp {
    /// The project's default profile (seccomp/profiles/default.json).
    Default,
    Unconfined,
    /// A profile in Docker's or the OCI format.
    File(PathBuf),
}

/// What `run`'s flags say about the container.
#[derive(Debug, Clone)]
pub struct Options {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub terminal: bool,
    pub hostname: String,
    pub read_only: bool,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub privileged: bool,
    pub seccomp: Seccomp,
    pub no_new_privileges: bool,
    pub pids_limit: Option<i64>,
    pub memory_limit: Option<i64>,
    pub ulimits: Vec<String>,
    pub tmpfs: Vec<String>,
    /// `-v HOST:CONTAINER[:ro|rw]`: host paths shared into the container (see `volumes`).
    pub volumes: Vec<String>,
    /// A network namespace of its own (`--network none`); otherwise the guest's.
    pub network_namespace: bool,
}

/// Parses `--security-opt` values: `seccomp=unconfined|FILE`, `no-new-privileges[=true|false]`.
pub fn apply_security_opt(options: &mut Options, value: &str) -> anyhow::Result<()> {
    match value.split_once(['=', ':']) {
        Some(("seccomp", "unconfined")) => options.seccomp = Seccomp::Unconfined,
        Some(("seccomp", path)) => options.seccomp = Seccomp::File(path.into()),
        None if value == "no-new-privileges" => options.no_new_privileges = true,
        Some(("no-new-privileges", flag)) => {
            options.no_new_privileges = flag
                .parse()
                .map_err(|_| anyhow!("--security-opt {value:?}: expected true or false"))?;
        }
        _ => {
            bail!("--security-opt {value:?}: expected seccomp=FILE|unconfined or no-new-privileges")
        }
    }
    Ok(())
}

/// The spec for `options`.
pub fn build(options: &Options) -> anyhow::Result<Spec> {
    let caps = capabilities(options)?;
    let cap_set: HashSet<Capability> = caps.iter().copied().collect();
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(cap_set.clone())
        .effective(cap_set.clone())
        .permitted(cap_set.clone())
        .inheritable(HashSet::new())
        .ambient(HashSet::new())
        .build()?;
    let rlimits = options
        .ulimits
        .iter()
        .map(|u| parse_ulimit(u))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let process = ProcessBuilder::default()
        .terminal(options.terminal)
        .user(
            UserBuilder::default()
                .uid(options.uid)
                .gid(options.gid)
                .build()?,
        )
        .args(options.args.clone())
        .env(options.env.clone())
        .cwd(options.cwd.clone())
        .capabilities(capabilities)
        .rlimits(rlimits)
        .no_new_privileges(options.no_new_privileges)
        .build()?;

    let mut namespaces = vec![
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
    ];
    // A privileged container sees the guest's cgroups (as docker's --cgroupns=host): the
    // kernel lets only the initial cgroup namespace create cgroup v1 hierarchies.
    if !options.privileged {
        namespaces.push(LinuxNamespaceType::Cgroup);
    }
    if options.network_namespace {
        namespaces.push(LinuxNamespaceType::Network);
    }
    let namespaces = namespaces
        .into_iter()
        .map(|typ| LinuxNamespaceBuilder::default().typ(typ).build())
        .collect::<Result<Vec<_>, _>>()?;
    let mut resources = LinuxResourcesBuilder::default();
    if let Some(limit) = options.pids_limit {
        resources = resources.pids(LinuxPidsBuilder::default().limit(limit).build()?);
    }
    if let Some(limit) = options.memory_limit {
        resources = resources.memory(LinuxMemoryBuilder::default().limit(limit).build()?);
    }
    let defaults = oci_spec::runtime::Linux::default();
    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .resources(resources.build()?);
    linux = if options.privileged {
        linux.masked_paths(Vec::new()).readonly_paths(Vec::new())
    } else {
        linux
            .masked_paths(defaults.masked_paths().clone().unwrap_or_default())
            .readonly_paths(defaults.readonly_paths().clone().unwrap_or_default())
    };
    if let Some(seccomp) = seccomp(options, &caps)? {
        linux = linux.seccomp(seccomp);
    }

    let mut spec = Spec::default();
    spec.set_process(Some(process));
    spec.set_root(Some(
        RootBuilder::default()
            .path("rootfs")
            .readonly(options.read_only)
            .build()?,
    ));
    spec.set_hostname(Some(options.hostname.clone()));
    spec.set_mounts(Some(mounts(options)?));
    spec.set_linux(Some(linux.build()?));
    spec.set_annotations(None);
    Ok(spec)
}

/// Docker's defaults, or every capability with `--privileged`, then `--cap-drop` and
/// `--cap-add` (either may be ALL; names with or without `CAP_`, any case).
fn capabilities(options: &Options) -> anyhow::Result<Vec<Capability>> {
    let all = all_capabilities();
    let mut caps: Vec<Capability> = if options.privileged {
        all.clone()
    } else {
        DOCKER_DEFAULT_CAPS.to_vec()
    };
    for name in &options.cap_drop {
        if name.eq_ignore_ascii_case("ALL") {
            caps.clear();
        } else {
            let cap = parse_capability(name)?;
            caps.retain(|c| *c != cap);
        }
    }
    for name in &options.cap_add {
        let added = if name.eq_ignore_ascii_case("ALL") {
            all.clone()
        } else {
            vec![parse_capability(name)?]
        };
        for cap in added {
            if !caps.contains(&cap) {
                caps.push(cap);
            }
        }
    }
    Ok(caps)
}

/// Every capability oci-spec knows.
pub fn all_capabilities() -> Vec<Capability> {
    ALL_NAMES
        .iter()
        .filter_map(|name| Capability::from_str(name).ok())
        .collect()
}

/// Capability names without `CAP_`, as oci-spec's `FromStr` spells them.
const ALL_NAMES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

fn parse_capability(name: &str) -> anyhow::Result<Capability> {
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    Capability::from_str(bare).map_err(|_| anyhow!("capability {name:?}: unknown"))
}

/// The seccomp section: none when unconfined or privileged; else the profile, resolved for
/// the container's capabilities (Docker's `includes`/`excludes`).
fn seccomp(options: &Options, caps: &[Capability]) -> anyhow::Result<Option<LinuxSeccomp>> {
    let cap_names: Vec<String> = caps.iter().map(|c| format!("CAP_{c}")).collect();
    let profile = match (&options.seccomp, options.privileged) {
        (Seccomp::Unconfined, _) | (Seccomp::Default, true) => return Ok(None),
        (Seccomp::Default, false) => oci_seccomp::default_profile()
            .context("the default seccomp profile")?
            .clone(),
        (Seccomp::File(path), _) => {
            let bytes = std::fs::read(path).map_err(|e| profile_error(path, e))?;
            oci_seccomp::parse_profile(&bytes).map_err(|e| profile_error(path, e))?
        }
    };
    let resolved = oci_seccomp::to_oci(&profile, &cap_names, Arch::ScmpArchX86_64);
    let path = match &options.seccomp {
        Seccomp::File(path) => path.clone(),
        _ => PathBuf::from("(default)"),
    };
    resolved
        .map(Some)
        .map_err(|e| profile_error(&path, e).into())
}

fn profile_error(path: &Path, error: impl std::fmt::Display) -> LaunchError {
    let message = error.to_string();
    let message = message
        .strip_prefix("seccomp profile: ")
        .unwrap_or(&message)
        .to_owned();
    LaunchError::SeccompProfile {
        path: path.to_owned(),
        message,
    }
}

/// Docker's default mounts, then one tmpfs per `--tmpfs DEST[:OPTIONS]`, then one bind
/// mount per `-v`.
fn mounts(options: &Options) -> anyhow::Result<Vec<Mount>> {
    let m = |dest: &str, typ: &str, source: &str, opts: &[&str]| {
        MountBuilder::default()
            .destination(dest)
            .typ(typ)
            .source(source)
            .options(opts.iter().map(|o| (*o).to_owned()).collect::<Vec<_>>())
            .build()
    };
    let sys_mode = if options.privileged { "rw" } else { "ro" };
    let mut mounts = vec![
        m("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        m(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        m(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        )?,
        m(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )?,
        m(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        )?,
        m(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", sys_mode],
        )?,
        m(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", sys_mode],
        )?,
    ];
    for tmpfs in &options.tmpfs {
        let (dest, extra) = tmpfs.split_once(':').unwrap_or((tmpfs, ""));
        let mut opts = vec!["rw", "nosuid", "nodev", "noexec"];
        opts.extend(extra.split(',').filter(|o| !o.is_empty()));
        mounts.push(m(dest, "tmpfs", "tmpfs", &opts)?);
    }
    for volume in &options.volumes {
        let (host, dest, mode) = parse_volume(volume)?;
        mounts.push(m(dest, "bind", &host.to_string_lossy(), &["rbind", mode])?);
    }
    Ok(mounts)
}

/// `-v HOST:CONTAINER[:ro|rw]` (docker's form; a relative HOST is taken from the working
/// directory, as podman does). Named volumes are not ours to make: HOST must be a path.
fn parse_volume(value: &str) -> anyhow::Result<(PathBuf, &str, &'static str)> {
    let bad = |why: &str| anyhow!("volume {value:?}: {why} (expected HOST_PATH:CONTAINER_PATH[:ro|rw])");
    let mut parts = value.split(':');
    let (Some(host), Some(dest)) = (parts.next(), parts.next()) else { return Err(bad("no container path")) };
    let mode = match parts.next() {
        None | Some("rw") => "rw",
        Some("ro") => "ro",
        Some(other) => return Err(bad(&format!("unknown mode {other:?}"))),
    };
    if parts.next().is_some() {
        return Err(bad("too many colons"));
    }
    if host.is_empty() || dest.is_empty() {
        return Err(bad("an empty path"));
    }
    if !host.starts_with(['/', '.']) {
        return Err(bad("named volumes are not supported; give a host path"));
    }
    let host = std::path::absolute(host).map_err(|e| bad(&e.to_string()))?;
    Ok((host, dest, mode))
}

/// `--ulimit NAME=SOFT[:HARD]` (docker's form; `-1` is unlimited).
fn parse_ulimit(value: &str) -> anyhow::Result<PosixRlimit> {
    let bad = |why: &str| anyhow!("--ulimit {value:?}: {why}");
    let (name, limits) = value
        .split_once('=')
        .ok_or_else(|| bad("expected NAME=SOFT[:HARD]"))?;
    let typ = PosixRlimitType::from_str(&format!("RLIMIT_{}", name.to_ascii_uppercase()))
        .map_err(|_| bad("unknown limit name"))?;
    let number = |s: &str| -> anyhow::Result<u64> {
        if s == "-1" {
            return Ok(u64::MAX);
        }
        s.parse().map_err(|_| bad("limits are numbers or -1"))
    };
    let (soft, hard) = match limits.split_once(':') {
        Some((soft, hard)) => (number(soft)?, number(hard)?),
        None => (number(limits)?, number(limits)?),
    };
    if soft > hard {
        return Err(bad("soft limit above hard limit"));
    }
    Ok(PosixRlimitBuilder::default()
        .typ(typ)
        .soft(soft)
        .hard(hard)
        .build()?)
}

/// A size as docker takes it: bytes, or a number with b, k, m or g (any case).
pub fn parse_size(value: &str) -> anyhow::Result<i64> {
    let bad = || anyhow!("size {value:?}: expected a number with an optional b, k, m or g");
    let lower = value.to_ascii_lowercase();
    let (digits, shift) = match lower.as_bytes().last() {
        Some(b'b') => (&lower[..lower.len() - 1], 0),
        Some(b'k') => (&lower[..lower.len() - 1], 10),
        Some(b'm') => (&lower[..lower.len() - 1], 20),
        Some(b'g') => (&lower[..lower.len() - 1], 30),
        _ => (lower.as_str(), 0),
    };
    let number: i64 = digits.parse().map_err(|_| bad())?;
    number
        .checked_mul(1 << shift)
        .filter(|n| *n > 0)
        .ok_or_else(bad)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    fn options() -> Options {
        Options {
            args: vec!["sh".into()],
            env: vec!["PATH=/bin".into()],
            cwd: "/".into(),
            uid: 0,
            gid: 0,
            terminal: false,
            hostname: "box".into(),
            read_only: false,
            cap_add: vec![],
            cap_drop: vec![],
            privileged: false,
            seccomp: Seccomp::Default,
            no_new_privileges: false,
            pids_limit: None,
            memory_limit: None,
            ulimits: vec![],
            tmpfs: vec![],
            volumes: vec![],
            network_namespace: false,
        }
    }

    fn effective(spec: &Spec) -> HashSet<Capability> {
        let process = spec.process().as_ref().unwrap();
        process
            .capabilities()
            .as_ref()
            .unwrap()
            .effective()
            .clone()
            .unwrap()
    }

    #[test]
    fn defaults_are_dockers() {
        let spec = build(&options()).unwrap();
        assert_eq!(effective(&spec), DOCKER_DEFAULT_CAPS.into_iter().collect());
        let linux = spec.linux().as_ref().unwrap();
        assert!(linux.seccomp().is_some());
        assert!(linux
            .masked_paths()
            .as_ref()
            .unwrap()
            .contains(&"/proc/kcore".to_string()));
        let namespaces: Vec<_> = linux
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| n.typ())
            .collect();
        assert!(namespaces.contains(&LinuxNamespaceType::Pid));
        assert!(!namespaces.contains(&LinuxNamespaceType::Network));
        crate::launch_checks::check_spec(&spec, &Default::default()).unwrap();
        // What the agent receives survives JSON.
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(serde_json::from_str::<Spec>(&json).unwrap(), spec);
    }

    #[test]
    fn capability_flags() {
        let mut o = options();
        o.cap_drop = vec!["ALL".into()];
        assert!(effective(&build(&o).unwrap()).is_empty());
        o.cap_add = vec!["sys_admin".into(), "CAP_NET_ADMIN".into()];
        assert_eq!(
            effective(&build(&o).unwrap()),
            [Capability::SysAdmin, Capability::NetAdmin].into()
        );
        o.cap_add = vec!["CAP_NOPE".into()];
        assert!(build(&o)
            .unwrap_err()
            .to_string()
            .contains("\"CAP_NOPE\": unknown"));
        let mut o = options();
        o.privileged = true;
        let spec = build(&o).unwrap();
        assert_eq!(effective(&spec).len(), ALL_NAMES.len());
        assert!(spec.linux().as_ref().unwrap().seccomp().is_none());
        assert_eq!(
            spec.linux().as_ref().unwrap().masked_paths().as_deref(),
            Some(&[][..])
        );
    }

    #[test]
    fn security_opts() {
        let mut o = options();
        apply_security_opt(&mut o, "seccomp=unconfined").unwrap();
        assert_eq!(o.seccomp, Seccomp::Unconfined);
        assert!(build(&o)
            .unwrap()
            .linux()
            .as_ref()
            .unwrap()
            .seccomp()
            .is_none());
        apply_security_opt(&mut o, "no-new-privileges").unwrap();
        assert!(o.no_new_privileges);
        apply_security_opt(&mut o, "no-new-privileges=false").unwrap();
        assert!(!o.no_new_privileges);
        assert!(apply_security_opt(&mut o, "apparmor=x").is_err());
        apply_security_opt(&mut o, "seccomp=/no/such/profile.json").unwrap();
        let error = build(&o).unwrap_err().to_string();
        assert!(
            error.starts_with("seccomp profile /no/such/profile.json: "),
            "{error}"
        );
    }

    #[test]
    fn a_profile_that_does_not_parse_is_named() {
        let path =
            std::env::temp_dir().join(format!("microvm-profile-{}.json", std::process::id()));
        std::fs::write(&path, r#"{"defaultAction": "SCMP_ACT_NOPE"}"#).unwrap();
        let mut o = options();
        o.seccomp = Seccomp::File(path.clone());
        let error = build(&o).unwrap_err().to_string();
        assert!(
            error.contains(&path.display().to_string()) && error.contains("SCMP_ACT_NOPE"),
            "{error}"
        );
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn limits_tmpfs_and_sizes() {
        let mut o = options();
        o.pids_limit = Some(100);
        o.memory_limit = Some(parse_size("64m").unwrap());
        o.ulimits = vec!["nofile=100:200".into(), "nproc=-1".into()];
        o.tmpfs = vec!["/tmp:size=1m,mode=1777".into()];
        let spec = build(&o).unwrap();
        let resources = spec.linux().as_ref().unwrap().resources().clone().unwrap();
        assert_eq!(resources.pids().as_ref().unwrap().limit(), 100);
        assert_eq!(resources.memory().as_ref().unwrap().limit(), Some(64 << 20));
        let rlimits = spec.process().as_ref().unwrap().rlimits().clone().unwrap();
        assert_eq!(
            (rlimits[0].typ(), rlimits[0].soft(), rlimits[0].hard()),
            (PosixRlimitType::RlimitNofile, 100, 200)
        );
        assert_eq!(rlimits[1].hard(), u64::MAX);
        let tmp = spec.mounts().as_ref().unwrap().last().unwrap().clone();
        assert_eq!(tmp.destination(), Path::new("/tmp"));
        assert!(tmp
            .options()
            .as_ref()
            .unwrap()
            .contains(&"size=1m".to_string()));
        assert!(parse_ulimit("nofile=2:1").is_err());
        assert!(parse_ulimit("bogus=1").is_err());
        assert!(parse_size("12x").is_err());
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
    }
}
