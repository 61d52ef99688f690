//! `microvm run ROOTFS -- CMD ARGS...`: runs one command from a root filesystem directory in a
//! fresh microVM, like `docker run --rm`. Stdio streams both ways, signals reach the process,
//! its exit status is ours (128+N when killed by signal N), and the VM is gone when it ends.
//! microvm's own failures exit 125; a command not found 127, not executable 126.
//!
//! Steps: check the inputs; make the sandbox directory (runtime state, removed at the end);
//! pack the rootfs (cached); write the agent initramfs; boot the VM in this process; reach
//! the agent over vsock; start the command; relay stdio and signals; report the exit status;
//! shut the VM down.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::Args;
use protocol::{
    Event, ExitStatusWire, Message, Request, Response, StartProcess, Stream, StreamHello,
    TerminalSize,
};
use vmm::config::{Console, DiskConfig, VmConfig, VsockConfig, DEFAULT_CMDLINE};
use vmm::Vmm;

use crate::host;
use crate::launch_checks::{self, Policy};
use crate::sandbox::SandboxDir;
use crate::spec;
use oci_spec::runtime::Spec;

/// The guest's vsock context id (2 is the host; 3 is the first guest id).
const GUEST_CID: u64 = 3;
/// How long the agent may take to answer on vsock after the VM starts.
const AGENT_TIMEOUT: Duration = Duration::from_secs(120);
/// A second Ctrl-C or SIGTERM within this long kills the VM.
const FORCE_WINDOW: Duration = Duration::from_secs(3);

/// Run a command in a new microVM
#[derive(Args)]
pub struct RunArgs {
    /// Root filesystem: a directory holding the container's files
    #[arg(required_unless_present = "bundle")]
    rootfs: Option<PathBuf>,
    /// Command and arguments, after `--`
    #[arg(last = true, required_unless_present = "bundle", value_name = "CMD")]
    command: Vec<String>,
    /// Run the OCI bundle DIR (config.json and its root) as it is, instead of ROOTFS and CMD;
    /// the container flags below do not apply then
    #[arg(long, value_name = "DIR", conflicts_with_all = ["rootfs", "command"])]
    bundle: Option<PathBuf>,
    /// Refuse to run the process as uid 0
    #[arg(long)]
    require_nonroot: bool,
    /// Set an environment variable (KEY=value)
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Working directory inside the container
    #[arg(short, long, default_value = "/")]
    workdir: String,
    /// User to run as: UID or UID:GID
    #[arg(short, long, default_value = "0")]
    user: String,
    /// Keep stdin open and pass it to the command
    #[arg(short, long)]
    interactive: bool,
    /// Give the command a terminal (host terminal in raw mode, window size forwarded)
    #[arg(short, long)]
    tty: bool,
    /// Number of vCPUs
    #[arg(long, default_value_t = 1)]
    cpus: u8,
    /// Guest memory in MiB
    #[arg(long, default_value_t = 256)]
    memory: u64,
    /// Guest kernel (default: the one kernel-config/build.sh built last)
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Mount the root filesystem read-only (no writable overlay)
    #[arg(long)]
    read_only: bool,
    /// Name of the sandbox (default: a generated one)
    #[arg(long)]
    name: Option<String>,
    /// Write the guest kernel's console to FILE (default: a log in the sandbox directory)
    #[arg(long, value_name = "FILE")]
    console: Option<PathBuf>,
    /// The static guest agent binary (default: $MICROVM_AGENT, or microvm-agent beside microvm)
    #[arg(long)]
    agent: Option<PathBuf>,
    /// Add a capability (CAP_NAME, NAME or ALL) to docker's default set
    #[arg(long, value_name = "CAP")]
    cap_add: Vec<String>,
    /// Drop a capability (CAP_NAME, NAME or ALL)
    #[arg(long, value_name = "CAP")]
    cap_drop: Vec<String>,
    /// seccomp=FILE (Docker or OCI profile), seccomp=unconfined, or no-new-privileges
    #[arg(long, value_name = "OPT")]
    security_opt: Vec<String>,
    /// Every capability, no seccomp filter, /sys and cgroups writable (inside the guest only)
    #[arg(long)]
    privileged: bool,
    /// Most processes the container may have at once (cgroup pids.max in the guest)
    #[arg(long, value_name = "N")]
    pids_limit: Option<i64>,
    /// Memory the container may use (cgroup memory.max in the guest): bytes, or with k, m, g
    #[arg(long, value_name = "SIZE")]
    memory_limit: Option<String>,
    /// A resource limit, NAME=SOFT[:HARD] (e.g. nofile=1024:2048)
    #[arg(long, value_name = "LIMIT")]
    ulimit: Vec<String>,
    /// The container's hostname (default: the sandbox name)
    #[arg(long)]
    hostname: Option<String>,
    /// Mount a tmpfs at DEST, with mount options after a colon (e.g. /tmp:size=64m)
    #[arg(long, value_name = "DEST[:OPTIONS]")]
    tmpfs: Vec<String>,
    /// Run a reaping init as PID 1 of the container, the command as its child
    #[arg(long)]
    init: bool,
    /// The container's network: host (the guest's, default) or none (a namespace of its own)
    #[arg(long, default_value = "host", value_parser = ["host", "none"])]
    network: String,
    #[command(flatten)]
    confinement: super::ConfinementArgs,
}

