//! Frames: a fixed 12-byte little-endian header, then a JSON payload.
//!
//! ```text
//! offset size field
//!      0    4 magic    b"MVMP"
//!      4    2 version  u16, PROTOCOL_VERSION
//!      6    2 kind     u16, FrameKind
//!      8    4 length   u32, payload bytes that follow (at most MAX_PAYLOAD_LEN)
//! ```
//!
//! The magic and version stay at offsets 0 and 4 in every future version, so two mismatched
//! sides always fail with [`FrameError::VersionMismatch`] rather than misreading each other.
//! The whole header is checked before anything is allocated for the payload: a peer that
//! declares a 4 GiB payload costs us 12 bytes. Any error leaves the byte stream at an unknown
//! place, so the connection must be dropped.

use crate::messages::Message;
use crate::PROTOCOL_VERSION;

/// The first four bytes of every frame.
pub const MAGIC: [u8; 4] = *b"MVMP";
/// Bytes in a frame header.
pub const HEADER_LEN: usize = 12;
/// The largest payload either side sends or accepts: 1 MiB, far above any control message
/// (stdio never travels in frames).
pub const MAX_PAYLOAD_LEN: u32 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame magic {found:02x?} is not {MAGIC:02x?}: the peer does not speak this protocol")]
    BadMagic { found: [u8; 4] },
    #[error("frame has protocol version {found}, this side speaks version {expected}")]
    VersionMismatch { found: u16, expected: u16 },
    #[error("frame kind {0} is not one this side knows")]
    UnknownKind(u16),
    #[error("frame payload of {len} bytes is over the {MAX_PAYLOAD_LEN}-byte maximum")]
    TooLarge { len: u64 },
    #[error("encode {kind} frame payload: {source}")]
    Encode {
        kind: FrameKind,
        source: serde_json::Error,
    },
    #[error("decode {kind} frame payload: {source}")]
    Decode {
        kind: FrameKind,
        source: serde_json::Error,
    },
    #[error("frame decoder already failed on this connection")]
    Poisoned,
}

/// Which [`Message`] variant a frame's payload holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum FrameKind {
    Request = 1,
    Response = 2,
    Event = 3,
    StreamHello = 4,
}

impl FrameKind {
    pub fn of(message: &Message) -> Self {
        match message {
            Message::Request(_) => FrameKind::Request,
            Message::Response(_) => FrameKind::Response,
            Message::Event(_) => FrameKind::Event,
            Message::StreamHello(_) => FrameKind::StreamHello,
        }
    }

    pub fn from_wire(value: u16) -> Option<Self> {
        [
            FrameKind::Request,
            FrameKind::Response,
            FrameKind::Event,
            FrameKind::StreamHello,
        ]
        .into_iter()
        .find(|kind| *kind as u16 == value)
    }
}

impl std::fmt::Display for FrameKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// A checked frame header: its payload length is at most [`MAX_PAYLOAD_LEN`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub kind: FrameKind,
    pub payload_len: u32,
}

impl FrameHeader {
    /// Checks magic, version, kind and length, in that order.
    pub fn parse(bytes: &[u8; HEADER_LEN]) -> Result<Self, FrameError> {
        let [m0, m1, m2, m3, v0, v1, k0, k1, l0, l1, l2, l3] = *bytes;
        let found = [m0, m1, m2, m3];
        if found != MAGIC {
            return Err(FrameError::BadMagic { found });
        }
        let version = u16::from_le_bytes([v0, v1]);
        if version != PROTOCOL_VERSION {
            return Err(FrameError::VersionMismatch {
                found: version,
                expected: PROTOCOL_VERSION,
            });
        }
        let kind = u16::from_le_bytes([k0, k1]);
        let kind = FrameKind::from_wire(kind).ok_or(FrameError::UnknownKind(kind))?;
        let payload_len = u32::from_le_bytes([l0, l1, l2, l3]);
        if payload_len > MAX_PAYLOAD_LEN {
            return Err(FrameError::TooLarge {
                len: payload_len.into(),
            });
        }
        Ok(FrameHeader { kind, payload_len })
    }

    pub fn to_bytes(self) -> [u8; HEADER_LEN] {
        let mut bytes = [0; HEADER_LEN];
        bytes[0..4].copy_from_slice(&MAGIC);
        bytes[4..6].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        bytes[6..8].copy_from_slice(&(self.kind as u16).to_le_bytes());
        bytes[8..12].copy_from_slice(&self.payload_len.to_le_bytes());
        bytes
    }

    /// Header plus payload.
    pub fn frame_len(self) -> usize {
        HEADER_LEN + self.payload_len as usize
    }
}

