//! Starting the container process, from the agent's side.
//!
//! In the guest ([`SpawnConfig::guest`]) the agent does not fork the command itself. It starts
//! a fresh copy of its own binary (`/proc/self/exe`, argv[0] [`sandbox::ARGV0`]) with the
//! process's stdio and one end of a socket pair as fd 3, and sends it the OCI config. That copy,
//! single-threaded and with a clean heap (unlike a child forked from the multi-threaded agent),
//! builds the container as runc's `init` does: it joins the cgroup, unshares the namespaces and
//! forks the container's PID 1, which mounts, pivots, and waits for the agent's go before it
//! drops privileges and execs (see [`crate::sandbox`]). The intermediate copy exits, so the
//! container process is re-parented to the agent, PID 1 of the guest, whose reaper collects it.
//!
//! The agent registers the pid with the reaper before it says go, so the exit status of the
//! command cannot be reaped unseen.
//!
//! For unit tests on the host ([`SpawnConfig::direct`]) the command is forked directly with
//! std's `Command`: environment, cwd, a new session and the terminal, nothing else.

use std::ffi::{CString, NulError};
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use protocol::{ErrorKind, StartProcess};

use crate::boot_timer;
use crate::reaper::{OnExit, Reaper};
use crate::sandbox::channel::{Channel, FromContainer, ToContainer, CHANNEL_FD, CONSOLE_FD};
use crate::sandbox::ARGV0;
use crate::stdio::{open_pty, StdinSink, StdioError};

/// How long building a container may take before the agent gives up on it.
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);

/// How the process is started.
#[derive(Debug, Clone)]
pub struct SpawnConfig {
    /// Build the container as the spec says (namespaces, mounts, identity, seccomp).
    pub sandbox: bool,
    /// Tell the VMM's boot timer that the process is about to start.
    pub boot_timer: bool,
}

impl SpawnConfig {
    /// As in the guest: the full sandbox.
    pub fn guest() -> Self {
        SpawnConfig {
            sandbox: true,
            boot_timer: true,
        }
    }

    /// No sandbox, no I/O port: for unit tests on the host.
    #[cfg(test)]
    pub fn direct() -> Self {
        SpawnConfig {
            sandbox: false,
            boot_timer: false,
        }
    }
}

/// A started process and the agent's ends of its stdio.
#[derive(Debug)]
pub struct Spawned {
    pub pid: u32,
    /// How long building the container took (zero without a sandbox).
    pub setup: Duration,
    /// The terminal's master, when the process has a terminal.
    pub terminal: Option<OwnedFd>,
    /// Where the host's stdin goes, when the host will send any.
    pub stdin: Option<StdinSink>,
    /// The process's stdout, or its terminal's output.
    pub stdout: OwnedFd,
    /// The process's stderr (none with a terminal).
    pub stderr: Option<OwnedFd>,
    /// With `hold`, the container is built and its process waits just before exec until this
    /// releases it (OCI `create`, then `start`).
    pub held: Option<Held>,
}

/// A built container whose process waits for [`Held::release`] before it execs.
pub struct Held {
    channel: Channel,
    program: String,
}

impl fmt::Debug for Held {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Held").field("program", &self.program).finish_non_exhaustive()
    }
}

impl Held {
    /// Lets the process exec, and waits until it did (or says why it could not).
    pub fn release(mut self) -> Result<(), SpawnError> {
        go(&mut self.channel, &self.program)
    }
}

/// Sends Go and waits for the end of the stream: execve succeeded and closed the container's
/// end of the channel.
fn go(channel: &mut Channel, program: &str) -> Result<(), SpawnError> {
    let channel_error = |source| SpawnError::Channel {
        program: program.to_owned(),
        source,
    };
    channel.send(&ToContainer::Go).map_err(channel_error)?;
    match channel.recv().map_err(channel_error)? {
        None => Ok(()),
        other => Err(unexpected(program, other)),
    }
}

/// A setup step of the direct path, between fork and exec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Step {
    Chdir = 1,
    Setsid,
    ControllingTerminal,
}

