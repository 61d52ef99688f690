//! `microvm run ROOTFS -- CMD ARGS...`: runs one command from a root filesystem directory in a
//! fresh microVM, like `docker run --rm`. Stdio streams both ways, signals reach the process,
//! its exit status is ours (128+N when killed by signal N), and the VM is gone when it ends.
//! SIGUSR2 is not relayed: it writes the guest's state to stderr (a silent guest's diagnosis).
//! microvm's own failures exit 125; a command not found 127, not executable 126.
//!
//! Steps: check the inputs; make the sandbox directory (runtime state, removed at the end);
//! pack the rootfs (cached); write the agent initramfs; boot the VM in this process; reach
//! the agent over vsock; start the command; relay stdio and signals; report the exit status;
//! shut the VM down.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::Args;
use oci_spec::runtime::Spec;
use protocol::{Request, Response, StartProcess, TerminalSize};
use signal_hook::iterator::Signals;

use crate::launch_checks::{self, Policy};
use crate::sandbox::SandboxDir;
use crate::session::{explain_by_vm_stop, HostStdio, Sender, Session};
use crate::spec;
use crate::vm::VmSpec;

/// A second Ctrl-C or SIGTERM within this long kills the VM.
const FORCE_WINDOW: Duration = Duration::from_secs(3);

/// Run a command in a new microVM
#[derive(Args)]
pub struct RunArgs {
    /// Root filesystem: a directory holding the container's files
    #[arg(required_unless_present = "bundle")]
    rootfs: Option<PathBuf>,
    /// Command and arguments: everything after ROOTFS is the command's, as after docker's
    /// IMAGE (a `--` before it is allowed)
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required_unless_present = "bundle", value_name = "CMD")]
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
    /// Share a host directory (or file) with the container, over virtio-fs: writes on either
    /// side are seen on the other; `ro` makes it read-only on the host side too
    #[arg(short, long, value_name = "HOST:CONTAINER[:ro|rw]")]
    volume: Vec<String>,
    /// Run a reaping init as PID 1 of the container, the command as its child
    #[arg(long)]
    init: bool,
    /// The container's network: user (eth0 through passt: outbound traffic and published
    /// ports, no privilege needed; the default with -p) or none (loopback only, in a
    /// namespace of its own). Without either the guest has no network card (loopback only).
    #[arg(long, value_parser = ["user", "none"])]
    network: Option<String>,
    /// Publish a container port on the host: [IP:]HOST_PORT:CONTAINER_PORT[/tcp|udp]
    /// (repeatable; implies --network user)
    #[arg(short, long = "publish", value_name = "[IP:]HOST:CONTAINER[/PROTO]")]
    publish: Vec<String>,
    #[command(flatten)]
    confinement: super::ConfinementArgs,
}

pub fn run(args: RunArgs, start: Instant) -> anyhow::Result<u8> {
    // Read now: the jail empties the environment before the guest runs.
    let timings = std::env::var_os("MICROVM_TIMINGS").is_some();
    // The launch checks come first: a refused container leaves nothing behind.
    let (mut spec, rootfs) = container(&args)?;
    let crate::binds::HostBinds { mut files, shares, write_back } = crate::binds::from_host(&mut spec)?;
    // Parsed here rather than by clap, whose errors take several lines and exit 2.
    let publish = args.publish.iter().map(|p| p.parse()).collect::<anyhow::Result<Vec<crate::user_net::Publish>>>()?;
    // `none` by default until bulk transfers into the guest through passt are right (see
    // docs/DESIGN.md, "Networking of `microvm run`"); `-p` asks for `user`.
    let user_network = args.network.as_deref().map_or(!publish.is_empty(), |n| n == "user");
    if !user_network && !publish.is_empty() {
        bail!("publish: --network none has no ports to publish");
    }
    // The DNS forwarder in /etc/resolv.conf, as docker writes its own.
    if user_network && args.bundle.is_none() {
        give_file(&mut spec, &mut files, "/etc/resolv.conf", crate::user_net::resolv_conf());
    }
    let tty = spec
        .process()
        .as_ref()
        .and_then(|p| p.terminal())
        .unwrap_or(false);
    // From the sandbox directory on, a SIGINT or SIGTERM must not take the default action,
    // which would leave the directory behind: until the process runs it ends the run (see
    // forward_signals).
    let signals = Signals::new(relayed_signals(tty)).context("install signal handlers")?;
    // SIGUSR2 is ours, not relayed: the guest-state report on stderr (see vm::report_guest_state).
    let usr2 = Signals::new([signal_hook::consts::SIGUSR2]).context("install signal handlers")?;
    let sandbox = Arc::new(SandboxDir::create(args.name.as_deref())?);
    let network = if user_network { crate::user_net::UserNetwork::start(&publish)? } else { None };
    let vm = crate::vm::boot(
        &VmSpec {
            rootfs: &rootfs,
            root: match &args.bundle {
                Some(_) => crate::vm::Root::of_bundle(&spec),
                None => crate::vm::Root::Image,
            },
            kernel: args.kernel.as_deref(),
            agent: args.agent.as_deref(),
            mem_mib: args.memory,
            vcpus: args.cpus,
            console: args.console.as_deref(),
            dir: sandbox.path(),
            confinement: args.confinement.confinement(),
            network: network.as_ref().map(|n| crate::vm::GuestNetwork {
                mac: crate::user_net::GUEST_MAC,
                backend: vmm::config::NetBackend::Stream(n.socket.clone()),
                kernel_ip: Some(crate::user_net::kernel_ip_param()),
            }),
            shares: &shares,
        },
        start,
    )?;
    // The VMM holds its end of passt's socket now: passt ends with it.
    if let Some(network) = network {
        network.handed_over();
    }
    crate::vm::report_guest_state(usr2, vm.dump, None, tty)?;
    let (uds, vm_done) = (vm.uds, vm.done);
    let target = Arc::new(OnceLock::new());
    forward_signals(signals, target.clone(), Arc::downgrade(&sandbox))?;

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
        files,
    };
    let stopped = |e: anyhow::Error| explain_by_vm_stop(e, &vm_done);
    let (pid, container_setup) = match session.call(Request::StartProcess(request)).map_err(stopped)? {
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
    let stdio = HostStdio {
        stdout: Box::new(std::io::stdout()),
        stderr: (!tty).then(|| Box::new(std::io::stderr()) as Box<dyn Write + Send>),
        stdin: args
            .interactive
            .then(|| Box::new(std::io::stdin()) as Box<dyn Read + Send>),
    };
    let outputs = session.attach_stdio(&uds, pid, stdio).map_err(stopped)?;
    let _raw = if tty {
        crate::tty::RawMode::enter()
    } else {
        None
    };
    let _ = target.set((session.sender(), pid));
    session.call_ok(Request::WaitProcess { pid }).map_err(stopped)?;
    let status = session.wait_exit(pid, None).map_err(stopped)?;
    let process_exit = start.elapsed();
    for out in outputs {
        let _ = out.join();
    }
    for warning in crate::binds::write_back(&write_back, session.take_changed_files()) {
        eprintln!("microvm: warning: {warning}");
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
        if let Some(warning) = launch_checks::apparmor_warning(&spec) {
            tracing::warn!("{warning}");
        }
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
        volumes: args.volume.clone(),
        // Under `user` the container shares the guest's network (its eth0); under `none` it
        // has a namespace of its own, loopback only, as docker's --network none.
        // Given neither, the container shares the guest's network, which has no card.
        network_namespace: args.network.as_deref() == Some("none"),
    };
    for opt in &args.security_opt {
        spec::apply_security_opt(&mut options, opt)?;
    }
    let spec = spec::build(&options)?;
    launch_checks::check_spec(&spec, &policy)?;
    Ok((spec, args.rootfs.clone().unwrap_or_default()))
}

