//! The container's cgroup (v2, which the agent mounts at [`CGROUP_ROOT`]): created under the
//! guest's root cgroup with the spec's limits, and joined by the setup process before it forks
//! the container, so every process of the container is counted and limited. The agent itself
//! stays in the root cgroup, out of reach of a fork bomb's `pids.max` or the container's
//! `memory.max`.

use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::{LinuxCpu, LinuxResources, Spec};

use super::fail::{At, Failure};

pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The cgroup of a spec without `linux.cgroupsPath`.
const DEFAULT_NAME: &str = "container";
/// Controllers the container's cgroup gets.
const CONTROLLERS: [&str; 3] = ["cpu", "memory", "pids"];

/// Creates the container's cgroup, writes its limits, and moves this process into it.
pub fn setup(spec: &Spec) -> Result<PathBuf, Failure> {
    let linux = spec.linux().clone().unwrap_or_default();
    let relative = relative_path(linux.cgroups_path().as_deref());
    let root = Path::new(CGROUP_ROOT);
    let cgroup = root.join(&relative);

    // Each ancestor hands the controllers down to its children.
    let mut parent = root.to_path_buf();
    for component in relative.components() {
        enable_controllers(&parent);
        parent.push(component);
        std::fs::create_dir_all(&parent).at(|| format!("create cgroup {}", parent.display()))?;
    }

    if let Some(resources) = linux.resources() {
        apply(&cgroup, resources)?;
    }
    write(&cgroup, "cgroup.procs", "0")?;
    Ok(cgroup)
}

/// The container's cgroup directory, as [`setup`] made it.
pub fn path_of(spec: &Spec) -> PathBuf {
    let linux = spec.linux().clone().unwrap_or_default();
    Path::new(CGROUP_ROOT).join(relative_path(linux.cgroups_path().as_deref()))
}

/// The counters of the container's cgroup: `cpu.stat`, `memory.current`, `memory.max`,
/// `memory.stat`, `pids.current`, `pids.max`. A file the kernel does not offer (a controller
/// not enabled) reads as zero or no limit.
pub fn stats(cgroup: &Path) -> Result<protocol::CgroupStats, Failure> {
    if !cgroup.is_dir() {
        return Err(Failure::new("read the cgroup's counters", format!("{} does not exist", cgroup.display())));
    }
    let read = |file: &str| std::fs::read_to_string(cgroup.join(file)).unwrap_or_default();
    Ok(protocol::CgroupStats {
        cpu: flat_keyed(&read("cpu.stat")),
        memory_current: read("memory.current").trim().parse().unwrap_or(0),
        memory_max: limit(&read("memory.max")),
        memory: flat_keyed(&read("memory.stat")),
        pids_current: read("pids.current").trim().parse().unwrap_or(0),
        pids_max: limit(&read("pids.max")),
    })
}

/// A cgroup v2 flat-keyed file ("key value" per line); lines that do not parse are skipped.
fn flat_keyed(text: &str) -> std::collections::BTreeMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let (key, value) = line.split_once(' ')?;
            Some((key.to_owned(), value.trim().parse().ok()?))
        })
        .collect()
}

