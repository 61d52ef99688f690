//! The network backend's wire, in one of two framings ([`Framing`]):
//! - length-prefixed: Ethernet frames over a Unix stream socket, each behind its length as a
//!   4-byte big-endian integer. This is the protocol of QEMU's `-netdev stream` and of passt
//!   (`passt --fd`), so any of their backends can serve a microvm guest;
//! - datagram: a tap device (`IFF_TAP | IFF_NO_PI`), where each read(2) returns one frame and
//!   each write(2) takes one.
//!
//! The descriptor is non-blocking: [`Inbound`] collects a frame across partial reads and
//! [`Outbound`] keeps what the backend would not take yet (it holds frames behind their
//! length in both framings, and writes the prefix only to a stream).

use std::io::{self, Read, Write};

use super::frame::{MAX_FRAME, MIN_FRAME};

const PREFIX: usize = 4;

/// How frames are delimited on the backend's descriptor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Framing {
    /// A byte stream, each frame behind its 4-byte big-endian length (passt, QEMU's stream).
    #[default]
    LengthPrefixed,
    /// One frame per read or write (a tap device).
    Datagram,
}

/// Frames read from the backend, one at a time.
pub struct Inbound {
    buf: Box<[u8]>,
    /// Bytes of the current prefix and frame read so far.
    have: usize,
    framing: Framing,
}

impl Default for Inbound {
    fn default() -> Self {
        Self::new(Framing::LengthPrefixed)
    }
}

impl Inbound {
    pub fn new(framing: Framing) -> Self {
        Self { buf: vec![0; PREFIX + MAX_FRAME].into_boxed_slice(), have: 0, framing }
    }