pub fn run(args: RunArgs, start: Instant) -> anyhow::Result<u8> {
    // Read now: the jail empties the environment before the guest runs.
    let timings = std::env::var_os("MICROVM_TIMINGS").is_some();
    // The launch checks come first: a refused container leaves nothing behind.
    let (spec, rootfs) = container(&args)?;
    let tty = spec
        .process()
        .as_ref()
        .and_then(|p| p.terminal())
        .unwrap_or(false);
    let read_only = spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false);
    let kernel = match &args.kernel {
        Some(k) => k.clone(),
        None => host::default_kernel_dir()
            .map(|d| d.join("vmlinux"))
            .unwrap_or_default(),
    };
    if !kernel.is_file() {
        bail!(
            "kernel {}: not found (build one with kernel-config/build.sh, or pass --kernel)",
            kernel.display()
        );
    }
    let agent = find_agent(args.agent.as_deref())?;
    let cache = host::cache_dir()
        .ok_or_else(|| anyhow!("no cache directory: set MICROVM_CACHE or HOME"))?;

    let sandbox = Arc::new(SandboxDir::create(args.name.as_deref())?);
    let packed = crate::rootfs::pack(&rootfs, &cache)?;
    tracing::debug!(
        "rootfs image {} ({})",
        packed.image.display(),
        if packed.cached { "cached" } else { "packed" }
    );
    let initrd = sandbox.path().join("initramfs.cpio");
    let agent_bytes =
        std::fs::read(&agent).with_context(|| format!("agent {}", agent.display()))?;
    let mut file = std::fs::File::create(&initrd)
        .with_context(|| format!("initramfs {}", initrd.display()))?;
    crate::initramfs::write(&mut file, &agent_bytes)
        .with_context(|| format!("initramfs {}", initrd.display()))?;
    drop(file);

    let uds = sandbox.path().join("vsock.sock");
    let mut config = VmConfig::new(&kernel);
    config.initrd = Some(initrd);
    config.cmdline = DEFAULT_CMDLINE.to_string();
    if read_only {
        config.cmdline.push_str(" microvm.readonly");
    }
    config.mem_mib = args.memory;
    config.vcpus = args.cpus;
    config.console = Console::File(
        args.console
            .clone()
            .unwrap_or_else(|| sandbox.path().join("console.log")),
    );
    config.disks = vec![DiskConfig {
        path: packed.image.clone(),
        read_only: true,
    }];
    config.vsock = Some(VsockConfig {
        guest_cid: GUEST_CID,
        uds_path: uds.clone(),
    });

    config.seccomp = args.confinement.seccomp.into();
    let vmm = Vmm::boot(&config, start)?;
    // Before the guest's first instruction: the jail, then seccomp for this thread and all it
    // starts (the VMM's among them, which add their own narrower filters).
    args.confinement.enter_jail(sandbox.path())?;
    vmm::seccomp::install(vmm::seccomp::ThreadKind::Runtime)?;
    let (vm_done_tx, vm_done) = mpsc::channel();
    std::thread::Builder::new()
        .name("vmm".into())
        .spawn(move || {
            let _ = vm_done_tx.send(vmm.run());
        })
        .context("start the VMM thread")?;

    let mut session = Session::connect(&uds, &vm_done)?;
    let agent_ready = start.elapsed();
    let terminal = if tty {
        Some(host_terminal_size())
    } else {
        None
    };
    let request = StartProcess {
        spec: Box::new(spec),
        terminal,
        stdin: args.interactive,
        init: args.init,
    };
    let (pid, container_setup) = match session.call(Request::StartProcess(request))? {
        Response::ProcessStarted { pid, setup_micros } => {
            (pid, Duration::from_micros(setup_micros))
        }
        Response::Error { kind, message } => {
            eprintln!("microvm: {message}");
            session.shutdown();
            return Ok(kind.exit_code() as u8);
        }
        other => bail!("agent answered StartProcess with {other:?}"),
    };
    let outputs = session.attach_stdio(&uds, pid, args.interactive, tty)?;
    let _raw = if tty {
        crate::tty::RawMode::enter()
    } else {
        None
    };
    session.forward_signals(pid, tty, Arc::downgrade(&sandbox))?;
    session.call_ok(Request::WaitProcess { pid })?;
    let status = session.wait_exit(pid)?;
    let process_exit = start.elapsed();
    for out in outputs {
        let _ = out.join();
    }
    session.shutdown();
    // The guest powers off once it has answered Shutdown; give it a moment to do so cleanly.
    let report = vm_done.recv_timeout(Duration::from_secs(10));
    if timings {
        let ms =
            |d: Option<Duration>| d.map_or("-".into(), |d| format!("{:.1}", d.as_secs_f64() * 1e3));
        let report = report.ok().and_then(Result::ok);
        let r = report.as_ref();
        eprintln!(
            "microvm-timings: first_kvm_run={} guest_init={} agent_ready={} container_setup={} process_start={} process_exit={} vm_exit={}",
            ms(r.and_then(|r| r.first_kvm_run)),
            r.and_then(|r| r.guest_init_ms).map_or("-".into(), |m| format!("{m:.1}")),
            ms(Some(agent_ready)),
            ms(Some(container_setup)),
            r.and_then(|r| r.process_start_ms).map_or("-".into(), |m| format!("{m:.1}")),
            ms(Some(process_exit)),
            ms(r.map(|r| r.total)),
        );
    }
    Ok(status.shell_code().clamp(0, 255) as u8)
}

