//! The runc command line: global flags and the verbs podman's conmon and containerd's runc
//! shim call. Each container is a microVM whose VMM process (`oci::monitor`) stands in for
//! the container's process; the verbs find it through `<root>/<id>/` (`oci::state`) and talk to
//! it over its control socket (`oci::control`).

use std::fs::File;
use std::io::{BufRead, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand};
use nix::sys::signal::{kill, Signal};
use oci_spec::runtime::{LinuxPidsBuilder, LinuxResources};
use nix::unistd::Pid;
use serde_json::json;

use crate::launch_checks::{self, Policy};
use crate::oci::control::{self, ControlAnswer, ControlError, ControlRequest, Status};
use crate::oci::{exec, hooks};
use crate::oci::monitor::{GO_FD, NETNS_READY, READY_FD};
use crate::oci::state::{self, ContainerDir, Record};

/// The runtime-spec version these verbs speak.
pub const OCI_VERSION: &str = "1.0.2";
/// How long `delete --force` waits for a killed VMM process to go.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// runc's global flags.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Directory for the containers' state
    #[arg(long, global = true, default_value = "/run/microvm", env = "MICROVM_ROOT")]
    pub root: PathBuf,
    /// Also write errors to FILE (conmon and containerd show the last one)
    #[arg(long, global = true, value_name = "FILE")]
    pub log: Option<PathBuf>,
    /// Format of --log: text or json (lines with level, msg and time)
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    /// Accepted for runc compatibility: the VMM process has no host cgroup of its own yet
    #[arg(long, global = true)]
    pub systemd_cgroup: bool,
    /// Accepted for runc compatibility
    #[arg(long, global = true)]
    pub debug: bool,
}

#[derive(Debug, Subcommand)]
pub enum OciCommand {
    /// Create a container (its VM booted, its process built and held before exec)
    Create(CreateArgs),
    /// Start the created container's process
    Start(IdArg),
    /// Print the container's state as JSON
    State(IdArg),
    /// Send a signal (name or number, default SIGTERM) to the container's process
    Kill(KillArgs),
    /// Delete the container and everything it made
    Delete(DeleteArgs),
    /// List the containers
    List(ListArgs),
    /// Print the host processes of a container (its VMM process)
    Ps(PsArgs),
    /// Print what this runtime supports, as JSON (runtime-spec features.md)
    Features,
    /// Write a default config.json into the bundle
    Spec(SpecArgs),
    /// Pause the container: its VM's vCPUs stop
    Pause(IdArg),
    /// Resume a paused container
    Resume(IdArg),
    /// Run another process in the container
    Exec(ExecArgs),
    /// Change the container's pids and memory limits (in the guest's cgroup)
    Update(UpdateArgs),
    /// Print the container's cgroup counters as runc's stats event (JSON); only --stats
    Events(EventsArgs),
    #[command(hide = true)]
    Monitor(MonitorArgs),
    #[command(hide = true)]
    ExecProcess(StandInArgs),
}

/// The hidden `microvm monitor` subcommand that `create` starts (oci/monitor.rs).
#[derive(Debug, Args)]
pub struct MonitorArgs {
    id: String,
    #[arg(long)]
    bundle: PathBuf,
    #[arg(long)]
    console_socket: Option<PathBuf>,
    #[command(flatten)]
    confinement: super::ConfinementArgs,
}