impl Step {
    fn from_byte(byte: u8) -> Option<Step> {
        [Step::Chdir, Step::Setsid, Step::ControllingTerminal]
            .into_iter()
            .find(|step| *step as u8 == byte)
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::Chdir => "chdir to the working directory",
            Step::Setsid => "setsid",
            Step::ControllingTerminal => "make the terminal the controlling terminal",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("start process: no command (process.args is empty)")]
    NoArgs,
    #[error("start process: {what} holds a NUL byte")]
    Nul {
        what: &'static str,
        source: NulError,
    },
    #[error("start process: environment entry {0:?} is not KEY=value")]
    BadEnv(String),
    #[error("start process: {0}")]
    Stdio(#[from] StdioError),
    #[error("start process: {what}: {source}")]
    Fd {
        what: &'static str,
        source: io::Error,
    },
    #[error("start {program}: {what}: {source}")]
    Setup {
        program: String,
        step: Step,
        /// The step, with the directory for a chdir.
        what: String,
        source: io::Error,
    },
    #[error("start {program}: build the container: {step}: {message}")]
    Container {
        program: String,
        step: String,
        message: String,
        invalid_request: bool,
    },
    #[error("start {program}: the container setup process: {source}")]
    Channel { program: String, source: io::Error },
    #[error("{program}: {source}")]
    Exec { program: String, source: io::Error },
    #[error("create a process without starting it: only in a sandbox")]
    NoHold,
}

impl SpawnError {
    /// What the host is told, and so the exit code of `microvm run`.
    pub fn kind(&self) -> ErrorKind {
        match self {
            SpawnError::NoArgs | SpawnError::Nul { .. } | SpawnError::BadEnv(_) => {
                ErrorKind::InvalidRequest
            }
            SpawnError::Container {
                invalid_request: true,
                ..
            }
            | SpawnError::Setup {
                step: Step::Chdir, ..
            } => ErrorKind::InvalidRequest,
            SpawnError::Exec { source, .. } => ErrorKind::from_exec_error(source),
            SpawnError::Stdio(_)
            | SpawnError::Fd { .. }
            | SpawnError::Setup { .. }
            | SpawnError::Container { .. }
            | SpawnError::Channel { .. } => ErrorKind::Other,
            SpawnError::NoHold => ErrorKind::InvalidRequest,
        }
    }
}

/// How a process starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// In a new container, at once.
    Start,
    /// In a new container, held before exec until [`Spawned::held`] releases it (OCI
    /// `create`; sandboxed path only).
    Create,
    /// In the container whose process is this pid (OCI `exec`). The direct path has no
    /// container and starts it like any other.
    Join(u32),
}

/// Starts `request` under `reaper`, which calls `on_exit` when the process ends.
pub fn spawn(
    request: &StartProcess,
    config: &SpawnConfig,
    reaper: &Reaper,
    on_exit: OnExit,
    mode: Mode,
) -> Result<Spawned, SpawnError> {
    let process = request.process();
    let args = process.args().clone().unwrap_or_default();
    let env = process.env().clone().unwrap_or_default();
    let program = args.first().ok_or(SpawnError::NoArgs)?.clone();
    check_no_nul("args", &args)?;
    check_no_nul("env", &env)?;
    for entry in &env {
        if !matches!(entry.split_once('='), Some((key, _)) if !key.is_empty()) {
            return Err(SpawnError::BadEnv(entry.clone()));
        }
    }

    let mut command = if config.sandbox {
        let mut command = Command::new("/proc/self/exe");
        command.arg0(ARGV0).env_clear();
        command
    } else {
        let mut command = Command::new(&program);
        command.args(&args[1..]).env_clear();
        for (key, value) in env.iter().filter_map(|e| e.split_once('=')) {
            command.env(key, value);
        }
        command
    };
    // In a sandbox the container makes its terminal on its own devpts (see start_sandboxed).
    let stdio = attach_stdio(&mut command, request, !config.sandbox)?;

    if config.sandbox {
        start_sandboxed(command, request, &program, stdio, config, reaper, on_exit, mode)
    } else if mode == Mode::Create {
        Err(SpawnError::NoHold)
    } else {
        start_direct(command, request, &program, stdio, reaper, on_exit)
    }
}