/// The container's config, checked, and its root directory: the bundle's as it is, or built
/// from the flags.
fn container(args: &RunArgs) -> anyhow::Result<(Spec, PathBuf)> {
    let policy = Policy {
        require_nonroot: args.require_nonroot,
        root_inside_bundle: true,
    };
    if let Some(bundle) = &args.bundle {
        let spec = launch_checks::check_bundle(bundle, &policy)?;
        let root = spec
            .root()
            .as_ref()
            .map(|r| bundle.join(r.path()))
            .unwrap_or_default();
        return Ok((spec, root));
    }
    let (uid, gid) = parse_user(&args.user)?;
    let mut options = spec::Options {
        args: args.command.clone(),
        env: default_env(&args.env, args.tty),
        cwd: args.workdir.clone(),
        uid,
        gid,
        terminal: args.tty,
        hostname: args
            .hostname
            .clone()
            .or_else(|| args.name.clone())
            .unwrap_or_else(|| "microvm".into()),
        read_only: args.read_only,
        cap_add: args.cap_add.clone(),
        cap_drop: args.cap_drop.clone(),
        privileged: args.privileged,
        seccomp: spec::Seccomp::Default,
        no_new_privileges: false,
        pids_limit: args.pids_limit,
        memory_limit: args
            .memory_limit
            .as_deref()
            .map(spec::parse_size)
            .transpose()?,
        ulimits: args.ulimit.clone(),
        tmpfs: args.tmpfs.clone(),
        network_namespace: args.network == "none",
    };
    for opt in &args.security_opt {
        spec::apply_security_opt(&mut options, opt)?;
    }
    let spec = spec::build(&options)?;
    launch_checks::check_spec(&spec, &policy)?;
    Ok((spec, args.rootfs.clone().unwrap_or_default()))
}

