//! The hybrid vsock's `CONNECT <port>\n` handshake: [`parse_connect`] on arbitrary bytes, and
//! [`Handshake::read_from`] reading the same bytes from a non-blocking client that delivers
//! them in input-chosen pieces, interrupted by `WouldBlock` and `EINTR`.
//!
//! Input: one byte seeding the delivery schedule, then what the client sends. Checked:
//! - a port it accepts is below `u32::MAX` and the canonical line `CONNECT <port>\n` gives it
//!   back;
//! - the reader never consumes a byte past the newline (the rest belongs to the guest);
//! - the reader's verdict equals `parse_connect` on the line it read (or `TooLong` / `Closed`
//!   exactly when the stream has no newline within `MAX_LINE` bytes / ends without one).

#![no_main]

use std::io::{Error, ErrorKind, Read};

use libfuzzer_sys::fuzz_target;
use vmm::devices::virtio::vsock::handshake::{parse_connect, Handshake, HandshakeError, MAX_LINE};

/// A client socket: hands out at most `burst` bytes per read, and a `WouldBlock` or `EINTR`
/// between bursts as the schedule says.
struct Client<'a> {
    data: &'a [u8],
    pos: usize,
    schedule: u8,
    step: u32,
}

impl Read for Client<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.step += 1;
        let tick = self.schedule.rotate_left(self.step % 8);
        // Never twice in a row, so every call to `read_from` makes progress.
        if tick & 3 == 0 && self.step % 2 == 0 {
            return Err(Error::from(ErrorKind::WouldBlock));
        }
        if tick & 3 == 1 && self.step % 3 == 0 {
            return Err(Error::from(ErrorKind::Interrupted));
        }
        let burst = usize::from(tick >> 4) + 1;
        let n = buf.len().min(burst).min(self.data.len() - self.pos);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&schedule, line)) = data.split_first() else { return };

    let parsed = parse_connect(line);
    if let Ok(Some(port)) = parsed {
        assert_ne!(port, u32::MAX);
        assert_eq!(parse_connect(format!("CONNECT {port}\n").as_bytes()), Ok(Some(port)));
    }

    let mut client = Client { data: line, pos: 0, schedule, step: 0 };
    let mut handshake = Handshake::default();
    let mut verdict = Ok(None);
    // Each call either finishes or reads at least one byte before a WouldBlock.
    for _ in 0..4 * MAX_LINE + 8 {
        verdict = handshake.read_from(&mut client);
        if !matches!(verdict, Ok(None)) {
            break;
        }
    }
    let consumed = client.pos;
    let newline = line.iter().position(|b| *b == b'\n');
    match newline {
        Some(nl) if nl < MAX_LINE => {
            assert_eq!(consumed, nl + 1, "read past (or short of) the newline");
            assert_eq!(verdict, parse_connect(&line[..=nl]));
            assert_eq!(verdict, parse_connect(line), "bytes after the newline changed the verdict");
        }
        _ if line.len() >= MAX_LINE => {
            assert_eq!(verdict, Err(HandshakeError::TooLong));
            assert_eq!(consumed, MAX_LINE);
            assert_eq!(parsed, Err(HandshakeError::TooLong));
        }
        _ => {
            assert_eq!(verdict, Err(HandshakeError::Closed));
            assert_eq!(parsed, Ok(None));
        }
    }
});
