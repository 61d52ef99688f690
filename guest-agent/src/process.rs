//! The container process as the agent tracks it: its exit status (set by the reaper), which of
//! its output streams are still being written out, its stdin, and its terminal.
//!
//! [`Event::ProcessExited`](protocol::Event::ProcessExited) may only go out once the process
//! has exited *and* every output stream is done ([`Exit::wait_done`]), so the host never gets
//! the status before the last bytes.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::socket::{shutdown, Shutdown};
use protocol::{ExitStatusWire, Stream};

use crate::stdio::{ExitWatch, StdinSink};

/// Locks `mutex`, taking the data of a poisoned one: every lock here guards plain state that a
/// panicking holder cannot leave half-changed, and PID 1 must not give up over it.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How and whether the process ended, shared by the reaper, the relays and the waiters.
pub struct Exit {
    state: Mutex<ExitState>,
    changed: Condvar,
    /// Readable from the exit on, for relays that poll.
    exited_fd: EventFd,
}

struct ExitState {
    status: Option<ExitStatusWire>,
    /// Output streams (stdout, stderr) not yet written out.
    outputs_pending: usize,
    /// Whether a ProcessExited event reached the control connection.
    reported: bool,
}

impl Exit {
    /// For a process with `outputs` output streams to write out.
    pub fn new(outputs: usize) -> nix::Result<Self> {
        Ok(Exit {
            state: Mutex::new(ExitState {
                status: None,
                outputs_pending: outputs,
                reported: false,
            }),
            changed: Condvar::new(),
            exited_fd: EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?,
        })
    }

    /// The reaper saw the process end.
    pub fn set_exited(&self, status: ExitStatusWire) {
        lock(&self.state).status = Some(status);
        // Cannot fail short of the counter overflowing, and it is written once.
        let _ = self.exited_fd.write(1);
        self.changed.notify_all();
    }

    /// One output stream has been written out (or given up on).
    pub fn output_done(&self) {
        let mut state = lock(&self.state);
        state.outputs_pending = state.outputs_pending.saturating_sub(1);
        self.changed.notify_all();
    }

    /// Blocks until the process has exited and its output is written out; returns the status.
    pub fn wait_done(&self) -> ExitStatusWire {
        let mut state = lock(&self.state);
        loop {
            if let (Some(status), 0) = (state.status, state.outputs_pending) {
                return status;
            }
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    pub fn mark_reported(&self) {
        lock(&self.state).reported = true;
    }

    /// Whether the process has exited and its status was sent to the host.
    pub fn reported(&self) -> bool {
        lock(&self.state).reported
    }
}

impl ExitWatch for Exit {
    fn has_exited(&self) -> bool {
        lock(&self.state).status.is_some()
    }

    fn exit_fd(&self) -> BorrowedFd<'_> {
        self.exited_fd.as_fd()
    }
}

/// The process's stdin, from the agent's side.
#[derive(Debug)]
pub enum Stdin {
    /// Waiting for the host's stdin stream.
    Waiting(StdinSink),
    /// A relay copies the host's stream; this handle on the connection lets CloseStdin end it.
    Attached(OwnedFd),
    /// Ended, or never wanted (the process has /dev/null).
    Closed,
}

/// A started container process.
pub struct Process {
    pub pid: u32,
    pub exit: std::sync::Arc<Exit>,
    /// The terminal's master, for resizing.
    pub terminal: Option<OwnedFd>,
    pub stdin: Mutex<Stdin>,
    /// Output sources waiting for their host stream: stdout, stderr.
    outputs: Mutex<[Option<OwnedFd>; 2]>,
}

impl Process {
    pub fn new(
        pid: u32,
        exit: std::sync::Arc<Exit>,
        terminal: Option<OwnedFd>,
        stdin: Option<StdinSink>,
        stdout: OwnedFd,
        stderr: Option<OwnedFd>,
    ) -> Self {
        Process {
            pid,
            exit,
            terminal,
            stdin: Mutex::new(stdin.map_or(Stdin::Closed, Stdin::Waiting)),
            outputs: Mutex::new([Some(stdout), stderr]),
        }
    }

    /// Takes the source of output `stream` for its relay; `None` if it has none (stdin,
    /// stderr with a terminal) or it was attached before.
    pub fn take_output(&self, stream: Stream) -> Option<OwnedFd> {
        let index = match stream {
            Stream::Stdout => 0,
            Stream::Stderr => 1,
            Stream::Stdin => return None,
        };
        lock(&self.outputs)[index].take()
    }

    /// Takes the stdin sink for a relay, leaving `handle` (a duplicate of the host's stream
    /// connection) to end it with; `None` if stdin is not waiting for a stream.
    pub fn attach_stdin(&self, handle: OwnedFd) -> Option<StdinSink> {
        let mut stdin = lock(&self.stdin);
        match std::mem::replace(&mut *stdin, Stdin::Closed) {
            Stdin::Waiting(sink) => {
                *stdin = Stdin::Attached(handle);
                Some(sink)
            }
            other => {
                *stdin = other;
                None
            }
        }
    }

    /// Ends the process's input, whether or not the host's stdin stream is attached.
    pub fn close_stdin(&self) {
        match std::mem::replace(&mut *lock(&self.stdin), Stdin::Closed) {
            Stdin::Waiting(sink) => sink.finish(),
            // The relay's read returns EOF, and the relay ends the input.
            Stdin::Attached(conn) => {
                let _ = shutdown(conn.as_raw_fd(), Shutdown::Read);
            }
            Stdin::Closed => {}
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[test]
    fn done_needs_the_exit_and_every_output() {
        let exit = Arc::new(Exit::new(2).unwrap());
        let waiter = {
            let exit = Arc::clone(&exit);
            std::thread::spawn(move || exit.wait_done())
        };
        exit.output_done();
        exit.set_exited(ExitStatusWire::Exited(3));
        std::thread::sleep(Duration::from_millis(20));
        assert!(!waiter.is_finished(), "done with stderr still pending");
        assert!(exit.has_exited());
        exit.output_done();
        assert_eq!(waiter.join().unwrap(), ExitStatusWire::Exited(3));
        assert!(!exit.reported());
        exit.mark_reported();
        assert!(exit.reported());
    }

    #[test]
    fn outputs_are_taken_once() {
        let exit = Arc::new(Exit::new(1).unwrap());
        let (read, _write) = nix::unistd::pipe().unwrap();
        let process = Process::new(7, exit, None, None, read, None);
        assert!(process.take_output(Stream::Stdin).is_none());
        assert!(process.take_output(Stream::Stderr).is_none());
        assert!(process.take_output(Stream::Stdout).is_some());
        assert!(process.take_output(Stream::Stdout).is_none());
        let (_r, w) = nix::unistd::pipe().unwrap();
        assert!(process.attach_stdin(w).is_none(), "stdin was not wanted");
    }
}
