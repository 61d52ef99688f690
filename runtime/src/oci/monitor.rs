//! The VMM process of one OCI container: what `create` leaves running, standing in on the host
//! for the container's process (as runV and Kata 1.x did). It
//! 1. joins the network namespace config.json names by path, or makes a new one when it names
//!    one without a path (as runc makes the container's), says so on the pipe (`netns`) and
//!    waits for `create` to run the prestart and createRuntime hooks there (docker's
//!    libnetwork moves the container's veth in from such a hook); then carries the caller's
//!    interface into the guest (`tap_net`) and binds its control socket;
//! 2. with a terminal, hands the pty master to the caller's console socket;
//! 3. boots the VM (then the jail and seccomp: see `vm::boot`) and asks the agent to create
//!    the container, its process held before exec;
//! 4. tells `create` it is ready (a line on the pipe `create` gave it), and from then on
//! 5. relays the process's stdio through its own (create's, so the caller's) or the pty,
//!    forwards the signals it gets and the window size, answers the verbs on its control
//!    socket (start, kill, state; `debug`: the guest-state report, as SIGUSR2 gives for `run`),
//!    and exits with the process's status (128+N when killed by signal N) once it has ended
//!    and the VM is off.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use nix::sched::{setns, CloneFlags};
use oci_spec::runtime::{LinuxNamespaceType, Spec};
use protocol::{Request, Response, StartProcess, TerminalSize};

use super::control::{self, ControlAnswer, ControlRequest, Status};
use super::state::ContainerDir;
use crate::confinement::Confinement;
use crate::launch_checks::{self, Policy};
use crate::session::{HostStdio, Sender, Session};
use crate::vm::VmSpec;

/// How long the agent may take to answer a request sent on a verb's behalf.
const AGENT_ANSWER: Duration = Duration::from_secs(60);
/// How long `pause` waits for every vCPU to leave the guest.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the pty's window size is looked at.
const RESIZE_POLL: Duration = Duration::from_millis(200);
/// Guest memory and vCPUs of a container's VM.
const MEM_MIB: u64 = 256;
const VCPUS: u8 = 1;

/// Where `create` puts the write end of its pipe in this process.
pub const READY_FD: RawFd = 3;
/// ... and the read end of the pipe on which it says the hooks have run (a byte) or gives up
/// (end of file).
pub const GO_FD: RawFd = 4;
/// The line that tells `create` the network namespace is ready for its hooks.
pub const NETNS_READY: &str = "netns";

/// What `create` asks of the VMM process it starts (the hidden `microvm monitor`).
#[derive(Debug)]
pub struct Monitor {
    pub id: String,
    pub bundle: PathBuf,
    pub console_socket: Option<PathBuf>,
    pub confinement: Confinement,
}

/// Runs the container's VMM process to its end; returns the exit code.
pub fn run(root: &Path, args: Monitor, start: Instant) -> u8 {
    // SAFETY: `create` placed its pipe's write end at READY_FD for this process alone ("ok" or
    // the error, one line); main kept it open and nothing else here owns it.
    let mut ready = unsafe { File::from_raw_fd(READY_FD) };
    let prepared = ContainerDir::open_claimed(root, &args.id)
        .map_err(anyhow::Error::from)
        .and_then(|dir| prepare(&dir, &args, start, &mut ready));
    match prepared {
        Err(e) => {
            let _ = writeln!(ready, "{}", crate::errors::one_line(&e));
            125
        }
        Ok(container) => {
            let _ = ready.write_all(b"ok\n");
            drop(ready);
            container.serve()
        }
    }
}

/// A created container: the VM up, the process held, stdio relayed.
struct Created {
    session: Session,
    pid: u32,
    relay: Relay,
    status: Arc<Mutex<Status>>,
    vm_done: crate::session::VmDone,
    /// The container's terminal, if it has one: where a failure is told (this process's
    /// stderr is /dev/null then, see `leave_callers_stdio` in cli/oci.rs).
    terminal: Option<File>,
    /// The read-write copied files, written back at the exit.
    write_back: Vec<crate::binds::WriteBack>,
}

