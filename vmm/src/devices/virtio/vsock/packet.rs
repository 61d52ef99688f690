//! The virtio-vsock packet (virtio 1.2, section 5.10.6): a 44-byte little-endian header
//! followed by `len` payload bytes. Packets the guest puts on the tx queue are untrusted: the
//! header is read through the bounds-checked [`Reader`], and `len` is checked against the
//! bytes the chain really holds and against [`MAX_PKT_LEN`] before any allocation.

use std::io::{Read, Write};

use virtio_queue::{Reader, Writer};
use vm_memory::{ByteValued, Le16, Le32, Le64};

/// The host's CID (VMADDR_CID_HOST, include/uapi/linux/vm_sockets.h).
pub const HOST_CID: u64 = 2;

/// Socket types (include/uapi/linux/virtio_vsock.h, enum virtio_vsock_type). Only stream
/// sockets are offered (no VIRTIO_VSOCK_F_SEQPACKET).
pub const TYPE_STREAM: u16 = 1;

/// Operations (include/uapi/linux/virtio_vsock.h, enum virtio_vsock_op).
pub const OP_REQUEST: u16 = 1;
pub const OP_RESPONSE: u16 = 2;
pub const OP_RST: u16 = 3;
pub const OP_SHUTDOWN: u16 = 4;
pub const OP_RW: u16 = 5;
pub const OP_CREDIT_UPDATE: u16 = 6;
pub const OP_CREDIT_REQUEST: u16 = 7;

/// OP_SHUTDOWN flags (include/uapi/linux/virtio_vsock.h, enum virtio_vsock_shutdown).
pub const SHUTDOWN_RCV: u32 = 1;
pub const SHUTDOWN_SEND: u32 = 2;
pub const SHUTDOWN_BOTH: u32 = SHUTDOWN_RCV | SHUTDOWN_SEND;

/// Size of `struct virtio_vsock_hdr`.
pub const HEADER_SIZE: usize = 44;
/// Largest payload accepted from or sent to the guest (VIRTIO_VSOCK_MAX_PKT_BUF_SIZE in
/// include/linux/virtio_vsock.h).
pub const MAX_PKT_LEN: usize = 64 * 1024;

/// `struct virtio_vsock_hdr` (include/uapi/linux/virtio_vsock.h), packed as in the spec.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
#[repr(C, packed)]
pub struct Header {
    src_cid: Le64,
    dst_cid: Le64,
    src_port: Le32,
    dst_port: Le32,
    len: Le32,
    kind: Le16,
    op: Le16,
    flags: Le32,
    buf_alloc: Le32,
    fwd_cnt: Le32,
}
// SAFETY: only little-endian integers, packed so there is no padding; every byte pattern is a
// valid value.
unsafe impl ByteValued for Header {}

// Fields of a packed struct are copied out before use: references to them may be unaligned.
impl Header {
    /// A stream-socket header from the host (`local_port`) to the guest (`peer_port`).
    pub fn to_guest(guest_cid: u64, local_port: u32, peer_port: u32, op: u16) -> Self {
        Self {
            src_cid: HOST_CID.into(),
            dst_cid: guest_cid.into(),
            src_port: local_port.into(),
            dst_port: peer_port.into(),
            kind: TYPE_STREAM.into(),
            op: op.into(),
            ..Self::default()
        }
    }

    /// The RST that answers `self`, a packet the guest sent.
    pub fn reset_reply(&self) -> Self {
        Self::to_guest(self.src_cid(), self.dst_port(), self.src_port(), OP_RST)
    }

    pub fn src_cid(&self) -> u64 {
        let v = self.src_cid;
        v.to_native()
    }
    pub fn dst_cid(&self) -> u64 {
        let v = self.dst_cid;
        v.to_native()
    }
    pub fn src_port(&self) -> u32 {
        let v = self.src_port;
        v.to_native()
    }
    pub fn dst_port(&self) -> u32 {
        let v = self.dst_port;
        v.to_native()
    }
    pub fn payload_len(&self) -> u32 {
        let v = self.len;
        v.to_native()
    }
    pub fn kind(&self) -> u16 {
        let v = self.kind;
        v.to_native()
    }
    pub fn op(&self) -> u16 {
        let v = self.op;
        v.to_native()
    }
    pub fn flags(&self) -> u32 {
        let v = self.flags;
        v.to_native()
    }
    pub fn buf_alloc(&self) -> u32 {
        let v = self.buf_alloc;
        v.to_native()
    }
    pub fn fwd_cnt(&self) -> u32 {
        let v = self.fwd_cnt;
        v.to_native()
    }