    /// Reads until a whole frame is in: `Ok(Some(frame))`, until taken with [`Self::take`];
    /// `Ok(None)` when the socket has no more for now. End of file and a length no Ethernet
    /// frame has are errors: the backend is gone or is not speaking this protocol.
    pub fn read_frame(&mut self, socket: &mut impl Read) -> io::Result<Option<&[u8]>> {
        if self.framing == Framing::Datagram {
            return self.read_datagram(socket);
        }
        loop {
            let need = match self.frame_len()? {
                None => PREFIX,
                Some(len) if self.have == PREFIX + len => return Ok(Some(&self.buf[PREFIX..PREFIX + len])),
                Some(len) => PREFIX + len,
            };
            match socket.read(&mut self.buf[self.have..need]) {
                Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the backend closed the connection")),
                Ok(n) => self.have += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Forgets the whole frame [`Self::read_frame`] returned; the next read starts a new one.
    pub fn take(&mut self) {
        self.have = 0;
    }

    /// The length of the frame being read, once its prefix is in.
    /// One read is one frame; the frame is kept behind a length prefix as a stream's would be.
    fn read_datagram(&mut self, device: &mut impl Read) -> io::Result<Option<&[u8]>> {
        while self.have == 0 {
            match device.read(&mut self.buf[PREFIX..]) {
                Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the backend closed")),
                // A runt the kernel let through is dropped, not an error: the device stays up.
                Ok(n) if n < MIN_FRAME => {}
                Ok(n) => {
                    self.buf[..PREFIX].copy_from_slice(&(n as u32).to_be_bytes());
                    self.have = PREFIX + n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Some(&self.buf[PREFIX..self.have]))
    }

    fn frame_len(&self) -> io::Result<Option<usize>> {
        if self.have < PREFIX {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if !(MIN_FRAME..=MAX_FRAME).contains(&len) {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("the backend sent a {len}-byte frame")));
        }
        Ok(Some(len))
    }
}

/// Frames on their way to the socket.
#[derive(Default)]
pub struct Outbound {
    buf: Vec<u8>,
    sent: usize,
    framing: Framing,
}

impl Outbound {
    pub fn new(framing: Framing) -> Self {
        Self { framing, ..Self::default() }
    }

    /// Whether everything queued has been written: only then is another frame taken from the guest.
    pub fn is_empty(&self) -> bool {
        self.sent == self.buf.len()
    }

    /// Queues `frame` behind its length; [`Self::flush`] writes it.
    pub fn push(&mut self, frame: &[u8]) {
        if self.is_empty() {
            self.buf.clear();
            self.sent = 0;
        }
        // A frame is at most MAX_FRAME bytes (frame::read_tx checks), so its length fits.
        self.buf.extend_from_slice(&(frame.len() as u32).to_be_bytes());
        self.buf.extend_from_slice(frame);
    }

    /// Writes what the socket takes; `Ok(true)` once nothing is left.
    pub fn flush(&mut self, socket: &mut impl Write) -> io::Result<bool> {
        while !self.is_empty() {
            // A datagram backend gets each frame whole, without its prefix, in one write.
            let (skip, len) = match self.framing {
                Framing::LengthPrefixed => (0, self.buf.len() - self.sent),
                Framing::Datagram => {
                    let at = self.sent;
                    let prefix = [self.buf[at], self.buf[at + 1], self.buf[at + 2], self.buf[at + 3]];
                    (PREFIX, u32::from_be_bytes(prefix) as usize)
                }
            };
            let start = self.sent + skip;
            match socket.write(&self.buf[start..start + len]) {
                Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "the backend takes no more")),
                Ok(n) if self.framing == Framing::Datagram && n != len => {
                    return Err(io::Error::new(io::ErrorKind::WriteZero, format!("the backend took {n} of a {len}-byte frame")))
                }
                Ok(n) => self.sent += skip + n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    /// A socket that hands out `data` a few bytes per read, then would block.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.data.is_empty() {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.step).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    fn wire(frames: &[&[u8]]) -> Vec<u8> {
        let mut out = Outbound::default();
        let mut bytes = Vec::new();
        for f in frames {
            out.push(f);
        }
        assert!(out.flush(&mut bytes).unwrap());
        bytes
    }

    #[test]
    fn frames_survive_any_split_of_the_stream() {
        let (a, b) = ([1u8; 14], [2u8; 1514]);
        let bytes = wire(&[&a, &b]);
        assert_eq!(&bytes[..4], &[0, 0, 0, 14]);
        for step in [1, 3, 17, 4096] {
            let mut socket = Trickle { data: &bytes, step };
            let mut inbound = Inbound::default();
            assert_eq!(inbound.read_frame(&mut socket).unwrap().unwrap(), a);
            // Not taken yet: the same frame again, nothing more read.
            assert_eq!(inbound.read_frame(&mut socket).unwrap().unwrap(), a);
            inbound.take();
            assert_eq!(inbound.read_frame(&mut socket).unwrap().unwrap(), b);
            inbound.take();
            assert!(inbound.read_frame(&mut socket).unwrap().is_none());
        }
    }

    #[test]
    fn end_of_file_and_impossible_lengths_are_errors() {
        let mut inbound = Inbound::default();
        let e = inbound.read_frame(&mut &[0u8, 0][..]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        for len in [0u32, 13, (MAX_FRAME + 1) as u32, u32::MAX] {
            let mut inbound = Inbound::default();
            let e = inbound.read_frame(&mut &len.to_be_bytes()[..]).unwrap_err();
            assert!(e.to_string().contains(&format!("{len}-byte frame")), "{e}");
        }
    }

    /// A socket that takes `room` bytes, then would block.
    struct Tight {
        taken: Vec<u8>,
        room: usize,
    }

    impl Write for Tight {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.room);
            self.taken.extend_from_slice(&buf[..n]);
            self.room -= n;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_full_socket_keeps_the_rest_for_later() {
        let mut out = Outbound::default();
        out.push(&[9u8; 100]);
        let mut socket = Tight { taken: Vec::new(), room: 30 };
        assert!(!out.flush(&mut socket).unwrap());
        assert!(!out.is_empty());
        socket.room = 1000;
        assert!(out.flush(&mut socket).unwrap());
        assert_eq!(socket.taken, wire(&[&[9u8; 100]]));
        assert!(out.is_empty());
    }

    /// A tap device: each read gives one queued frame, each write is one frame.
    #[derive(Default)]
    struct Tap {
        incoming: Vec<Vec<u8>>,
        written: Vec<Vec<u8>>,
        /// Writes taken before the device is "full" (WouldBlock).
        room: usize,
    }

    impl Read for Tap {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.incoming.is_empty() {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let frame = self.incoming.remove(0);
            buf[..frame.len()].copy_from_slice(&frame);
            Ok(frame.len())
        }
    }

    impl Write for Tap {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.room -= 1;
            self.written.push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_tap_gets_and_gives_whole_frames_without_prefixes() {
        let big = vec![7u8; MAX_FRAME];
        let mut tap = Tap { incoming: vec![vec![1; 60], vec![2; 5], big.clone()], room: 1, ..Tap::default() };
        let mut inbound = Inbound::new(Framing::Datagram);
        assert_eq!(inbound.read_frame(&mut tap).unwrap(), Some(&[1u8; 60][..]));
        // Until taken, the same frame is offered again.
        assert_eq!(inbound.read_frame(&mut tap).unwrap().map(<[u8]>::len), Some(60));
        inbound.take();
        // The 5-byte runt is dropped; the largest frame comes whole.
        assert_eq!(inbound.read_frame(&mut tap).unwrap(), Some(&big[..]));
        inbound.take();
        assert_eq!(inbound.read_frame(&mut tap).unwrap(), None);

        let mut outbound = Outbound::new(Framing::Datagram);
        outbound.push(&[3; 42]);
        outbound.push(&[4; 1514]);
        assert!(!outbound.flush(&mut tap).unwrap(), "the second frame waits for room");
        tap.room = 5;
        assert!(outbound.flush(&mut tap).unwrap());
        assert_eq!(tap.written, vec![vec![3; 42], vec![4; 1514]]);
    }
}