fn prepare(dir: &ContainerDir, args: &Monitor, start: Instant, ready: &mut File) -> anyhow::Result<Created> {
    let policy = Policy { require_nonroot: false, root_inside_bundle: false };
    let mut spec = launch_checks::check_bundle(&args.bundle, &policy)?;
    let binds = crate::binds::from_host(&mut spec)?;
    let rootfs = spec
        .root()
        .as_ref()
        .map(|r| args.bundle.join(r.path()))
        .ok_or_else(|| anyhow!("{}: config.json has no root", args.bundle.display()))?;
    let own_network = enter_network_namespace(&spec)?;
    writeln!(ready, "{NETNS_READY}").context("tell create the network namespace is ready")?;
    wait_for_hooks()?;
    // Only in the container's own namespace: in the host's (no network namespace in the
    // config) the host's interfaces must stay the host's.
    let attached = if own_network { crate::tap_net::attach()? } else { None };
    let network = attached.map(|attached| crate::vm::GuestNetwork {
        mac: attached.interface.mac,
        kernel_ip: attached.interface.kernel_ip_param(),
        backend: vmm::config::NetBackend::Tap(Arc::new(attached.tap)),
    });
    let socket = dir.control_socket();
    let context = || format!("control socket {}", socket.display());
    let listener = control::enter_dir_of(&socket)
        .and_then(UnixListener::bind)
        .with_context(context)?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600)).with_context(context)?;

    let process = spec.process().clone().unwrap_or_default();
    let terminal = process.terminal().unwrap_or(false);
    let pty = terminal
        .then(|| super::console::hand_over(args.console_socket.as_deref()))
        .transpose()?;
    let vm_dir = dir.vm_dir();
    let vm = crate::vm::boot(
        &VmSpec {
            rootfs: &rootfs,
            root: crate::vm::Root::of_bundle(&spec),
            kernel: None,
            agent: None,
            mem_mib: MEM_MIB,
            vcpus: VCPUS,
            console: None,
            dir: &vm_dir,
            confinement: args.confinement,
            network,
            shares: &binds.shares,
        },
        start,
    )?;

    tracing::debug!("monitor: VM booted");
    let mut session = Session::connect(&vm.uds, &vm.done)?;
    tracing::debug!("monitor: agent answered");
    let size = terminal_size(pty.as_ref());
    let write_back = binds.write_back;
    let request = StartProcess { spec: Box::new(spec), terminal: size, stdin: true, init: false, files: binds.files };
    let pid = match session.call(Request::CreateProcess(request))? {
        Response::ProcessStarted { pid, .. } => pid,
        Response::Error { message, .. } => bail!("{message}"),
        other => bail!("agent answered CreateProcess with {other:?}"),
    };
    tracing::debug!("monitor: process {pid} created");
    let terminal = pty.as_ref().map(dup).transpose()?.map(File::from);
    let relay = relay(&mut session, &vm.uds, pid, pty)?;
    tracing::debug!("monitor: stdio attached, waiting for the exit");
    let status = Arc::new(Mutex::new(Status::Created));
    let vcpus = vm.pause;
    serve_control(listener, pid, Arc::clone(&relay.agent), (vcpus, vm.dump), Arc::clone(&status));
    Ok(Created { session, pid, relay, status, vm_done: vm.done, terminal, write_back })
}

/// A process of the container whose stdio, signals and window size this host process relays.
pub(super) struct Relay {
    /// Sends requests for verbs and signals, and gets their responses.
    pub agent: Arc<AgentClient>,
    /// Where the session's reader hands those responses over.
    pub responses: mpsc::Sender<Response>,
    /// The output copiers, done once the process's output is all out.
    pub outputs: Vec<std::thread::JoinHandle<()>>,
}

/// Relays process `pid`'s stdio through the pty (`Some`: the process has a terminal) or this
/// process's own stdio, asks to be told of its exit, and forwards the signals this process gets
/// and the pty's window size.
pub(super) fn relay(session: &mut Session, uds: &Path, pid: u32, pty: Option<OwnedFd>) -> anyhow::Result<Relay> {
    let stdio = match &pty {
        Some(pty) => HostStdio {
            stdout: Box::new(File::from(dup(pty)?)),
            stderr: None,
            stdin: Some(Box::new(File::from(dup(pty)?))),
        },
        None => HostStdio {
            stdout: Box::new(std::io::stdout()),
            stderr: Some(Box::new(std::io::stderr())),
            stdin: Some(Box::new(std::io::stdin())),
        },
    };
    let outputs = session.attach_stdio(uds, pid, stdio)?;
    // Asked now, so that a process killed before `start` is reported like any other exit.
    session.call_ok(Request::WaitProcess { pid })?;
    let (responses, answers) = mpsc::channel();
    let agent = Arc::new(AgentClient { sender: session.sender(), answers: Mutex::new(answers) });
    forward_signals(pid, Arc::clone(&agent))?;
    if let Some(pty) = pty {
        forward_window_size(pty, pid, Arc::clone(&agent));
    }
    Ok(Relay { agent, responses, outputs })
}

/// The size a terminal process starts with: the pty's (the caller sets it on its master).
pub(super) fn terminal_size(pty: Option<&OwnedFd>) -> Option<TerminalSize> {
    pty.map(|p| crate::tty::size_of(p.as_fd()).unwrap_or(TerminalSize { rows: 24, cols: 80 }))
}