/// A limit file: a number, or "max" (or nothing readable) for no limit.
fn limit(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// Moves this process into the cgroup of process `pid` (OCI `exec`: the new process is
/// counted and limited with the container's).
pub fn join_of(pid: u32) -> Result<(), Failure> {
    let listing = format!("/proc/{pid}/cgroup");
    let text = std::fs::read_to_string(&listing).at(|| format!("read {listing}"))?;
    // cgroup v2 only: one line, "0::/path".
    let relative = text
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .ok_or_else(|| Failure::new(format!("read {listing}"), "no cgroup v2 entry"))?;
    let cgroup = Path::new(CGROUP_ROOT).join(relative_path(Some(Path::new(relative))));
    write(&cgroup, "cgroup.procs", "0")
}

/// Writes the limits `resources` sets (pids, memory, cpu) into `cgroup`; others stay.
pub fn apply(cgroup: &Path, resources: &LinuxResources) -> Result<(), Failure> {
    if let Some(limit) = resources.pids().as_ref().map(|p| p.limit()) {
        let value = if limit > 0 {
            limit.to_string()
        } else {
            "max".into()
        };
        write(cgroup, "pids.max", &value)?;
    }
    if let Some(memory) = resources.memory() {
        if let Some(limit) = memory.limit() {
            let value = if limit > 0 {
                limit.to_string()
            } else {
                "max".into()
            };
            write(cgroup, "memory.max", &value)?;
        }
        if let Some(reservation) = memory.reservation().filter(|r| *r > 0) {
            write(cgroup, "memory.low", &reservation.to_string())?;
        }
    }
    if let Some(cpu) = resources.cpu() {
        if let Some(max) = cpu_max(cpu) {
            write(cgroup, "cpu.max", &max)?;
        }
        if let Some(shares) = cpu.shares().filter(|s| *s > 0) {
            write(cgroup, "cpu.weight", &shares_to_weight(shares).to_string())?;
        }
    }
    Ok(())
}

/// `linux.cgroupsPath` as a path under the root: only its normal components (no `..`, no
/// root), with systemd's `slice:prefix:name` form flattened; the default when empty.
pub fn relative_path(cgroups_path: Option<&Path>) -> PathBuf {
    let mut relative = PathBuf::new();
    if let Some(path) = cgroups_path {
        for component in path.components() {
            if let Component::Normal(name) = component {
                relative.push(name.to_string_lossy().replace(':', "-"));
            }
        }
    }
    if relative.as_os_str().is_empty() {
        relative.push(DEFAULT_NAME);
    }
    relative
}

/// `cpu.max` ("quota period") from the CFS quota and period, if a quota is set.
fn cpu_max(cpu: &LinuxCpu) -> Option<String> {
    let quota = cpu.quota().filter(|q| *q != 0)?;
    let period = cpu.period().unwrap_or(100_000);
    Some(if quota < 0 {
        format!("max {period}")
    } else {
        format!("{quota} {period}")
    })
}

/// cgroup v1 `cpu.shares` (2..=262144) to v2 `cpu.weight` (1..=10000), as runc converts.
pub fn shares_to_weight(shares: u64) -> u64 {
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9999) / 262_142
}

/// Best effort: a controller the kernel lacks is simply not enabled; writing its limit fails
/// later with a message naming the file.
fn enable_controllers(cgroup: &Path) {
    let control = cgroup.join("cgroup.subtree_control");
    for controller in CONTROLLERS {
        let _ = std::fs::write(&control, format!("+{controller}"));
    }
}

fn write(cgroup: &Path, file: &str, value: &str) -> Result<(), Failure> {
    let path = cgroup.join(file);
    std::fs::write(&path, value).at(|| format!("write {value:?} to {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_read_as_the_kernel_writes_them() {
        let dir = std::env::temp_dir().join(format!("microvm-cgroup-stats-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cpu.stat"), "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nbogus\n").unwrap();
        std::fs::write(dir.join("memory.current"), "8192\n").unwrap();
        std::fs::write(dir.join("memory.max"), "max\n").unwrap();
        std::fs::write(dir.join("memory.stat"), "anon 4096\nfile 4096\n").unwrap();
        std::fs::write(dir.join("pids.current"), "3\n").unwrap();
        std::fs::write(dir.join("pids.max"), "50\n").unwrap();
        let stats = stats(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(stats.cpu.get("usage_usec"), Some(&1500));
        assert_eq!(stats.cpu.len(), 3);
        assert_eq!((stats.memory_current, stats.memory_max), (8192, None));
        assert_eq!(stats.memory.get("anon"), Some(&4096));
        assert_eq!((stats.pids_current, stats.pids_max), (3, Some(50)));
        assert!(super::stats(Path::new("/nonexistent/cgroup")).is_err());
    }

    #[test]
    fn cgroup_paths_stay_under_the_root() {
        let r = |p: &str| relative_path(Some(Path::new(p)));
        assert_eq!(r("/a/b"), PathBuf::from("a/b"));
        assert_eq!(r("../../etc"), PathBuf::from("etc"));
        assert_eq!(
            r("machine.slice:libpod:abc"),
            PathBuf::from("machine.slice-libpod-abc")
        );
        assert_eq!(r("/"), PathBuf::from(DEFAULT_NAME));
        assert_eq!(relative_path(None), PathBuf::from(DEFAULT_NAME));
    }

    #[test]
    fn shares_map_onto_weights_as_runc_does() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(0), 1);
    }
}