/// The agent's ends of the process's stdio, before the process runs.
struct AgentStdio {
    /// (master, its copy for stdout, its copy for stdin) with a terminal.
    terminal: Option<(OwnedFd, OwnedFd, Option<StdinSink>)>,
}

/// Gives `command` the process's stdio: a terminal's slave (made here when `make_terminal`,
/// else nothing: the container makes its own), or pipes (stdin from /dev/null unless the host
/// sends some).
fn attach_stdio(
    command: &mut Command,
    request: &StartProcess,
    make_terminal: bool,
) -> Result<AgentStdio, SpawnError> {
    let Some(size) = request.terminal else {
        let stdin = if request.stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        };
        command
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        return Ok(AgentStdio { terminal: None });
    };
    if !make_terminal {
        command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        return Ok(AgentStdio { terminal: None });
    }
    // Everything is made before the process starts, so that nothing can fail once it runs.
    let pty = open_pty(size)?;
    let slave = || dup(&pty.slave, "duplicate the terminal").map(Stdio::from);
    command.stdin(slave()?).stdout(slave()?).stderr(slave()?);
    terminal_stdio(pty.master, request.stdin)
}

/// The agent's ends of a terminal: the master, a copy for stdout, and one for stdin if wanted.
fn terminal_stdio(master: OwnedFd, stdin: bool) -> Result<AgentStdio, SpawnError> {
    let output = dup(&master, "duplicate the terminal")?;
    let input = stdin
        .then(|| dup(&master, "duplicate the terminal").map(StdinSink::terminal))
        .transpose()?;
    Ok(AgentStdio {
        terminal: Some((master, output, input)),
    })
}

/// The guest path: see the module documentation.
#[allow(clippy::too_many_arguments)] // spawn's inputs, passed through once
fn start_sandboxed(
    mut command: Command,
    request: &StartProcess,
    program: &str,
    mut stdio: AgentStdio,
    config: &SpawnConfig,
    reaper: &Reaper,
    on_exit: OnExit,
    mode: Mode,
) -> Result<Spawned, SpawnError> {
    let channel_error = |source| SpawnError::Channel {
        program: program.to_owned(),
        source,
    };
    let (agent_end, child_end) = UnixStream::pair().map_err(|source| SpawnError::Fd {
        what: "create the container channel",
        source,
    })?;
    agent_end
        .set_read_timeout(Some(SETUP_TIMEOUT))
        .map_err(channel_error)?;
    let mut channel = Channel::new(agent_end).map_err(channel_error)?;
    // With a terminal, the container sends its master back on a socket of its own.
    let console = if request.terminal.is_some() {
        let (agent_end, child_end) = UnixStream::pair().map_err(|source| SpawnError::Fd {
            what: "create the console socket",
            source,
        })?;
        agent_end
            .set_read_timeout(Some(SETUP_TIMEOUT))
            .map_err(channel_error)?;
        Some((agent_end, child_end))
    } else {
        None
    };
    let fds = (
        child_end.as_raw_fd(),
        console.as_ref().map(|(_, child)| child.as_raw_fd()),
    );
    // SAFETY: the closure runs in the forked child before exec and only calls fcntl and dup2,
    // which are async-signal-safe, on descriptors that stay open until spawn returns.
    unsafe { command.pre_exec(move || place_fds(fds.0, fds.1)) };

    let started = Instant::now();
    let setup = match mode {
        Mode::Join(target) => ToContainer::Join {
            spec: request.spec.clone(),
            target,
            terminal: request.terminal,
        },
        Mode::Start | Mode::Create => ToContainer::Setup {
            spec: request.spec.clone(),
            init: request.init,
            terminal: request.terminal,
        },
    };
    let (pid, mut child) = reaper.spawn_watched(
        || {
            let child = command.spawn().map_err(|source| SpawnError::Fd {
                what: "start the container setup process",
                source,
            })?;
            channel.send(&setup).map_err(channel_error)?;
            // The pid (from the setup process) and ready (from the container) race.
            let (mut pid, mut ready) = (None, false);
            while pid.is_none() || !ready {
                match channel.recv().map_err(channel_error)? {
                    Some(FromContainer::Pid(p)) if pid.is_none() => pid = Some(p),
                    Some(FromContainer::Ready) if !ready => ready = true,
                    other => return Err(unexpected(program, other)),
                }
            }
            let pid = pid.unwrap_or_default();
            Ok((pid, (pid, child)))
        },
        on_exit,
    )?;
    if let Some((agent_end, _)) = &console {
        let master = Channel::recv_fd(agent_end).map_err(channel_error)?;
        stdio = terminal_stdio(master, request.stdin)?;
    }
    let setup = started.elapsed();
    // The setup process exits by itself and the reaper collects it; `child` only holds the
    // agent's ends of the pipes.
    let mut spawned = spawned(pid, setup, stdio, &mut child)?;
    drop(command);
    drop(child_end);
    drop(console);

    if config.boot_timer && !matches!(mode, Mode::Join(_)) {
        signal_boot_timer();
    }
    if mode == Mode::Create {
        // Nothing is read while held, so the channel's read timeout only counts after Go.
        spawned.held = Some(Held {
            channel,
            program: program.to_owned(),
        });
        return Ok(spawned);
    }
    go(&mut channel, program)?;
    Ok(spawned)
}