/// One whole frame, header and payload, ready to write.
pub fn encode_frame(message: &Message) -> Result<Vec<u8>, FrameError> {
    let kind = FrameKind::of(message);
    let mut frame = vec![0; HEADER_LEN];
    let written = match message {
        Message::Request(inner) => serde_json::to_writer(&mut frame, inner),
        Message::Response(inner) => serde_json::to_writer(&mut frame, inner),
        Message::Event(inner) => serde_json::to_writer(&mut frame, inner),
        Message::StreamHello(inner) => serde_json::to_writer(&mut frame, inner),
    };
    written.map_err(|source| FrameError::Encode { kind, source })?;
    let len = frame.len() - HEADER_LEN;
    let payload_len = u32::try_from(len)
        .ok()
        .filter(|len| *len <= MAX_PAYLOAD_LEN)
        .ok_or(FrameError::TooLarge { len: len as u64 })?;
    frame[..HEADER_LEN].copy_from_slice(&FrameHeader { kind, payload_len }.to_bytes());
    Ok(frame)
}

/// Decodes the payload of a frame whose header said `kind`.
pub fn decode_payload(kind: FrameKind, payload: &[u8]) -> Result<Message, FrameError> {
    let decoded = match kind {
        FrameKind::Request => serde_json::from_slice(payload).map(Message::Request),
        FrameKind::Response => serde_json::from_slice(payload).map(Message::Response),
        FrameKind::Event => serde_json::from_slice(payload).map(Message::Event),
        FrameKind::StreamHello => serde_json::from_slice(payload).map(Message::StreamHello),
    };
    decoded.map_err(|source| FrameError::Decode { kind, source })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use crate::messages::{Request, Response};
    use crate::test_util::header;

    #[test]
    fn header_layout_is_pinned() {
        assert_eq!(HEADER_LEN, 12);
        let bytes = FrameHeader {
            kind: FrameKind::Event,
            payload_len: 0x0102_0304,
        }
        .to_bytes();
        assert_eq!(bytes, [b'M', b'V', b'M', b'P', 4, 0, 3, 0, 4, 3, 2, 1]);
        assert_eq!(bytes.to_vec(), header(PROTOCOL_VERSION, 3, 0x0102_0304));
        let frame = encode_frame(&Response::Ok.into()).expect("encode");
        assert_eq!(&frame[HEADER_LEN..], br#""Ok""#);
        assert_eq!(frame[8..12], 4u32.to_le_bytes());
    }

    #[test]
    fn oversized_message_is_refused_on_send() {
        let big = Request::Hello {
            protocol_version: PROTOCOL_VERSION,
            runtime_version: "x".repeat(MAX_PAYLOAD_LEN as usize),
        };
        assert!(matches!(
            encode_frame(&big.into()),
            Err(FrameError::TooLarge { .. })
        ));
    }

    fn parse(bytes: &[u8]) -> Result<FrameHeader, FrameError> {
        FrameHeader::parse(bytes.first_chunk().expect("12 bytes"))
    }

    #[test]
    fn wrong_magic_version_and_kind_are_typed_errors() {
        let mut bad_magic = header(PROTOCOL_VERSION, 1, 0);
        bad_magic[0] = b'X';
        let error = parse(&bad_magic).expect_err("bad magic accepted");
        assert!(matches!(
            error,
            FrameError::BadMagic {
                found: [b'X', b'V', b'M', b'P']
            }
        ));

        let error = parse(&header(PROTOCOL_VERSION + 1, 1, 0)).expect_err("new version");
        assert!(matches!(
            error,
            FrameError::VersionMismatch { found, expected: PROTOCOL_VERSION }
                if found == PROTOCOL_VERSION + 1
        ));

        let error = parse(&header(PROTOCOL_VERSION, 0, 0)).expect_err("kind 0");
        assert!(matches!(error, FrameError::UnknownKind(0)));
    }

    #[test]
    fn over_max_length_is_rejected_by_the_header() {
        for len in [MAX_PAYLOAD_LEN + 1, u32::MAX] {
            let error = parse(&header(PROTOCOL_VERSION, 1, len)).expect_err("too large");
            assert!(matches!(error, FrameError::TooLarge { len: l } if l == u64::from(len)));
        }
        let at_max = parse(&header(PROTOCOL_VERSION, 1, MAX_PAYLOAD_LEN)).expect("at max");
        assert_eq!(at_max.frame_len(), HEADER_LEN + MAX_PAYLOAD_LEN as usize);
    }

    #[test]
    fn bad_payload_is_a_decode_error() {
        let error = decode_payload(FrameKind::Response, b"\"Nah\"").expect_err("nonsense");
        assert!(matches!(
            error,
            FrameError::Decode {
                kind: FrameKind::Response,
                ..
            }
        ));
        let message = error.to_string();
        assert!(
            message.starts_with("decode Response frame payload: "),
            "{message}"
        );
    }
}
