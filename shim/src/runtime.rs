//! The `microvm` command line, driven as containerd-shim-runc-v2 drives runc's: every verb a
//! child process with `--root` and a JSON `--log` of its own, the container's stdio handed
//! down to the processes that stand in for the container (the VMM process, an exec's stand-in).
//!
//! The runtime's one container driver stays behind its runc contract; the shim adds no
//! fourth way to build a VM or talk to the agent.

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::exits::Exits;

/// Where the runtime keeps its containers' state: one root per containerd namespace, as
/// containerd-shim-runc-v2 gives runc `/run/containerd/runc/NAMESPACE`.
const STATE_ROOT: &str = "/run/containerd/microvm";

/// The stdio a container process gets; `None` is /dev/null.
#[derive(Default)]
pub struct ProcessStdio {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

pub struct Runtime {
    binary: PathBuf,
    root: PathBuf,
    exits: Arc<Exits>,
}

impl Runtime {
    pub fn new(namespace: &str, exits: Arc<Exits>) -> Self {
        Self { binary: binary(), root: Path::new(STATE_ROOT).join(namespace), exits }
    }

    /// `microvm create`: the VMM process stands in for the container; returns its pid.
    pub fn create(&self, id: &str, bundle: &Path, console: Option<&Path>, stdio: ProcessStdio) -> Result<i32, String> {
        let pid_file = bundle.join("init.pid");
        let mut args: Vec<&OsStr> = vec!["create".as_ref(), "--bundle".as_ref(), bundle.as_os_str()];
        args.extend(["--pid-file".as_ref(), pid_file.as_os_str()]);
        if let Some(socket) = console {
            args.extend(["--console-socket".as_ref(), socket.as_os_str()]);
        }
        args.push(id.as_ref());
        self.call(&args, stdio)?;
        read_pid(&pid_file)
    }

    /// `microvm exec --detach`: a stand-in process relays the new process; returns its pid.
    pub fn exec(&self, id: &str, process: &Path, console: Option<&Path>, stdio: ProcessStdio) -> Result<i32, String> {
        let pid_file = process.with_extension("pid");
        let mut args: Vec<&OsStr> = vec!["exec".as_ref(), "--detach".as_ref(), "--process".as_ref(), process.as_os_str()];
        args.extend(["--pid-file".as_ref(), pid_file.as_os_str()]);
        if let Some(socket) = console {
            args.extend(["--console-socket".as_ref(), socket.as_os_str()]);
        }
        args.push(id.as_ref());
        let called = self.call(&args, stdio);
        let pid = called.and_then(|()| read_pid(&pid_file));
        let _ = std::fs::remove_file(&pid_file);
        pid
    }

    pub fn start(&self, id: &str) -> Result<(), String> {
        self.call(&["start".as_ref(), id.as_ref()], ProcessStdio::default())
    }

    pub fn kill(&self, id: &str, signal: u32, all: bool) -> Result<(), String> {
        let signal = signal.to_string();
        let mut args: Vec<&OsStr> = vec!["kill".as_ref()];
        if all {
            args.push("--all".as_ref());
        }
        args.extend([OsStr::new(id), OsStr::new(&signal)]);
        self.call(&args, ProcessStdio::default())
    }

    /// `microvm delete --force`: stops the VM if it still runs and removes its state.
    pub fn delete(&self, id: &str) -> Result<(), String> {
        self.call(&["delete".as_ref(), "--force".as_ref(), id.as_ref()], ProcessStdio::default())
    }

    pub fn pause(&self, id: &str) -> Result<(), String> {
        self.call(&["pause".as_ref(), id.as_ref()], ProcessStdio::default())
    }

    pub fn resume(&self, id: &str) -> Result<(), String> {
        self.call(&["resume".as_ref(), id.as_ref()], ProcessStdio::default())
    }

    /// `microvm update --resources FILE`: FILE holds config.json's `linux.resources`.
    pub fn update(&self, id: &str, resources: &Path) -> Result<(), String> {
        self.call(&["update".as_ref(), "--resources".as_ref(), resources.as_os_str(), id.as_ref()], ProcessStdio::default())
    }

    /// `microvm events --stats`: the container cgroup's counters, as runc's stats event.
    pub fn stats(&self, id: &str) -> Result<serde_json::Value, String> {
        let path = self.root.join(format!(".stats-{}-{}.json", std::process::id(), next()));
        let file = std::fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let stdio = ProcessStdio { stdout: Some(file.into()), ..Default::default() };
        let called = self.call(&["events".as_ref(), "--stats".as_ref(), id.as_ref()], stdio);
        let text = std::fs::read_to_string(&path);
        let _ = std::fs::remove_file(&path);
        called?;
        let text = text.map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("microvm events --stats: {e}: {text:?}"))
    }

    /// Runs one verb to its end; its error is the last line it logged.
    fn call(&self, args: &[&OsStr], stdio: ProcessStdio) -> Result<(), String> {
        let verb = args.first().map(|a| a.to_string_lossy().into_owned()).unwrap_or_default();
        std::fs::create_dir_all(&self.root).map_err(|e| format!("{}: {e}", self.root.display()))?;
        let log = self.root.join(format!(".log-{}-{}.json", std::process::id(), next()));
        let mut command = Command::new(&self.binary);
        command.arg("--root").arg(&self.root).arg("--log").arg(&log).arg("--log-format").arg("json").args(args);
        command.stdin(stdio.stdin.map_or_else(Stdio::null, Stdio::from));
        command.stdout(stdio.stdout.map_or_else(Stdio::null, Stdio::from));
        command.stderr(stdio.stderr.map_or_else(Stdio::null, Stdio::from));
        let child = command.spawn().map_err(|e| format!("{}: {e}", self.binary.display()))?;
        // Dropped, not waited: the reaper has it (see exits.rs); our copies of the stdio
        // descriptors went with `command` at the end of this statement's scope.
        drop(command);
        let exit = self.exits.wait(child.id() as i32);
        let logged = std::fs::read_to_string(&log).ok().and_then(|text| last_message(&text));
        let _ = std::fs::remove_file(&log);
        match exit.status {
            0 => Ok(()),
            status => Err(logged.unwrap_or_else(|| format!("microvm {verb} exited with status {status}"))),
        }
    }
}

/// `microvm` beside this binary (where install.sh puts both), else the first on PATH.
fn binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("microvm")))
        .filter(|path| path.is_file())
        .unwrap_or_else(|| PathBuf::from("microvm"))
}

fn read_pid(path: &Path) -> Result<i32, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("pid file {}: {e}", path.display()))?;
    text.trim().parse().map_err(|_| format!("pid file {}: not a pid: {text:?}", path.display()))
}

/// The `msg` of the last line of a runc-style JSON log.
fn last_message(log: &str) -> Option<String> {
    let line = log.lines().rev().find(|l| !l.trim().is_empty())?;
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    value.get("msg")?.as_str().map(str::to_string)
}

fn next() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_is_the_last_logged_message() {
        let log = "{\"level\":\"error\",\"msg\":\"first\"}\n{\"level\":\"error\",\"msg\":\"bundle /b: no config.json\"}\n\n";
        assert_eq!(last_message(log).as_deref(), Some("bundle /b: no config.json"));
        assert_eq!(last_message("not json"), None);
        assert_eq!(last_message(""), None);
    }
}
