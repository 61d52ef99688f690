//! Pausing the vCPUs (the OCI `pause` and `resume` verbs).
//!
//! A vCPU thread looks at the pause state before each KVM_RUN; when a pause is asked for it
//! parks on a condition variable, outside the guest, until resumed or until the VM has ended.
//! A vCPU inside KVM_RUN gets there at the control thread's next kick, so [`PauseHandle::pause`]
//! sends no signal itself: it waits until every vCPU has parked. Parked vCPUs do not look at
//! their `stopped` flags, so a pause never reads as a powered-off guest.
//!
//! The pause itself takes futex (and clock_gettime for the timeout), which every seccomp list
//! allows; a vCPU back from a pause also makes KVM_KVMCLOCK_CTRL, in the vCPU ioctl list.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PauseError {
    /// Some vCPU did not leave the guest in time; the pause is called off and all run on.
    #[error("pause: {parked} of {vcpus} vCPUs stopped within {timeout:?}")]
    Timeout { parked: usize, vcpus: usize, timeout: Duration },
    /// `run` has returned (or the `Vmm` is gone without it): there is nothing to pause.
    #[error("pause: the VM has stopped")]
    Stopped,
}

/// What the vCPU threads and the [`PauseHandle`]s share.
#[derive(Debug)]
pub struct PauseState {
    state: Mutex<State>,
    changed: Condvar,
    /// `paused`, readable without the lock: the vCPUs look at it before every KVM_RUN.
    requested: AtomicBool,
}

#[derive(Debug)]
struct State {
    paused: bool,
    /// vCPU threads waiting in [`PauseState::park`].
    parked: usize,
    vcpus: usize,
    /// The VM has stopped (or will never run): no vCPU parks, and a pause fails.
    ended: bool,
}

impl PauseState {
    pub fn new(vcpus: usize) -> Self {
        Self {
            state: Mutex::new(State { paused: false, parked: 0, vcpus, ended: false }),
            changed: Condvar::new(),
            requested: AtomicBool::new(false),
        }
    }

    /// No code panics with the lock held, but a poisoned lock still holds a consistent state.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// For a vCPU thread before KVM_RUN: returns at once unless paused, else once resumed or
    /// ended. Whether it parked.
    pub(crate) fn park(&self) -> bool {
        // The flag only says whether to look; the state under the lock decides.
        if !self.requested.load(Ordering::Relaxed) {
            return false;
        }
        let mut state = self.lock();
        if !state.paused || state.ended {
            return false;
        }
        state.parked += 1;
        self.changed.notify_all();
        while state.paused && !state.ended {
            state = self.changed.wait(state).unwrap_or_else(PoisonError::into_inner);
        }
        state.parked -= 1;
        true
    }

    /// The VM has stopped: parked vCPUs leave (to find the exit reason and end), and every
    /// later pause fails.
    pub(crate) fn end(&self) {
        let mut state = self.lock();
        state.ended = true;
        self.requested.store(false, Ordering::Relaxed);
        self.changed.notify_all();
    }

    /// Every vCPU is parked, and stays so until resumed.
    pub(crate) fn is_paused(&self) -> bool {
        let state = self.lock();
        state.paused && !state.ended && state.parked == state.vcpus
    }

    fn pause(&self, timeout: Duration) -> Result<(), PauseError> {
        let mut state = self.lock();
        if state.ended {
            return Err(PauseError::Stopped);
        }
        state.paused = true;
        self.requested.store(true, Ordering::Relaxed);
        let (mut state, _) = self
            .changed
            .wait_timeout_while(state, timeout, |s| !s.ended && s.parked < s.vcpus)
            .unwrap_or_else(PoisonError::into_inner);
        if state.ended {
            return Err(PauseError::Stopped);
        }
        if state.parked < state.vcpus {
            // A failed pause leaves the VM as it found it: running.
            let error = PauseError::Timeout { parked: state.parked, vcpus: state.vcpus, timeout };
            self.set_running(&mut state);
            return Err(error);
        }
        Ok(())
    }

    fn set_running(&self, state: &mut State) {
        state.paused = false;
        self.requested.store(false, Ordering::Relaxed);
        self.changed.notify_all();
    }
}

/// Pauses and resumes the vCPUs of one VM; get it from [`crate::Vmm::pause_handle`] before
/// [`crate::Vmm::run`]. Clones share the state: meant for one caller at a time (the last call
/// wins), from any thread.
#[derive(Clone, Debug)]
pub struct PauseHandle(Arc<PauseState>);

impl PauseHandle {
    pub(crate) fn new(state: Arc<PauseState>) -> Self {
        Self(state)
    }

    /// Stops every vCPU outside the guest and returns once all are parked: from then on the
    /// guest runs no instruction until [`resume`](Self::resume). Asked before `run`, the vCPUs
    /// park before their first instruction. Fails if not all have parked within `timeout`
    /// (then the vCPUs run on), or once the VM has stopped. Pausing a paused VM does nothing.
    pub fn pause(&self, timeout: Duration) -> Result<(), PauseError> {
        self.0.pause(timeout)
    }

