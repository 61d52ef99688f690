//! The guest-state report: what a silent guest is doing.
//!
//! A vCPU's registers can only be read by its own thread outside KVM_RUN, so
//! [`DumpHandle::dump`] asks and kicks: it raises a flag, sends each vCPU thread the kick
//! signal (again every [`REKICK`], in case one was between two KVM_RUNs when kicked), and
//! each vCPU thread, on its way back into KVM_RUN, records its state (`Vcpu::dump`). What has
//! not answered within the time given is reported as still in KVM_RUN. The console's last
//! bytes come from the serial writer's tail.
//!
//! Under seccomp: the asking thread needs futex, clock_gettime, getpid and tgkill (every list
//! allows them); the vCPU thread's reads are in the vCPU ioctl list.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::devices::serial::ConsoleTail;
use crate::vstate::pause::PauseState;
use crate::vstate::vcpu::kick_signal;

/// How often the vCPUs that have not answered are kicked again.
const REKICK: Duration = Duration::from_millis(20);

/// What the vCPU threads and the [`DumpHandle`]s share.
pub struct DumpState {
    state: Mutex<State>,
    answered: Condvar,
    /// A report is being gathered: the vCPUs look at it before every KVM_RUN.
    requested: AtomicBool,
    /// One report at a time.
    one: Mutex<()>,
    console: ConsoleTail,
    pause: Arc<PauseState>,
}

struct State {
    /// Per vCPU: the thread id of its thread while that runs.
    tids: Vec<Option<libc::pid_t>>,
    /// Per vCPU: its state, for the report being gathered.
    answers: Vec<Option<String>>,
}

impl DumpState {
    pub fn new(vcpus: usize, console: ConsoleTail, pause: Arc<PauseState>) -> Self {
        Self {
            state: Mutex::new(State { tids: vec![None; vcpus], answers: vec![None; vcpus] }),
            answered: Condvar::new(),
            requested: AtomicBool::new(false),
            one: Mutex::new(()),
            console,
            pause,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// For vCPU `index`'s thread: it runs (`true`, at its start) or has ended (`false`).
    pub(crate) fn set_running(&self, index: u8, running: bool) {
        // SAFETY: gettid takes no arguments and cannot fail.
        let tid = running.then(|| unsafe { libc::gettid() });
        if let Some(slot) = self.lock().tids.get_mut(usize::from(index)) {
            *slot = tid;
        }
    }

    /// For vCPU `index`'s thread before KVM_RUN: records `state()` if a report asks for it.
    pub(crate) fn answer(&self, index: u8, state: impl FnOnce() -> String) {
        if !self.requested.load(Ordering::Relaxed) {
            return;
        }
        let mut guard = self.lock();
        if let Some(slot @ None) = guard.answers.get_mut(usize::from(index)) {
            *slot = Some(state());
            self.answered.notify_all();
        }
    }

    fn dump(&self, timeout: Duration) -> String {
        let _one = self.one.lock().unwrap_or_else(PoisonError::into_inner);
        let start = Instant::now();
        let mut state = self.lock();
        state.answers.iter_mut().for_each(|a| *a = None);
        self.requested.store(true, Ordering::Relaxed);
        loop {
            let waiting: Vec<libc::pid_t> = state
                .answers
                .iter()
                .zip(&state.tids)
                .filter_map(|(answer, tid)| if answer.is_none() { *tid } else { None })
                .collect();
            let left = timeout.saturating_sub(start.elapsed());
            if waiting.is_empty() || left.is_zero() || self.pause.is_paused() {
                break;
            }
            waiting.into_iter().for_each(kick);
            state = self.answered.wait_timeout(state, left.min(REKICK)).unwrap_or_else(PoisonError::into_inner).0;
        }
        self.requested.store(false, Ordering::Relaxed);
        let fresh = vec![None; state.answers.len()];
        let answers = std::mem::replace(&mut state.answers, fresh);
        let running: Vec<bool> = state.tids.iter().map(Option::is_some).collect();
        drop(state);

        let paused = self.pause.is_paused();
        let mut report = String::new();
        for (index, (answer, running)) in answers.into_iter().zip(running).enumerate() {
            let _ = match answer {
                Some(text) => writeln!(report, "vCPU {index}: {text}"),
                None if !running => writeln!(report, "vCPU {index}: its thread is not running (VM not started, or stopped)"),
                None if paused => writeln!(report, "vCPU {index}: parked (the VM is paused)"),
                None => writeln!(report, "vCPU {index}: still in KVM_RUN after {timeout:?}"),
            };
        }
        let tail = self.console.contents();
        let _ = writeln!(report, "console, last {} bytes:", tail.len());
        report.push_str(&String::from_utf8_lossy(&tail));
        if !report.ends_with('\n') {
            report.push('\n');
        }
        report
    }
}

/// Sends the kick signal to thread `tid` of this process.
fn kick(tid: libc::pid_t) {
    // SAFETY: tgkill takes plain integers; naming our own process as the thread group, it can
    // reach no other process's thread, and the kick signal's handler (installed by `Vmm::run`
    // before any vCPU thread records its id) does nothing.
    unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, kick_signal()) };
}

