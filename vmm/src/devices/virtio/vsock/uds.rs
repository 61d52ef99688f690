//! The Unix sockets of the host side: the device's listener, which removes its path when
//! dropped, and a non-blocking connect for guest-initiated connections (a host listener with a
//! full backlog must not stall the device thread).

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use super::connection::HostStream;

/// A bound, non-blocking listener; its socket file is removed on drop.
pub struct UdsListener {
    listener: UnixListener,
    path: PathBuf,
}

impl UdsListener {
    /// Binds `path`; fails if the path exists (in use by another VM, or left behind).
    pub fn bind(path: &Path) -> io::Result<Self> {
        let listener = UnixListener::bind(path)?;
        let this = Self { listener, path: path.to_owned() };
        this.listener.set_nonblocking(true)?;
        Ok(this)
    }

    pub fn listener(&self) -> &UnixListener {
        &self.listener
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for UdsListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A connected host socket. Writes use `send(MSG_NOSIGNAL)`, so a peer that went away is an
/// `EPIPE` error here and never a SIGPIPE for the whole VMM.
pub struct HostSocket(UnixStream);

impl HostSocket {
    pub fn new(stream: UnixStream) -> Self {
        Self(stream)
    }

    pub fn into_inner(self) -> UnixStream {
        self.0
    }
}

impl Read for HostSocket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for HostSocket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for reads of `buf.len()` bytes for the whole call and the fd is
        // open (owned by `self.0`); the result is checked below.
        let n = unsafe { libc::send(self.0.as_raw_fd(), buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL) };
        // A negative count is the only failure; anything else fits in usize.
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsRawFd for HostSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl HostStream for HostSocket {
    fn shutdown_write(&self) -> io::Result<()> {
        self.0.shutdown(std::net::Shutdown::Write)
    }
}

/// `<uds_path>_<port>`: where a guest connection to host port `port` goes.
pub fn port_path(uds_path: &Path, port: u32) -> PathBuf {
    let mut name = uds_path.as_os_str().to_owned();
    name.push(format!("_{port}"));
    PathBuf::from(name)
}

/// Connects to the Unix stream socket at `path` without waiting: a listener whose backlog is
/// full fails with `WouldBlock` instead of blocking. The stream comes back non-blocking.
pub fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    let mut addr = libc::sockaddr_un { sun_family: libc::AF_UNIX as libc::sa_family_t, sun_path: [0; 108] };
    // Leave room for the terminating NUL; an embedded NUL would name another socket.
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "socket path too long or not a C string"));
    }
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: a plain system call with constant arguments; the result is checked below.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2), is open, and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: `addr` is a valid sockaddr_un that outlives the call and `len` does not exceed
    // its size; `fd` is an open socket. The result is checked below.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&raw const addr).cast::<libc::sockaddr>(),
            len as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(fd))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use vmm_sys_util::tempdir::TempDir;

    #[test]
    fn connect_reaches_a_listener_and_fails_without_one() {
        let dir = TempDir::new().unwrap();
        let path = port_path(&dir.as_path().join("v.sock"), 52);
        assert!(path.ends_with("v.sock_52"));
        assert!(connect_nonblocking(&path).is_err());
        let listener = UnixListener::bind(&path).unwrap();
        let mut client = connect_nonblocking(&path).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        client.write_all(b"hi").unwrap();
        let mut got = [0u8; 2];
        server.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hi");
        let mut empty = [0u8; 1];
        assert_eq!(client.read(&mut empty).unwrap_err().kind(), io::ErrorKind::WouldBlock);
        let long = dir.as_path().join("x".repeat(200));
        assert_eq!(connect_nonblocking(&long).unwrap_err().kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn writes_to_a_closed_peer_are_errors_not_signals() {
        let (a, b) = UnixStream::pair().unwrap();
        drop(b);
        let mut a = HostSocket::new(a);
        assert_eq!(a.write(b"x").unwrap_err().kind(), io::ErrorKind::BrokenPipe);
    }

    #[test]
    fn listener_path_in_use_fails_and_is_removed_on_drop() {
        let dir = TempDir::new().unwrap();
        let path = dir.as_path().join("v.sock");
        let listener = UdsListener::bind(&path).unwrap();
        assert!(UdsListener::bind(&path).is_err());
        assert!(path.exists(), "a failed bind leaves the owner's socket alone");
        drop(listener);
        assert!(!path.exists());
    }
}