/// `UID` or `UID:GID` (numeric: names would need the image's /etc/passwd).
fn parse_user(user: &str) -> anyhow::Result<(u32, u32)> {
    let bad = || anyhow!("user {user:?}: expected UID or UID:GID, numbers");
    let (u, g) = user.split_once(':').unwrap_or((user, user));
    Ok((u.parse().map_err(|_| bad())?, g.parse().map_err(|_| bad())?))
}

/// The agent binary: `--agent`, `$MICROVM_AGENT`, `microvm-agent` beside this binary, or the
/// static build of this workspace (`target/static/.../guest-agent`).
fn find_agent(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    let mut candidates: Vec<PathBuf> = given.map(Path::to_path_buf).into_iter().collect();
    candidates.extend(std::env::var_os("MICROVM_AGENT").map(PathBuf::from));
    if given.is_none() {
        if let Some(dir) = std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(Path::to_path_buf))
        {
            candidates.push(dir.join("microvm-agent"));
            candidates.push(dir.join("../static/x86_64-unknown-linux-gnu/release/guest-agent"));
        }
    }
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| {
            anyhow!(
                "agent {}: not found (build it with images/build-agent.sh, or pass --agent)",
                candidates
                    .first()
                    .map_or("microvm-agent".into(), |p| p.display().to_string())
            )
        })
}

/// PATH and HOME as docker sets them, TERM with a terminal, then the user's -e values.
fn default_env(user: &[String], tty: bool) -> Vec<String> {
    let mut env = vec![
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
        "HOME=/root".to_string(),
    ];
    if tty {
        env.push("TERM=xterm".into());
    }
    for kv in user {
        let key = kv.split('=').next().unwrap_or_default();
        env.retain(|e| e.split('=').next() != Some(key));
        env.push(kv.clone());
    }
    env
}

fn host_terminal_size() -> TerminalSize {
    crate::tty::window_size().unwrap_or(TerminalSize { rows: 24, cols: 80 })
}

/// The control connection to the agent. Requests go out through a shared writer (the signal
/// thread sends too); responses and events come back in order on the reader.
struct Session {
    reader: UnixStream,
    writer: Arc<Mutex<UnixStream>>,
}

