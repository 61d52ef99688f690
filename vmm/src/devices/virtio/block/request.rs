//! One virtio-blk request (virtio 1.2, section 5.2.6): a 16-byte header the device reads,
//! data buffers, and a status byte the device writes last. The chain comes from the guest and
//! is untrusted: its descriptors are checked against guest memory by `virtio_queue`'s
//! Reader/Writer (which also stop at the queue size, so a looping chain ends), and the sector
//! range against the disk size, with checked arithmetic.

use std::io::{Read, Write};

use virtio_queue::DescriptorChain;
use vm_memory::{ByteValued, GuestMemoryMmap, Le32, Le64};

/// Request types and status values (section 5.2.6).
pub const VIRTIO_BLK_T_IN: u32 = 0;
pub const VIRTIO_BLK_T_OUT: u32 = 1;
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;
pub const VIRTIO_BLK_S_OK: u8 = 0;
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;
/// Sectors are always 512 bytes in the protocol.
pub const SECTOR_SIZE: u64 = 512;
/// Length of the GET_ID answer.
pub const ID_LEN: usize = 20;
/// Data moves through a host buffer of this size, so a guest-chosen length never sizes an
/// allocation.
const CHUNK: usize = 64 * 1024;

#[derive(Clone, Copy, Default)]
#[repr(C)]
struct RequestHeader {
    kind: Le32,
    _reserved: Le32,
    sector: Le64,
}
// SAFETY: three little-endian integers, no padding; every byte pattern is a valid value.
unsafe impl ByteValued for RequestHeader {}

/// Where the bytes live: a file in the VMM, a vector in tests.
pub trait Backend {
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> std::io::Result<()>;
    fn write_at(&mut self, buf: &[u8], offset: u64) -> std::io::Result<()>;
    fn flush(&mut self) -> std::io::Result<()>;
}

impl Backend for std::fs::File {
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(self, buf, offset)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.sync_data()
    }
}

/// The disk a request runs against.
pub struct Disk<'a> {
    pub backend: &'a mut dyn Backend,
    pub size: u64,
    pub read_only: bool,
    pub id: &'a [u8; ID_LEN],
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("descriptor chain loops back on itself")]
    Loop,
    #[error("descriptor chain outside guest memory or malformed")]
    BadChain,
    #[error("no room for the status byte")]
    NoStatus,
}

/// Runs the request in `chain`. Returns the number of bytes written into the chain (the used
/// length), or why no status could be reported.
pub fn process(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    disk: &mut Disk<'_>,
) -> Result<u32, RequestError> {
    // virtio-queue stops walking a chain after queue-size descriptors, so a loop cannot hang
    // us; a driver must never build one (virtio 1.2, 2.7.5.2), so one is refused outright.
    let mut seen = std::collections::HashSet::from([chain.head_index()]);
    if chain.clone().any(|d| d.has_next() && !seen.insert(d.next())) {
        return Err(RequestError::Loop);
    }
    let mut reader = chain.clone().reader(mem).map_err(|_| RequestError::BadChain)?;
    let mut writer = chain.writer(mem).map_err(|_| RequestError::BadChain)?;
    if writer.available_bytes() == 0 {
        return Err(RequestError::NoStatus);
    }
    let status = match reader.read_obj::<RequestHeader>() {
        Ok(header) => execute(header, &mut reader, &mut writer, disk),
        Err(_) => VIRTIO_BLK_S_IOERR,
    };
    // The status byte is the last writable byte; skip whatever data was not filled.
    let data_room = writer.available_bytes() - 1;
    let mut skipped = 0;
    let zero = [0u8; 512];
    while skipped < data_room {
        let n = (data_room - skipped).min(zero.len());
        if writer.write_all(&zero[..n]).is_err() {
            return Err(RequestError::BadChain);
        }
        skipped += n;
    }
    writer.write_all(&[status]).map_err(|_| RequestError::BadChain)?;
    Ok(writer.bytes_written() as u32)
}