/// Reports what the guest is doing: every vCPU's registers and the console's last bytes; get
/// it from [`crate::Vmm::dump_handle`] before [`crate::Vmm::run`], and call it from any thread.
#[derive(Clone)]
pub struct DumpHandle(Arc<DumpState>);

impl DumpHandle {
    pub(crate) fn new(state: Arc<DumpState>) -> Self {
        Self(state)
    }

    /// The report, as text lines: per vCPU its state, or that it did not leave the guest
    /// within `timeout`; then the console's last [`crate::devices::serial::TAIL_BYTES`]. The
    /// guest runs on.
    pub fn dump(&self, timeout: Duration) -> String {
        self.0.dump(timeout)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn answers_silent_vcpus_and_the_console_tail_make_the_report() {
        extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}
        vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick).unwrap();
        let console = ConsoleTail::new(8);
        console.push(b"boot log: stuck");
        let state = Arc::new(DumpState::new(3, console, Arc::new(PauseState::new(3))));
        let handle = DumpHandle::new(state.clone());
        let (done_tx, done) = mpsc::channel::<()>();
        let (ready_tx, ready) = mpsc::channel();
        // vCPU 0 answers before each "KVM_RUN"; vCPU 1 never comes back; vCPU 2 never started.
        let answering = {
            let (state, ready_tx) = (state.clone(), ready_tx.clone());
            std::thread::spawn(move || {
                state.set_running(0, true);
                ready_tx.send(()).unwrap();
                while done.recv_timeout(Duration::from_millis(1)).is_err() {
                    state.answer(0, || "rip=0x1234".into());
                }
                state.set_running(0, false);
            })
        };
        let (stuck_tx, stuck) = mpsc::channel::<()>();
        let silent = {
            let state = state.clone();
            std::thread::spawn(move || {
                state.set_running(1, true);
                ready_tx.send(()).unwrap();
                let _ = stuck.recv();
            })
        };
        ready.recv().unwrap();
        ready.recv().unwrap();

        let report = handle.dump(Duration::from_millis(100));
        assert_eq!(
            report,
            "vCPU 0: rip=0x1234\n\
             vCPU 1: still in KVM_RUN after 100ms\n\
             vCPU 2: its thread is not running (VM not started, or stopped)\n\
             console, last 8 bytes:\ng: stuck\n"
        );
        done_tx.send(()).unwrap();
        stuck_tx.send(()).unwrap();
        answering.join().unwrap();
        silent.join().unwrap();
        assert!(handle.dump(Duration::from_millis(100)).starts_with("vCPU 0: its thread is not running"));
    }
}