impl Session {
    /// Connects to the agent's control port, retrying while the guest boots, and shakes hands.
    fn connect(
        uds: &Path,
        vm_done: &mpsc::Receiver<Result<vmm::RunReport, vmm::VmmError>>,
    ) -> anyhow::Result<Self> {
        let deadline = Instant::now() + AGENT_TIMEOUT;
        let stream = loop {
            match vm_done.try_recv() {
                Ok(Ok(report)) => {
                    bail!("the VM stopped before its agent answered: {}", report.exit)
                }
                Ok(Err(e)) => bail!("the VM failed before its agent answered: {e}"),
                Err(_) => {}
            }
            match vsock_connect(uds, protocol::AGENT_CONTROL_PORT) {
                Ok(s) => break s,
                Err(e) if Instant::now() > deadline => {
                    bail!("agent did not answer within {AGENT_TIMEOUT:?}: {e}")
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        let writer = stream.try_clone().context("vsock control connection")?;
        let mut reader = stream;
        let mut both = ReadWrite {
            r: &mut reader,
            w: &writer,
        };
        protocol::host_handshake(&mut both, env!("CARGO_PKG_VERSION"))
            .context("agent handshake")?;
        Ok(Self {
            reader,
            writer: Arc::new(Mutex::new(writer)),
        })
    }

    fn send(&self, request: Request) -> anyhow::Result<()> {
        let mut w = self
            .writer
            .lock()
            .map_err(|_| anyhow!("control connection lock poisoned"))?;
        protocol::write_frame(&mut *w, &Message::Request(request)).context("send to agent")
    }

    /// The next frame from the agent; the agent is untrusted, so anything but a response or
    /// an event is an error.
    fn next(&mut self) -> anyhow::Result<Message> {
        protocol::read_frame(&mut self.reader)
            .context("read from agent")?
            .ok_or_else(|| anyhow!("agent closed the control connection"))
    }

    /// Sends `request` and returns its response (no event can come before it here: the only
    /// event is an exit, and it follows the WaitProcess answer).
    fn call(&mut self, request: Request) -> anyhow::Result<Response> {
        self.send(request)?;
        match self.next()? {
            Message::Response(r) => Ok(r),
            Message::Event(e) => bail!("agent sent {e:?} before answering"),
            other => bail!("agent sent {other:?} on the control connection"),
        }
    }

    fn call_ok(&mut self, request: Request) -> anyhow::Result<()> {
        match self.call(request)? {
            Response::Ok => Ok(()),
            other => bail!("agent answered {other:?}"),
        }
    }

    /// Opens the process's stdio streams and starts copying them. Returns the output copiers.
    fn attach_stdio(
        &self,
        uds: &Path,
        pid: u32,
        stdin: bool,
        tty: bool,
    ) -> anyhow::Result<Vec<JoinHandle<()>>> {
        let mut outputs = Vec::new();
        let mut streams = vec![Stream::Stdout];
        if !tty {
            streams.push(Stream::Stderr);
        }
        for stream in streams {
            let mut conn = open_stream(uds, stream, pid)?;
            outputs.push(std::thread::spawn(move || {
                let result = match stream {
                    Stream::Stderr => copy_flushing(&mut conn, &mut std::io::stderr()),
                    _ => copy_flushing(&mut conn, &mut std::io::stdout()),
                };
                if let Err(e) = result {
                    tracing::debug!("{stream:?}: {e}");
                }
            }));
        }
        if stdin {
            let mut conn = open_stream(uds, Stream::Stdin, pid)?;
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut std::io::stdin().lock(), &mut conn);
                let _ = conn.shutdown(std::net::Shutdown::Write);
            });
        }
        Ok(outputs)
    }