/// The hidden subcommand a detached `exec` starts (oci/exec.rs).
#[derive(Debug, Args)]
pub struct StandInArgs {
    id: String,
    /// The process, as JSON (resolved by `exec`).
    #[arg(long)]
    process_json: String,
    #[arg(long)]
    console_socket: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct IdArg {
    pub id: String,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The bundle: config.json and the root it names
    #[arg(short, long, default_value = ".")]
    bundle: PathBuf,
    /// Write the VMM process's pid here, once the container is created
    #[arg(long, value_name = "FILE")]
    pid_file: Option<PathBuf>,
    /// Send the pty master of a terminal container to this unix socket
    #[arg(long, value_name = "PATH")]
    console_socket: Option<PathBuf>,
    /// Accepted (the guest has its own root to pivot from)
    #[arg(long)]
    no_pivot: bool,
    /// Accepted (the guest kernel's keyring is the container's alone)
    #[arg(long)]
    no_new_keyring: bool,
    /// Accepted; descriptors cannot cross into a VM, so none are passed
    #[arg(long, default_value_t = 0)]
    preserve_fds: u32,
    id: String,
}

#[derive(Debug, Args)]
pub struct KillArgs {
    /// Signal every process of the container
    #[arg(short, long)]
    all: bool,
    id: String,
    #[arg(default_value = "SIGTERM")]
    signal: String,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// Kill a running container first
    #[arg(short, long)]
    force: bool,
    id: String,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[arg(short, long, default_value = "table", value_parser = ["table", "json"])]
    format: String,
    /// Ids only
    #[arg(short, long)]
    quiet: bool,
}

#[derive(Debug, Args)]
pub struct PsArgs {
    #[arg(short, long, default_value = "table", value_parser = ["table", "json"])]
    format: String,
    id: String,
    /// ps(1) options (ignored: the container's processes are in the guest)
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    ps_args: Vec<String>,
}

#[derive(Debug, Args)]
pub struct SpecArgs {
    #[arg(short, long, default_value = ".")]
    bundle: PathBuf,
    /// Accepted: the same spec (the guest's user namespace setup is the runtime's affair)
    #[arg(long)]
    rootless: bool,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// The process to run, as config.json's `process` (else the container's, with COMMAND)
    #[arg(long, short, value_name = "FILE")]
    process: Option<PathBuf>,
    /// Return once the process runs; a process of ours stands in for it (see --pid-file)
    #[arg(long, short)]
    detach: bool,
    /// With --detach: write the stand-in's pid here
    #[arg(long, value_name = "FILE")]
    pid_file: Option<PathBuf>,
    /// Send the pty master of a terminal process to this unix socket
    #[arg(long, value_name = "PATH")]
    console_socket: Option<PathBuf>,
    /// Give the process a terminal (needs --console-socket)
    #[arg(long, short)]
    tty: bool,
    /// Working directory in the container
    #[arg(long)]
    cwd: Option<String>,
    /// Add an environment variable (KEY=value)
    #[arg(long, short)]
    env: Vec<String>,
    /// Accepted; descriptors cannot cross into a VM, so none are passed
    #[arg(long, default_value_t = 0)]
    preserve_fds: u32,
    id: String,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Print the counters once (the only form served: the guest's events are not streamed)
    #[arg(long)]
    stats: bool,
    /// Accepted for runc's command line; meaningless with --stats
    #[arg(long, default_value = "5s")]
    interval: String,
    id: String,
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// The new limits, as config.json's `linux.resources` (`-`: from stdin)
    #[arg(short, long, value_name = "FILE")]
    resources: Option<PathBuf>,
    /// Maximum number of processes (0 or less: no limit)
    #[arg(long)]
    pids_limit: Option<i64>,
    /// Memory limit in bytes (-1: no limit)
    #[arg(long)]
    memory: Option<i64>,
    id: String,
}

/// Runs one verb; errors also go to `--log`.
pub fn run(global: &GlobalArgs, command: OciCommand, start: Instant) -> anyhow::Result<u8> {
    let result = match command {
        OciCommand::Create(args) => create(global, &args),
        OciCommand::Start(IdArg { id }) => start_container(global, &id),
        OciCommand::State(IdArg { id }) => print_state(global, &id),
        OciCommand::Kill(args) => kill_container(global, &args),
        OciCommand::Delete(args) => delete(global, &args),
        OciCommand::List(args) => list(global, &args),
        OciCommand::Ps(args) => ps(global, &args),
        OciCommand::Features => features(),
        OciCommand::Spec(args) => write_spec(&args),
        OciCommand::Pause(IdArg { id }) => ask(global, &id, &ControlRequest::Pause),
        OciCommand::Resume(IdArg { id }) => ask(global, &id, &ControlRequest::Resume),
        OciCommand::Exec(args) => exec(global, &args),
        OciCommand::Update(args) => update(global, &args),
        OciCommand::Events(args) => events(global, &args),
        OciCommand::Monitor(args) => {
            let monitor = crate::oci::monitor::Monitor {
                id: args.id,
                bundle: args.bundle,
                console_socket: args.console_socket,
                confinement: args.confinement.confinement(),
            };
            return Ok(crate::oci::monitor::run(&global.root, monitor, start));
        }
        OciCommand::ExecProcess(args) => {
            let socket = args.console_socket.as_deref();
            return Ok(crate::oci::exec::stand_in(&global.root, &args.id, &args.process_json, socket));
        }
    };
    if let Err(e) = &result {
        log_error(global, &crate::errors::one_line(e));
    }
    result
}

/// Appends the error to `--log` as runc does: a JSON line, or `level=error msg=...`.
fn log_error(global: &GlobalArgs, message: &str) {
    let Some(path) = &global.log else { return };
    let time = state::now_rfc3339();
    let line = if global.log_format == "json" {
        json!({ "level": "error", "msg": message, "time": time }).to_string()
    } else {
        format!("time={time:?} level=error msg={message:?}")
    };
    if let Ok(mut file) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
        let _ = writeln!(file, "{line}");
    }
}

/// `create`: checks the bundle, claims the container's directory, starts the VMM process and
/// waits until it says the container is created; then writes the pid file, last.
fn create(global: &GlobalArgs, args: &CreateArgs) -> anyhow::Result<u8> {
    state::check_id(&args.id)?;
    let bundle = std::fs::canonicalize(&args.bundle)
        .with_context(|| format!("bundle {}", args.bundle.display()))?;
    // The launch checks first: a refused container leaves nothing behind.
    let policy = Policy { require_nonroot: false, root_inside_bundle: false };
    let spec = launch_checks::check_bundle(&bundle, &policy)?;
    hooks::refuse_unsupported(spec.hooks().as_ref())?;
    if let Some(warning) = launch_checks::apparmor_warning(&spec) {
        tracing::warn!("{warning}");
    }
    let terminal = spec.process().as_ref().and_then(|p| p.terminal()).unwrap_or(false);
    if terminal && args.console_socket.is_none() {
        bail!("process.terminal is set but no --console-socket was given");
    }
    let rootfs = spec.root().as_ref().map(|r| bundle.join(r.path())).unwrap_or_default();
    let dir = ContainerDir::claim(&global.root, &args.id)?;
    let created = start_monitor(global, args, &bundle, &rootfs, &dir, &spec);
    if created.is_err() {
        let _ = dir.remove();
    }
    created.map(|()| 0)
}

fn start_monitor(
    global: &GlobalArgs,
    args: &CreateArgs,
    bundle: &Path,
    rootfs: &Path,
    dir: &ContainerDir,
    spec: &oci_spec::runtime::Spec,
) -> anyhow::Result<()> {
    let mut command = Command::new("/proc/self/exe");
    command.arg("--root").arg(&global.root).arg("monitor").arg(&args.id).arg("--bundle").arg(bundle);
    if let Some(socket) = &args.console_socket {
        command.arg("--console-socket").arg(std::path::absolute(socket)?);
    }
    let terminal = spec.process().as_ref().and_then(|p| p.terminal()).unwrap_or(false);
    leave_callers_stdio(&mut command, terminal);
    let (mut child, ready, mut go) =
        spawn_with_pipes(command, READY_FD, Some(GO_FD)).context("create: start the VMM process")?;
    let pid = child.id() as i32;
    let record = Record {
        id: args.id.clone(),
        bundle: bundle.to_owned(),
        rootfs: rootfs.to_owned(),
        pid,
        pid_start: state::process_start(pid).unwrap_or_default(),
        created: state::now_rfc3339(),
        annotations: spec.annotations().clone().unwrap_or_default().into_iter().collect(),
        hooks: spec.hooks().clone(),
        network_namespace: crate::oci::monitor::network_namespace(spec).and_then(|n| n.path().clone()),
    };
    let recorded = dir.write(&record);
    // The hooks see the VMM process's pid, the container's stand-in, with status "creating".
    let hooks_ran = |stages: &[&str]| {
        let mut state = state_json(dir, &record);
        state["status"] = json!("creating");
        state["pid"] = json!(record.pid);
        stages.iter().try_for_each(|stage| hooks::run(record.hooks.as_ref(), stage, &state))
    };
    let mut ready = std::io::BufReader::new(ready);
    let mut answer = String::new();
    let _ = ready.by_ref().take(64 * 1024).read_line(&mut answer);
    let mut failed = recorded.err().map(anyhow::Error::from);
    if failed.is_none() && answer.trim() == NETNS_READY {
        // The VMM process is in the container's network namespace and waits: the hooks that
        // fill it (docker's libnetwork) run before the VM is built around it.
        failed = hooks_ran(&["prestart", "createRuntime"]).err();
        if failed.is_none() {
            let _ = go.as_ref().map(|mut g| g.write_all(b"g"));
        }
        // Closed either way: after a failed hook the end of file makes the VMM process give up.
        drop(go.take());
        answer.clear();
        let _ = ready.take(64 * 1024).read_to_string(&mut answer);
    }
    drop(go);
    failed = failed.or(match answer.trim() {
        "ok" => hooks_ran(&["createContainer"]).err(),
        "" => Some(anyhow!("the VMM process exited before the container was created")),
        message => Some(anyhow!("{message}")),
    });
    if let Some(e) = failed {
        let _ = child.kill();
        let _ = child.wait();
        return Err(e);
    }
    if let Some(pid_file) = &args.pid_file {
        write_atomically(pid_file, pid.to_string().as_bytes())
            .with_context(|| format!("pid file {}", pid_file.display()))?;
    }
    // The VMM process outlives us; the caller (a subreaper) adopts it.
    std::mem::forget(child);
    Ok(())
}

/// Starts a process that stands in for a container's process (the VMM process, or a
/// detached exec's) with a pipe's write end at `fd`, on which it says "ok" or why it failed,
/// and, with `go_fd`, a second pipe's read end there, on which we answer it; returns the
/// child, the first pipe's read end and the second's write end.
fn spawn_with_pipes(mut command: Command, fd: RawFd, go_fd: Option<RawFd>) -> anyhow::Result<(Child, File, Option<File>)> {
    let (ready_read, ready_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("pipe")?;
    let go = go_fd.map(|_| nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)).transpose().context("pipe")?;
    let mut moves = vec![(ready_write.as_raw_fd(), fd)];
    if let (Some((go_read, _)), Some(go_fd)) = (&go, go_fd) {
        moves.push((go_read.as_raw_fd(), go_fd));
    }
    // SAFETY: the closure runs in the forked child before exec and calls only dup2, which is
    // async-signal-safe, on descriptors open until spawn returns. dup2 leaves each copy
    // without close-on-exec, so the child inherits it at its place. The go pipe is made after
    // the ready pipe, so its read end is above both of the ready pipe's ends and above `fd`
    // (the lowest free numbers go first): the first move cannot overwrite the second's
    // source, and no source already sits at its target (a dup2 onto itself would keep
    // close-on-exec).
    unsafe {
        command.pre_exec(move || {
            for &(from, to) in &moves {
                if libc::dup2(from, to) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        })
    };
    let child = command.spawn()?;
    Ok((child, File::from(ready_read), go.map(|(_, write)| File::from(write))))
}

/// The stand-in's first line (empty if it exited without one).
fn read_answer(ready: File) -> String {
    let mut answer = String::new();
    let _ = ready.take(64 * 1024).read_to_string(&mut answer);
    answer
}

/// `exec`: see `oci::exec`.
fn exec(global: &GlobalArgs, args: &ExecArgs) -> anyhow::Result<u8> {
    let dir = ContainerDir::open(&global.root, &args.id)?;
    let record = dir.read()?;
    exec::check_running(&dir, &record)?;
    let process = exec::resolve(
        &record.bundle,
        args.process.as_deref(),
        &args.command,
        &args.env,
        args.cwd.as_deref(),
        args.tty,
    )?;
    if process.terminal().unwrap_or(false) && args.console_socket.is_none() {
        bail!("process.terminal is set but no --console-socket was given");
    }
    let console_socket = args.console_socket.as_deref().map(std::path::absolute).transpose()?;
    if !args.detach {
        return exec::run_attached(&global.root, &args.id, process, console_socket.as_deref());
    }
    let mut command = Command::new("/proc/self/exe");
    command
        .arg("--root")
        .arg(std::path::absolute(&global.root)?)
        .arg("exec-process")
        .arg(&args.id)
        .arg("--process-json")
        .arg(serde_json::to_string(&process)?);
    if let Some(socket) = &console_socket {
        command.arg("--console-socket").arg(socket);
    }
    leave_callers_stdio(&mut command, process.terminal().unwrap_or(false));
    let (mut child, ready, _) = spawn_with_pipes(command, exec::READY_FD, None).context("exec: start the process")?;
    let answer = read_answer(ready);
    if answer.trim() != "ok" {
        let _ = child.kill();
        let _ = child.wait();
        match answer.trim() {
            "" => bail!("exec: the process's stand-in exited before the process started"),
            message => bail!("{message}"),
        }
    }
    if let Some(pid_file) = &args.pid_file {
        write_atomically(pid_file, child.id().to_string().as_bytes())
            .with_context(|| format!("pid file {}", pid_file.display()))?;
    }
    // The stand-in outlives us; the caller (a subreaper) adopts it.
    std::mem::forget(child);
    Ok(0)
}

/// A process that stands in for one with a terminal gets /dev/null, not our stdio: its
/// process's stdio is the terminal, and our stdout and stderr are for this verb's own words.
/// containerd's runc shim reads them from a pipe until every writer has closed it before it
/// goes on (go-runc's combined output), so a stand-in that kept them would hang
/// `docker run -t` and `docker exec -t` for as long as the container ran, as runc's own
/// container process, which has only the terminal, never does. Without a terminal our stdio
/// is the process's, as the caller means it to be.
fn leave_callers_stdio(command: &mut Command, terminal: bool) {
    if terminal {
        command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// The live status: the VMM process's word, or stopped when it is gone.
fn status_of(dir: &ContainerDir, record: &Record) -> Status {
    if !state::alive(record) {
        tracing::debug!("{}: VMM process {} is gone", record.id, record.pid);
        return Status::Stopped;
    }
    match control::call(&dir.control_socket(), &ControlRequest::Status) {
        Ok(ControlAnswer::Status(status)) => status,
        other => {
            tracing::debug!("{}: VMM process {} answered {other:?}", record.id, record.pid);
            Status::Stopped
        }
    }
}

fn state_json(dir: &ContainerDir, record: &Record) -> serde_json::Value {
    let status = status_of(dir, record);
    json!({
        "ociVersion": OCI_VERSION,
        "id": record.id,
        "pid": if status == Status::Stopped { 0 } else { record.pid },
        "status": status.as_str(),
        "bundle": record.bundle,
        "rootfs": record.rootfs,
        "created": record.created,
        "owner": "",
        "annotations": record.annotations,
    })
}

fn print_state(global: &GlobalArgs, id: &str) -> anyhow::Result<u8> {
    let dir = ContainerDir::open(&global.root, id)?;
    let record = dir.read()?;
    println!("{:#}", state_json(&dir, &record));
    Ok(0)
}

/// Asks the container's VMM process to do `request`.
fn ask(global: &GlobalArgs, id: &str, request: &ControlRequest) -> anyhow::Result<u8> {
    let dir = ContainerDir::open(&global.root, id)?;
    let record = dir.read()?;
    if !state::alive(&record) {
        bail!("container not running");
    }
    match control::call(&dir.control_socket(), request) {
        Ok(_) => Ok(0),
        Err(ControlError::Refused(message)) => bail!("{message}"),
        Err(e) => Err(e.into()),
    }
}

fn start_container(global: &GlobalArgs, id: &str) -> anyhow::Result<u8> {
    ask(global, id, &ControlRequest::Start)?;
    let dir = ContainerDir::open(&global.root, id)?;
    let record = dir.read()?;
    hooks::run_warning(record.hooks.as_ref(), "poststart", &state_json(&dir, &record));
    Ok(0)
}

fn kill_container(global: &GlobalArgs, args: &KillArgs) -> anyhow::Result<u8> {
    let signal = parse_signal(&args.signal)?;
    ask(global, &args.id, &ControlRequest::Kill { signal, all: args.all })
}

/// A signal by number (`9`) or name (`KILL`, `SIGKILL`, any case).
fn parse_signal(text: &str) -> anyhow::Result<i32> {
    if let Ok(n) = text.parse::<i32>() {
        return Signal::try_from(n).map(|s| s as i32).map_err(|_| anyhow!("signal {text}: unknown"));
    }
    let upper = text.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") { upper } else { format!("SIG{upper}") };
    Signal::from_str(&name).map(|s| s as i32).map_err(|_| anyhow!("signal {text}: unknown"))
}

/// `update`: the limits from --resources, then the flags over them, into the guest's cgroup.
fn update(global: &GlobalArgs, args: &UpdateArgs) -> anyhow::Result<u8> {
    let mut resources = match args.resources.as_deref() {
        None => LinuxResources::default(),
        Some(path) => {
            let name = path.display().to_string();
            let mut text = String::new();
            let read = if name == "-" {
                std::io::stdin().read_to_string(&mut text)
            } else {
                File::open(path).and_then(|mut f| f.read_to_string(&mut text))
            };
            read.with_context(|| format!("resources {name}"))?;
            serde_json::from_str(&text).with_context(|| format!("resources {name}"))?
        }
    };
    if let Some(limit) = args.pids_limit {
        resources.set_pids(Some(LinuxPidsBuilder::default().limit(limit).build()?));
    }
    if let Some(limit) = args.memory {
        let mut memory = resources.memory().unwrap_or_default();
        memory.set_limit(Some(limit));
        resources.set_memory(Some(memory));
    }
    ask(global, &args.id, &ControlRequest::Update { resources: Box::new(resources) })
}

/// `events --stats`: one stats event, as runc prints it.
fn events(global: &GlobalArgs, args: &EventsArgs) -> anyhow::Result<u8> {
    if !args.stats {
        bail!("events: only --stats is served (the guest's events are not streamed)");
    }
    let dir = ContainerDir::open(&global.root, &args.id)?;
    if !state::alive(&dir.read()?) {
        bail!("container not running");
    }
    match control::call(&dir.control_socket(), &ControlRequest::Stats) {
        Ok(ControlAnswer::Stats(stats)) => {
            println!("{}", crate::oci::stats::event(&args.id, &stats));
            Ok(0)
        }
        Ok(other) => bail!("events: the VMM process answered {other:?}"),
        Err(ControlError::Refused(message)) => bail!("{message}"),
        Err(e) => Err(e.into()),
    }
}

/// `delete`: a stopped or created container goes at once, a running one only with --force
/// (its VMM process is killed, and the VM with it).
fn delete(global: &GlobalArgs, args: &DeleteArgs) -> anyhow::Result<u8> {
    let dir = ContainerDir::open(&global.root, &args.id)?;
    let record = dir.read()?;
    let status = status_of(&dir, &record);
    if matches!(status, Status::Running | Status::Paused) && !args.force {
        bail!("cannot delete container {} that is not stopped: {}", args.id, status.as_str());
    }
    if state::alive(&record) {
        let _ = kill(Pid::from_raw(record.pid), Signal::SIGKILL);
        let deadline = Instant::now() + KILL_WAIT;
        while state::alive(&record) {
            if Instant::now() > deadline {
                bail!("container {}: its VMM process {} did not die", args.id, record.pid);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    dir.remove()?;
    if let Some(namespace) = &record.network_namespace {
        if let Err(e) = crate::tap_net::detach(namespace) {
            eprintln!("microvm: warning: {}", crate::errors::one_line(&e));
        }
    }
    let mut state = state_json(&dir, &record);
    state["status"] = json!("stopped");
    state["pid"] = json!(0);
    hooks::run_warning(record.hooks.as_ref(), "poststop", &state);
    Ok(0)
}

fn list(global: &GlobalArgs, args: &ListArgs) -> anyhow::Result<u8> {
    let all = ContainerDir::list(&global.root)?;
    let states: Vec<serde_json::Value> = all
        .iter()
        .filter_map(|dir| dir.read().ok().map(|r| state_json(dir, &r)))
        .collect();
    if args.quiet {
        for s in &states {
            println!("{}", s["id"].as_str().unwrap_or_default());
        }
    } else if args.format == "json" {
        println!("{}", serde_json::Value::Array(states));
    } else {
        println!("{:<20} {:<8} {:<10} {:<40} {:<31} OWNER", "ID", "PID", "STATUS", "BUNDLE", "CREATED");
        for s in &states {
            println!(
                "{:<20} {:<8} {:<10} {:<40} {:<31} root",
                s["id"].as_str().unwrap_or_default(),
                s["pid"],
                s["status"].as_str().unwrap_or_default(),
                s["bundle"].as_str().unwrap_or_default(),
                s["created"].as_str().unwrap_or_default(),
            );
        }
    }
    Ok(0)
}

/// The container's host processes: its VMM process alone (what runs in the guest has no host
/// pid).
fn ps(global: &GlobalArgs, args: &PsArgs) -> anyhow::Result<u8> {
    let dir = ContainerDir::open(&global.root, &args.id)?;
    let record = dir.read()?;
    let pids: Vec<i32> = if state::alive(&record) { vec![record.pid] } else { Vec::new() };
    if args.format == "json" {
        println!("{}", json!(pids));
    } else {
        println!("PID CMD");
        for pid in pids {
            println!("{pid} microvm");
        }
    }
    Ok(0)
}

fn features() -> anyhow::Result<u8> {
    let features = json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": OCI_VERSION,
        "hooks": hooks::SUPPORTED,
        // What the agent's mount-option parser knows (guest-agent/src/sandbox/fs.rs).
        "mountOptions": [
            "ro", "rw", "nosuid", "suid", "nodev", "dev", "noexec", "exec", "sync", "async",
            "dirsync", "noatime", "atime", "nodiratime", "diratime", "relatime", "norelatime",
            "strictatime", "nostrictatime", "bind", "rbind", "private", "rprivate", "shared",
            "rshared", "slave", "rslave", "unbindable", "runbindable", "tmpcopyup", "defaults",
        ],
        "linux": {
            "namespaces": ["pid", "network", "ipc", "uts", "mount", "cgroup", "user"],
            "capabilities": crate::spec::all_capabilities()
                .iter()
                .filter_map(|c| serde_json::to_value(c).ok())
                .collect::<Vec<_>>(),
            "cgroup": { "v1": false, "v2": true, "systemd": false, "systemdUser": false },
            "seccomp": { "enabled": true },
            "apparmor": { "enabled": false },
            "selinux": { "enabled": false },
        },
        "annotations": {
            "io.microvm.isolation": "kvm-microvm",
            "io.microvm.network": "OCI containers: the interface the caller made in the network namespace (podman CNI, docker libnetwork) carried into the guest: a tap beside it joined by tc mirred filters, IPv4 address and default route; `microvm run`: virtio-net through passt (--network user, -p)",
            "io.microvm.mounts": "tmpfs, proc, sysfs, devpts, mqueue, cgroup2 inside the guest; bind mounts of host directories and of files over 64 KiB shared over virtio-fs (one virtiofsd per sandbox; ro read-only on the host side; no setuid or setgid bit reaches the host); smaller files copied into the guest; sockets, devices and FIFOs refused",
            "io.microvm.rootfs": "the bundle's root shared read-write over virtio-fs (a virtiofsd of its own) and written in place, as runc writes it; a read-only root packed into an EROFS image under a tmpfs overlay in the guest",
        },
    });
    println!("{features:#}");
    Ok(0)
}

fn write_spec(args: &SpecArgs) -> anyhow::Result<u8> {
    let path = args.bundle.join("config.json");
    if path.exists() {
        bail!("File {} exists. Remove it first", path.display());
    }
    // runc's default: `sh` on a terminal, as root, docker's confinement.
    let options = crate::spec::Options {
        args: vec!["sh".into()],
        env: vec![
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            "TERM=xterm".into(),
        ],
        cwd: "/".into(),
        uid: 0,
        gid: 0,
        terminal: true,
        hostname: "microvm".into(),
        read_only: true,
        cap_add: Vec::new(),
        cap_drop: Vec::new(),
        privileged: false,
        seccomp: crate::spec::Seccomp::Default,
        no_new_privileges: true,
        pids_limit: None,
        memory_limit: None,
        ulimits: Vec::new(),
        tmpfs: Vec::new(),
        volumes: Vec::new(),
        network_namespace: true,
    };
    let spec = crate::spec::build(&options)?;
    let json = serde_json::to_vec_pretty(&spec)?;
    std::fs::write(&path, json).with_context(|| format!("{}", path.display()))?;
    Ok(0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn signals_by_name_or_number() {
        assert_eq!(parse_signal("9").unwrap(), 9);
        assert_eq!(parse_signal("KILL").unwrap(), 9);
        assert_eq!(parse_signal("sigterm").unwrap(), 15);
        assert_eq!(parse_signal("SIGUSR1").unwrap(), 10);
        assert!(parse_signal("NOPE").is_err());
        assert!(parse_signal("99").is_err());
    }
}
