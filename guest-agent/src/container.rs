//! Starting the container process: argv, environment and stdio from the request; in the child,
//! between fork and exec, chroot into the container root, chdir to the request's cwd, a new
//! session (with the terminal as its controlling terminal), then groups, gid and uid.
//!
//! std's `Command` does the fork and exec and reports an `exec` failure (or a failed setup
//! step) as an error from `spawn`. The setup steps also write their number to a report pipe,
//! so that a bad `cwd` is told apart from a missing command, which both fail with `ENOENT`.
//!
//! The full namespace sandbox (namespaces, capabilities, seccomp) is not here yet.

use std::ffi::{CString, NulError};
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use nix::fcntl::OFlag;
use protocol::{ErrorKind, StartProcess};

use crate::boot_timer;
use crate::reaper::{OnExit, Reaper};
use crate::stdio::{open_pty, StdinSink, StdioError};

/// How much of the sandbox to apply; the guest applies all of it, unit tests none.
#[derive(Debug, Clone)]
pub struct SpawnConfig {
    /// chroot into this directory before `exec`.
    pub root: Option<PathBuf>,
    /// Switch to the request's uid, gid and additional gids.
    pub switch_identity: bool,
    /// Tell the VMM's boot timer that the process is about to start.
    pub boot_timer: bool,
}

impl SpawnConfig {
    /// As in the guest: chrooted into `root`, as the requested user.
    pub fn guest(root: impl Into<PathBuf>) -> Self {
        SpawnConfig {
            root: Some(root.into()),
            switch_identity: true,
            boot_timer: true,
        }
    }

    /// No chroot, no identity change, no I/O port: for unit tests on the host.
    #[cfg(test)]
    pub fn unsandboxed() -> Self {
        SpawnConfig {
            root: None,
            switch_identity: false,
            boot_timer: false,
        }
    }
}

/// A started process and the agent's ends of its stdio.
#[derive(Debug)]
pub struct Spawned {
    pub pid: u32,
    /// The terminal's master, when the process has a terminal.
    pub terminal: Option<OwnedFd>,
    /// Where the host's stdin goes, when the host will send any.
    pub stdin: Option<StdinSink>,
    /// The process's stdout, or its terminal's output.
    pub stdout: OwnedFd,
    /// The process's stderr (none with a terminal).
    pub stderr: Option<OwnedFd>,
}

/// A setup step in the child, between fork and exec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Step {
    Chroot = 1,
    Chdir,
    Setsid,
    ControllingTerminal,
    Setgroups,
    Setgid,
    Setuid,
}

impl Step {
    const ALL: [Step; 7] = [
        Step::Chroot,
        Step::Chdir,
        Step::Setsid,
        Step::ControllingTerminal,
        Step::Setgroups,
        Step::Setgid,
        Step::Setuid,
    ];

    fn from_byte(byte: u8) -> Option<Step> {
        Step::ALL.into_iter().find(|step| *step as u8 == byte)
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::Chroot => "chroot into the container root",
            Step::Chdir => "chdir to the working directory",
            Step::Setsid => "setsid",
            Step::ControllingTerminal => "make the terminal the controlling terminal",
            Step::Setgroups => "setgroups",
            Step::Setgid => "setgid",
            Step::Setuid => "setuid",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("start process: no command (args is empty)")]
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
        /// The step, with what it worked on.
        what: String,
        source: io::Error,
    },
    #[error("{program}: {source}")]
    Exec { program: String, source: io::Error },
}

impl SpawnError {
    /// What the host is told, and so the exit code of `microvm run`.
    pub fn kind(&self) -> ErrorKind {
        match self {
            SpawnError::NoArgs | SpawnError::Nul { .. } | SpawnError::BadEnv(_) => {
                ErrorKind::InvalidRequest
            }
            SpawnError::Setup {
                step: Step::Chdir, ..
            } => ErrorKind::InvalidRequest,
            SpawnError::Exec { source, .. } => ErrorKind::from_exec_error(source),
            SpawnError::Stdio(_) | SpawnError::Fd { .. } | SpawnError::Setup { .. } => {
                ErrorKind::Other
            }
        }
    }
}

