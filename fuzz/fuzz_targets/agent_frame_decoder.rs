//! The host side of the agent protocol: [`protocol::FrameDecoder`] fed arbitrary bytes.
//!
//! Input: one byte choosing how the stream is cut into feeds (1 byte at a time, fixed sizes,
//! or sizes taken from the input itself), then the byte stream. The decoder is fed chunk by
//! chunk and drained after each feed, until it errors. Checked:
//! - it never panics and never holds more than one frame plus the last feed;
//! - chunking does not matter: the messages and the final error are the same as when the
//!   whole stream is fed at once;
//! - after an error it only answers `Poisoned` and holds nothing;
//! - every decoded message re-encodes ([`protocol::encode_frame`]) and decodes back equal.

#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::{encode_frame, FrameDecoder, FrameError, Message, HEADER_LEN, MAX_PAYLOAD_LEN};

/// What a decoder produced: the messages, then the error that stopped it, if any.
fn drain(decoder: &mut FrameDecoder, out: &mut Vec<Message>) -> Option<String> {
    loop {
        match decoder.next_message() {
            Ok(Some(message)) => out.push(message),
            Ok(None) => return None,
            Err(error) => return Some(error.to_string()),
        }
    }
}

fn check_roundtrip(message: &Message) {
    match encode_frame(message) {
        Ok(frame) => {
            let mut decoder = FrameDecoder::new();
            decoder.feed(&frame);
            let again = decoder.next_message().expect("re-encoded frame decodes").expect("a whole frame");
            assert_eq!(&again, message, "message changed on re-encoding");
            assert!(decoder.at_frame_boundary());
        }
        // Re-encoding may legitimately grow past the limit (e.g. `1e9` written out in full).
        Err(FrameError::TooLarge { .. }) => {}
        Err(error) => panic!("decoded message does not re-encode: {error}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, stream)) = data.split_first() else { return };

    // Reference: the whole stream in one feed.
    let mut whole = FrameDecoder::new();
    whole.feed(stream);
    let mut expected = Vec::new();
    let expected_error = drain(&mut whole, &mut expected);
    if std::env::var_os("FUZZ_VERBOSE").is_some() {
        eprintln!("decoded {expected:?}, then {expected_error:?}");
    }

    // The same stream in chunks.
    let mut decoder = FrameDecoder::new();
    let mut got = Vec::new();
    let mut error = None;
    let mut rest = stream;
    let mut k = 0usize;
    while !rest.is_empty() && error.is_none() {
        let size = match mode % 4 {
            0 => 1,
            1 => usize::from(mode >> 2).max(1),
            2 => usize::from(rest[0]).max(1),
            _ => [1, HEADER_LEN - 1, HEADER_LEN, 3, 4096][k % 5],
        };
        k += 1;
        let (chunk, tail) = rest.split_at(size.min(rest.len()));
        rest = tail;
        decoder.feed(chunk);
        error = drain(&mut decoder, &mut got);
        assert!(
            decoder.buffered_len() <= HEADER_LEN + MAX_PAYLOAD_LEN as usize + chunk.len(),
            "decoder holds {} bytes",
            decoder.buffered_len()
        );
    }

    assert_eq!(got, expected, "chunked decoding gave other messages");
    assert_eq!(error, expected_error, "chunked decoding ended otherwise");
    if error.is_some() {
        assert!(matches!(decoder.next_message(), Err(FrameError::Poisoned)));
        decoder.feed(b"MVMP");
        assert_eq!(decoder.buffered_len(), 0, "a poisoned decoder buffers");
    } else {
        assert_eq!(decoder.at_frame_boundary(), whole.at_frame_boundary());
    }
    for message in &got {
        check_roundtrip(message);
    }
});