    /// Lets the vCPUs run again; returns without waiting for them. Does nothing unless paused.
    pub fn resume(&self) {
        let mut state = self.0.lock();
        self.0.set_running(&mut state);
    }

    /// Whether every vCPU is parked by a pause (false once the VM has stopped).
    pub fn is_paused(&self) -> bool {
        self.0.is_paused()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::thread::JoinHandle;

    const LONG: Duration = Duration::from_secs(30);

    /// `n` stand-in vCPU threads that count their "KVM_RUN"s until `done`.
    fn vcpus(state: &Arc<PauseState>, n: usize, done: &Arc<AtomicBool>) -> (Arc<AtomicUsize>, Vec<JoinHandle<()>>) {
        let runs = Arc::new(AtomicUsize::new(0));
        let threads = (0..n)
            .map(|_| {
                let (state, done, runs) = (state.clone(), done.clone(), runs.clone());
                std::thread::spawn(move || {
                    while !done.load(Ordering::SeqCst) {
                        let _ = state.park();
                        runs.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(1));
                    }
                })
            })
            .collect();
        (runs, threads)
    }

    fn wait_for(what: impl Fn() -> bool) {
        let start = std::time::Instant::now();
        while !what() {
            assert!(start.elapsed() < LONG, "gave up waiting");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn pause_parks_every_vcpu_and_resume_lets_them_run() {
        let state = Arc::new(PauseState::new(3));
        let handle = PauseHandle::new(state.clone());
        let done = Arc::new(AtomicBool::new(false));
        let (runs, threads) = vcpus(&state, 3, &done);
        wait_for(|| runs.load(Ordering::SeqCst) > 0);
        assert!(!handle.is_paused());

        handle.pause(LONG).unwrap();
        assert!(handle.is_paused());
        let before = runs.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(runs.load(Ordering::SeqCst), before, "a parked vCPU ran");
        handle.pause(LONG).unwrap(); // again: nothing to wait for
        assert!(handle.is_paused());

        handle.resume();
        assert!(!handle.is_paused());
        wait_for(|| runs.load(Ordering::SeqCst) > before);

        done.store(true, Ordering::SeqCst);
        threads.into_iter().for_each(|t| t.join().unwrap());
    }

    #[test]
    fn a_vcpu_that_never_parks_times_the_pause_out_and_the_others_run_on() {
        let state = Arc::new(PauseState::new(2));
        let handle = PauseHandle::new(state.clone());
        let done = Arc::new(AtomicBool::new(false));
        let (runs, threads) = vcpus(&state, 1, &done); // the second vCPU is stuck elsewhere
        let error = handle.pause(Duration::from_millis(100)).unwrap_err();
        assert_eq!(error, PauseError::Timeout { parked: 1, vcpus: 2, timeout: Duration::from_millis(100) });
        assert_eq!(error.to_string(), "pause: 1 of 2 vCPUs stopped within 100ms");
        assert!(!handle.is_paused());
        let before = runs.load(Ordering::SeqCst);
        wait_for(|| runs.load(Ordering::SeqCst) > before);

        done.store(true, Ordering::SeqCst);
        threads.into_iter().for_each(|t| t.join().unwrap());
    }

    #[test]
    fn the_vm_ending_wakes_parked_vcpus_and_a_waiting_pause() {
        // Two vCPUs, one of which never parks: the pause waits until the VM ends.
        let state = Arc::new(PauseState::new(2));
        let handle = PauseHandle::new(state.clone());
        let done = Arc::new(AtomicBool::new(false));
        let (_, threads) = vcpus(&state, 1, &done);
        let pausing = {
            let handle = handle.clone();
            std::thread::spawn(move || handle.pause(LONG))
        };
        wait_for(|| state.lock().parked == 1);
        done.store(true, Ordering::SeqCst);
        state.end();
        assert_eq!(pausing.join().unwrap(), Err(PauseError::Stopped));
        threads.into_iter().for_each(|t| t.join().unwrap()); // the parked one left
        assert!(!handle.is_paused());
        assert_eq!(handle.pause(LONG), Err(PauseError::Stopped));
        assert!(!state.park(), "parked after the end");
    }

    #[test]
    fn a_pause_asked_before_the_vcpus_start_catches_them_at_their_first_run() {
        let state = Arc::new(PauseState::new(2));
        let handle = PauseHandle::new(state.clone());
        let pausing = {
            let handle = handle.clone();
            std::thread::spawn(move || handle.pause(LONG))
        };
        wait_for(|| state.lock().paused);
        let done = Arc::new(AtomicBool::new(false));
        let (runs, threads) = vcpus(&state, 2, &done);
        pausing.join().unwrap().unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 0);
        handle.resume();
        wait_for(|| runs.load(Ordering::SeqCst) > 0);
        done.store(true, Ordering::SeqCst);
        threads.into_iter().for_each(|t| t.join().unwrap());
    }
}
