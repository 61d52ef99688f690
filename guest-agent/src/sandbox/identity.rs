//! Who the container's process is and what it may do: rlimits, OOM score, then (after the
//! agent's go) the capability bounding set, groups, gid, uid, the other four capability sets,
//! and `no_new_privs`. The order is runc's: the bounding set is cut while the process still
//! holds CAP_SETPCAP; `PR_SET_KEEPCAPS` keeps the permitted set across the switch to a non-root
//! uid, and the final sets are written after it.

use std::collections::HashSet;

use caps::{CapSet, Capability as Cap, CapsHashSet};
use nix::sys::resource::{setrlimit, Resource};
use nix::unistd::{setgroups, setresgid, setresuid, Gid, Uid};
use oci_spec::runtime::{Capability, PosixRlimitType, Process};

use super::fail::{At, Failure};

/// `process.rlimits`, each set as given.
pub fn set_rlimits(process: &Process) -> Result<(), Failure> {
    for rlimit in process.rlimits().as_deref().unwrap_or_default() {
        let resource = resource(rlimit.typ());
        setrlimit(resource, rlimit.soft(), rlimit.hard()).at(|| {
            format!(
                "setrlimit {:?} {}/{}",
                rlimit.typ(),
                rlimit.soft(),
                rlimit.hard()
            )
        })?;
    }
    Ok(())
}

fn resource(typ: PosixRlimitType) -> Resource {
    match typ {
        PosixRlimitType::RlimitCpu => Resource::RLIMIT_CPU,
        PosixRlimitType::RlimitFsize => Resource::RLIMIT_FSIZE,
        PosixRlimitType::RlimitData => Resource::RLIMIT_DATA,
        PosixRlimitType::RlimitStack => Resource::RLIMIT_STACK,
        PosixRlimitType::RlimitCore => Resource::RLIMIT_CORE,
        PosixRlimitType::RlimitRss => Resource::RLIMIT_RSS,
        PosixRlimitType::RlimitNproc => Resource::RLIMIT_NPROC,
        PosixRlimitType::RlimitNofile => Resource::RLIMIT_NOFILE,
        PosixRlimitType::RlimitMemlock => Resource::RLIMIT_MEMLOCK,
        PosixRlimitType::RlimitAs => Resource::RLIMIT_AS,
        PosixRlimitType::RlimitLocks => Resource::RLIMIT_LOCKS,
        PosixRlimitType::RlimitSigpending => Resource::RLIMIT_SIGPENDING,
        PosixRlimitType::RlimitMsgqueue => Resource::RLIMIT_MSGQUEUE,
        PosixRlimitType::RlimitNice => Resource::RLIMIT_NICE,
        PosixRlimitType::RlimitRtprio => Resource::RLIMIT_RTPRIO,
        PosixRlimitType::RlimitRttime => Resource::RLIMIT_RTTIME,
    }
}

/// `process.oomScoreAdj`, when set.
pub fn set_oom_score_adj(process: &Process) -> Result<(), Failure> {
    if let Some(adj) = process.oom_score_adj() {
        std::fs::write("/proc/self/oom_score_adj", adj.to_string())
            .at(|| format!("set oomScoreAdj {adj}"))?;
    }
    Ok(())
}

/// The capability sets of `process.capabilities`; missing sets are empty, as runc reads them.
struct Sets {
    bounding: CapsHashSet,
    effective: CapsHashSet,
    permitted: CapsHashSet,
    inheritable: CapsHashSet,
    ambient: CapsHashSet,
}

fn to_caps(set: Option<&HashSet<Capability>>) -> Result<CapsHashSet, Failure> {
    set.into_iter()
        .flatten()
        .map(|cap| {
            let name = format!("CAP_{cap}");
            name.parse::<Cap>()
                .map_err(|_| Failure::new("set capabilities", format!("unknown capability {name}")))
        })
        .collect()
}

/// Groups, gid, uid and the capability sets, in runc's order (see the module docs).
pub fn switch_user(process: &Process) -> Result<(), Failure> {
    let caps = process.capabilities().clone().unwrap_or_default();
    let sets = Sets {
        bounding: to_caps(caps.bounding().as_ref())?,
        effective: to_caps(caps.effective().as_ref())?,
        permitted: to_caps(caps.permitted().as_ref())?,
        inheritable: to_caps(caps.inheritable().as_ref())?,
        ambient: to_caps(caps.ambient().as_ref())?,
    };
    // Capabilities this kernel does not know cannot be held anyway: skip them.
    let known = caps::runtime::procfs_all_supported(None).unwrap_or_else(|_| caps::all());
    for cap in known.iter().filter(|cap| !sets.bounding.contains(cap)) {
        caps::drop(None, CapSet::Bounding, *cap)
            .at_caps(|| format!("drop {cap} from the bounding set"))?;
    }

    let user = process.user();
    nix::sys::prctl::set_keepcaps(true).at(|| "prctl(PR_SET_KEEPCAPS)")?;
    let groups: Vec<Gid> = user
        .additional_gids()
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|g| Gid::from_raw(*g))
        .collect();
    setgroups(&groups).at(|| format!("setgroups {:?}", user.additional_gids()))?;
    let gid = Gid::from_raw(user.gid());
    setresgid(gid, gid, gid).at(|| format!("setgid {gid}"))?;
    let uid = Uid::from_raw(user.uid());
    setresuid(uid, uid, uid).at(|| format!("setuid {uid}"))?;
    nix::sys::prctl::set_keepcaps(false).at(|| "prctl(PR_SET_KEEPCAPS, 0)")?;

    // Effective first: it must stay within the permitted set at every step.
    caps::set(
        None,
        CapSet::Effective,
        &(&sets.effective & &sets.permitted),
    )
    .at_caps(|| "set the effective capabilities")?;
    caps::set(None, CapSet::Permitted, &sets.permitted)
        .at_caps(|| "set the permitted capabilities")?;
    caps::set(None, CapSet::Effective, &sets.effective)
        .at_caps(|| "set the effective capabilities")?;
    caps::set(None, CapSet::Inheritable, &sets.inheritable)
        .at_caps(|| "set the inheritable capabilities")?;
    caps::clear(None, CapSet::Ambient).at_caps(|| "clear the ambient capabilities")?;
    for cap in &sets.ambient {
        caps::raise(None, CapSet::Ambient, *cap).at_caps(|| format!("raise ambient {cap}"))?;
    }
    Ok(())
}

/// `process.noNewPrivileges`.
pub fn set_no_new_privs() -> Result<(), Failure> {
    nix::sys::prctl::set_no_new_privs().at(|| "prctl(PR_SET_NO_NEW_PRIVS)")
}

trait AtCaps<T> {
    fn at_caps<S: Into<String>>(self, step: impl FnOnce() -> S) -> Result<T, Failure>;
}

impl<T> AtCaps<T> for Result<T, caps::errors::CapsError> {
    fn at_caps<S: Into<String>>(self, step: impl FnOnce() -> S) -> Result<T, Failure> {
        self.map_err(|error| Failure::new(step(), error))
    }
}
