//! The reaper: collects every child that exits, as PID 1 must.
//!
//! As PID 1 the agent is the parent of its own children and of every orphan in the VM (the
//! kernel reparents them to init). A child that exits stays a zombie until its parent waits for
//! it, so the agent must wait for all of them, not just the container process.
//!
//! How: a `SIGCHLD` handler writes one byte to a self-pipe; a reaper thread sleeps on the pipe
//! and, on each wakeup, loops `waitpid(-1, WNOHANG)` until no exited child is left. A handler
//! rather than `signalfd` because `signalfd` only sees the signal if every thread blocks it,
//! which unit tests (threads started by the test harness) cannot promise; the handler works in
//! whichever thread the kernel picks. Signals coalesce, so one byte may stand for many exits;
//! that is why the loop runs until `waitpid` says nobody else is waiting.
//!
//! A reaped pid that someone [`Reaper::spawn_watched`] is handed to its callback with an
//! [`ExitStatusWire`]: `Exited(code)`, or `Signaled(n)` for a child killed by signal `n`, which a
//! shell reports as `128 + n`. Everything else (orphans) is reaped and forgotten.
//!
//! There is one reaper per process ([`start`] returns the same one every time): two threads
//! calling `waitpid(-1)` would steal each other's children.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use nix::fcntl::OFlag;
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use protocol::ExitStatusWire;

/// What to call when a watched child exits. Runs on the reaper thread: it must be quick.
pub type OnExit = Box<dyn FnOnce(ExitStatusWire) + Send>;

#[derive(Debug, thiserror::Error)]
pub enum ReaperError {
    #[error("reaper: create the SIGCHLD self-pipe: {0}")]
    Pipe(#[source] nix::Error),
    #[error("reaper: install the SIGCHLD handler: {0}")]
    Handler(#[source] nix::Error),
    #[error("reaper: start the reaper thread: {0}")]
    Thread(#[source] io::Error),
}

/// The process's one reaper; see the module documentation.
pub struct Reaper {
    /// Callbacks of watched children, by pid. The reaper thread holds this lock while it calls
    /// `waitpid`, so a child cannot be reaped between its fork and its registration.
    watched: Mutex<HashMap<i32, OnExit>>,
}

/// The write end of the self-pipe, for the signal handler (-1 until [`start`] ran).
static WAKE_FD: AtomicI32 = AtomicI32::new(-1);
/// The reaper, once started.
static REAPER: Mutex<Option<&'static Reaper>> = Mutex::new(None);

/// Starts the reaper (handler, pipe, thread) on the first call; later calls return it again.
pub fn start() -> Result<&'static Reaper, ReaperError> {
    let mut slot = REAPER.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(reaper) = *slot {
        return Ok(reaper);
    }
    // Non-blocking writes: a full pipe already holds a wakeup, and the handler must never block.
    let (wake_read, wake_write) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).map_err(ReaperError::Pipe)?;
    // The read end blocks: the reaper thread sleeps in read().
    nix::fcntl::fcntl(&wake_read, nix::fcntl::FcntlArg::F_SETFL(OFlag::empty()))
        .map_err(ReaperError::Pipe)?;
    // The handler uses the write end for the rest of the process's life.
    WAKE_FD.store(leak(wake_write), Ordering::SeqCst);
    let action = SigAction::new(
        SigHandler::Handler(on_sigchld),
        // SA_RESTART: most blocking calls in other threads resume instead of failing with
        // EINTR. SA_NOCLDSTOP: stopped and continued children need no wakeup.
        SaFlags::SA_RESTART | SaFlags::SA_NOCLDSTOP,
        SigSet::empty(),
    );
    // SAFETY: on_sigchld is async-signal-safe: it only reads an atomic, calls write(2) and
    // saves and restores errno.
    unsafe { sigaction(Signal::SIGCHLD, &action) }.map_err(ReaperError::Handler)?;

    let reaper: &'static Reaper = Box::leak(Box::new(Reaper {
        watched: Mutex::new(HashMap::new()),
    }));
    std::thread::Builder::new()
        .name("reaper".into())
        .spawn(move || reaper.run(File::from(wake_read)))
        .map_err(ReaperError::Thread)?;
    *slot = Some(reaper);
    Ok(reaper)
}

/// Keeps `fd` open for good and returns its number.
fn leak(fd: OwnedFd) -> i32 {
    let raw = fd.as_raw_fd();
    std::mem::forget(fd);
    raw
}

