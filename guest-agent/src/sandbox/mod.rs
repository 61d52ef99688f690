//! Building the container, in a fresh copy of the agent's binary that the agent starts with
//! argv[0] [`ARGV0`] (see [`crate::container`] for why a copy and not a forked child). This is
//! the part of the agent that runc calls `runc init`. In order:
//!
//! 1. receive the spec on the channel (fd 3, see [`channel`]);
//! 2. join the container's cgroup ([`cgroup`]); write the network's sysctls; set the
//!    rlimits and OOM score; unshare the spec's namespaces, and with a user namespace among
//!    them map it and become its root ([`userns`]);
//! 3. fork: the child is PID 1 of the new PID namespace; the parent reports its pid and exits;
//! 4. in the child: the filesystem ([`fs`]), hostname, sysctls, a new session with the
//!    terminal, the working directory; then report ready and wait for go;
//! 5. seccomp (first, when `noNewPrivileges` is off: installing it then needs CAP_SYS_ADMIN,
//!    which step 6 drops), identity and capabilities ([`identity`]), `no_new_privs`, and
//!    seccomp last when `noNewPrivileges` is on;
//! 6. exec the command, or with `--init` run the reaping [`init`] with the command as its
//!    child. An exec failure is reported on the channel; a successful exec closes it.
//!
//! For OCI `exec` ([`channel::ToContainer::Join`]) step 2 joins the cgroup and namespaces of
//! the container's process instead of making them, and step 4 skips what only building the
//! container does (filesystem, hostname, sysctls).

pub mod cgroup;
pub mod channel;
mod fail;
mod fs;
mod identity;
mod init;
mod seccomp;
mod userns;

use std::convert::Infallible;
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, FromRawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use nix::sched::{unshare, CloneFlags};
use nix::unistd::{fork, ForkResult};
use oci_spec::runtime::{LinuxNamespaceType, Process, Spec};

use channel::{Channel, FromContainer, ToContainer, CHANNEL_FD, CONSOLE_FD};
use protocol::TerminalSize;
use fail::{At, Failure};

/// argv[0] that makes the agent's binary build a container instead of serving as PID 1.
pub const ARGV0: &str = "microvm-container";
/// `PATH` when the process's environment has none (runc's default).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The setup process's main: never returns.
pub fn main() -> ! {
    // SAFETY: the agent put the channel on fd 3 (container::place_channel) and nothing else in
    // this process owns that descriptor.
    let stream = unsafe { UnixStream::from_raw_fd(CHANNEL_FD) };
    // From here on the channel must not outlive a successful exec.
    let _ = nix::fcntl::fcntl(
        &stream,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    );
    let mut channel = match Channel::new(stream) {
        Ok(channel) => channel,
        Err(error) => {
            eprintln!("{ARGV0}: channel: {error}");
            std::process::exit(1);
        }
    };
    let failure = match channel.recv::<ToContainer>() {
        Ok(Some(ToContainer::Setup {
            spec,
            init,
            terminal,
        })) => match setup(&spec, init, terminal, &mut channel) {
            Ok(never) => match never {},
            Err(failure) => failure,
        },
        Ok(Some(ToContainer::Join {
            spec,
            target,
            terminal,
        })) => match join(&spec, target, terminal, &mut channel) {
            Ok(never) => match never {},
            Err(failure) => failure,
        },
        other => Failure::new("receive the spec", format!("expected Setup or Join, got {other:?}")),
    };
    let _ = channel.send(&failure.into_message());
    std::process::exit(1);
}

/// Steps 2 and 3.
fn setup(
    spec: &Spec,
    init: bool,
    terminal: Option<TerminalSize>,
    channel: &mut Channel,
) -> Result<Infallible, Failure> {
    let process = spec_process(spec)?;
    let command = Command::new(&process)?;
    cgroup::setup(spec)?;
    let flags = namespace_flags(spec)?;
    // The network's sysctls now: the container shares the guest's network namespace, which
    // its root in a user namespace would not own (see [`write_sysctls`]).
    write_sysctls(spec, |key| key.starts_with("net."))?;
    // Before the namespaces too: raising a hard limit or lowering the OOM score takes
    // CAP_SYS_RESOURCE in the guest's user namespace, which a container's own would not give
    // (runc sets them from outside for the same reason). Both are inherited from here on.
    identity::set_rlimits(&process)?;
    identity::set_oom_score_adj(&process)?;
    let mapper = flags.contains(CloneFlags::CLONE_NEWUSER).then(|| userns::Mapper::start(spec)).transpose()?;
    unshare(flags).at(|| format!("unshare {flags:?}"))?;
    if let Some(mapper) = mapper {
        mapper.map()?;
    }
    fork_and_report(channel)?;
    container(spec, &process, &command, init, terminal, channel)
}

