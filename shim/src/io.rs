//! A task process's stdio. containerd names FIFOs it has opened for its own side (or empty
//! strings, for none); the shim opens the other side and hands it down, or, for a terminal,
//! receives the pty master on a console socket and copies between it and the FIFOs.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};

use crate::runtime::ProcessStdio;

/// What the shim keeps of a process's stdio once the process runs.
#[derive(Default)]
pub struct ProcessIo {
    stdin: Option<StdinCopy>,
    master: Option<OwnedFd>,
}

impl ProcessIo {
    /// containerd's CloseIO: the process sees end of file on its stdin.
    pub fn close_stdin(&self) {
        if let Some(stdin) = &self.stdin {
            stdin.close();
        }
    }

    /// containerd's ResizePty: the size set on the master reaches the guest (the VMM
    /// process watches its end of the pty).
    pub fn resize(&self, rows: u16, cols: u16) -> std::io::Result<()> {
        let Some(master) = &self.master else { return Ok(()) };
        let size = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which is valid for the call;
        // the descriptor is ours and open.
        let done = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size) };
        if done < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Opens the FIFOs of a process without a terminal: stdout and stderr for writing, stdin
/// copied into a pipe (so that CloseIO can end it whatever containerd's side does).
pub fn open_plain(stdin: &str, stdout: &str, stderr: &str) -> std::io::Result<(ProcessStdio, ProcessIo)> {
    let mut stdio = ProcessStdio { stdout: open_writer(stdout)?, stderr: open_writer(stderr)?, ..Default::default() };
    let mut io = ProcessIo::default();
    if !stdin.is_empty() {
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        io.stdin = Some(StdinCopy::start(stdin, File::from(write))?);
        stdio.stdin = Some(read);
    }
    Ok((stdio, io))
}

/// Relays a terminal process: stdin FIFO to the master, the master to the stdout FIFO.
pub fn relay_terminal(master: OwnedFd, stdin: &str, stdout: &str) -> std::io::Result<ProcessIo> {
    let mut io = ProcessIo::default();
    if !stdin.is_empty() {
        io.stdin = Some(StdinCopy::start(stdin, File::from(master.try_clone()?))?);
    }
    if let Some(out) = open_writer(stdout)? {
        let mut from = File::from(master.try_clone()?);
        let mut to = File::from(out);
        std::thread::Builder::new().name("pty-out".into()).spawn(move || {
            // Ends at EIO, when the VMM process has closed the slave.
            let _ = std::io::copy(&mut from, &mut to);
        })?;
    }
    io.master = Some(master);
    Ok(io)
}

/// A FIFO containerd reads, opened for writing without blocking (containerd has its end
/// open before it asks); empty: none.
fn open_writer(path: &str) -> std::io::Result<Option<OwnedFd>> {
    if path.is_empty() {
        return Ok(None);
    }
    let file = std::fs::OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(path)?;
    let flags = nix::fcntl::fcntl(file.as_fd(), nix::fcntl::FcntlArg::F_GETFL)?;
    let blocking = nix::fcntl::OFlag::from_bits_truncate(flags) & !nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(file.as_fd(), nix::fcntl::FcntlArg::F_SETFL(blocking))?;
    Ok(Some(file.into()))
}

/// Copies the stdin FIFO into the process's stdin until containerd's side ends or CloseIO.
struct StdinCopy {
    to: Arc<Mutex<Option<File>>>,
}

impl StdinCopy {
    fn start(fifo: &str, to: File) -> std::io::Result<Self> {
        // Opened without blocking: containerd may open its writing end later, or never.
        let mut from = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(fifo)?;
        let to = Arc::new(Mutex::new(Some(to)));
        let sink = Arc::clone(&to);
        std::thread::Builder::new().name("stdin".into()).spawn(move || {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                // A reader that has never seen a writer is not woken by the lack of one:
                // poll waits for the first data or for the last writer to go.
                let mut fds = [PollFd::new(from.as_fd(), PollFlags::POLLIN)];
                if poll(&mut fds, PollTimeout::NONE).is_err() {
                    break;
                }
                let n = match from.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                };
                let mut sink = sink.lock().unwrap_or_else(PoisonError::into_inner);
                let Some(out) = sink.as_mut() else { break };
                if out.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            sink.lock().unwrap_or_else(PoisonError::into_inner).take();
        })?;
        Ok(Self { to })
    }

    fn close(&self) {
        self.to.lock().unwrap_or_else(PoisonError::into_inner).take();
    }
}

