//! `--init`: a small reaping init as PID 1 of the container's PID namespace, as tini is for
//! `docker run --init`. It starts the command as its child, forwards every signal it gets to
//! it, reaps every process the namespace hands it (orphans of the container are re-parented to
//! PID 1 of their namespace, never to the agent), and exits with the command's status
//! (128 + N when signal N killed it).
//!
//! Signals are blocked and taken with `sigwait`: PID 1 of a namespace only receives signals it
//! handles or blocks, and a blocked signal stays pending until read, so none is lost.

use std::convert::Infallible;

use nix::errno::Errno;
use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};

use super::fail::Failure;

/// Signals that are not forwarded: SIGCHLD means "reap"; the rest cannot or should not be.
const NOT_FORWARDED: [Signal; 5] = [
    Signal::SIGCHLD,
    Signal::SIGKILL,
    Signal::SIGSTOP,
    Signal::SIGTSTP,
    Signal::SIGTTIN,
];

/// Runs `start_command` (which execs the command or exits) in a child, and serves as init
/// until that child exits.
pub fn run(start_command: impl FnOnce()) -> Result<Infallible, Failure> {
    let all = SigSet::all();
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&all), None)
        .map_err(|e| Failure::errno("block signals in init", e))?;
    // SAFETY: this process is single-threaded (the setup process never starts threads), so
    // the child may do anything after fork.
    let child = match unsafe { fork() }.map_err(|e| Failure::errno("fork the command", e))? {
        ForkResult::Child => {
            let empty = SigSet::empty();
            let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&empty), None);
            start_command();
            std::process::exit(127);
        }
        ForkResult::Parent { child } => child,
    };
    // What start_command holds (the channel) is the child's alone.
    drop(start_command);
    loop {
        let signal = all
            .wait()
            .map_err(|e| Failure::errno("wait for signals in init", e))?;
        if signal == Signal::SIGCHLD {
            if let Some(code) = reap(child) {
                std::process::exit(code);
            }
        } else if !NOT_FORWARDED.contains(&signal) {
            // The command may be gone already; nothing to do then.
            let _ = kill(child, signal);
        }
    }
}

/// Reaps every exited child; the command's exit code once it is among them.
fn reap(command: Pid) -> Option<i32> {
    let mut code = None;
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, status)) if pid == command => code = Some(status),
            Ok(WaitStatus::Signaled(pid, signal, _)) if pid == command => {
                code = Some(128 + signal as i32);
            }
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return code,
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => return code,
        }
    }
}