/// OCI exec: steps 2 and 3 for a process that joins the container whose process is `target`
/// (its cgroup and namespaces), then the end of step 4 and steps 5 and 6 as for the first.
fn join(
    spec: &Spec,
    target: u32,
    terminal: Option<TerminalSize>,
    channel: &mut Channel,
) -> Result<Infallible, Failure> {
    let process = spec_process(spec)?;
    let command = Command::new(&process)?;
    cgroup::join_of(target)?;
    // As for the first process, before the user namespace (see `setup`).
    identity::set_rlimits(&process)?;
    identity::set_oom_score_adj(&process)?;
    // Every namespace is opened before the first is joined: inside the container's mount
    // namespace /proc is the container's, where `target` has another number.
    let flags = namespace_flags(spec)?;
    // A container without a mount namespace of its own is chrooted in the agent's: so is
    // the process that joins it, into the container's root as its first process sees it.
    let root = (!flags.contains(CloneFlags::CLONE_NEWNS))
        .then(|| {
            let path = format!("/proc/{target}/root");
            std::fs::File::open(&path).at(|| format!("open {path}"))
        })
        .transpose()?;
    let mut namespaces = Vec::new();
    for (flag, name) in NAMESPACE_FILES {
        if flags.contains(flag) {
            let path = format!("/proc/{target}/ns/{name}");
            let file = std::fs::File::open(&path).at(|| format!("open {path}"))?;
            namespaces.push((file, flag, name));
        }
    }
    for (file, flag, name) in &namespaces {
        nix::sched::setns(file, *flag).at(|| format!("join the container's {name} namespace"))?;
    }
    drop(namespaces);
    if flags.contains(CloneFlags::CLONE_NEWUSER) {
        userns::enter_as_root()?;
    }
    if let Some(root) = root {
        nix::unistd::fchdir(&root).at(|| "enter the container's root")?;
        fs::enter_by_chroot(Path::new("."))?;
    }
    // Joining a PID namespace only places the children: the forked one is in it.
    fork_and_report(channel)?;
    let linux = spec.linux().clone().unwrap_or_default();
    launch(&linux, &process, &command, false, terminal, channel)
}

/// Whether the spec lists a namespace of type `typ`.
fn has_namespace(spec: &Spec, typ: LinuxNamespaceType) -> bool {
    let namespaces = spec.linux().as_ref().and_then(|l| l.namespaces().as_ref());
    namespaces.is_some_and(|n| n.iter().any(|n| n.typ() == typ))
}

/// The spec's process: a spec without one is the request's fault.
fn spec_process(spec: &Spec) -> Result<Process, Failure> {
    spec.process()
        .clone()
        .ok_or_else(|| Failure::new("read the spec", "it has no process").invalid())
}

/// The namespaces an exec joins, by their file in /proc/PID/ns: the user namespace first
/// (joining it gives the capabilities the others need there), the mount namespace last.
/// Not the network: the container has none of its own (see [`namespace_flags`]).
const NAMESPACE_FILES: [(CloneFlags, &str); 6] = [
    (CloneFlags::CLONE_NEWUSER, "user"),
    (CloneFlags::CLONE_NEWCGROUP, "cgroup"),
    (CloneFlags::CLONE_NEWIPC, "ipc"),
    (CloneFlags::CLONE_NEWUTS, "uts"),
    (CloneFlags::CLONE_NEWPID, "pid"),
    (CloneFlags::CLONE_NEWNS, "mnt"),
];