impl Created {
    /// Relays until the process exits, then powers the VM off; returns the exit code.
    fn serve(mut self) -> u8 {
        let status = self.session.wait_exit(self.pid, Some(&self.relay.responses));
        set(&self.status, Status::Stopped);
        // Nothing reads the agent's responses past the exit event, and a signal that kills
        // the process may be answered after its exit is reported: a verb waiting for such an
        // answer is told now (see `answer`), not when AGENT_ANSWER runs out.
        drop(self.relay.responses);
        for output in self.relay.outputs {
            let _ = output.join();
        }
        for warning in crate::binds::write_back(&self.write_back, self.session.take_changed_files()) {
            tracing::warn!("{warning}");
        }
        drop(self.relay.agent);
        self.session.shutdown();
        let status = status.map_err(|e| crate::session::explain_by_vm_stop(e, &self.vm_done));
        let _ = self.vm_done.recv_timeout(Duration::from_secs(10));
        match status {
            Ok(status) => status.shell_code().clamp(0, 255) as u8,
            Err(e) => {
                let message = format!("microvm: {}", crate::errors::one_line(&e));
                match self.terminal {
                    Some(mut terminal) => {
                        let _ = write!(terminal, "{message}\r\n");
                    }
                    None => eprintln!("{message}"),
                }
                125
            }
        }
    }
}

/// Requests sent on behalf of verbs and signals, each waiting for its own response: the
/// session's reader hands responses over in order, and one request is in flight at a time.
pub(super) struct AgentClient {
    sender: Sender,
    answers: Mutex<mpsc::Receiver<Response>>,
}

impl AgentClient {
    fn call(&self, request: Request) -> anyhow::Result<Response> {
        let answers = self.answers.lock().map_err(|_| anyhow!("agent client lock poisoned"))?;
        self.sender.send(request);
        answers
            .recv_timeout(AGENT_ANSWER)
            .map_err(|_| anyhow!("the agent did not answer"))
    }

    fn call_ok(&self, request: Request) -> Result<(), String> {
        self.call_for(request, |response| match response {
            Response::Ok => Ok(()),
            other => Err(other),
        })
    }

    /// The answer to `request` as `wanted` takes it; an error, or an answer it gives back,
    /// is the message.
    fn call_for<T>(&self, request: Request, wanted: impl FnOnce(Response) -> Result<T, Response>) -> Result<T, String> {
        match self.call(request).map_err(|e| e.to_string())? {
            Response::Error { message, .. } => Err(message),
            response => wanted(response).map_err(|other| format!("agent answered {other:?}")),
        }
    }
}

fn set(status: &Mutex<Status>, to: Status) {
    if let Ok(mut s) = status.lock() {
        *s = to;
    }
}

fn get(status: &Mutex<Status>) -> Status {
    status.lock().map_or(Status::Stopped, |s| *s)
}

/// Answers the verbs, one connection at a time, for as long as the process lives.
fn serve_control(
    listener: UnixListener,
    pid: u32,
    agent: Arc<AgentClient>,
    vcpus: (vmm::PauseHandle, vmm::DumpHandle),
    status: Arc<Mutex<Status>>,
) {
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
            let request = match control::read_line::<ControlRequest>(&conn) {
                Ok(Some(request)) => request,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!("control socket: {e}");
                    continue;
                }
            };
            let killed_paused = get(&status) == Status::Paused
                && matches!(request, ControlRequest::Kill { signal: libc::SIGKILL, .. });
            let answer = answer(&request, pid, &agent, &vcpus, &status);
            let _ = control::send_line(&conn, &answer);
            if killed_paused {
                // The VM goes with this process, and the container's process with the VM.
                std::process::exit(128 + libc::SIGKILL);
            }
        }
    });
}