/// A unix socket on which `microvm create` or `exec` sends a terminal's pty master; its
/// directory is removed with it.
pub struct ConsoleSocket {
    dir: PathBuf,
    listener: UnixListener,
}

impl ConsoleSocket {
    pub fn bind() -> std::io::Result<Self> {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!("microvm-shim-{}-{nanos}", std::process::id()));
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        match UnixListener::bind(dir.join("console.sock")) {
            Ok(listener) => Ok(Self { dir, listener }),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join("console.sock")
    }

    /// The master that was sent; called once the sender has returned, so the connection
    /// waits in the backlog or was never made.
    pub fn receive(&self) -> std::io::Result<OwnedFd> {
        self.listener.set_nonblocking(true)?;
        let (stream, _) = self.listener.accept()?;
        let mut buf = [0u8; 256];
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let message = recvmsg::<()>(stream.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)?;
        for control in message.cmsgs()? {
            if let ControlMessageOwned::ScmRights(fds) = control {
                if let Some(&fd) = fds.first() {
                    // SAFETY: the kernel installed this descriptor in our table for this
                    // message; nothing else owns it.
                    return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
        Err(std::io::Error::other("the console socket got no terminal"))
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn fifo(dir: &Path, name: &str) -> String {
        let path = dir.join(name);
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
        path.to_string_lossy().into_owned()
    }

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("shim-io-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        dir
    }

    #[test]
    fn stdin_reaches_the_process_and_ends_when_containerd_closes_its_side() {
        let dir = scratch("stdin");
        let path = fifo(&dir, "stdin");
        let (stdio, _io) = open_plain(&path, "", "").expect("open");
        let mut writer = std::fs::OpenOptions::new().write(true).open(&path).expect("writer");
        writer.write_all(b"hello").expect("write");
        drop(writer);
        let mut got = String::new();
        File::from(stdio.stdin.expect("stdin")).read_to_string(&mut got).expect("read");
        assert_eq!(got, "hello");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn close_io_ends_stdin_while_containerd_keeps_its_side_open() {
        let dir = scratch("closeio");
        let path = fifo(&dir, "stdin");
        let (stdio, io) = open_plain(&path, "", "").expect("open");
        let mut writer = std::fs::OpenOptions::new().write(true).open(&path).expect("writer");
        writer.write_all(b"x").expect("write");
        let mut reader = File::from(stdio.stdin.expect("stdin"));
        let mut first = [0u8; 1];
        reader.read_exact(&mut first).expect("first byte");
        io.close_stdin();
        let mut rest = Vec::new();
        reader.read_to_end(&mut rest).expect("end of file");
        assert!(rest.is_empty());
        drop(writer);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn output_goes_to_the_fifos_and_empty_names_are_dev_null() {
        let dir = scratch("out");
        let path = fifo(&dir, "stdout");
        let mut reader = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&path).expect("reader");
        let (stdio, _io) = open_plain("", &path, "").expect("open");
        assert!(stdio.stdin.is_none() && stdio.stderr.is_none());
        File::from(stdio.stdout.expect("stdout")).write_all(b"out").expect("write");
        let mut got = String::new();
        reader.read_to_string(&mut got).expect("read");
        assert_eq!(got, "out");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_fifo_nobody_reads_is_an_error_not_a_hang() {
        let dir = scratch("noreader");
        let path = fifo(&dir, "stdout");
        assert!(open_plain("", &path, "").is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