extern "C" fn on_sigchld(_signal: libc::c_int) {
    // SAFETY: __errno_location returns this thread's errno slot, valid for the thread's life.
    let errno = unsafe { *libc::__errno_location() };
    let fd = WAKE_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        let byte = 0u8;
        // SAFETY: write(2) is async-signal-safe; the buffer is one byte on this stack. A full
        // pipe (EAGAIN) is fine: a wakeup is pending already.
        unsafe { libc::write(fd, std::ptr::from_ref(&byte).cast(), 1) };
    }
    // SAFETY: as above; restoring errno keeps the interrupted code's view of it intact.
    unsafe { *libc::__errno_location() = errno };
}

impl Reaper {
    /// Runs `start` (which forks the child and returns its pid) so that the child cannot be
    /// reaped before `on_exit` is registered for it. While `start` runs the reaper does not
    /// call `waitpid`, so `start` may wait for a child itself (std's `Command::spawn` does, for
    /// a child whose `exec` failed).
    pub fn spawn_watched<T, E>(
        &self,
        start: impl FnOnce() -> Result<(u32, T), E>,
        on_exit: OnExit,
    ) -> Result<T, E> {
        let mut watched = self.lock();
        let (pid, started) = start()?;
        if let Ok(pid) = i32::try_from(pid) {
            watched.insert(pid, on_exit);
        }
        Ok(started)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<i32, OnExit>> {
        self.watched.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The reaper thread: sleep until SIGCHLD, then reap everything that exited.
    fn run(&self, mut wake: File) -> ! {
        let mut buf = [0u8; 64];
        loop {
            // Any outcome means "look": a byte (SIGCHLD), EINTR, or an error we cannot fix.
            let _wakeup = wake.read(&mut buf);
            for (status, on_exit) in self.reap_exited() {
                on_exit(status);
            }
        }
    }

    /// PID 1 reaping: `waitpid(-1, WNOHANG)` until no exited child is left (0: children
    /// remain, all running; ECHILD: no children at all). Returns the callbacks to run, which
    /// run after the lock is released.
    fn reap_exited(&self) -> Vec<(ExitStatusWire, OnExit)> {
        let mut watched = self.lock();
        let mut exited = Vec::new();
        loop {
            let mut raw = 0;
            // SAFETY: waitpid writes the status into `raw`, a live local; -1 means any child.
            let pid = unsafe { libc::waitpid(-1, &mut raw, libc::WNOHANG) };
            if pid <= 0 {
                if pid < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return exited;
            }
            // A child killed by signal N is Signaled(N), reported by shells as 128 + N.
            let Some(status) = ExitStatusWire::from_wait_status(raw) else {
                continue; // stopped or continued: not an exit
            };
            if let Some(on_exit) = watched.remove(&pid) {
                exited.push((status, on_exit));
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use std::process::Command;
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;

    fn run_watched(args: &[&str]) -> ExitStatusWire {
        let reaper = start().unwrap();
        let (tx, rx) = mpsc::channel();
        let on_exit: OnExit = Box::new(move |status| {
            let _ = tx.send(status);
        });
        reaper
            .spawn_watched(
                || {
                    Command::new(args[0])
                        .args(&args[1..])
                        .spawn()
                        .map(|child| (child.id(), ()))
                },
                on_exit,
            )
            .unwrap();
        rx.recv_timeout(Duration::from_secs(10)).unwrap()
    }

    #[test]
    fn reports_exit_codes_and_signals() {
        assert_eq!(run_watched(&["/bin/true"]), ExitStatusWire::Exited(0));
        assert_eq!(
            run_watched(&["/bin/sh", "-c", "exit 7"]),
            ExitStatusWire::Exited(7)
        );
        let killed = run_watched(&["/bin/sh", "-c", "kill -9 $$"]);
        assert_eq!(killed, ExitStatusWire::Signaled(9));
        assert_eq!(killed.shell_code(), 137);
    }

    #[test]
    fn start_returns_the_same_reaper() {
        assert!(std::ptr::eq(start().unwrap(), start().unwrap()));
    }

    #[test]
    fn orphans_are_reaped_too() {
        // In the VM the kernel hands orphans to PID 1, which watches none of them. Here an
        // unwatched child stands in for one: nobody but the reaper waits for it.
        let reaper = start().unwrap();
        let child = Command::new("/bin/true").spawn().unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        drop(child);
        let gone = (0..1000).any(|_| {
            std::thread::sleep(Duration::from_millis(10));
            // kill(pid, 0) fails with ESRCH once the zombie is reaped.
            // SAFETY: signal 0 only checks that the pid exists.
            let alive = unsafe { libc::kill(pid, 0) } == 0;
            !alive
        });
        assert!(gone, "zombie {pid} was not reaped");
        assert!(reaper.lock().get(&pid).is_none());
    }
}