fn execute(
    header: RequestHeader,
    reader: &mut virtio_queue::Reader<'_>,
    writer: &mut virtio_queue::Writer<'_>,
    disk: &mut Disk<'_>,
) -> u8 {
    let data_len = |bytes: usize| bytes as u64;
    let range = |len: u64| {
        header.sector.to_native().checked_mul(SECTOR_SIZE).filter(|start| {
            start.checked_add(len).is_some_and(|end| end <= disk.size)
        })
    };
    match header.kind.to_native() {
        VIRTIO_BLK_T_IN => {
            let len = writer.available_bytes().saturating_sub(1);
            let Some(mut offset) = range(data_len(len)) else { return VIRTIO_BLK_S_IOERR };
            let mut buf = vec![0u8; len.min(CHUNK)];
            let mut left = len;
            while left > 0 {
                let n = left.min(CHUNK);
                if disk.backend.read_at(&mut buf[..n], offset).is_err() || writer.write_all(&buf[..n]).is_err() {
                    return VIRTIO_BLK_S_IOERR;
                }
                offset += n as u64;
                left -= n;
            }
            VIRTIO_BLK_S_OK
        }
        VIRTIO_BLK_T_OUT => {
            if disk.read_only {
                return VIRTIO_BLK_S_IOERR;
            }
            let len = reader.available_bytes();
            let Some(mut offset) = range(data_len(len)) else { return VIRTIO_BLK_S_IOERR };
            let mut buf = vec![0u8; len.min(CHUNK)];
            let mut left = len;
            while left > 0 {
                let n = left.min(CHUNK);
                if reader.read_exact(&mut buf[..n]).is_err() || disk.backend.write_at(&buf[..n], offset).is_err() {
                    return VIRTIO_BLK_S_IOERR;
                }
                offset += n as u64;
                left -= n;
            }
            VIRTIO_BLK_S_OK
        }
        VIRTIO_BLK_T_FLUSH => match disk.read_only || disk.backend.flush().is_ok() {
            true => VIRTIO_BLK_S_OK,
            false => VIRTIO_BLK_S_IOERR,
        },
        VIRTIO_BLK_T_GET_ID => {
            let n = writer.available_bytes().saturating_sub(1).min(ID_LEN);
            match writer.write_all(&disk.id[..n]) {
                Ok(()) => VIRTIO_BLK_S_OK,
                Err(_) => VIRTIO_BLK_S_IOERR,
            }
        }
        _ => VIRTIO_BLK_S_UNSUPP,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::QueueT;
    use vm_memory::{Bytes, GuestAddress};

    struct MemDisk(Vec<u8>, bool);

    impl Backend for MemDisk {
        fn read_at(&mut self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
            let o = offset as usize;
            buf.copy_from_slice(&self.0[o..o + buf.len()]);
            Ok(())
        }
        fn write_at(&mut self, buf: &[u8], offset: u64) -> std::io::Result<()> {
            let o = offset as usize;
            self.0[o..o + buf.len()].copy_from_slice(buf);
            Ok(())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            self.1 = true;
            Ok(())
        }
    }

    const HDR: u64 = 0x1_0000;
    const DATA: u64 = 0x2_0000;
    const STATUS: u64 = 0x3_0000;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    fn desc(addr: u64, len: u32, writable: bool) -> RawDescriptor {
        let flags = if writable { VRING_DESC_F_WRITE as u16 } else { 0 };
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
    }

    fn run(mem: &GuestMemoryMmap, kind: u32, sector: u64, descs: &[RawDescriptor], disk: &mut MemDisk, ro: bool) -> Result<u32, RequestError> {
        let header = RequestHeader { kind: kind.into(), _reserved: 0.into(), sector: sector.into() };
        mem.write_obj(header, GuestAddress(HDR)).unwrap();
        let q = MockSplitQueue::new(mem, 16);
        let chain = q.build_desc_chain(descs).unwrap();
        let id = *b"microvm-test-disk\0\0\0";
        let size = disk.0.len() as u64;
        process(mem, chain, &mut Disk { backend: disk, size, read_only: ro, id: &id })
    }

    fn status(mem: &GuestMemoryMmap) -> u8 {
        mem.read_obj(GuestAddress(STATUS)).unwrap()
    }

    #[test]
    fn read_returns_the_sector_and_ok() {
        let m = mem();
        let mut disk = MemDisk((0..4096u32).map(|i| (i / 512) as u8).collect(), false);
        let used = run(&m, VIRTIO_BLK_T_IN, 3, &[desc(HDR, 16, false), desc(DATA, 512, true), desc(STATUS, 1, true)], &mut disk, false).unwrap();
        assert_eq!(used, 513);
        assert_eq!(status(&m), VIRTIO_BLK_S_OK);
        let mut got = [0u8; 512];
        m.read_slice(&mut got, GuestAddress(DATA)).unwrap();
        assert!(got.iter().all(|b| *b == 3));
    }

    #[test]
    fn write_lands_on_disk_unless_read_only() {
        let m = mem();
        m.write_slice(&[7u8; 512], GuestAddress(DATA)).unwrap();
        let chain = [desc(HDR, 16, false), desc(DATA, 512, false), desc(STATUS, 1, true)];
        let mut disk = MemDisk(vec![0; 2048], false);
        run(&m, VIRTIO_BLK_T_OUT, 1, &chain, &mut disk, false).unwrap();
        assert_eq!(status(&m), VIRTIO_BLK_S_OK);
        assert!(disk.0[512..1024].iter().all(|b| *b == 7) && disk.0[..512].iter().all(|b| *b == 0));
        let mut disk = MemDisk(vec![0; 2048], false);
        run(&m, VIRTIO_BLK_T_OUT, 1, &chain, &mut disk, true).unwrap();
        assert_eq!(status(&m), VIRTIO_BLK_S_IOERR);
        assert!(disk.0.iter().all(|b| *b == 0));
    }

    #[test]
    fn out_of_range_and_overflowing_sectors_are_io_errors() {
        let m = mem();
        let chain = [desc(HDR, 16, false), desc(DATA, 512, true), desc(STATUS, 1, true)];
        for sector in [4, u64::MAX / 512 + 1, u64::MAX] {
            let mut disk = MemDisk(vec![0; 2048], false);
            run(&m, VIRTIO_BLK_T_IN, sector, &chain, &mut disk, false).unwrap();
            assert_eq!(status(&m), VIRTIO_BLK_S_IOERR, "sector {sector}");
        }
    }

    #[test]
    fn flush_get_id_and_unknown_types() {
        let m = mem();
        let mut disk = MemDisk(vec![0; 512], false);
        run(&m, VIRTIO_BLK_T_FLUSH, 0, &[desc(HDR, 16, false), desc(STATUS, 1, true)], &mut disk, false).unwrap();
        assert!(disk.1);
        assert_eq!(status(&m), VIRTIO_BLK_S_OK);
        run(&m, VIRTIO_BLK_T_GET_ID, 0, &[desc(HDR, 16, false), desc(DATA, 20, true), desc(STATUS, 1, true)], &mut disk, false).unwrap();
        let mut id = [0u8; 20];
        m.read_slice(&mut id, GuestAddress(DATA)).unwrap();
        assert_eq!(&id[..17], b"microvm-test-disk");
        run(&m, 99, 0, &[desc(HDR, 16, false), desc(STATUS, 1, true)], &mut disk, false).unwrap();
        assert_eq!(status(&m), VIRTIO_BLK_S_UNSUPP);
    }

    #[test]
    fn hostile_chains_are_rejected_without_panicking() {
        let m = mem();
        let mut disk = MemDisk(vec![0; 512], false);
        // No writable descriptor: nowhere to put a status.
        let r = run(&m, VIRTIO_BLK_T_IN, 0, &[desc(HDR, 16, false)], &mut disk, false);
        assert_eq!(r, Err(RequestError::NoStatus));
        // Data beyond guest memory, and a 4 GiB length: refused as a whole, nothing written.
        for bad in [desc(0xfff_ff000, 4096, true), desc(DATA, u32::MAX, true)] {
            m.write_obj(0xeeu8, GuestAddress(STATUS)).unwrap();
            let r = run(&m, VIRTIO_BLK_T_IN, 0, &[desc(HDR, 16, false), bad, desc(STATUS, 1, true)], &mut disk, false);
            assert!(r.is_err(), "{r:?}");
            assert_eq!(status(&m), 0xee);
        }
        // A chain that loops: 0 -> 1 -> 0.
        let q = MockSplitQueue::new(&m, 16);
        let looped = [
            RawDescriptor::from(SplitDescriptor::new(HDR, 16, VRING_DESC_F_NEXT as u16, 1)),
            RawDescriptor::from(SplitDescriptor::new(STATUS, 1, (VRING_DESC_F_NEXT | VRING_DESC_F_WRITE) as u16, 0)),
        ];
        q.add_desc_chains(&looped, 0).unwrap();
        let mut queue = q.create_queue::<virtio_queue::Queue>().unwrap();
        let chain = queue.pop_descriptor_chain(&m).unwrap();
        let id = [0u8; ID_LEN];
        let r = process(&m, chain, &mut Disk { backend: &mut disk, size: 512, read_only: false, id: &id });
        assert_eq!(r, Err(RequestError::Loop));
        // Header too short: an I/O error, reported.
        run(&m, VIRTIO_BLK_T_IN, 0, &[desc(HDR, 8, false), desc(STATUS, 1, true)], &mut disk, false).unwrap();
        assert_eq!(status(&m), VIRTIO_BLK_S_IOERR);
    }
}
