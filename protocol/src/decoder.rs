//! An incremental frame decoder for event loops and non-blocking sockets: feed it bytes as
//! they arrive and take complete messages out. It never panics and never allocates more than
//! one checked frame, whatever the bytes.

use crate::frame::{decode_payload, FrameError, FrameHeader, HEADER_LEN};
use crate::messages::Message;

/// Turns bytes as they arrive into messages, for event loops and non-blocking sockets.
///
/// Feed it what each read returned, then call [`FrameDecoder::next_message`] until it gives
/// `None`. It holds at most one partial frame plus the last feed. After an error it only
/// answers [`FrameError::Poisoned`].
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    poisoned: bool,
}

impl FrameDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        if !self.poisoned {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// The next complete message, or `None` until more bytes arrive.
    pub fn next_message(&mut self) -> Result<Option<Message>, FrameError> {
        if self.poisoned {
            return Err(FrameError::Poisoned);
        }
        let Some(head) = self.buf.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        let header = match FrameHeader::parse(head) {
            Ok(header) => header,
            Err(error) => return Err(self.poison(error)),
        };
        let frame_len = header.frame_len();
        if self.buf.len() < frame_len {
            self.buf.reserve(frame_len - self.buf.len());
            return Ok(None);
        }
        let decoded = decode_payload(header.kind, &self.buf[HEADER_LEN..frame_len]);
        self.buf.drain(..frame_len);
        decoded.map(Some).map_err(|error| self.poison(error))
    }

    /// Bytes received but not yet returned as messages.
    pub fn buffered_len(&self) -> usize {
        self.buf.len()
    }

    /// Whether the peer may close now without cutting a frame short.
    pub fn at_frame_boundary(&self) -> bool {
        self.buf.is_empty()
    }

    fn poison(&mut self, error: FrameError) -> FrameError {
        self.poisoned = true;
        self.buf = Vec::new();
        error
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use crate::frame::encode_frame;
    use crate::test_util::{header, samples, XorShift};
    use crate::PROTOCOL_VERSION;

    #[test]
    fn four_gib_declared_is_rejected_before_allocating() {
        let mut decoder = FrameDecoder::new();
        decoder.feed(&header(PROTOCOL_VERSION, 1, u32::MAX));
        let error = decoder.next_message().expect_err("4 GiB accepted");
        assert!(matches!(error, FrameError::TooLarge { len } if len == u64::from(u32::MAX)));
        // The decoder dropped its buffer instead of reserving room for the payload.
        assert_eq!(decoder.buf.capacity(), 0);
        assert!(matches!(decoder.next_message(), Err(FrameError::Poisoned)));
    }

    #[test]
    fn bad_frames_poison_the_decoder() {
        let mut bad_magic = header(PROTOCOL_VERSION, 1, 0);
        bad_magic[0] = b'X';
        let mut decoder = FrameDecoder::new();
        decoder.feed(&bad_magic);
        assert!(matches!(
            decoder.next_message(),
            Err(FrameError::BadMagic { .. })
        ));
        decoder.feed(&encode_frame(&samples()[0]).expect("encode"));
        assert!(matches!(decoder.next_message(), Err(FrameError::Poisoned)));
        assert_eq!(decoder.buffered_len(), 0);
    }

    #[test]
    fn decoder_fed_one_byte_at_a_time_yields_every_message() {
        let messages = samples();
        let stream: Vec<u8> = messages
            .iter()
            .flat_map(|m| encode_frame(m).expect("encode"))
            .collect();
        let mut decoder = FrameDecoder::new();
        let mut decoded = Vec::new();
        for byte in &stream {
            decoder.feed(std::slice::from_ref(byte));
            while let Some(message) = decoder.next_message().expect("decode") {
                decoded.push(message);
            }
        }
        assert_eq!(decoded, messages);
        assert!(decoder.at_frame_boundary());
    }

    #[test]
    fn truncated_frames_wait_for_more() {
        let frame = encode_frame(&samples()[1]).expect("encode");
        for cut in 0..frame.len() {
            let mut decoder = FrameDecoder::new();
            decoder.feed(&frame[..cut]);
            assert!(decoder.next_message().expect("partial frame").is_none());
            assert_eq!(decoder.at_frame_boundary(), cut == 0);
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let valid: Vec<Vec<u8>> = samples()
            .iter()
            .map(|m| encode_frame(m).expect("e"))
            .collect();
        for round in 0..20_000 {
            let mut input = match round % 3 {
                // Pure noise, mostly failing on the magic.
                0 => rng.noise(64),
                // A valid header over noise, to reach the JSON decoder.
                1 => {
                    let payload = rng.noise(256);
                    let kind = (rng.next() % 6) as u16;
                    let mut bytes = header(PROTOCOL_VERSION, kind, payload.len() as u32);
                    bytes.extend(payload);
                    bytes
                }
                // A valid frame with a few bytes flipped.
                _ => valid[round % valid.len()].clone(),
            };
            for _ in 0..(rng.next() % 4) {
                if !input.is_empty() {
                    let at = (rng.next() % input.len() as u64) as usize;
                    input[at] ^= rng.next() as u8 | 1;
                }
            }
            let mut decoder = FrameDecoder::new();
            decoder.feed(&input);
            while let Ok(Some(_)) = decoder.next_message() {}
        }
    }
}
