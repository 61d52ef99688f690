//! `/init` of the microVM: the guest agent, PID 1.
//!
//! 1. Tells the VMM's boot timer that init runs (byte 123 to I/O port 0x3f0), first of all.
//! 2. Moves its root from the initramfs onto a tmpfs (so containers can pivot_root), then
//!    mounts /proc, /sys, the cgroup2 hierarchy, /dev, /dev/pts, /dev/shm and /run.
//! 3. Mounts the container image (/dev/vda) and the root the container is built on: an overlay
//!    with a tmpfs upper dir; and the shared directory (volumes, virtio-fs) when the VM has one.
//!    The container's own /proc, /dev and the rest are its setup's business ([`sandbox`]).
//! 4. Starts the reaper, which collects every child that exits (PID 1's duty).
//! 5. Listens on vsock: the control port, and the stdin/stdout/stderr ports, whose connections
//!    each get a thread.
//! 6. Serves control connections, each on its own thread: handshake, then requests (start the
//!    process, exec another in its container, signals, resizes, stdin, wait, limits, shutdown).
//! 7. Powers the VM off once the host sent Shutdown, or closed a control connection after it
//!    was told the container process's exit status.
//!
//! It never exits (PID 1 exiting panics the kernel): a fatal error prints one line,
//! `microvm-agent: error: ...`, to the console and powers off.

#[cfg(not(target_arch = "x86_64"))]
compile_error!("the guest agent signals the boot timer through an x86 I/O port");

mod boot_timer;
mod container;
mod mounts;
mod power;
mod process;
mod reaper;
mod sandbox;
mod server;
mod stdio;
mod vsock;

use std::sync::Arc;

use protocol::{AGENT_CONTROL_PORT, AGENT_STDERR_PORT, AGENT_STDIN_PORT, AGENT_STDOUT_PORT};

use container::SpawnConfig;
use server::{Agent, SessionEnd};
use vsock::VsockListener;

#[derive(Debug, thiserror::Error)]
enum AgentError {
    #[error(transparent)]
    Mount(#[from] mounts::MountError),
    #[error(transparent)]
    Reaper(#[from] reaper::ReaperError),
    #[error(transparent)]
    Vsock(#[from] vsock::VsockError),
    #[error("start the listener thread for vsock port {port}: {source}")]
    Thread { port: u32, source: std::io::Error },
    #[error("duplicate the control connection: {0}")]
    Dup(#[source] std::io::Error),
}

fn main() {
    // The same binary builds containers, started by the agent under another name.
    if std::env::args_os()
        .next()
        .is_some_and(|arg0| arg0 == sandbox::ARGV0)
    {
        sandbox::main();
    }
    // 1. Before anything else: the boot timer measures the time to reach init.
    if let Err(error) = boot_timer::signal(boot_timer::INIT_RUNNING) {
        warn(&error);
    }
    if let Err(error) = run() {
        eprintln!("microvm-agent: error: {error}");
    }
    power::off()
}

fn run() -> Result<(), AgentError> {
    // 2. and 3.
    mounts::enter_tmpfs_root()?;
    mounts::mount_pseudo_filesystems()?;
    // The shared directory first: the rootfs may come through it. Both read the kernel's
    // command line, which the runtime uses to say what the VM has.
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    mounts::mount_shared(&cmdline)?;
    mounts::mount_rootfs(&cmdline)?;

    // 4.
    let reaper = reaper::start()?;

    // 5.
    let version = concat!("guest-agent ", env!("CARGO_PKG_VERSION"));
    let agent = Arc::new(Agent::new(SpawnConfig::guest(), reaper, version));
    let control = VsockListener::bind(AGENT_CONTROL_PORT)?;
    for port in [AGENT_STDIN_PORT, AGENT_STDOUT_PORT, AGENT_STDERR_PORT] {
        let listener = VsockListener::bind(port)?;
        let agent = Arc::clone(&agent);
        std::thread::Builder::new()
            .name(format!("vsock-{port}"))
            .spawn(move || serve_streams(&agent, &listener))
            .map_err(|source| AgentError::Thread { port, source })?;
    }

    // 6. and 7. Each control connection is served on a thread of its own: `microvm exec`
    // opens one beside the VMM process's.
    loop {
        let conn = control.accept()?;
        let reader = conn.try_clone().map_err(AgentError::Dup)?;
        let agent = Arc::clone(&agent);
        let serve = move || {
            match agent.serve(reader, conn) {
                Ok(SessionEnd::Shutdown) => power::off(),
                Ok(SessionEnd::Closed) => {}
                // Not fatal: the host may connect again.
                Err(error) => warn(&error),
            }
            if agent.finished() {
                power::off();
            }
        };
        if let Err(error) = std::thread::Builder::new().name("control".into()).spawn(serve) {
            warn(&format_args!("start a control connection's thread: {error}"));
        }
    }
}

/// Accepts stdio connections on `listener` for good, each served on its own thread.
fn serve_streams(agent: &Arc<Agent>, listener: &VsockListener) {
    let port = listener.port();
    loop {
        let conn = match listener.accept() {
            Ok(conn) => conn,
            Err(error) => {
                warn(&error);
                // Do not spin on a lasting error (out of descriptors, say).
                std::thread::sleep(std::time::Duration::from_millis(100));
                continue;
            }
        };
        let agent = Arc::clone(agent);
        let relay = move || {
            if let Err(error) = agent.attach_stream(port, conn) {
                warn(&error);
            }
        };
        if let Err(error) = std::thread::Builder::new().spawn(relay) {
            warn(&format_args!(
                "vsock port {port}: start a relay thread: {error}"
            ));
        }
    }
}

/// One line on the console (stderr) for something that went wrong but is not fatal.
fn warn(error: &dyn std::fmt::Display) {
    eprintln!("microvm-agent: warning: {error}");
}
