//! Blocking frame I/O over [`Read`] and [`Write`], for a thread that owns a connection.
//! Event loops on non-blocking sockets use [`crate::FrameDecoder`] instead.

use std::io::{self, Read, Write};

use crate::frame::{decode_payload, encode_frame, FrameError, FrameHeader, HEADER_LEN};
use crate::messages::Message;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("read frame: {0}")]
    Read(#[source] io::Error),
    #[error("write frame: {0}")]
    Write(#[source] io::Error),
    #[error("connection closed mid-frame, after {got} of {expected} bytes")]
    Truncated { got: usize, expected: usize },
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// Writes one frame and flushes it.
pub fn write_frame<W: Write + ?Sized>(w: &mut W, message: &Message) -> Result<(), TransportError> {
    let frame = encode_frame(message)?;
    w.write_all(&frame)
        .and_then(|()| w.flush())
        .map_err(TransportError::Write)
}

/// Reads one frame. `Ok(None)` means the peer closed the connection between frames.
///
/// The header is checked before the payload buffer is allocated, so a hostile length costs
/// nothing.
pub fn read_frame<R: Read + ?Sized>(r: &mut R) -> Result<Option<Message>, TransportError> {
    let mut head = [0; HEADER_LEN];
    match read_full(r, &mut head)? {
        0 => return Ok(None),
        HEADER_LEN => {}
        got => {
            return Err(TransportError::Truncated {
                got,
                expected: HEADER_LEN,
            })
        }
    }
    let header = FrameHeader::parse(&head)?;
    let mut payload = vec![0; header.payload_len as usize];
    let got = read_full(r, &mut payload)?;
    if got < payload.len() {
        return Err(TransportError::Truncated {
            got: HEADER_LEN + got,
            expected: header.frame_len(),
        });
    }
    Ok(Some(decode_payload(header.kind, &payload)?))
}

/// Fills `buf` unless EOF comes first; returns how many bytes it got.
fn read_full<R: Read + ?Sized>(r: &mut R, buf: &mut [u8]) -> Result<usize, TransportError> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(TransportError::Read(error)),
        }
    }
    Ok(got)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use crate::frame::MAX_PAYLOAD_LEN;
    use crate::test_util::samples;
    use crate::test_util::{header, XorShift};
    use crate::PROTOCOL_VERSION;

    /// Hands out its bytes a few at a time, with an `Interrupted` now and then, and panics if
    /// asked for anything past its end while `strict`.
    struct Trickle {
        data: Vec<u8>,
        at: usize,
        reads: usize,
        strict: bool,
    }

    impl Trickle {
        fn new(data: Vec<u8>) -> Self {
            Trickle {
                data,
                at: 0,
                reads: 0,
                strict: false,
            }
        }
    }

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.reads += 1;
            if self.reads % 5 == 0 {
                return Err(io::ErrorKind::Interrupted.into());
            }
            assert!(
                !self.strict || self.at < self.data.len(),
                "read past the header"
            );
            let n = buf.len().min(3).min(self.data.len() - self.at);
            buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    #[test]
    fn frames_written_are_read_back_then_clean_eof() {
        let messages = samples();
        let mut wire = Vec::new();
        for message in &messages {
            write_frame(&mut wire, message).expect("write");
        }
        let mut reader = Trickle::new(wire);
        for message in messages {
            assert_eq!(read_frame(&mut reader).expect("read"), Some(message));
        }
        assert_eq!(read_frame(&mut reader).expect("eof"), None);
    }

    #[test]
    fn eof_mid_frame_is_an_error() {
        let frame = encode_frame(&samples()[1]).expect("encode");
        for cut in 1..frame.len() {
            let error = read_frame(&mut Trickle::new(frame[..cut].to_vec())).expect_err("cut");
            assert!(
                matches!(error, TransportError::Truncated { got, expected }
                    if got == cut && expected == if cut < HEADER_LEN { HEADER_LEN } else { frame.len() }),
                "cut at {cut}: {error}"
            );
        }
    }

    #[test]
    fn four_gib_declared_is_rejected_without_reading_or_allocating() {
        // Trickle panics if read_frame goes on to read (or size a buffer for) the payload.
        let mut reader = Trickle {
            strict: true,
            ..Trickle::new(header(PROTOCOL_VERSION, 1, u32::MAX))
        };
        let error = read_frame(&mut reader).expect_err("4 GiB accepted");
        assert!(
            matches!(error, TransportError::Frame(FrameError::TooLarge { .. })),
            "{error}"
        );
    }

    #[test]
    fn write_errors_name_the_operation() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let error = write_frame(&mut Broken, &samples()[0]).expect_err("wrote to a broken pipe");
        assert!(error.to_string().starts_with("write frame: "), "{error}");
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
        for round in 0..20_000 {
            let mut input = if round % 2 == 0 {
                rng.noise(40)
            } else {
                let (kind, len) = (
                    (rng.next() % 5) as u16,
                    rng.next() as u32 % (2 * MAX_PAYLOAD_LEN),
                );
                let mut bytes = header(PROTOCOL_VERSION, kind, len);
                bytes.extend(rng.noise(64));
                bytes
            };
            input.truncate((rng.next() % 80) as usize);
            let mut reader = Trickle::new(input);
            while let Ok(Some(_)) = read_frame(&mut reader) {}
        }
    }
}