    pub fn with_len(mut self, len: u32) -> Self {
        self.len = len.into();
        self
    }
    pub fn with_flags(mut self, flags: u32) -> Self {
        self.flags = flags.into();
        self
    }
    pub fn with_credit(mut self, buf_alloc: u32, fwd_cnt: u32) -> Self {
        self.buf_alloc = buf_alloc.into();
        self.fwd_cnt = fwd_cnt.into();
        self
    }
    /// Test and builder use: a header as the guest would send it.
    pub fn from_guest(guest_cid: u64, src_port: u32, dst_port: u32, op: u16) -> Self {
        Self { src_cid: guest_cid.into(), dst_cid: HOST_CID.into(), ..Self::to_guest(0, src_port, dst_port, op) }
    }
    pub fn with_kind(mut self, kind: u16) -> Self {
        self.kind = kind.into();
        self
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PacketError {
    #[error("tx descriptor chain outside guest memory or malformed")]
    BadChain,
    #[error("tx packet shorter than the {HEADER_SIZE}-byte header")]
    ShortHeader,
    #[error("tx packet len {len} is over the {MAX_PKT_LEN}-byte maximum")]
    TooLong { len: u32 },
    #[error("tx packet len {len} but the chain holds only {available} payload bytes")]
    Truncated { len: u32, available: usize },
    #[error("tx packet from cid {src} to cid {dst}, expected {expected} to {HOST_CID}")]
    WrongCid { src: u64, dst: u64, expected: u64 },
    #[error("tx packet of unknown socket type {0}")]
    UnknownType(u16),
    #[error("tx packet with unknown op {0}")]
    UnknownOp(u16),
    #[error("rx descriptor chain outside guest memory, malformed or smaller than a header")]
    BadRxChain,
}

impl PacketError {
    /// Whether the guest should get an RST for the packet (it named a valid connection but
    /// asked for something we do not do), rather than a silent drop.
    pub fn wants_reset(&self) -> bool {
        matches!(self, Self::UnknownType(_) | Self::UnknownOp(_))
    }
}

/// Reads one guest packet: the header, validated, and its payload (at most [`MAX_PKT_LEN`]
/// bytes). On [`PacketError::UnknownType`] or [`PacketError::UnknownOp`] the header is
/// returned too, so the caller can answer with an RST.
pub fn read_packet(reader: &mut Reader<'_>, guest_cid: u64) -> Result<(Header, Vec<u8>), (PacketError, Option<Header>)> {
    let header: Header = reader.read_obj().map_err(|_| (PacketError::ShortHeader, None))?;
    let (len, available) = (header.payload_len(), reader.available_bytes());
    if len as usize > MAX_PKT_LEN {
        return Err((PacketError::TooLong { len }, None));
    }
    if len as usize > available {
        return Err((PacketError::Truncated { len, available }, None));
    }
    if header.src_cid() != guest_cid || header.dst_cid() != HOST_CID {
        let (src, dst) = (header.src_cid(), header.dst_cid());
        return Err((PacketError::WrongCid { src, dst, expected: guest_cid }, None));
    }
    if header.kind() != TYPE_STREAM {
        return Err((PacketError::UnknownType(header.kind()), Some(header)));
    }
    if !(OP_REQUEST..=OP_CREDIT_REQUEST).contains(&header.op()) {
        return Err((PacketError::UnknownOp(header.op()), Some(header)));
    }
    let mut payload = vec![0u8; len as usize];
    reader.read_exact(&mut payload).map_err(|_| (PacketError::BadChain, None))?;
    Ok((header, payload))
}

/// Writes `header` (its `len` set to `payload.len()`) and `payload` into an rx chain; returns
/// the used length. The caller sized `payload` to fit [`payload_room`].
pub fn write_packet(writer: &mut Writer<'_>, header: Header, payload: &[u8]) -> Result<u32, PacketError> {
    let header = header.with_len(payload.len() as u32);
    writer.write_all(header.as_slice()).map_err(|_| PacketError::BadRxChain)?;
    writer.write_all(payload).map_err(|_| PacketError::BadRxChain)?;
    Ok(writer.bytes_written() as u32)
}

/// Payload bytes an rx chain can take after the header, or `None` if not even a header fits.
pub fn payload_room(writer: &Writer<'_>) -> Option<usize> {
    writer.available_bytes().checked_sub(HEADER_SIZE).map(|room| room.min(MAX_PKT_LEN))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    #[test]
    fn header_layout_matches_virtio_vsock_hdr() {
        assert_eq!(size_of::<Header>(), HEADER_SIZE);
        assert_eq!(offset_of!(Header, src_port), 16);
        assert_eq!(offset_of!(Header, len), 24);
        assert_eq!(offset_of!(Header, kind), 28);
        assert_eq!(offset_of!(Header, op), 30);
        assert_eq!(offset_of!(Header, flags), 32);
        assert_eq!(offset_of!(Header, fwd_cnt), 40);
    }

    #[test]
    fn header_bytes_are_little_endian() {
        let h = Header::to_guest(3, 0x0102_0304, 5, OP_RW).with_len(7).with_credit(0x10, 0x20);
        let b = h.as_slice();
        assert_eq!(&b[0..8], &2u64.to_le_bytes());
        assert_eq!(&b[8..16], &3u64.to_le_bytes());
        assert_eq!(&b[16..20], &[4, 3, 2, 1]);
        assert_eq!(&b[28..32], &[1, 0, 5, 0]);
        assert_eq!((h.buf_alloc(), h.fwd_cnt(), h.payload_len()), (0x10, 0x20, 7));
    }

    #[test]
    fn reset_reply_swaps_ports_and_targets_the_sender() {
        let h = Header::from_guest(3, 1000, 52, OP_RW);
        let r = h.reset_reply();
        assert_eq!((r.src_cid(), r.dst_cid(), r.src_port(), r.dst_port()), (HOST_CID, 3, 52, 1000));
        assert_eq!((r.op(), r.kind(), r.payload_len()), (OP_RST, TYPE_STREAM, 0));
    }
}
