//! AF_VSOCK listeners and connections (include/uapi/linux/vm_sockets.h). The agent listens on
//! any CID (`VMADDR_CID_ANY`) at the protocol's ports; the host connects through the VMM.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::sys::socket::{
    accept4, bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, VsockAddr,
};

#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("vsock port {port}: create socket: {source}")]
    Socket { port: u32, source: nix::Error },
    #[error("vsock port {port}: bind: {source}")]
    Bind { port: u32, source: nix::Error },
    #[error("vsock port {port}: listen: {source}")]
    Listen { port: u32, source: nix::Error },
    #[error("vsock port {port}: accept: {source}")]
    Accept { port: u32, source: nix::Error },
}

/// A listening vsock socket.
#[derive(Debug)]
pub struct VsockListener {
    fd: OwnedFd,
    port: u32,
}

impl VsockListener {
    /// Listens on `port` of any CID.
    pub fn bind(port: u32) -> Result<Self, VsockError> {
        let fd = socket(
            AddressFamily::Vsock,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(|source| VsockError::Socket { port, source })?;
        bind(fd.as_raw_fd(), &VsockAddr::new(libc::VMADDR_CID_ANY, port))
            .map_err(|source| VsockError::Bind { port, source })?;
        listen(&fd, Backlog::new(8).unwrap_or(Backlog::MAXCONN))
            .map_err(|source| VsockError::Listen { port, source })?;
        Ok(VsockListener { fd, port })
    }

    pub fn port(&self) -> u32 {
        self.port
    }

    /// Waits for the next connection.
    pub fn accept(&self) -> Result<VsockStream, VsockError> {
        let port = self.port;
        loop {
            match accept4(self.fd.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
                // SAFETY: accept4 returned a new descriptor that nothing else owns.
                Ok(raw) => return Ok(VsockStream(unsafe { OwnedFd::from_raw_fd(raw) })),
                Err(nix::Error::EINTR | nix::Error::ECONNABORTED) => continue,
                Err(source) => return Err(VsockError::Accept { port, source }),
            }
        }
    }
}

/// One accepted vsock connection: blocking reads and writes.
#[derive(Debug)]
pub struct VsockStream(OwnedFd);

impl VsockStream {
    /// A second handle on the same connection (`dup`), e.g. to write while another thread
    /// reads.
    pub fn try_clone(&self) -> io::Result<Self> {
        self.0.try_clone().map(VsockStream)
    }
}

impl Read for VsockStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        nix::unistd::read(&self.0, buf).map_err(io::Error::from)
    }
}

impl Write for VsockStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        nix::unistd::write(&self.0, buf).map_err(io::Error::from)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsFd for VsockStream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use nix::sys::socket::connect;

    use super::*;

    /// Over the kernel's vsock loopback (CID 1), where the host has it; skipped elsewhere.
    #[test]
    fn loopback_round_trip() {
        let port = 0x4d56_0000 + std::process::id() % 0x1_0000;
        let listener = match VsockListener::bind(port) {
            Ok(listener) => listener,
            Err(error) => {
                eprintln!("skipped, no vsock here: {error}");
                return;
            }
        };
        let client = socket(
            AddressFamily::Vsock,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        if let Err(error) = connect(
            client.as_raw_fd(),
            &VsockAddr::new(libc::VMADDR_CID_LOCAL, port),
        ) {
            eprintln!("skipped, no vsock loopback here: {error}");
            return;
        }
        let mut client = VsockStream(client);
        let mut server = listener.accept().unwrap();
        client.write_all(b"ping").unwrap();
        let mut buf = [0; 4];
        server.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");
        server.try_clone().unwrap().write_all(b"pong").unwrap();
        client.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"pong");
    }

    #[test]
    fn errors_name_the_port() {
        let error = VsockError::Bind {
            port: 1024,
            source: nix::Error::EADDRINUSE,
        };
        assert!(
            error.to_string().starts_with("vsock port 1024: bind: "),
            "{error}"
        );
    }
}