fn answer(
    request: &ControlRequest,
    pid: u32,
    agent: &AgentClient,
    (vcpus, dump): &(vmm::PauseHandle, vmm::DumpHandle),
    status: &Mutex<Status>,
) -> ControlAnswer {
    let now = get(status);
    let result = match request {
        ControlRequest::Status => return ControlAnswer::Status(now),
        _ if now == Status::Stopped => Err("container not running".to_owned()),
        ControlRequest::Debug => return ControlAnswer::Report(dump.dump(crate::vm::DUMP_TIMEOUT)),
        ControlRequest::Start if now != Status::Created => {
            Err(format!("cannot start a container that is {}", now.as_str()))
        }
        ControlRequest::Start => agent
            .call_ok(Request::StartCreated { pid })
            .map(|()| set(status, Status::Running)),
        // With its vCPUs parked the agent cannot answer; SIGKILL ends the VM instead (the
        // container's process dies with it, as a frozen cgroup's do), other signals wait for
        // `resume`.
        ControlRequest::Kill { signal, .. } if now == Status::Paused => {
            if *signal == libc::SIGKILL {
                set(status, Status::Stopped); // serve_control exits once this is answered
                Ok(())
            } else {
                Err(format!("container is paused: resume it before sending signal {signal}"))
            }
        }
        // The container's processes are its process and what it starts, all in its pid
        // namespace in the guest: the agent's signal reaches the first, and --all the same
        // (its children are its to signal, or die with it as PID 1).
        // A process the signal ended is reported before the signal is answered, at times:
        // then the container has stopped and the signal did its work.
        ControlRequest::Kill { signal, .. } => agent
            .call_ok(Request::Signal { pid, signal: *signal })
            .or_else(|e| if get(status) == Status::Stopped { Ok(()) } else { Err(e) }),
        ControlRequest::Pause if now != Status::Running => Err("container not running".to_owned()),
        ControlRequest::Pause => vcpus
            .pause(PAUSE_TIMEOUT)
            .map(|()| set(status, Status::Paused))
            .map_err(|e| e.to_string()),
        ControlRequest::Resume if now != Status::Paused => Err("container not paused".to_owned()),
        ControlRequest::Resume => {
            vcpus.resume();
            set(status, Status::Running);
            Ok(())
        }
        ControlRequest::Update { .. } if now == Status::Paused => Err("container is paused".to_owned()),
        ControlRequest::Update { resources } => agent.call_ok(Request::UpdateResources { resources: resources.clone() }),
        // With its vCPUs parked the agent cannot read the counters.
        ControlRequest::Stats if now == Status::Paused => Err("container is paused".to_owned()),
        ControlRequest::Stats => {
            let stats = agent.call_for(Request::Stats, |response| match response {
                Response::Stats(stats) => Ok(stats),
                other => Err(other),
            });
            return stats.map_or_else(ControlAnswer::Error, ControlAnswer::Stats);
        }
    };
    match result {
        Ok(()) => ControlAnswer::Ok,
        Err(message) => ControlAnswer::Error(message),
    }
}

/// Signals sent to this process go to the container's process, as they would to runc's.
fn forward_signals(pid: u32, agent: Arc<AgentClient>) -> anyhow::Result<()> {
    use signal_hook::consts::*;
    let wanted = [SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2, SIGALRM];
    let mut signals = signal_hook::iterator::Signals::new(wanted).context("install signal handlers")?;
    std::thread::spawn(move || {
        for signal in signals.forever() {
            let _ = agent.call_ok(Request::Signal { pid, signal });
        }
    });
    Ok(())
}

/// The caller sets the size on its master; the slave here sees it, and the guest follows.
fn forward_window_size(pty: OwnedFd, pid: u32, agent: Arc<AgentClient>) {
    std::thread::spawn(move || {
        let mut last = crate::tty::size_of(pty.as_fd());
        loop {
            std::thread::sleep(RESIZE_POLL);
            let now = crate::tty::size_of(pty.as_fd());
            if now != last {
                if let Some(size) = now {
                    if agent.call_ok(Request::ResizeTerminal { pid, size }).is_err() {
                        return;
                    }
                }
                last = now;
            }
        }
    });
}

/// Joins the network namespace config.json names by path (podman's), or makes a new one
/// when it names one without a path (docker's, filled by its prestart hook), so that the VM's
/// network card stands beside the container's interfaces. Returns whether the process is in
/// a namespace of the container's (false: the config has none, the host's network).
fn enter_network_namespace(spec: &Spec) -> anyhow::Result<bool> {
    let Some(namespace) = network_namespace(spec) else { return Ok(false) };
    match namespace.path() {
        Some(path) => {
            let file = File::open(path).with_context(|| format!("network namespace {}", path.display()))?;
            setns(file.as_fd(), CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("network namespace {}: setns", path.display()))?;
        }
        None => nix::sched::unshare(CloneFlags::CLONE_NEWNET).context("unshare the network namespace")?,
    }
    Ok(true)
}

/// The network namespace entry of config.json, if it has one.
pub fn network_namespace(spec: &Spec) -> Option<&oci_spec::runtime::LinuxNamespace> {
    spec.linux()
        .as_ref()?
        .namespaces()
        .as_ref()?
        .iter()
        .find(|n| n.typ() == LinuxNamespaceType::Network)
}

/// Waits for `create`'s word that the prestart and createRuntime hooks have run.
fn wait_for_hooks() -> anyhow::Result<()> {
    // SAFETY: `create` placed its go pipe's read end at GO_FD for this process alone; main
    // kept it open and nothing else here owns it.
    let mut go = unsafe { File::from_raw_fd(GO_FD) };
    let mut byte = [0u8; 1];
    match go.read(&mut byte) {
        Ok(1) => Ok(()),
        _ => bail!("create gave up before the container was made"),
    }
}

fn dup(fd: &OwnedFd) -> anyhow::Result<OwnedFd> {
    fd.try_clone().context("console: duplicate the pty")
}
