//! Boot timer: the guest's init writes [`BOOT_COMPLETE`] to [`BOOT_TIMER_PORT`] once it runs,
//! and the VMM records how long that took from its own start (Firecracker's boot-timer
//! device does the same with the same magic byte).

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// An ISA port no device in our guests uses.
pub const BOOT_TIMER_PORT: u16 = 0x3f0;
/// The byte that means "init is running".
pub const BOOT_COMPLETE: u8 = 123;
/// The byte the guest agent writes right before it starts the container's process.
pub const PROCESS_START: u8 = 124;

pub struct BootTimer {
    start: Instant,
    reached: OnceLock<Duration>,
    process: OnceLock<Duration>,
}

impl BootTimer {
    pub fn new(start: Instant) -> Self {
        Self { start, reached: OnceLock::new(), process: OnceLock::new() }
    }

    /// A guest write; only the first [`BOOT_COMPLETE`] and [`PROCESS_START`] count.
    pub fn write(&self, value: u8) {
        if value == BOOT_COMPLETE && self.reached.set(self.start.elapsed()).is_ok() {
            tracing::info!("boot-timer: guest init after {:.1} ms", self.ms().unwrap_or(0.0));
        }
        if value == PROCESS_START {
            let _ = self.process.set(self.start.elapsed());
        }
    }

    /// Milliseconds from VMM start to the agent starting the container's process.
    pub fn process_start_ms(&self) -> Option<f64> {
        self.process.get().map(|d| d.as_secs_f64() * 1e3)
    }

    /// Milliseconds from VMM start to guest init, once the guest said so.
    pub fn ms(&self) -> Option<f64> {
        self.reached.get().map(|d| d.as_secs_f64() * 1e3)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn records_only_the_first_magic_write() {
        let t = BootTimer::new(Instant::now());
        t.write(1);
        assert!(t.ms().is_none());
        t.write(BOOT_COMPLETE);
        let first = t.ms().unwrap();
        std::thread::sleep(Duration::from_millis(2));
        t.write(BOOT_COMPLETE);
        assert_eq!(t.ms(), Some(first));
        assert!(t.process_start_ms().is_none());
        t.write(PROCESS_START);
        assert!(t.process_start_ms().is_some_and(|p| p >= first));
    }
}