/// Gives the container `contents` at `destination`, as a copied bind mount (see binds).
fn give_file(spec: &mut Spec, files: &mut Vec<protocol::GuestFile>, destination: &str, contents: String) {
    let path = format!("{}/{}", protocol::GUEST_FILES_DIR, files.len());
    let mount = oci_spec::runtime::MountBuilder::default()
        .destination(destination)
        .typ("bind")
        .source(&path)
        .options(vec!["rbind".to_string(), "ro".to_string()]);
    let Ok(mount) = mount.build() else { return };
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    mounts.push(mount);
    spec.set_mounts(Some(mounts));
    files.push(protocol::GuestFile { path, contents: contents.into_bytes() });
}

/// `UID` or `UID:GID` (numeric: names would need the image's /etc/passwd).
fn parse_user(user: &str) -> anyhow::Result<(u32, u32)> {
    let bad = || anyhow!("user {user:?}: expected UID or UID:GID, numbers");
    let (u, g) = user.split_once(':').unwrap_or((user, user));
    Ok((u.parse().map_err(|_| bad())?, g.parse().map_err(|_| bad())?))
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

/// SIGINT, SIGTERM, SIGHUP, SIGQUIT, and SIGWINCH with a terminal.
fn relayed_signals(tty: bool) -> Vec<i32> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGWINCH};
    let mut wanted = vec![SIGINT, SIGTERM, SIGHUP, SIGQUIT];
    if tty {
        wanted.push(SIGWINCH);
    }
    wanted
}

/// Relays `signals` to the process once `target` names it. Before that (the VM is still
/// booting, or the agent has not started the process) any of them but SIGWINCH ends the run,
/// sandbox removed, with 128 + the signal. Once the process runs, a second SIGINT or SIGTERM
/// within [`FORCE_WINDOW`] ends the VM at once.
fn forward_signals(
    mut signals: Signals,
    target: Arc<OnceLock<(Sender, u32)>>,
    sandbox: std::sync::Weak<SandboxDir>,
) -> anyhow::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM, SIGWINCH};
    let stop = move |signal: i32, why: &str| -> ! {
        eprintln!("microvm: {why}");
        crate::tty::restore();
        if let Some(sandbox) = sandbox.upgrade() {
            sandbox.remove();
        }
        std::process::exit(128 + signal);
    };
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut last: Option<Instant> = None;
            for signal in signals.forever() {
                let Some((sender, pid)) = target.get() else {
                    if signal != SIGWINCH {
                        stop(signal, &format!("signal {signal} before the process started: stopping the VM"));
                    }
                    continue;
                };
                let pid = *pid;
                let request = if signal == SIGWINCH {
                    Request::ResizeTerminal {
                        pid,
                        size: host_terminal_size(),
                    }
                } else {
                    let urgent = signal == SIGINT || signal == SIGTERM;
                    if urgent && last.is_some_and(|t| t.elapsed() < FORCE_WINDOW) {
                        stop(signal, "second signal, killing the VM");
                    }
                    if urgent {
                        last = Some(Instant::now());
                    }
                    Request::Signal { pid, signal }
                };
                sender.send(request);
            }
        })
        .context("start the signal thread")?;
    Ok(())
}

fn host_terminal_size() -> TerminalSize {
    crate::tty::window_size().unwrap_or(TerminalSize { rows: 24, cols: 80 })
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