/// Step 3: forks; the parent reports the child's pid (as the agent sees it) and exits, the
/// child returns.
fn fork_and_report(channel: &mut Channel) -> Result<(), Failure> {
    // SAFETY: this process is single-threaded; the child may do anything after fork.
    match unsafe { fork() }.at(|| "fork the container's process")? {
        ForkResult::Parent { child } => {
            let pid = u32::try_from(child.as_raw()).unwrap_or_default();
            channel
                .send(&FromContainer::Pid(pid))
                .at(|| "report the pid")?;
            std::process::exit(0);
        }
        ForkResult::Child => Ok(()),
    }
}

/// The namespaces to create. A namespace `path` names a host namespace: the host refuses
/// every one but the network's, which the VMM joins. The VM is the container's network
/// namespace (its card, if any, stands for the interface the caller made in the namespace it
/// named), so the container shares the guest's, which holds nothing else (the agent speaks
/// only vsock). Without a mount namespace the container shares the agent's, chrooted
/// ([`fs::build`]).
fn namespace_flags(spec: &Spec) -> Result<CloneFlags, Failure> {
    let mut flags = CloneFlags::empty();
    let namespaces = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default();
    for namespace in namespaces {
        flags |= match namespace.typ() {
            LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
            LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
            LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
            LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
            LinuxNamespaceType::Network => CloneFlags::empty(),
            LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
            // Created with the others in one unshare, so that it owns them ([`userns`]).
            LinuxNamespaceType::User => CloneFlags::CLONE_NEWUSER,
            LinuxNamespaceType::Time => {
                return Err(
                    Failure::new("create namespaces", "time namespaces are not supported")
                        .invalid(),
                )
            }
        };
    }
    Ok(flags)
}

/// Steps 4 to 6, in the container's first process.
fn container(
    spec: &Spec,
    process: &Process,
    command: &Command,
    init: bool,
    terminal: Option<TerminalSize>,
    channel: &mut Channel,
) -> Result<Infallible, Failure> {
    fs::build(spec, Path::new(crate::mounts::ROOTFS))?;
    if let Some(hostname) = spec.hostname().as_deref().filter(|h| !h.is_empty()) {
        nix::unistd::sethostname(hostname).at(|| format!("set hostname {hostname:?}"))?;
    }
    let linux = spec.linux().clone().unwrap_or_default();
    write_sysctls(spec, |key| !key.starts_with("net."))?;
    fs::protect(spec)?;
    launch(&linux, process, command, init, terminal, channel)
}

/// `linux.sysctl` entries whose key `pick` takes, through this process's /proc/sys. Those of
/// the network go before the namespaces are made (the guest's network namespace is the
/// container's, and a user namespace would not own it); the rest after, in the container's
/// own IPC and UTS namespaces.
fn write_sysctls(spec: &Spec, pick: impl Fn(&str) -> bool) -> Result<(), Failure> {
    let sysctls = spec.linux().as_ref().and_then(|l| l.sysctl().clone()).unwrap_or_default();
    for (key, value) in sysctls.iter().filter(|(key, _)| pick(key)) {
        let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
        std::fs::write(&path, value).at(|| format!("set sysctl {key}={value}"))?;
    }
    Ok(())
}

/// The end of step 4 (session, terminal, working directory) and steps 5
/// and 6, for the container's first process and for one that joined it.
fn launch(
    linux: &oci_spec::runtime::Linux,
    process: &Process,
    command: &Command,
    init: bool,
    terminal: Option<TerminalSize>,
    channel: &mut Channel,
) -> Result<Infallible, Failure> {
    nix::unistd::setsid().at(|| "setsid")?;
    if let Some(size) = terminal {
        make_terminal(size)?;
    }
    let cwd = process.cwd();
    nix::unistd::chdir(cwd)
        .at(|| {
            format!(
                "chdir to the working directory {:?}",
                cwd.display().to_string()
            )
        })
        .map_err(Failure::invalid)?;

    channel.send(&FromContainer::Ready).at(|| "report ready")?;
    match channel.recv::<ToContainer>() {
        Ok(Some(ToContainer::Go)) => {}
        other => {
            return Err(Failure::new(
                "wait for the agent",
                format!("expected Go, got {other:?}"),
            ))
        }
    }

    let filter = linux.seccomp().as_ref().map(seccomp::compile).transpose()?;
    let no_new_privs = process.no_new_privileges().unwrap_or(false);
    if !no_new_privs {
        filter.as_ref().map(seccomp::apply).transpose()?;
    }
    identity::switch_user(process)?;
    if no_new_privs {
        identity::set_no_new_privs()?;
        filter.as_ref().map(seccomp::apply).transpose()?;
    }

    // Only the command keeps the channel, to report a failed exec; a successful one closes it.
    let stream = channel
        .detach()
        .ok_or_else(|| Failure::new("exec", "the channel is gone"))?;
    if init {
        return init::run(move || command.exec_or_report(stream));
    }
    command.exec_or_report(stream)
}

