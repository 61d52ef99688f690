//! The host-initiated handshake of a hybrid vsock: a host client connects to the device's
//! Unix socket and writes `CONNECT <port>\n`, naming the guest port it wants. The line is
//! read byte by byte into a fixed buffer of [`MAX_LINE`] bytes, so nothing the client sends
//! after the newline is consumed here (it is the start of the stream for the guest) and a
//! client that never sends a newline cannot make us buffer more than that.

use std::io::{ErrorKind, Read};

/// The longest CONNECT line accepted, newline included.
pub const MAX_LINE: usize = 32;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HandshakeError {
    #[error("CONNECT line: no newline within {MAX_LINE} bytes")]
    TooLong,
    #[error("CONNECT line: expected `CONNECT <port>`, got {0:?}")]
    Malformed(String),
    #[error("CONNECT line: port {0:?} is not a port number")]
    BadPort(String),
    #[error("CONNECT line: client closed before sending it")]
    Closed,
    #[error("CONNECT line: read from client: {0}")]
    Read(ErrorKind),
}

/// Parses a CONNECT line. `buf` is what the client sent so far; `Ok(None)` means no newline
/// yet (and still room for one). Bytes after the first newline are not looked at. A trailing
/// `\r` is tolerated; the port is decimal digits only and must not be VMADDR_PORT_ANY
/// (`u32::MAX`, include/uapi/linux/vm_sockets.h).
pub fn parse_connect(buf: &[u8]) -> Result<Option<u32>, HandshakeError> {
    let Some(newline) = buf.iter().position(|b| *b == b'\n') else {
        return if buf.len() >= MAX_LINE { Err(HandshakeError::TooLong) } else { Ok(None) };
    };
    if newline >= MAX_LINE {
        return Err(HandshakeError::TooLong);
    }
    let line = &buf[..newline];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let text = String::from_utf8_lossy(line);
    let port = line.strip_prefix(b"CONNECT ").ok_or_else(|| HandshakeError::Malformed(text.to_string()))?;
    let bad_port = || HandshakeError::BadPort(String::from_utf8_lossy(port).into_owned());
    if port.is_empty() || !port.iter().all(u8::is_ascii_digit) {
        return Err(bad_port());
    }
    // Digits only, so the text is ASCII; parsing fails on overflow.
    let port: u32 = std::str::from_utf8(port).ok().and_then(|p| p.parse().ok()).ok_or_else(bad_port)?;
    if port == u32::MAX {
        return Err(bad_port());
    }
    Ok(Some(port))
}

/// A client between accept and its CONNECT line.
#[derive(Default)]
pub struct Handshake {
    buf: [u8; MAX_LINE],
    len: usize,
}

impl Handshake {
    /// Reads what the (non-blocking) client has sent, one byte at a time, up to the newline.
    /// `Ok(None)`: the line is not complete yet; wait for the client to be readable again.
    pub fn read_from(&mut self, client: &mut impl Read) -> Result<Option<u32>, HandshakeError> {
        loop {
            if self.len >= MAX_LINE {
                return Err(HandshakeError::TooLong);
            }
            match client.read(&mut self.buf[self.len..self.len + 1]) {
                Ok(0) => return Err(HandshakeError::Closed),
                Ok(_) => {
                    self.len += 1;
                    if self.buf[self.len - 1] == b'\n' {
                        return parse_connect(&self.buf[..self.len]);
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(HandshakeError::Read(e.kind())),
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn good_lines() {
        assert_eq!(parse_connect(b"CONNECT 52\n"), Ok(Some(52)));
        assert_eq!(parse_connect(b"CONNECT 1024\r\n"), Ok(Some(1024)));
        assert_eq!(parse_connect(b"CONNECT 4294967294\n"), Ok(Some(u32::MAX - 1)));
        assert_eq!(parse_connect(b"CONNECT 0\n"), Ok(Some(0)));
    }

    #[test]
    fn missing_newline_within_the_bound_waits() {
        assert_eq!(parse_connect(b""), Ok(None));
        assert_eq!(parse_connect(b"CONNECT 5"), Ok(None));
        assert_eq!(parse_connect(&[b'C'; MAX_LINE - 1]), Ok(None));
    }

    #[test]
    fn too_long_is_rejected() {
        assert_eq!(parse_connect(&[b'C'; MAX_LINE]), Err(HandshakeError::TooLong));
        let long = format!("CONNECT {}\n", "0".repeat(MAX_LINE));
        assert_eq!(parse_connect(long.as_bytes()), Err(HandshakeError::TooLong));
    }

    #[test]
    fn garbage_is_rejected() {
        for bad in [&b"connect 52\n"[..], b"CONNECT52\n", b"LISTEN 52\n", b"\n", b"CONNECT  52\n"] {
            assert!(parse_connect(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        for bad in [&b"CONNECT \n"[..], b"CONNECT abc\n", b"CONNECT -1\n", b"CONNECT +5\n", b"CONNECT 5 6\n", b"CONNECT 0x10\n"] {
            assert!(matches!(parse_connect(bad), Err(HandshakeError::BadPort(_))), "{:?}", String::from_utf8_lossy(bad));
        }
        assert!(matches!(parse_connect(b"CONNECT \xff\xfe\n"), Err(HandshakeError::BadPort(_))));
    }

    #[test]
    fn port_overflow_and_port_any_are_rejected() {
        assert!(matches!(parse_connect(b"CONNECT 4294967296\n"), Err(HandshakeError::BadPort(_))));
        assert!(matches!(parse_connect(b"CONNECT 99999999999\n"), Err(HandshakeError::BadPort(_))));
        assert!(matches!(parse_connect(b"CONNECT 4294967295\n"), Err(HandshakeError::BadPort(_))));
    }

    #[test]
    fn reader_stops_at_the_newline_and_leaves_the_rest() {
        let mut input: &[u8] = b"CONNECT 7\nhello";
        let mut h = Handshake::default();
        assert_eq!(h.read_from(&mut input), Ok(Some(7)));
        assert_eq!(input, b"hello");
    }

    #[test]
    fn reader_reports_close_and_overlong_lines() {
        let mut h = Handshake::default();
        assert_eq!(h.read_from(&mut &b"CONN"[..]), Err(HandshakeError::Closed));
        let mut h = Handshake::default();
        assert_eq!(h.read_from(&mut &[b'x'; 64][..]), Err(HandshakeError::TooLong));
    }
}
