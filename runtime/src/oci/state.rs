//! The runtime's record of each container: `<root>/<id>/`, holding `state.json` (written once
//! by `create`, atomically), the VMM process's control socket and the VM's own directory. The
//! live status is the VMM process's to tell (see [`super::control`]); a container whose VMM
//! process is gone is stopped.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Longest container id, as runc bounds them.
const MAX_ID: usize = 1024;
/// The record's file name inside the container's directory.
const RECORD: &str = "state.json";
/// The VMM process's control socket.
pub const CONTROL_SOCKET: &str = "monitor.sock";
/// The VM's directory (vsock socket, initramfs, console log): the only one the jail keeps.
pub const VM_DIR: &str = "vm";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("container id {0:?}: use 1 to {MAX_ID} characters from [A-Za-z0-9_.+-], not starting with '.'")]
    BadId(String),
    #[error("container with id exists: {0}")]
    Exists(String),
    #[error("container {0} does not exist")]
    NotFound(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Json { path: PathBuf, source: serde_json::Error },
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io { path: path.to_owned(), source }
}

/// What `create` records about a container.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    pub id: String,
    pub bundle: PathBuf,
    /// The container's root filesystem on the host, as config.json names it.
    pub rootfs: PathBuf,
    /// The VMM process, which stands in for the container's process on the host.
    pub pid: i32,
    /// Its start time (field 22 of /proc/PID/stat), so that a reused pid is not taken for it.
    pub pid_start: u64,
    /// RFC 3339, UTC.
    pub created: String,
    #[serde(default)]
    pub annotations: std::collections::BTreeMap<String, String>,
    /// config.json's hooks, for `start` (poststart) and `delete` (poststop), when the bundle
    /// may be gone.
    #[serde(default)]
    pub hooks: Option<oci_spec::runtime::Hooks>,
    /// The network namespace config.json names by path, whose interface `delete` restores
    /// (see tap_net::detach).
    #[serde(default)]
    pub network_namespace: Option<PathBuf>,
}

/// A container's directory under `--root`.
#[derive(Debug, Clone)]
pub struct ContainerDir {
    pub id: String,
    pub path: PathBuf,
}

impl ContainerDir {
    /// The directory of an existing container.
    pub fn open(root: &Path, id: &str) -> Result<Self, StateError> {
        Self::open_with(root, id, |path| path.join(RECORD).is_file())
    }

    /// The directory `create` claimed for `id`, whether or not its record is written yet.
    pub fn open_claimed(root: &Path, id: &str) -> Result<Self, StateError> {
        Self::open_with(root, id, |path| path.join(VM_DIR).is_dir())
    }

    /// `<root>/<id>` if `present` says it holds what marks it.
    fn open_with(root: &Path, id: &str, present: impl Fn(&Path) -> bool) -> Result<Self, StateError> {
        check_id(id)?;
        let path = root.join(id);
        if !present(&path) {
            return Err(StateError::NotFound(id.to_owned()));
        }
        Ok(Self { id: id.to_owned(), path })
    }

    /// Claims `<root>/<id>` for a new container (mkdir, so two creates cannot both win).
    pub fn claim(root: &Path, id: &str) -> Result<Self, StateError> {
        check_id(id)?;
        fs::create_dir_all(root).map_err(io_at(root))?;
        let path = root.join(id);
        match fs::create_dir(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(StateError::Exists(id.to_owned()))
            }
            Err(source) => return Err(StateError::Io { path, source }),
        }
        let vm = path.join(VM_DIR);
        fs::create_dir(&vm).map_err(io_at(&vm))?;
        Ok(Self { id: id.to_owned(), path })
    }

    /// Every container under `root`, by id; directories without a record (a `microvm run`
    /// sandbox, a create in progress) are not containers.
    pub fn list(root: &Path) -> Result<Vec<Self>, StateError> {
        let entries = match fs::read_dir(root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(StateError::Io { path: root.to_owned(), source }),
        };
        let mut all: Vec<Self> = entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter_map(|id| Self::open(root, &id).ok())
            .collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(all)
    }

    pub fn control_socket(&self) -> PathBuf {
        self.path.join(CONTROL_SOCKET)
    }

    pub fn vm_dir(&self) -> PathBuf {
        self.path.join(VM_DIR)
    }

    /// Writes the record: to a temporary file, then renamed over `state.json`.
    pub fn write(&self, record: &Record) -> Result<(), StateError> {
        let path = self.path.join(RECORD);
        let tmp = self.path.join(format!(".{RECORD}.tmp"));
        let json = serde_json::to_vec_pretty(record)
            .map_err(|source| StateError::Json { path: path.clone(), source })?;
        let mut file = fs::File::create(&tmp).map_err(io_at(&tmp))?;
        file.write_all(&json).and_then(|()| file.sync_all()).map_err(io_at(&tmp))?;
        fs::rename(&tmp, &path).map_err(io_at(&path))
    }

    pub fn read(&self) -> Result<Record, StateError> {
        let path = self.path.join(RECORD);
        let bytes = fs::read(&path).map_err(io_at(&path))?;
        serde_json::from_slice(&bytes).map_err(|source| StateError::Json { path, source })
    }

    /// Removes the directory and all in it.
    pub fn remove(&self) -> Result<(), StateError> {
        match fs::remove_dir_all(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(StateError::Io { path: self.path.clone(), source: e })
            }
            _ => Ok(()),
        }
    }
}

