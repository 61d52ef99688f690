//! The container's user namespace (`linux.uidMappings`, `linux.gidMappings`), made as runc
//! makes it: created with the other namespaces in one `unshare`, so that they belong to it and
//! the container's root has its capabilities over them (it can mount, set its hostname), then
//! mapped, then entered as its root.
//!
//! A process cannot write arbitrary maps for its own new namespace: that takes CAP_SETUID and
//! CAP_SETGID in the *parent* namespace, which it left. So a helper, forked before the
//! `unshare` and so still in the guest's namespace, writes them: [`Mapper::start`] forks it,
//! [`Mapper::map`] tells it to go once the namespace exists and waits for its answer.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, getppid, setgroups, setresgid, setresuid, ForkResult, Gid, Pid, Uid};
use oci_spec::runtime::{LinuxIdMapping, Spec};

use super::fail::{At, Failure};

/// `/proc/PID/uid_map` text: one `inside outside count` line per mapping.
fn map_text(mappings: &[LinuxIdMapping]) -> String {
    mappings.iter().map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size())).collect()
}

/// The helper that writes the maps, waiting for its go.
pub struct Mapper {
    pid: Pid,
    stream: UnixStream,
}

impl Mapper {
    /// Forks the helper (before the `unshare`). Mappings missing for a user namespace are the
    /// request's fault, as runc refuses them.
    pub fn start(spec: &Spec) -> Result<Self, Failure> {
        let linux = spec.linux().clone().unwrap_or_default();
        let uid_map = map_text(linux.uid_mappings().as_deref().unwrap_or_default());
        let gid_map = map_text(linux.gid_mappings().as_deref().unwrap_or_default());
        if uid_map.is_empty() || gid_map.is_empty() {
            let message = "a user namespace needs linux.uidMappings and linux.gidMappings";
            return Err(Failure::new("create the user namespace", message).invalid());
        }
        let (ours, theirs) = UnixStream::pair().at(|| "make the user namespace helper's socket")?;
        // SAFETY: this process is single-threaded; the child only reads, writes files and
        // exits.
        match unsafe { fork() }.at(|| "fork the user namespace helper")? {
            ForkResult::Parent { child } => Ok(Mapper { pid: child, stream: ours }),
            ForkResult::Child => {
                drop(ours);
                let code = i32::from(write_maps(theirs, &uid_map, &gid_map).is_err());
                // Not `exit`: the parent's buffers and handlers are not this child's to run.
                // SAFETY: _exit ends this forked child at once; nothing is shared to unwind.
                unsafe { libc::_exit(code) }
            }
        }
    }

    /// Once the namespace exists: the helper writes the maps, then this process becomes the
    /// namespace's root (uid and gid 0 inside, no supplementary groups), as runc's does before
    /// it builds the container.
    pub fn map(mut self) -> Result<(), Failure> {
        let step = "map the user namespace (linux.uidMappings, linux.gidMappings)";
        self.stream.write_all(b"go").at(|| step)?;
        let mut answer = String::new();
        self.stream.read_to_string(&mut answer).at(|| step)?;
        let status = waitpid(self.pid, None).at(|| step)?;
        if answer != "ok" || status != WaitStatus::Exited(self.pid, 0) {
            let said = if answer.is_empty() { format!("the helper ended with {status:?}") } else { answer };
            return Err(Failure::new(step, said).invalid());
        }
        enter_as_root()
    }
}

/// In the helper: waits for the go, writes its parent's maps, answers "ok" or what failed.
fn write_maps(mut stream: UnixStream, uid_map: &str, gid_map: &str) -> std::io::Result<()> {
    let mut go = [0u8; 2];
    stream.read_exact(&mut go)?;
    let parent = getppid();
    let written = std::fs::write(format!("/proc/{parent}/uid_map"), uid_map)
        .map_err(|e| format!("write uid_map {:?}: {e}", uid_map.trim_end()))
        .and_then(|()| {
            std::fs::write(format!("/proc/{parent}/gid_map"), gid_map)
                .map_err(|e| format!("write gid_map {:?}: {e}", gid_map.trim_end()))
        });
    let answer = match &written {
        Ok(()) => "ok".to_owned(),
        Err(message) => message.clone(),
    };
    stream.write_all(answer.as_bytes())?;
    written.map_err(std::io::Error::other)
}

/// uid and gid 0 of the namespace this process is in (the container's root must be mapped,
/// as runc needs it to be), with no supplementary groups.
pub fn enter_as_root() -> Result<(), Failure> {
    let root = || "become root in the user namespace (is container id 0 in linux.uidMappings and linux.gidMappings?)";
    setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0)).at(root).map_err(Failure::invalid)?;
    setgroups(&[]).at(root)?;
    setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0)).at(root).map_err(Failure::invalid)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn maps_are_one_line_per_mapping() {
        let mapping = |inside: u32, outside: u32, size: u32| {
            oci_spec::runtime::LinuxIdMappingBuilder::default()
                .container_id(inside)
                .host_id(outside)
                .size(size)
                .build()
                .unwrap()
        };
        assert_eq!(map_text(&[mapping(0, 100000, 65536)]), "0 100000 65536\n");
        assert_eq!(map_text(&[mapping(0, 1000, 1), mapping(1, 100000, 65535)]), "0 1000 1\n1 100000 65535\n");
        assert_eq!(map_text(&[]), "");
    }
}
