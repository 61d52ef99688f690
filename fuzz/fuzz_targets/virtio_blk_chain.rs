//! virtio-blk request processing on guest-controlled memory.
//!
//! Input: a 4-byte configuration (queue size, disk size, read-only, EVENT_IDX), then the
//! guest memory image (64 KiB, zero-filled past the input). The descriptor table, avail ring
//! and every request header, data buffer and status byte live in that image, exactly as a
//! hostile guest would lay them out; the used ring is in it too. The device side runs the
//! production worker loop, [`vmm::devices::virtio::block::process_queue`], against an
//! in-memory disk that panics on any access outside the disk size (the request code must
//! refuse such requests itself).

#![no_main]

use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm::devices::virtio::block::process_queue;
use vmm::devices::virtio::block::request::{Backend, Disk, ID_LEN, SECTOR_SIZE};

const MEM_SIZE: usize = 0x1_0000;
const DESC_TABLE: u64 = 0x0;
const AVAIL_RING: u64 = 0x1000;
const USED_RING: u64 = 0x2000;

/// The disk: a vector; any access the request code lets through outside it is a bug.
struct MemDisk(Vec<u8>);

impl MemDisk {
    fn range(&self, len: usize, offset: u64) -> std::ops::Range<usize> {
        let start = usize::try_from(offset).expect("offset fits usize");
        let end = start.checked_add(len).expect("end overflows");
        assert!(end <= self.0.len(), "disk access {start}..{end} outside a {}-byte disk", self.0.len());
        start..end
    }
}

impl Backend for MemDisk {
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let r = self.range(buf.len(), offset);
        buf.copy_from_slice(&self.0[r]);
        Ok(())
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        let r = self.range(buf.len(), offset);
        self.0[r].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((config, image)) = data.split_first_chunk::<4>() else { return };
    let [qsize_log, sectors, ro, event_idx] = *config;
    // 1..=256, powers of two; other sizes are refused by the transport before activation.
    let qsize = 1u16 << (qsize_log % 9);
    let disk_len = u64::from(sectors) * SECTOR_SIZE;

    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("guest memory");
    let image = &image[..image.len().min(MEM_SIZE)];
    mem.write_slice(image, GuestAddress(0)).expect("image fits");

    let mut queue = Queue::new(256).expect("queue");
    queue.set_size(qsize);
    queue.try_set_desc_table_address(GuestAddress(DESC_TABLE)).expect("desc table");
    queue.try_set_avail_ring_address(GuestAddress(AVAIL_RING)).expect("avail ring");
    queue.try_set_used_ring_address(GuestAddress(USED_RING)).expect("used ring");
    queue.set_event_idx(event_idx & 1 == 1);
    queue.set_ready(true);
    // The transport activates only queues that pass this check.
    if !queue.is_valid(&mem) {
        return;
    }

    let mut backend = MemDisk(vec![0xa5; disk_len as usize]);
    let id = [b'f'; ID_LEN];
    let mut disk = Disk { backend: &mut backend, size: disk_len, read_only: ro & 1 == 1, id: &id };
    // Two notifications: the second finds whatever the first left (nothing, normally).
    for _ in 0..2 {
        let _ = process_queue(&mem, &mut queue, &mut disk);
    }
});
