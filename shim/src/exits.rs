//! Exit statuses of the shim's children, by pid.
//!
//! The shim is a child subreaper, so the VMM processes that `microvm create` and `microvm
//! exec --detach` leave behind become its children, and the shim crate's SIGCHLD thread reaps
//! every child and announces each exit on its monitor. std's `Child::wait` would race that
//! reaper (and lose with ECHILD), so every wait in the shim goes through this table, which
//! subscribes before any child exists: an exit that comes before anyone asks is kept.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::SystemTime;

use containerd_shim::monitor::{monitor_subscribe, ExitEvent, Subject, Topic};

#[derive(Debug, Clone, Copy)]
pub struct Exit {
    /// The exit code, or 128 + the signal that killed the process.
    pub status: u32,
    pub at: SystemTime,
}

#[derive(Default)]
pub struct Exits {
    table: Mutex<HashMap<i32, Exit>>,
    changed: Condvar,
}

impl Exits {
    /// Subscribes to the reaper's exits and files them from a thread of its own.
    pub fn start() -> std::io::Result<Arc<Self>> {
        let subscription = monitor_subscribe(Topic::Pid).map_err(std::io::Error::other)?;
        let exits = Arc::new(Self::default());
        let filer = Arc::clone(&exits);
        std::thread::Builder::new().name("exits".into()).spawn(move || {
            // The subscription lives as long as this thread, which is the shim's life.
            while let Ok(ExitEvent { subject, exit_code }) = subscription.rx.recv() {
                if let Subject::Pid(pid) = subject {
                    filer.file(pid, Exit { status: exit_code as u32, at: SystemTime::now() });
                }
            }
        })?;
        Ok(exits)
    }

    fn file(&self, pid: i32, exit: Exit) {
        self.table.lock().unwrap_or_else(PoisonError::into_inner).insert(pid, exit);
        self.changed.notify_all();
    }

    /// Blocks until `pid` has exited; the exit is handed out once.
    pub fn wait(&self, pid: i32) -> Exit {
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(exit) = table.remove(&pid) {
                return exit;
            }
            table = self.changed.wait(table).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exit_filed_before_the_wait_is_kept_and_handed_out_once() {
        let exits = Arc::new(Exits::default());
        exits.file(42, Exit { status: 7, at: SystemTime::now() });
        assert_eq!(exits.wait(42).status, 7);
        assert!(exits.table.lock().unwrap_or_else(PoisonError::into_inner).is_empty());
    }

    #[test]
    fn a_waiter_wakes_for_its_own_pid_only() {
        let exits = Arc::new(Exits::default());
        let waiter = {
            let exits = Arc::clone(&exits);
            std::thread::spawn(move || exits.wait(9).status)
        };
        exits.file(8, Exit { status: 1, at: SystemTime::now() });
        exits.file(9, Exit { status: 137, at: SystemTime::now() });
        assert_eq!(waiter.join().ok(), Some(137));
        assert_eq!(exits.wait(8).status, 1);
    }
}
