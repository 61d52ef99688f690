//! The terminal of a container created with `process.terminal`: a pty on the host whose
//! master goes to the caller over `--console-socket` (one SCM_RIGHTS message whose payload is
//! the pty's name, as runc sends it), and whose slave this VMM process keeps in raw mode,
//! relaying it to and from the guest's own terminal. The guest's line discipline is the one
//! that counts; the host's only passes bytes and carries the window size the caller sets.

use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use nix::pty::openpty;
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("process.terminal is set but no --console-socket was given")]
    NoSocket,
    #[error("console socket {path}: {source}")]
    Socket { path: String, source: std::io::Error },
    #[error("console: {step}: {source}")]
    Pty { step: &'static str, source: nix::Error },
}

/// Makes the pty, sends its master to `socket` and returns the slave.
pub fn hand_over(socket: Option<&Path>) -> Result<OwnedFd, ConsoleError> {
    let socket = socket.ok_or(ConsoleError::NoSocket)?;
    let pty = openpty(None, None).map_err(|source| ConsoleError::Pty { step: "openpty", source })?;
    crate::tty::make_raw(pty.slave.as_fd())
        .map_err(|source| ConsoleError::Pty { step: "raw mode", source })?;
    let name = std::fs::read_link(format!("/proc/self/fd/{}", pty.slave.as_raw_fd()))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "/dev/ptmx".into());
    let socket_error = |source| ConsoleError::Socket { path: socket.display().to_string(), source };
    let stream = UnixStream::connect(socket).map_err(socket_error)?;
    let fds = [pty.master.as_raw_fd()];
    sendmsg::<()>(
        stream.as_raw_fd(),
        &[IoSlice::new(name.as_bytes())],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map_err(|e| socket_error(e.into()))?;
    // The caller has its copy; ours closes here.
    Ok(pty.slave)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use nix::sys::socket::{recvmsg, ControlMessageOwned};
    use std::io::{IoSliceMut, Read, Write};
    use std::os::fd::FromRawFd;

    #[test]
    fn the_master_and_its_name_reach_the_console_socket() {
        let dir = std::env::temp_dir().join(format!("microvm-console-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("console.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let slave = hand_over(Some(&path)).unwrap();
        let (conn, _) = listener.accept().unwrap();
        let mut buf = [0u8; 64];
        let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(conn.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::empty()).unwrap();
        let Some(ControlMessageOwned::ScmRights(fds)) = msg.cmsgs().unwrap().next() else {
            panic!("no descriptor")
        };
        let n = msg.bytes;
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("/dev/pts/"));
        // SAFETY: the descriptor just arrived with SCM_RIGHTS and nothing else owns it.
        let mut master = unsafe { std::fs::File::from_raw_fd(fds[0]) };
        // Raw mode: bytes pass as they are, no echo, no CR/LF mapping.
        let mut slave = std::fs::File::from(slave);
        master.write_all(b"a\r\n").unwrap();
        let mut got = [0u8; 3];
        slave.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"a\r\n");
        assert!(matches!(hand_over(None), Err(ConsoleError::NoSocket)));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
