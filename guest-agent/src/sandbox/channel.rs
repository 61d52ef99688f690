//! The agent's conversation with the process that builds a container, over a Unix socket pair
//! (fd 3 in that process): one JSON message per line.
//!
//! ```text
//! agent                                  container setup (intermediate, then container)
//!   Setup { spec, init, terminal }  -->
//!                                   <--  Pid (intermediate: the container's pid, then exits)
//!                                   <--  Ready (container: namespaces, mounts, cgroup done)
//!   Go                              -->  (the agent now watches the pid)
//!                                   <--  Failed { exec: true, .. } if execve fails;
//!                                        end of stream once execve succeeded (close-on-exec)
//! ```
//! Any step may instead answer `Failed`, after which the sender exits.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

use oci_spec::runtime::Spec;
use serde::{Deserialize, Serialize};

/// The file descriptor the channel has in the setup process.
pub const CHANNEL_FD: i32 = 3;
/// With a terminal, the socket on which the container sends the terminal's master back (one
/// SCM_RIGHTS message, as runc's console socket): the terminal is made inside the container,
/// on its own devpts instance, so that the process sees its slave as its /dev/pts/N.
pub const CONSOLE_FD: i32 = 4;
/// The longest line either side accepts: a config.json is kilobytes; this bounds a bad one.
const MAX_LINE: u64 = 4 << 20;

/// Agent -> setup process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ToContainer {
    Setup {
        spec: Box<Spec>,
        /// Run the reaping init as PID 1 with the command as its child.
        init: bool,
        /// Make a terminal of this size in the container, its slave the process's stdio and
        /// controlling terminal, and send the master on [`CONSOLE_FD`].
        terminal: Option<protocol::TerminalSize>,
    },
    /// Start another process in the container whose process is `target` (OCI `exec`): join
    /// its cgroup and namespaces instead of making them; the rest as for Setup, less what
    /// only building a container does (filesystem, hostname, sysctls).
    Join {
        spec: Box<Spec>,
        target: u32,
        terminal: Option<protocol::TerminalSize>,
    },
    /// The agent watches the container's pid: go on and exec.
    Go,
}

/// Setup process -> agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FromContainer {
    /// The container process's pid, as the agent sees it.
    Pid(u32),
    /// The container is built; the process waits for [`ToContainer::Go`].
    Ready,
    Failed {
        /// What was being done, e.g. "mount proc on /proc".
        step: String,
        /// The error, one line.
        message: String,
        /// The errno, when a system call failed.
        errno: Option<i32>,
        /// Whether `execve` of the command failed (the rest is setup).
        exec: bool,
        /// Whether the request itself is at fault (a bad cwd, say).
        invalid_request: bool,
    },
}

/// One end of the channel.
pub struct Channel {
    /// (reader, writer); `None` once detached.
    ends: Option<(BufReader<UnixStream>, UnixStream)>,
}

fn detached() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "container channel: detached")
}

impl Channel {
    pub fn new(stream: UnixStream) -> io::Result<Self> {
        Ok(Channel {
            ends: Some((BufReader::new(stream.try_clone()?), stream)),
        })
    }

    pub fn send<T: Serialize>(&mut self, message: &T) -> io::Result<()> {
        let mut line = serde_json::to_vec(message).map_err(io::Error::other)?;
        line.push(b'\n');
        let (_, writer) = self.ends.as_mut().ok_or_else(detached)?;
        writer.write_all(&line)
    }

    /// The next message; `None` at the end of the stream.
    pub fn recv<T: for<'de> Deserialize<'de>>(&mut self) -> io::Result<Option<T>> {
        let mut line = Vec::new();
        let (reader, _) = self.ends.as_mut().ok_or_else(detached)?;
        reader.take(MAX_LINE).read_until(b'\n', &mut line)?;
        if line.is_empty() {
            return Ok(None);
        }
        if line.last() != Some(&b'\n') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "container channel: message cut short or longer than 4 MiB",
            ));
        }
        serde_json::from_slice(&line)
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// Sends `fd` as one SCM_RIGHTS message (with a one-byte payload) on `socket`.
    pub fn send_fd(socket: &UnixStream, fd: BorrowedFd<'_>) -> io::Result<()> {
        let fds = [fd.as_raw_fd()];
        let rights = [ControlMessage::ScmRights(&fds)];
        sendmsg::<()>(socket.as_raw_fd(), &[io::IoSlice::new(b"T")], &rights, MsgFlags::empty(), None)
            .map(drop)
            .map_err(io::Error::from)
    }

    /// Receives the descriptor [`Channel::send_fd`] sent; an error if the message had none.
    pub fn recv_fd(socket: &UnixStream) -> io::Result<OwnedFd> {
        let mut byte = [0u8; 1];
        let mut iov = [io::IoSliceMut::new(&mut byte)];
        let mut space = nix::cmsg_space!([RawFd; 1]);
        let message = recvmsg::<()>(socket.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
            .map_err(io::Error::from)?;
        for cmsg in message.cmsgs().map_err(io::Error::from)? {
            if let ControlMessageOwned::ScmRights(fds) = cmsg {
                if let Some(fd) = fds.first() {
                    // SAFETY: the kernel just installed this descriptor in our table for us;
                    // nothing else owns it.
                    return Ok(unsafe { OwnedFd::from_raw_fd(*fd) });
                }
            }
        }
        Err(io::Error::new(io::ErrorKind::InvalidData, "console socket: no descriptor in the message"))
    }

    /// Takes the stream out (one descriptor; the reader's copy is closed): what an exec'd
    /// command keeps until exec succeeds, while every other copy must be closed.
    pub fn detach(&mut self) -> Option<UnixStream> {
        self.ends.take().map(|(_, writer)| writer)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    #[test]
    fn messages_cross_in_order_and_eof_is_none() {
        let (a, b) = UnixStream::pair().unwrap();
        let (mut a, mut b) = (Channel::new(a).unwrap(), Channel::new(b).unwrap());
        a.send(&FromContainer::Pid(42)).unwrap();
        a.send(&FromContainer::Ready).unwrap();
        drop(a);
        assert_eq!(
            b.recv::<FromContainer>().unwrap(),
            Some(FromContainer::Pid(42))
        );
        assert_eq!(
            b.recv::<FromContainer>().unwrap(),
            Some(FromContainer::Ready)
        );
        assert_eq!(b.recv::<FromContainer>().unwrap(), None);
    }

    #[test]
    fn descriptors_pass_through_the_console_socket() {
        let (a, b) = UnixStream::pair().unwrap();
        let (read, write) = nix::unistd::pipe().unwrap();
        Channel::send_fd(&a, write.as_fd()).unwrap();
        drop(write);
        let received = Channel::recv_fd(&b).unwrap();
        nix::unistd::write(&received, b"x").unwrap();
        let mut byte = [0u8; 1];
        assert_eq!(nix::unistd::read(&read, &mut byte).unwrap(), 1);
        Channel::send_fd(&a, read.as_fd()).unwrap();
        drop(a);
        Channel::recv_fd(&b).unwrap();
        assert!(Channel::recv_fd(&b).is_err(), "end of stream");
    }

    #[test]
    fn garbage_and_cut_lines_are_errors() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let mut b = Channel::new(b).unwrap();
        a.write_all(b"{nope}\n\"Ready").unwrap();
        drop(a);
        assert!(b.recv::<FromContainer>().is_err());
        assert!(b.recv::<FromContainer>().is_err());
    }
}
