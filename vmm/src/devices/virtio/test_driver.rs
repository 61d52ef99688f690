//! A mock split-queue driver for tests: it writes descriptors and rings in guest memory the
//! way a guest does and reads back what the device used. (`virtio_queue::mock::MockSplitQueue`
//! does not fit: it zeroes the rings whenever it is created, and lays its used ring over the
//! second half of the avail ring.)

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

pub const QSIZE: u16 = 64;
/// Offsets of the avail and used rings from the descriptor table.
const AVAIL: u64 = 0x1000;
const USED: u64 = 0x2000;

/// One queue, driver side: descriptors at `base`, avail ring at `base + AVAIL`, used ring at
/// `base + USED`.
pub struct Ring {
    base: u64,
    next_desc: u16,
    used_seen: u16,
}

impl Ring {
    pub fn new(base: u64) -> Self {
        Self { base, next_desc: 0, used_seen: 0 }
    }

    /// The device's view of this queue, as the transport would hand it over.
    pub fn queue(&self) -> Queue {
        let mut q = Queue::new(QSIZE).unwrap();
        q.set_size(QSIZE);
        q.try_set_desc_table_address(GuestAddress(self.base)).unwrap();
        q.try_set_avail_ring_address(GuestAddress(self.base + AVAIL)).unwrap();
        q.try_set_used_ring_address(GuestAddress(self.base + USED)).unwrap();
        q.set_ready(true);
        q
    }

    /// The descriptor index the next chain starts at.
    pub fn next_desc(&self) -> u16 {
        self.next_desc
    }

    /// Makes `descs` (addr, len, device-writable) one chain and offers it; returns its head.
    pub fn offer(&mut self, mem: &GuestMemoryMmap, descs: &[(u64, u32, bool)]) -> u16 {
        let head = self.next_desc;
        for (k, &(addr, len, writable)) in descs.iter().enumerate() {
            let index = self.next_desc;
            self.next_desc = (self.next_desc + 1) % QSIZE;
            let mut flags = if writable { VRING_DESC_F_WRITE as u16 } else { 0 };
            if k + 1 < descs.len() {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            let desc = SplitDescriptor::new(addr, len, flags, self.next_desc);
            mem.write_obj(desc, GuestAddress(self.base + 16 * u64::from(index))).unwrap();
        }
        let avail = GuestAddress(self.base + AVAIL);
        let idx: u16 = mem.read_obj(avail.unchecked_add(2)).unwrap();
        mem.write_obj(head, avail.unchecked_add(4 + 2 * u64::from(idx % QSIZE))).unwrap();
        mem.write_obj(idx.wrapping_add(1), avail.unchecked_add(2)).unwrap();
        head
    }

    /// New used elements (descriptor head, length) since the last call.
    pub fn used(&mut self, mem: &GuestMemoryMmap) -> Vec<(u16, u32)> {
        let used = GuestAddress(self.base + USED);
        let idx: u16 = mem.read_obj(used.unchecked_add(2)).unwrap();
        let mut out = Vec::new();
        while self.used_seen != idx {
            let at = used.unchecked_add(4 + 8 * u64::from(self.used_seen % QSIZE));
            let (id, len): (u32, u32) = (mem.read_obj(at).unwrap(), mem.read_obj(at.unchecked_add(4)).unwrap());
            out.push((id as u16, len));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }

    /// Waits (up to 5 s) for the device to use buffers of this queue; returns them.
    pub fn wait_used(&mut self, mem: &GuestMemoryMmap) -> Vec<(u16, u32)> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let used = self.used(mem);
            if !used.is_empty() {
                return used;
            }
            assert!(std::time::Instant::now() < deadline, "the worker used no buffer");
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }
}