    /// Relays SIGINT, SIGTERM, SIGHUP, SIGQUIT (and SIGWINCH with a terminal) to the process.
    /// A second SIGINT or SIGTERM within [`FORCE_WINDOW`] ends the VM at once.
    fn forward_signals(&self, pid: u32, tty: bool, sandbox: std::sync::Weak<SandboxDir>) -> anyhow::Result<()> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGWINCH};
        let mut wanted = vec![SIGINT, SIGTERM, SIGHUP, SIGQUIT];
        if tty {
            wanted.push(SIGWINCH);
        }
        let mut signals =
            signal_hook::iterator::Signals::new(&wanted).context("install signal handlers")?;
        let writer = self.writer.clone();
        std::thread::spawn(move || {
            let mut last: Option<Instant> = None;
            for signal in signals.forever() {
                let request = if signal == SIGWINCH {
                    Request::ResizeTerminal {
                        pid,
                        size: host_terminal_size(),
                    }
                } else {
                    let urgent = signal == SIGINT || signal == SIGTERM;
                    if urgent && last.is_some_and(|t| t.elapsed() < FORCE_WINDOW) {
                        eprintln!("microvm: second signal, killing the VM");
                        crate::tty::restore();
                        if let Some(sandbox) = sandbox.upgrade() {
                            sandbox.remove();
                        }
                        std::process::exit(128 + signal);
                    }
                    if urgent {
                        last = Some(Instant::now());
                    }
                    Request::Signal { pid, signal }
                };
                if let Ok(mut w) = writer.lock() {
                    let _ = protocol::write_frame(&mut *w, &Message::Request(request));
                }
            }
        });
        Ok(())
    }

    /// Waits for the process's exit event; responses to relayed signals are skipped.
    fn wait_exit(&mut self, pid: u32) -> anyhow::Result<ExitStatusWire> {
        loop {
            match self.next()? {
                Message::Event(Event::ProcessExited { pid: p, status }) if p == pid => {
                    return Ok(status)
                }
                Message::Event(_) | Message::Response(_) => {}
                other => bail!("agent sent {other:?} on the control connection"),
            }
        }
    }

    /// Asks the agent to power the VM off; errors mean it is already going.
    fn shutdown(&mut self) {
        let _ = self.send(Request::Shutdown);
    }
}

/// Connects through the VMM's vsock socket to guest `port` (the hybrid-vsock handshake:
/// `CONNECT <port>\n`, answered `OK <host port>\n`).
fn vsock_connect(uds: &Path, port: u32) -> std::io::Result<UnixStream> {
    let mut s = UnixStream::connect(uds)?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())?;
    // Byte by byte, so nothing after the line is consumed; the answer is at most 32 bytes.
    let mut line = Vec::with_capacity(32);
    let mut byte = [0u8];
    while line.len() < 32 {
        if s.read(&mut byte)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "guest port not listening",
            ));
        }
        if byte[0] == b'\n' {
            break;
        }
        line.push(byte[0]);
    }
    if !line.starts_with(b"OK ") {
        return Err(std::io::Error::other(format!(
            "vsock answered {:?}",
            String::from_utf8_lossy(&line)
        )));
    }
    Ok(s)
}

fn open_stream(uds: &Path, stream: Stream, pid: u32) -> anyhow::Result<UnixStream> {
    let mut conn =
        vsock_connect(uds, stream.port()).with_context(|| format!("open {stream:?} stream"))?;
    protocol::write_frame(
        &mut conn,
        &Message::StreamHello(StreamHello {
            stream,
            process_id: pid,
        }),
    )
    .with_context(|| format!("open {stream:?} stream"))?;
    Ok(conn)
}

/// Copies to EOF, flushing after every read so interactive output is not held back.
fn copy_flushing(from: &mut impl Read, to: &mut impl Write) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return to.flush(),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
        to.flush()?;
    }
}

/// A reader and a writer of one connection, as the handshake wants one `Read + Write`.
struct ReadWrite<'a> {
    r: &'a mut UnixStream,
    w: &'a UnixStream,
}

impl Read for ReadWrite<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.r.read(buf)
    }
}

impl Write for ReadWrite<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        (&mut &*self.w).write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn users_are_numeric() {
        assert_eq!(parse_user("0").unwrap(), (0, 0));
        assert_eq!(parse_user("1000:100").unwrap(), (1000, 100));
        assert!(parse_user("root").is_err());
        assert!(parse_user("1:x").is_err());
    }

    #[test]
    fn user_env_overrides_defaults() {
        let env = default_env(&["PATH=/x".into(), "A=1".into()], true);
        assert_eq!(env, ["HOME=/root", "TERM=xterm", "PATH=/x", "A=1"]);
    }
}