/// Starts `request` under `reaper`, which calls `on_exit` when the process ends.
pub fn spawn(
    request: &StartProcess,
    config: &SpawnConfig,
    reaper: &Reaper,
    on_exit: OnExit,
) -> Result<Spawned, SpawnError> {
    let program = request.args.first().ok_or(SpawnError::NoArgs)?;
    let mut command = Command::new(program);
    command.args(&request.args[1..]).env_clear();
    for entry in &request.env {
        match entry.split_once('=') {
            Some((key, value)) if !key.is_empty() => command.env(key, value),
            _ => return Err(SpawnError::BadEnv(entry.clone())),
        };
    }
    check_no_nul("args", &request.args)?;
    check_no_nul("env", &request.env)?;

    let (report_read, report_write) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| SpawnError::Fd {
            what: "create the setup-report pipe",
            source: e.into(),
        })?;
    let setup = ChildSetup::new(request, config, report_write.as_raw_fd())?;

    // With a terminal: (master, its copy for stdout, its copy for stdin), all made before the
    // process starts, so that nothing can fail once it runs.
    let mut terminal = None;
    if let Some(size) = request.terminal {
        let pty = open_pty(size)?;
        let slave = || dup(&pty.slave, "duplicate the terminal").map(Stdio::from);
        command.stdin(slave()?).stdout(slave()?).stderr(slave()?);
        let output = dup(&pty.master, "duplicate the terminal")?;
        let input = request
            .stdin
            .then(|| dup(&pty.master, "duplicate the terminal").map(StdinSink::terminal))
            .transpose()?;
        terminal = Some((pty.master, output, input));
    } else {
        command
            .stdin(if request.stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
    }
    // SAFETY: the closure runs in the forked child before exec. ChildSetup::run only makes
    // async-signal-safe system calls (chroot, chdir, setsid, ioctl, setgroups, setgid, setuid,
    // write) on data prepared before the fork, and neither allocates nor takes locks.
    unsafe { command.pre_exec(move || setup.run()) };

    if config.boot_timer {
        // Best effort: a VMM without the boot timer still runs the process.
        if let Err(error) = boot_timer::signal(boot_timer::PROCESS_STARTING) {
            eprintln!("microvm-agent: warning: {error}");
        }
    }
    let spawned =
        reaper.spawn_watched(|| command.spawn().map(|child| (child.id(), child)), on_exit);
    // The agent keeps no copy of the terminal's slave or of the report pipe's write end.
    drop(command);
    drop(report_write);
    let mut child = match spawned {
        Ok(child) => child,
        Err(source) => return Err(classify(program, &request.cwd, report_read, source)),
    };

    let pid = child.id();
    // The reaper, not `child`, waits for the process; dropping a Child does not wait.
    let spawned = match terminal {
        Some((master, stdout, stdin)) => Spawned {
            pid,
            terminal: Some(master),
            stdin,
            stdout,
            stderr: None,
        },
        None => Spawned {
            pid,
            terminal: None,
            stdin: child.stdin.take().map(|s| StdinSink::pipe(s.into())),
            // Always there: stdout was set to Stdio::piped() above.
            stdout: child
                .stdout
                .take()
                .map(OwnedFd::from)
                .ok_or(SpawnError::Fd {
                    what: "take the stdout pipe",
                    source: io::ErrorKind::NotFound.into(),
                })?,
            stderr: child.stderr.take().map(OwnedFd::from),
        },
    };
    Ok(spawned)
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

/// A failed spawn: a setup step (it left its number in the report pipe) or exec itself.
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

/// Everything the child needs between fork and exec, prepared before the fork.
struct ChildSetup {
    root: Option<CString>,
    cwd: CString,
    controlling_terminal: bool,
    /// (uid, gid, additional gids)
    identity: Option<(libc::uid_t, libc::gid_t, Vec<libc::gid_t>)>,
    report: RawFd,
}

impl ChildSetup {
    fn new(
        request: &StartProcess,
        config: &SpawnConfig,
        report: RawFd,
    ) -> Result<Self, SpawnError> {
        let nul = |what| move |source| SpawnError::Nul { what, source };
        let root = config
            .root
            .as_ref()
            .map(|root| CString::new(root.as_os_str().as_bytes()))
            .transpose()
            .map_err(nul("container root"))?;
        let cwd = if request.cwd.is_empty() {
            "/"
        } else {
            &request.cwd
        };
        Ok(ChildSetup {
            root,
            cwd: CString::new(cwd).map_err(nul("cwd"))?,
            controlling_terminal: request.terminal.is_some(),
            identity: config
                .switch_identity
                .then(|| (request.uid, request.gid, request.additional_gids.clone())),
            report,
        })
    }

    /// In the child: the setup steps in order. Async-signal-safe only (no allocation).
    fn run(&self) -> io::Result<()> {
        if let Some(root) = &self.root {
            // SAFETY: root is a NUL-terminated string that outlives the call.
            self.check(Step::Chroot, unsafe { libc::chroot(root.as_ptr()) })?;
            // SAFETY: a static NUL-terminated string.
            self.check(Step::Chroot, unsafe { libc::chdir(c"/".as_ptr()) })?;
        }
        // SAFETY: cwd is a NUL-terminated string that outlives the call.
        self.check(Step::Chdir, unsafe { libc::chdir(self.cwd.as_ptr()) })?;
        // SAFETY: setsid takes no arguments.
        self.check(Step::Setsid, unsafe { libc::setsid() })?;
        if self.controlling_terminal {
            // SAFETY: TIOCSCTTY takes an integer argument (0: do not steal); fd 0 is the
            // terminal's slave, put there by Command before this runs.
            let rc = unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) };
            self.check(Step::ControllingTerminal, rc)?;
        }
        if let Some((uid, gid, groups)) = &self.identity {
            // SAFETY: the pointer and length describe the live `groups` vector.
            let rc = unsafe { libc::setgroups(groups.len(), groups.as_ptr()) };
            self.check(Step::Setgroups, rc)?;
            // SAFETY: plain integer arguments.
            self.check(Step::Setgid, unsafe { libc::setgid(*gid) })?;
            // SAFETY: plain integer arguments.
            self.check(Step::Setuid, unsafe { libc::setuid(*uid) })?;
        }
        Ok(())
    }

    /// Turns a failed call (-1) into its error, and reports the step first.
    fn check(&self, step: Step, rc: libc::c_int) -> io::Result<()> {
        if rc != -1 {
            return Ok(());
        }
        let error = io::Error::last_os_error(); // before write() can change errno
        let byte = step as u8;
        // SAFETY: write(2) of one byte from a live local to the report pipe's write end, which
        // the parent keeps open until spawn returns.
        unsafe { libc::write(self.report, std::ptr::from_ref(&byte).cast(), 1) };
        Err(error)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn steps_round_trip_through_the_report_byte() {
        for step in Step::ALL {
            assert_eq!(Step::from_byte(step as u8), Some(step));
        }
        assert_eq!(Step::from_byte(0), None);
    }

    #[test]
    fn error_kinds() {
        let enoent = || io::Error::from_raw_os_error(libc::ENOENT);
        let exec = |source| SpawnError::Exec {
            program: "x".into(),
            source,
        };
        assert_eq!(exec(enoent()).kind(), ErrorKind::NotFound);
        assert_eq!(
            exec(io::Error::from_raw_os_error(libc::EACCES)).kind(),
            ErrorKind::NotExecutable
        );
        let setup = |step| SpawnError::Setup {
            program: "x".into(),
            step,
            what: "chdir to the working directory \"/nope\"".into(),
            source: enoent(),
        };
        assert_eq!(setup(Step::Chdir).kind(), ErrorKind::InvalidRequest);
        assert_eq!(setup(Step::Setuid).kind(), ErrorKind::Other);
        assert_eq!(SpawnError::NoArgs.kind(), ErrorKind::InvalidRequest);
        assert_eq!(
            setup(Step::Chdir).to_string(),
            "start x: chdir to the working directory \"/nope\": No such file or directory (os error 2)"
        );
    }
}