/// In the setup process's child, before exec: the channel becomes fd 3 and the console
/// socket (if any) fd 4, both kept across exec. Each is first copied above fd 10 (close-on-exec)
/// so that placing one cannot overwrite the other.
fn place_fds(channel: RawFd, console: Option<RawFd>) -> io::Result<()> {
    let check = |rc: libc::c_int| if rc == -1 { Err(io::Error::last_os_error()) } else { Ok(rc) };
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) on a descriptor this process holds.
    let channel = check(unsafe { libc::fcntl(channel, libc::F_DUPFD_CLOEXEC, 10) })?;
    let console = match console {
        // SAFETY: as above.
        Some(fd) => Some(check(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10) })?),
        None => None,
    };
    // SAFETY: dup2 of descriptors this process holds; the copies have no close-on-exec flag.
    check(unsafe { libc::dup2(channel, CHANNEL_FD) })?;
    if let Some(console) = console {
        // SAFETY: as above.
        check(unsafe { libc::dup2(console, CONSOLE_FD) })?;
    }
    Ok(())
}

/// A message out of turn, a failure report, or the end of the stream, as an error.
fn unexpected(program: &str, message: Option<FromContainer>) -> SpawnError {
    match message {
        Some(FromContainer::Failed {
            errno,
            exec: true,
            message,
            ..
        }) => SpawnError::Exec {
            program: program.to_owned(),
            source: errno.map_or_else(|| io::Error::other(message), io::Error::from_raw_os_error),
        },
        Some(FromContainer::Failed {
            step,
            message,
            invalid_request,
            ..
        }) => SpawnError::Container {
            program: program.to_owned(),
            step,
            message,
            invalid_request,
        },
        Some(other) => SpawnError::Channel {
            program: program.to_owned(),
            source: io::Error::other(format!("unexpected {other:?}")),
        },
        None => SpawnError::Channel {
            program: program.to_owned(),
            source: io::Error::other("exited without a word"),
        },
    }
}

