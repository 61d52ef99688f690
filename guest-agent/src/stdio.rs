//! The container process's standard streams: pipes or a pseudo-terminal on the process's side,
//! relayed to and from the host's stream connections (one per stream, see the protocol crate's
//! documentation) on the agent's side.
//!
//! Output is relayed until EOF, or until the process has exited and its pipe is empty: all a
//! process wrote is in the pipe (or the terminal's buffer) by the time it exits, so waiting for
//! "exited, then empty" never loses its last bytes, and a daemon it left behind holding the
//! pipe open cannot hold the exit status back. Until the host attaches a stream the output
//! waits in the pipe.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::pty::{openpty, Winsize};
use nix::sys::socket::{shutdown, Shutdown};
use protocol::TerminalSize;

/// A host stream connection: a vsock connection in the guest, a socket pair in tests.
pub trait Connection: Read + Write + AsFd + Send + 'static {}
impl<T: Read + Write + AsFd + Send + 'static> Connection for T {}

/// What an output relay needs to know about its process: whether it has exited, and a
/// descriptor that polls readable once it has.
pub trait ExitWatch {
    fn has_exited(&self) -> bool;
    fn exit_fd(&self) -> BorrowedFd<'_>;
}

#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    #[error("open a pseudo-terminal: {0}")]
    OpenPty(#[source] nix::Error),
    #[error("set close-on-exec on the pseudo-terminal: {0}")]
    Cloexec(#[source] nix::Error),
    #[error("set the terminal size to {rows}x{cols}: {source}")]
    Resize {
        rows: u16,
        cols: u16,
        source: io::Error,
    },
    #[error("read the process's {stream}: {source}")]
    ReadOutput {
        stream: &'static str,
        source: io::Error,
    },
    #[error("write the process's {stream} to the host: {source}")]
    WriteOutput {
        stream: &'static str,
        source: io::Error,
    },
    #[error("relay stdin from the host: {0}")]
    Stdin(#[source] io::Error),
}

/// A pseudo-terminal: the agent keeps the master, the process gets the slave.
pub struct Pty {
    pub master: OwnedFd,
    pub slave: OwnedFd,
}

/// Opens a pseudo-terminal of `size`; both ends are close-on-exec.
pub fn open_pty(size: TerminalSize) -> Result<Pty, StdioError> {
    let pty = openpty(Some(&winsize(size)), None).map_err(StdioError::OpenPty)?;
    for fd in [&pty.master, &pty.slave] {
        fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(StdioError::Cloexec)?;
    }
    Ok(Pty {
        master: pty.master,
        slave: pty.slave,
    })
}

fn winsize(size: TerminalSize) -> Winsize {
    Winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

/// Sets the window size of the terminal whose master is `master` (the kernel sends the
/// foreground process group SIGWINCH).
pub fn resize(master: BorrowedFd<'_>, size: TerminalSize) -> Result<(), StdioError> {
    let ws = winsize(size);
    // SAFETY: TIOCSWINSZ reads one struct winsize from the pointer, which points at a live
    // local of exactly that type; the return value is checked below.
    let rc = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    if rc != 0 {
        return Err(StdioError::Resize {
            rows: size.rows,
            cols: size.cols,
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Where the host's stdin bytes go: the write end of the process's stdin pipe, or the
/// terminal's master.
#[derive(Debug)]
pub struct StdinSink {
    fd: OwnedFd,
    terminal: bool,
}

/// The terminal's end-of-file character (VEOF, Ctrl-D), what a user types to end input.
const EOT: u8 = 0x04;

impl StdinSink {
    pub fn pipe(fd: OwnedFd) -> Self {
        StdinSink {
            fd,
            terminal: false,
        }
    }

    pub fn terminal(master: OwnedFd) -> Self {
        StdinSink {
            fd: master,
            terminal: true,
        }
    }

    /// Ends the process's input: closes the pipe, or types Ctrl-D on the terminal (closing a
    /// terminal's master would hang it up).
    pub fn finish(self) {
        if self.terminal {
            // Best effort: a terminal that cannot take the byte has lost its reader anyway.
            let _ = std::fs::File::from(self.fd).write_all(&[EOT]);
        }
    }
}

/// Copies the host's stdin connection into `sink` until EOF (the host half-closed it, or
/// CloseStdin shut it down), then ends the process's input.
pub fn relay_input<C: Read>(mut conn: C, sink: StdinSink) -> Result<u64, StdioError> {
    let mut file = std::fs::File::from(sink.fd.try_clone().map_err(StdioError::Stdin)?);
    let copied = io::copy(&mut conn, &mut file);
    drop(file);
    sink.finish();
    copied.map_err(StdioError::Stdin)
}

/// Copies `source` (a pipe's read end or a terminal's master) to `conn` until EOF, or until the
/// process has exited and `source` is empty; then shuts down the connection's write side so the
/// host sees EOF. On a write error it stops and closes `source` (the writer then gets SIGPIPE,
/// as with any closed pipe). Returns the bytes copied.
pub fn relay_output<C: Connection>(
    source: OwnedFd,
    mut conn: C,
    exit: &dyn ExitWatch,
    stream: &'static str,
) -> Result<u64, StdioError> {
    let copied = copy_output(&source, &mut conn, exit, stream);
    // Best effort: the connection is dropped right after, which also ends it.
    let _ = shutdown(conn.as_fd().as_raw_fd(), Shutdown::Write);
    copied
}

fn copy_output(
    source: &OwnedFd,
    conn: &mut dyn Write,
    exit: &dyn ExitWatch,
    stream: &'static str,
) -> Result<u64, StdioError> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut copied = 0u64;
    loop {
        // Read before polling: "exited, and then found empty" means all output is out.
        let exited = exit.has_exited();
        let mut fds = [
            PollFd::new(source.as_fd(), PollFlags::POLLIN),
            PollFd::new(exit.exit_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::Error::EINTR) => continue,
            Err(error) => {
                return Err(StdioError::ReadOutput {
                    stream,
                    source: error.into(),
                })
            }
        }
        let ready = fds[0].revents().unwrap_or(PollFlags::empty());
        if ready.is_empty() {
            if exited {
                return Ok(copied);
            }
            continue;
        }
        let n = match nix::unistd::read(source, &mut buf) {
            Ok(0) | Err(nix::Error::EIO) => return Ok(copied), // EOF; EIO: terminal hung up
            Ok(n) => n,
            Err(nix::Error::EINTR | nix::Error::EAGAIN) => continue,
            Err(error) => {
                return Err(StdioError::ReadOutput {
                    stream,
                    source: error.into(),
                })
            }
        };
        conn.write_all(&buf[..n])
            .map_err(|source| StdioError::WriteOutput { stream, source })?;
        copied += n as u64;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use std::os::unix::net::UnixStream;
    use std::sync::atomic::{AtomicBool, Ordering};

    use nix::sys::eventfd::{EfdFlags, EventFd};
    use nix::unistd::pipe2;

    use super::*;

    struct TestExit {
        exited: AtomicBool,
        fd: EventFd,
    }

    impl TestExit {
        fn new() -> Self {
            TestExit {
                exited: AtomicBool::new(false),
                fd: EventFd::from_flags(EfdFlags::EFD_CLOEXEC).unwrap(),
            }
        }

        fn exit(&self) {
            self.exited.store(true, Ordering::SeqCst);
            self.fd.write(1).unwrap();
        }
    }

    impl ExitWatch for TestExit {
        fn has_exited(&self) -> bool {
            self.exited.load(Ordering::SeqCst)
        }
        fn exit_fd(&self) -> BorrowedFd<'_> {
            self.fd.as_fd()
        }
    }

    fn read_all(mut conn: UnixStream) -> Vec<u8> {
        let mut out = Vec::new();
        conn.read_to_end(&mut out).unwrap();
        out
    }

    #[test]
    fn output_is_relayed_until_eof() {
        let (read, write) = pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let (agent, host) = UnixStream::pair().unwrap();
        let exit = TestExit::new();
        std::fs::File::from(write).write_all(b"hello\n").unwrap();
        assert_eq!(relay_output(read, agent, &exit, "stdout").unwrap(), 6);
        assert_eq!(read_all(host), b"hello\n");
    }

    #[test]
    fn output_ends_once_exited_and_drained_even_if_the_pipe_stays_open() {
        // A daemon left behind still holds the write end.
        let (read, write) = pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let mut write = std::fs::File::from(write);
        let (agent, host) = UnixStream::pair().unwrap();
        let exit = TestExit::new();
        std::thread::scope(|s| {
            let relay = s.spawn(|| relay_output(read, agent, &exit, "stdout"));
            write.write_all(b"last words").unwrap();
            exit.exit();
            assert_eq!(relay.join().unwrap().unwrap(), 10);
        });
        assert_eq!(read_all(host), b"last words");
    }

    #[test]
    fn terminal_output_and_input() {
        let pty = open_pty(TerminalSize { rows: 24, cols: 80 }).unwrap();
        resize(
            pty.master.as_fd(),
            TerminalSize {
                rows: 50,
                cols: 132,
            },
        )
        .unwrap();
        let mut ws = winsize(TerminalSize { rows: 0, cols: 0 });
        // SAFETY: TIOCGWINSZ writes one struct winsize into the live local.
        let rc = unsafe { libc::ioctl(pty.slave.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
        assert_eq!(rc, 0);
        assert_eq!((ws.ws_row, ws.ws_col), (50, 132));

        // Host stdin -> master -> slave (the terminal echoes it back to the master too).
        let (agent_in, mut host_in) = UnixStream::pair().unwrap();
        let sink = StdinSink::terminal(pty.master.try_clone().unwrap());
        host_in.write_all(b"hi\n").unwrap();
        host_in.shutdown(std::net::Shutdown::Write).unwrap();
        relay_input(agent_in, sink).unwrap();
        let mut slave = std::fs::File::from(pty.slave);
        let mut line = [0u8; 3];
        slave.read_exact(&mut line).unwrap();
        assert_eq!(&line, b"hi\n");

        // Slave output -> master -> host; closing the slave ends it (EIO on the master).
        slave.write_all(b"out").unwrap();
        drop(slave);
        let (agent_out, host_out) = UnixStream::pair().unwrap();
        let exit = TestExit::new();
        relay_output(pty.master, agent_out, &exit, "stdout").unwrap();
        let out = read_all(host_out);
        assert!(out.ends_with(b"out"), "{out:?}");
    }

    #[test]
    fn stdin_pipe_closes_at_eof() {
        let (read, write) = pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let (agent, mut host) = UnixStream::pair().unwrap();
        host.write_all(b"input").unwrap();
        drop(host);
        assert_eq!(relay_input(agent, StdinSink::pipe(write)).unwrap(), 5);
        let mut got = String::new();
        std::fs::File::from(read).read_to_string(&mut got).unwrap();
        assert_eq!(got, "input");
    }
}
