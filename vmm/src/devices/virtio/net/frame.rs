//! One Ethernet frame in and out of the guest's queues (virtio 1.2, section 5.1.6): each
//! buffer starts with a `virtio_net_hdr` (12 bytes once VIRTIO_F_VERSION_1 is negotiated),
//! then the frame. We offer no offloads, so the header the guest sends carries nothing we
//! need, and the one we write is zero but for `num_buffers`. Chains come from the guest and
//! are untrusted: `virtio_queue`'s Reader and Writer check every descriptor against guest
//! memory (and stop at the queue size, so a looping chain ends), and lengths are checked
//! before anything is copied.

use std::io::{Read, Write};

use virtio_queue::DescriptorChain;
use vm_memory::GuestMemoryMmap;

/// `struct virtio_net_hdr_v1`: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset,
/// num_buffers.
pub const HEADER_LEN: usize = 12;
/// Offset of `num_buffers` (le16) in the header.
const NUM_BUFFERS: usize = 10;
/// An Ethernet header: two addresses and the EtherType.
pub const MIN_FRAME: usize = 14;
/// The largest frame: an Ethernet header and the largest MTU the guest driver allows
/// (65,535) when the device states none.
pub const MAX_FRAME: usize = MIN_FRAME + 65_535;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("descriptor chain outside guest memory or malformed")]
    BadChain,
    #[error("{0} bytes: shorter than a header and an Ethernet frame")]
    TooShort(usize),
    #[error("{0} bytes: longer than the largest frame ({MAX_FRAME} bytes)")]
    TooLong(usize),
    #[error("rx buffer of {room} bytes cannot hold a {frame}-byte frame")]
    NoRoom { room: usize, frame: usize },
}

/// Reads the frame the guest put in `chain` (a tx buffer) into `frame`, header left out.
pub fn read_tx(mem: &GuestMemoryMmap, chain: DescriptorChain<&GuestMemoryMmap>, frame: &mut Vec<u8>) -> Result<(), FrameError> {
    let mut reader = chain.reader(mem).map_err(|_| FrameError::BadChain)?;
    let total = reader.available_bytes();
    let len = total.checked_sub(HEADER_LEN).filter(|&n| n >= MIN_FRAME).ok_or(FrameError::TooShort(total))?;
    if len > MAX_FRAME {
        return Err(FrameError::TooLong(total));
    }
    let mut header = [0u8; HEADER_LEN];
    reader.read_exact(&mut header).map_err(|_| FrameError::BadChain)?;
    frame.clear();
    frame.resize(len, 0);
    reader.read_exact(frame).map_err(|_| FrameError::BadChain)
}