/// The host-test path: std's `Command` forks and execs the command itself.
fn start_direct(
    mut command: Command,
    request: &StartProcess,
    program: &str,
    stdio: AgentStdio,
    reaper: &Reaper,
    on_exit: OnExit,
) -> Result<Spawned, SpawnError> {
    let (report_read, report_write) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| SpawnError::Fd {
            what: "create the setup-report pipe",
            source: e.into(),
        })?;
    let report = report_write.as_raw_fd();
    let controlling_terminal = request.terminal.is_some();
    let cwd = request.process().cwd().display().to_string();
    let cwd_c = CString::new(cwd.as_bytes()).map_err(|source| SpawnError::Nul {
        what: "cwd",
        source,
    })?;
    let setup = move || {
        // SAFETY: cwd_c is a NUL-terminated string that outlives the call.
        check(report, Step::Chdir, unsafe { libc::chdir(cwd_c.as_ptr()) })?;
        // SAFETY: setsid takes no arguments.
        check(report, Step::Setsid, unsafe { libc::setsid() })?;
        if controlling_terminal {
            // SAFETY: TIOCSCTTY takes an integer (0: do not steal); fd 0 is the slave.
            let rc = unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) };
            check(report, Step::ControllingTerminal, rc)?;
        }
        Ok(())
    };
    // SAFETY: the closure runs in the forked child before exec and only makes the
    // async-signal-safe calls setsid, ioctl and write, without allocating.
    unsafe { command.pre_exec(setup) };
    let started =
        reaper.spawn_watched(|| command.spawn().map(|child| (child.id(), child)), on_exit);
    drop(command);
    drop(report_write);
    let mut child = match started {
        Ok(child) => child,
        Err(source) => return Err(classify(program, &cwd, report_read, source)),
    };
    spawned(child.id(), Duration::ZERO, stdio, &mut child)
}

/// Turns a failed call (-1) into its error, and reports the step first.
fn check(report: RawFd, step: Step, rc: libc::c_int) -> io::Result<()> {
    if rc != -1 {
        return Ok(());
    }
    let error = io::Error::last_os_error(); // before write() can change errno
    let byte = step as u8;
    // SAFETY: write(2) of one byte from a live local to the report pipe's write end, which the
    // parent keeps open until spawn returns.
    unsafe { libc::write(report, std::ptr::from_ref(&byte).cast(), 1) };
    Err(error)
}

/// A failed direct spawn: a setup step (it left its number in the report pipe) or exec.
fn classify(program: &str, cwd: &str, report: OwnedFd, source: io::Error) -> SpawnError {
    let mut byte = [0u8; 1];
    // Every write end is closed (the child is gone, ours was dropped): this cannot block.
    match File::from(report).read(&mut byte) {
        Ok(1) => match Step::from_byte(byte[0]) {
            Some(step) => SpawnError::Setup {
                program: program.to_owned(),
                step,
                what: match step {
                    Step::Chdir => format!("{step} {cwd:?}"),
                    _ => step.to_string(),
                },
                source,
            },
            None => SpawnError::Exec {
                program: program.to_owned(),
                source,
            },
        },
        _ => SpawnError::Exec {
            program: program.to_owned(),
            source,
        },
    }
}

/// Puts the pieces together: the terminal's master and its copies, or the pipes `Command`
/// made for the process (or for the setup process, whose stdio the container inherits).
fn spawned(
    pid: u32,
    setup: Duration,
    stdio: AgentStdio,
    child: &mut Child,
) -> Result<Spawned, SpawnError> {
    if let Some((master, stdout, stdin)) = stdio.terminal {
        return Ok(Spawned {
            pid,
            setup,
            terminal: Some(master),
            stdin,
            stdout,
            stderr: None,
            held: None,
        });
    }
    Ok(Spawned {
        pid,
        setup,
        terminal: None,
        stdin: child.stdin.take().map(|s| StdinSink::pipe(s.into())),
        // Always there: stdout was set to Stdio::piped().
        stdout: child
            .stdout
            .take()
            .map(OwnedFd::from)
            .ok_or(SpawnError::Fd {
                what: "take the stdout pipe",
                source: io::ErrorKind::NotFound.into(),
            })?,
        stderr: child.stderr.take().map(OwnedFd::from),
        held: None,
    })
}

fn signal_boot_timer() {
    // Best effort: a VMM without the boot timer still runs the process.
    if let Err(error) = boot_timer::signal(boot_timer::PROCESS_STARTING) {
        eprintln!("microvm-agent: warning: {error}");
    }
}

fn dup(fd: &OwnedFd, what: &'static str) -> Result<OwnedFd, SpawnError> {
    fd.try_clone()
        .map_err(|source| SpawnError::Fd { what, source })
}

fn check_no_nul(what: &'static str, strings: &[String]) -> Result<(), SpawnError> {
    for s in strings {
        CString::new(s.as_bytes()).map_err(|source| SpawnError::Nul { what, source })?;
    }
    Ok(())
}
