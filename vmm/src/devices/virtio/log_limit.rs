//! A bound on how often a device logs what a guest made happen: a hostile guest may send a
//! bad chain a million times a second, and the host's log must not pay for each.

use std::time::{Duration, Instant};

/// At most `BURST` messages per `WINDOW`; the count of those left out is given with the next
/// message let through.
#[derive(Default)]
pub struct LogLimit {
    window_start: Option<Instant>,
    in_window: u32,
    suppressed: u64,
}

const WINDOW: Duration = Duration::from_secs(1);
const BURST: u32 = 10;

impl LogLimit {
    /// Whether to log now: `Some(n)`, with `n` messages left out since the last one logged.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        if self.window_start.is_none_or(|start| now.duration_since(start) >= WINDOW) {
            self.window_start = Some(now);
            self.in_window = 0;
        }
        if self.in_window >= BURST {
            self.suppressed += 1;
            return None;
        }
        self.in_window += 1;
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// Logs a warning through `limit`, noting how many were left out before it.
#[macro_export]
macro_rules! limited_warn {
    ($limit:expr, $($arg:tt)+) => {
        if let Some(suppressed) = $limit.allow(std::time::Instant::now()) {
            if suppressed > 0 {
                tracing::warn!("{} ({suppressed} similar messages suppressed)", format_args!($($arg)+));
            } else {
                tracing::warn!($($arg)+);
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_silence_then_the_count() {
        let mut limit = LogLimit::default();
        let t0 = Instant::now();
        let allowed = (0..1000).filter(|_| limit.allow(t0).is_some()).count();
        assert_eq!(allowed, BURST as usize);
        assert_eq!(limit.allow(t0 + WINDOW), Some(1000 - u64::from(BURST)));
        assert_eq!(limit.allow(t0 + WINDOW), Some(0));
    }
}