/// A terminal on the container's own devpts: its slave becomes stdin, stdout, stderr and the
/// controlling terminal; its master goes to the agent on [`CONSOLE_FD`].
fn make_terminal(size: TerminalSize) -> Result<(), Failure> {
    let winsize = nix::pty::Winsize { ws_row: size.rows, ws_col: size.cols, ws_xpixel: 0, ws_ypixel: 0 };
    let pty = nix::pty::openpty(Some(&winsize), None).at(|| "open a terminal in the container")?;
    for fd in 0..=2 {
        // SAFETY: dup2 onto the standard descriptors of this single-threaded process.
        let rc = unsafe { libc::dup2(pty.slave.as_raw_fd(), fd) };
        nix::errno::Errno::result(rc).at(|| "make the terminal the process's stdio")?;
    }
    drop(pty.slave);
    // SAFETY: TIOCSCTTY takes an integer (0: do not steal); fd 0 is the terminal's slave.
    let rc = unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) };
    nix::errno::Errno::result(rc).at(|| "make the terminal the controlling terminal")?;
    // SAFETY: the agent put the console socket on fd 4 when it asked for a terminal, and
    // nothing else in this process owns it.
    let console = unsafe { UnixStream::from_raw_fd(CONSOLE_FD) };
    Channel::send_fd(&console, pty.master.as_fd()).at(|| "send the terminal to the agent")
}

/// argv and envp, made before any privilege is dropped; the program is looked up at exec.
struct Command {
    program: String,
    argv: Vec<CString>,
    envp: Vec<CString>,
    path: String,
}

impl Command {
    fn new(process: &Process) -> Result<Self, Failure> {
        let args = process.args().clone().unwrap_or_default();
        let env = process.env().clone().unwrap_or_default();
        let cstrings = |what: &str, strings: &[String]| {
            strings
                .iter()
                .map(|s| CString::new(s.as_bytes()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| {
                    Failure::new(format!("read process.{what}"), "holds a NUL byte").invalid()
                })
        };
        let program = args
            .first()
            .cloned()
            .ok_or_else(|| Failure::new("read process.args", "empty").invalid())?;
        let path = env
            .iter()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or(DEFAULT_PATH)
            .to_owned();
        Ok(Command {
            argv: cstrings("args", &args)?,
            envp: cstrings("env", &env)?,
            program,
            path,
        })
    }

    /// The program's path: as given when it has a `/`, else the first executable file of that
    /// name in `PATH` (the process's, not the agent's).
    fn resolve(&self) -> Result<CString, nix::errno::Errno> {
        let found = if self.program.contains('/') {
            Some(PathBuf::from(&self.program))
        } else {
            self.path
                .split(':')
                .map(|dir| Path::new(if dir.is_empty() { "." } else { dir }).join(&self.program))
                .find(|candidate| {
                    candidate
                        .metadata()
                        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                })
        };
        let path = found.ok_or(nix::errno::Errno::ENOENT)?;
        CString::new(path.into_os_string().into_encoded_bytes())
            .map_err(|_| nix::errno::Errno::EINVAL)
    }

    /// execve, or the reason it failed on the channel and exit 127.
    fn exec_or_report(&self, channel: UnixStream) -> ! {
        let errno = match self.resolve() {
            Ok(path) => match nix::unistd::execve(&path, &self.argv, &self.envp) {
                Ok(never) => match never {},
                Err(errno) => errno,
            },
            Err(errno) => errno,
        };
        let failure = Failure {
            exec: true,
            ..Failure::errno(format!("exec {}", self.program), errno)
        };
        if let Ok(mut channel) = Channel::new(channel) {
            let _ = channel.send(&failure.into_message());
        }
        std::process::exit(127);
    }
}