/// runc's rule, plus a bound: no `/`, no leading `.`, nothing a path could misread.
pub fn check_id(id: &str) -> Result<(), StateError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID
        && !id.starts_with('.')
        && id.chars().all(|c| c.is_ascii_alphanumeric() || "_.+-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(StateError::BadId(id.to_owned()))
    }
}

/// The start time of process `pid` (clock ticks since boot), or `None` if there is none.
pub fn process_start(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after the last ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the record's VMM process still runs (a zombie counts as gone).
pub fn alive(record: &Record) -> bool {
    let state = fs::read_to_string(format!("/proc/{}/stat", record.pid)).ok();
    let zombie = state
        .as_deref()
        .and_then(|s| s.rfind(')').map(|i| s[i + 1..].trim_start().starts_with('Z')))
        .unwrap_or(true);
    !zombie && process_start(record.pid) == Some(record.pid_start)
}

/// Now, as RFC 3339 in UTC with nanoseconds (what runc's `created` holds). By hand: no crate
/// in this workspace formats dates, and the civil-from-days step is ten lines.
pub fn now_rfc3339() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(now.as_secs() as i64, now.subsec_nanos())
}

fn rfc3339(secs: i64, nanos: u32) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        for bad in ["", ".x", "a/b", "..", "a b", &"x".repeat(MAX_ID + 1)] {
            assert!(matches!(check_id(bad), Err(StateError::BadId(_))), "{bad:?}");
        }
        for good in ["web", "a.b-c_1+2", &"f".repeat(64)] {
            check_id(good).unwrap();
        }
    }

    #[test]
    fn dates_are_rfc3339_utc() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(rfc3339(951_782_400, 5), "2000-02-29T00:00:00.000000005Z");
        assert_eq!(rfc3339(1_795_478_399, 0), "2026-11-23T23:59:59.000000000Z");
    }

    #[test]
    fn claim_record_list_and_remove() {
        let root = std::env::temp_dir().join(format!("microvm-oci-state-{}", std::process::id()));
        let dir = ContainerDir::claim(&root, "one").unwrap();
        assert!(matches!(ContainerDir::claim(&root, "one"), Err(StateError::Exists(_))));
        // Claimed but not recorded: not yet a container.
        assert!(matches!(ContainerDir::open(&root, "one"), Err(StateError::NotFound(_))));
        let me = std::process::id() as i32;
        let record = Record {
            id: "one".into(),
            bundle: "/b".into(),
            rootfs: "/b/rootfs".into(),
            pid: me,
            pid_start: process_start(me).unwrap(),
            created: now_rfc3339(),
            annotations: Default::default(),
            hooks: None,
            network_namespace: None,
        };
        dir.write(&record).unwrap();
        assert!(alive(&dir.read().unwrap()));
        let ids: Vec<_> = ContainerDir::list(&root).unwrap().into_iter().map(|d| d.id).collect();
        assert_eq!(ids, ["one"]);
        let stale = Record { pid_start: record.pid_start + 1, ..record };
        assert!(!alive(&stale), "a reused pid is not the VMM process");
        ContainerDir::open(&root, "one").unwrap().remove().unwrap();
        assert!(matches!(ContainerDir::open(&root, "one"), Err(StateError::NotFound(_))));
        fs::remove_dir_all(&root).unwrap();
    }
}
