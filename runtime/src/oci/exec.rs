//! `exec`: another process in a running container, as podman's `exec` and healthchecks ask
//! runc for one. Inside the guest the agent starts it in the container (ExecProcess: the
//! container's namespaces, cgroup and seccomp filter, the process's own identity). On the host
//! a process of ours stands in for it, as the VMM process does for the container's: it relays
//! the process's stdio (or a pty whose master goes to `--console-socket`), forwards the signals
//! it gets and the window size, and exits with the process's status (128+N for signal N).
//!
//! Without `--detach` the verb itself stands in. With it, the stand-in is a child started for
//! the purpose (the hidden `exec-process` subcommand) that says "ok" on a pipe once the process
//! runs; then the pid file is written and the verb returns, and the caller, a subreaper as
//! conmon is, adopts the stand-in.

use std::fs::File;
use std::io::Write;
use std::os::fd::{FromRawFd, RawFd};
use std::path::Path;

use anyhow::{anyhow, bail, Context};
use oci_spec::runtime::{Process, Spec};
use protocol::{ErrorKind, ExecProcess, Request, Response};

use super::console;
use super::control::{self, ControlAnswer, ControlRequest, Status};
use super::monitor::{relay, terminal_size, Relay};
use super::state::{self, ContainerDir};
use crate::launch_checks::{self, Policy};
use crate::session::Session;

/// Where a detached `exec` puts its pipe's write end in the stand-in.
pub const READY_FD: RawFd = 3;

/// The process `exec` runs: `--process FILE` as given, else the container's own process
/// (from its bundle) with `command`, `env` added, and `cwd` and `tty` if given, as runc does.
pub fn resolve(
    bundle: &Path,
    process_file: Option<&Path>,
    command: &[String],
    env: &[String],
    cwd: Option<&str>,
    tty: bool,
) -> anyhow::Result<Process> {
    let mut process = match process_file {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("process {}", path.display()))?;
            serde_json::from_str::<Process>(&text).with_context(|| format!("process {}", path.display()))?
        }
        None => {
            let config = bundle.join("config.json");
            let text = std::fs::read_to_string(&config).with_context(|| format!("{}", config.display()))?;
            let spec: Spec = serde_json::from_str(&text).with_context(|| format!("{}", config.display()))?;
            let mut process = spec.process().clone().unwrap_or_default();
            process.set_args(Some(command.to_vec()));
            process.set_terminal(Some(tty));
            process
        }
    };
    if !env.is_empty() {
        let mut all = process.env().clone().unwrap_or_default();
        all.extend(env.iter().cloned());
        process.set_env(Some(all));
    }
    if let Some(cwd) = cwd {
        process.set_cwd(cwd.into());
    }
    // The launch checks that concern a process (args, cwd, env names, ids).
    let mut spec = Spec::default();
    spec.set_mounts(None);
    spec.set_process(Some(process.clone()));
    let policy = Policy { require_nonroot: false, root_inside_bundle: false };
    launch_checks::check_spec(&spec, &policy)?;
    Ok(process)
}

/// Refuses an exec into a container that is not running, in runc's words.
pub fn check_running(dir: &ContainerDir, record: &state::Record) -> anyhow::Result<()> {
    let status = if state::alive(record) {
        match control::call(&dir.control_socket(), &ControlRequest::Status) {
            Ok(ControlAnswer::Status(status)) => status,
            _ => Status::Stopped,
        }
    } else {
        Status::Stopped
    };
    match status {
        Status::Stopped => bail!("cannot exec in a stopped container"),
        Status::Paused => bail!("cannot exec in a paused container"),
        Status::Created | Status::Running => Ok(()),
    }
}

/// Runs the process and stands in for it until it ends; returns its exit code.
pub fn run_attached(root: &Path, id: &str, process: Process, console_socket: Option<&Path>) -> anyhow::Result<u8> {
    Ok(start(root, id, process, console_socket)?.serve())
}

/// The detached stand-in's main: says "ok" (or the error) on READY_FD, then stands in.
pub fn stand_in(root: &Path, id: &str, process_json: &str, console_socket: Option<&Path>) -> u8 {
    // SAFETY: `exec` placed its pipe's write end at READY_FD for this process alone; main kept
    // it open and nothing else here owns it.
    let mut ready = unsafe { File::from_raw_fd(READY_FD) };
    let started = serde_json::from_str::<Process>(process_json)
        .map_err(|e| anyhow!("process: {e}"))
        .and_then(|process| start(root, id, process, console_socket));
    match started {
        Err(e) => {
            let _ = writeln!(ready, "{}", crate::errors::one_line(&e));
            1
        }
        Ok(running) => {
            let _ = ready.write_all(b"ok\n");
            drop(ready);
            running.serve()
        }
    }
}

/// An exec'd process and what relays it.
struct Running {
    session: Session,
    pid: u32,
    relay: Relay,
}

fn start(root: &Path, id: &str, process: Process, console_socket: Option<&Path>) -> anyhow::Result<Running> {
    let dir = ContainerDir::open(root, id)?;
    let program = process.args().as_ref().and_then(|a| a.first()).cloned().unwrap_or_default();
    let pty = process
        .terminal()
        .unwrap_or(false)
        .then(|| console::hand_over(console_socket))
        .transpose()?;
    // The VM's socket is reached by name from its directory (see control::enter_dir_of).
    let vm_dir = dir.vm_dir();
    std::env::set_current_dir(&vm_dir).with_context(|| format!("{}", vm_dir.display()))?;
    let uds = Path::new(crate::vm::VSOCK_SOCKET);
    let mut session = Session::attach(uds).map_err(|e| e.context(format!("container {id}")))?;
    let request = ExecProcess { process: Box::new(process), terminal: terminal_size(pty.as_ref()), stdin: true };
    let pid = match session.call(Request::ExecProcess(request))? {
        Response::ProcessStarted { pid, .. } => pid,
        // The words podman looks for to answer 127.
        Response::Error { kind: ErrorKind::NotFound, .. } => {
            bail!("exec: {program:?}: executable file not found in $PATH")
        }
        Response::Error { kind: ErrorKind::NotExecutable, message } => bail!("exec: {message}: permission denied"),
        Response::Error { message, .. } => bail!("exec: {message}"),
        other => bail!("agent answered ExecProcess with {other:?}"),
    };
    let relay = relay(&mut session, uds, pid, pty)?;
    Ok(Running { session, pid, relay })
}

impl Running {
    /// Relays until the process has exited and its output is out; returns its exit code.
    fn serve(mut self) -> u8 {
        let status = self.session.wait_exit(self.pid, Some(&self.relay.responses));
        for output in self.relay.outputs {
            let _ = output.join();
        }
        match status {
            Ok(status) => status.shell_code().clamp(0, 255) as u8,
            Err(e) => {
                eprintln!("microvm: exec: {}", crate::errors::one_line(&e));
                125
            }
        }
    }
}
