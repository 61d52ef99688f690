//! The host terminal for `run -t`: raw mode while the guest's terminal is in charge, and the
//! window size to forward.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::Mutex;

use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg, Termios};
use protocol::TerminalSize;

/// The settings to put back, kept where a signal path can reach them too.
static SAVED: Mutex<Option<Termios>> = Mutex::new(None);

/// Raw mode on stdin while alive; restores the previous settings on drop.
pub struct RawMode;

impl RawMode {
    /// `None` when stdin is not a terminal (then there is nothing to change).
    pub fn enter() -> Option<Self> {
        let stdin = std::io::stdin();
        let saved = tcgetattr(&stdin).ok()?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(&stdin, SetArg::TCSANOW, &raw).ok()?;
        *SAVED.lock().ok()? = Some(saved);
        Some(Self)
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        restore();
    }
}

/// Puts the terminal back as it was, if raw mode was entered.
pub fn restore() {
    if let Ok(mut saved) = SAVED.lock() {
        if let Some(t) = saved.take() {
            let _ = tcsetattr(std::io::stdin(), SetArg::TCSANOW, &t);
        }
    }
}

/// The host terminal's size, from stdin or stdout.
pub fn window_size() -> Option<TerminalSize> {
    [std::io::stdin().as_fd(), std::io::stdout().as_fd()]
        .into_iter()
        .find_map(size_of)
}

/// The size of the terminal `fd`, if it is one and has a size.
pub fn size_of(fd: BorrowedFd<'_>) -> Option<TerminalSize> {
    let mut ws = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCGWINSZ writes one `winsize` into `ws`, which lives for the call; the result
    // is checked.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
    (rc == 0 && ws.ws_row > 0).then_some(TerminalSize { rows: ws.ws_row, cols: ws.ws_col })
}

/// Puts terminal `fd` in raw mode for good (a pty end that only relays bytes).
pub fn make_raw(fd: BorrowedFd<'_>) -> nix::Result<()> {
    let mut t = tcgetattr(fd)?;
    cfmakeraw(&mut t);
    tcsetattr(fd, SetArg::TCSANOW, &t)
}