/// Writes `frame` behind a header into `chain` (an rx buffer); returns the used length.
pub fn write_rx(mem: &GuestMemoryMmap, chain: DescriptorChain<&GuestMemoryMmap>, frame: &[u8]) -> Result<u32, FrameError> {
    let mut writer = chain.writer(mem).map_err(|_| FrameError::BadChain)?;
    let room = writer.available_bytes();
    if room < HEADER_LEN + frame.len() {
        return Err(FrameError::NoRoom { room, frame: frame.len() });
    }
    let mut header = [0u8; HEADER_LEN];
    header[NUM_BUFFERS..].copy_from_slice(&1u16.to_le_bytes());
    writer.write_all(&header).map_err(|_| FrameError::BadChain)?;
    writer.write_all(frame).map_err(|_| FrameError::BadChain)?;
    u32::try_from(writer.bytes_written()).map_err(|_| FrameError::BadChain)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use crate::devices::virtio::test_driver::Ring;
    use virtio_queue::QueueT;
    use vm_memory::{Bytes, GuestAddress};

    const BUF: u64 = 0x10_0000;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap()
    }

    /// Offers `descs` as one chain and hands the device's view of it to `f`.
    fn with_chain<T>(mem: &GuestMemoryMmap, descs: &[(u64, u32, bool)], f: impl FnOnce(DescriptorChain<&GuestMemoryMmap>) -> T) -> T {
        let mut ring = Ring::new(0);
        ring.offer(mem, descs);
        let mut queue = ring.queue();
        f(queue.pop_descriptor_chain(mem).unwrap())
    }

    #[test]
    fn a_tx_frame_loses_its_header_across_descriptors() {
        let m = mem();
        m.write_slice(&[0xaa; HEADER_LEN], GuestAddress(BUF)).unwrap();
        let frame: Vec<u8> = (0..60u8).collect();
        m.write_slice(&frame, GuestAddress(BUF + 0x1000)).unwrap();
        // Header and the first 20 bytes in one descriptor, the rest in another.
        m.write_slice(&frame[..20], GuestAddress(BUF + HEADER_LEN as u64)).unwrap();
        m.write_slice(&frame[20..], GuestAddress(BUF + 0x2000)).unwrap();
        let mut got = Vec::new();
        with_chain(&m, &[(BUF, HEADER_LEN as u32 + 20, false), (BUF + 0x2000, 40, false)], |c| read_tx(&m, c, &mut got)).unwrap();
        assert_eq!(got, frame);
    }

    #[test]
    fn an_rx_frame_gets_a_header_with_one_buffer() {
        let m = mem();
        m.write_slice(&[0xee; 256], GuestAddress(BUF)).unwrap();
        let frame = [7u8; 100];
        let used = with_chain(&m, &[(BUF, 1526, true)], |c| write_rx(&m, c, &frame)).unwrap();
        assert_eq!(used as usize, HEADER_LEN + 100);
        let mut header = [0u8; HEADER_LEN];
        m.read_slice(&mut header, GuestAddress(BUF)).unwrap();
        assert_eq!(header, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
        let mut body = [0u8; 100];
        m.read_slice(&mut body, GuestAddress(BUF + HEADER_LEN as u64)).unwrap();
        assert_eq!(body, frame);
    }

    #[test]
    fn hostile_chains_are_refused_before_any_copy() {
        let m = mem();
        let mut got = vec![1, 2, 3];
        // Zero-length, header only, and one byte short of an Ethernet header.
        for len in [0, HEADER_LEN as u32, (HEADER_LEN + MIN_FRAME - 1) as u32] {
            let r = with_chain(&m, &[(BUF, len, false)], |c| read_tx(&m, c, &mut got));
            assert_eq!(r, Err(FrameError::TooShort(len as usize)));
        }
        // Oversized: a frame past the largest MTU, and a 4 GiB descriptor.
        let over = (HEADER_LEN + MAX_FRAME + 1) as u32;
        assert_eq!(with_chain(&m, &[(BUF, over, false)], |c| read_tx(&m, c, &mut got)), Err(FrameError::TooLong(over as usize)));
        assert!(with_chain(&m, &[(BUF, u32::MAX, false)], |c| read_tx(&m, c, &mut got)).is_err());
        // Past the end of guest memory, for tx and rx.
        let past = (4 << 20) - 8;
        assert_eq!(with_chain(&m, &[(past, 64, false)], |c| read_tx(&m, c, &mut got)), Err(FrameError::BadChain));
        assert_eq!(with_chain(&m, &[(past, 64, true)], |c| write_rx(&m, c, &[0; 20])), Err(FrameError::BadChain));
        assert_eq!(got, [1, 2, 3], "nothing copied from a refused chain");
        // An rx buffer too small, or one the device may only read.
        m.write_slice(&[0xee; 64], GuestAddress(BUF)).unwrap();
        let r = with_chain(&m, &[(BUF, 40, true)], |c| write_rx(&m, c, &[0; 60]));
        assert_eq!(r, Err(FrameError::NoRoom { room: 40, frame: 60 }));
        let r = with_chain(&m, &[(BUF, 1526, false)], |c| write_rx(&m, c, &[0; 60]));
        assert_eq!(r, Err(FrameError::NoRoom { room: 0, frame: 60 }));
        let mut untouched = [0u8; 64];
        m.read_slice(&mut untouched, GuestAddress(BUF)).unwrap();
        assert!(untouched.iter().all(|b| *b == 0xee), "nothing written to a refused buffer");
    }
}
