//! The virtio-mmio transport's register file under an arbitrary driver.
//!
//! The input picks a device shape (1 to 3 queues with power-of-two maximum sizes, extra
//! feature bits, whether activation fails) and then a sequence of register accesses:
//! (read or write, offset in the 4 KiB window, access size 1/2/4/8, value). Each 8-byte write
//! optionally becomes a "guided" step of a correct driver (status, feature words, queue setup
//! with rings inside guest memory) so DRIVER_OK and activation are reached often.
//!
//! The device behind the production [`MmioTransport`] is a probe implementing the public
//! [`VirtioDevice`] trait. Checked: no activation after a successful one (a refused one may
//! be retried after a reset); the queues it gets are
//! ready, valid in guest memory, and of a size no larger than the device maximum; the
//! identity registers never change; feature acknowledgement only ever passes offered bits.

#![no_main]

use std::sync::{Arc, Mutex};

use libfuzzer_sys::arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use virtio_queue::QueueT;
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm::devices::virtio::mmio::{status, MmioTransport, MMIO_WINDOW};
use vmm::devices::virtio::{read_config_bytes, ActivateError, ActiveQueue, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};

const MEM_SIZE: usize = 0x4_0000;

#[derive(Default)]
struct Seen {
    activated: bool,
    acked: Vec<u64>,
}

struct Probe {
    sizes: Vec<u16>,
    features: u64,
    fail: bool,
    config: [u8; 8],
    seen: Arc<Mutex<Seen>>,
}

impl VirtioDevice for Probe {
    fn device_type(&self) -> u32 {
        2
    }
    fn name(&self) -> &'static str {
        "probe"
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.sizes
    }
    fn features(&self) -> u64 {
        self.features
    }
    fn ack_features(&mut self, features: u64) {
        self.seen.lock().expect("lock").acked.push(features);
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let Ok(start) = usize::try_from(offset) else { return };
        for (i, b) in data.iter().enumerate() {
            if let Some(slot) = start.checked_add(i).and_then(|j| self.config.get_mut(j)) {
                *slot = *b;
            }
        }
    }
    fn activate(&mut self, mem: GuestMemoryMmap, queues: Vec<ActiveQueue>, _: Interrupt) -> Result<(), ActivateError> {
        let mut seen = self.seen.lock().expect("lock");
        assert!(!seen.activated, "activated again after a successful activation");
        assert!(queues.len() <= self.sizes.len());
        for q in &queues {
            assert!(q.queue.ready(), "an activated queue is not ready");
            assert!(q.queue.is_valid(&mem), "an activated queue is not valid");
            let size = q.queue.size();
            assert!(size.is_power_of_two() && self.sizes.iter().any(|m| size <= *m), "queue size {size}");
        }
        if self.fail {
            // The transport must keep the queues usable for a retry after a reset.
            return Err(ActivateError::Device { device: "probe", what: "told to fail".into() });
        }
        seen.activated = true;
        Ok(())
    }
}

fn read32(t: &MmioTransport, offset: u64) -> u32 {
    let mut d = [0u8; 4];
    t.read(offset, &mut d);
    u32::from_le_bytes(d)
}

/// After a reset of a device that is not running, every queue is back at its maximum size
/// (a refused activation must not have lost them).
fn check_after_reset(t: &mut MmioTransport, sizes: &[u16], seen: &Mutex<Seen>) {
    if seen.lock().expect("lock").activated {
        return;
    }
    for (i, max) in sizes.iter().enumerate() {
        t.write(0x030, &(i as u32).to_le_bytes());
        assert_eq!(read32(t, 0x034), u32::from(*max), "QueueNumMax of queue {i} after a reset");
    }
    t.write(0x030, &0u32.to_le_bytes());
}

fn run(data: &[u8]) -> Option<()> {
    let mut u = Unstructured::new(data);
    let nqueues = u.int_in_range(1..=3usize).ok()?;
    let mut sizes = Vec::new();
    for _ in 0..nqueues {
        sizes.push(1u16 << u.int_in_range(0..=15u8).ok()?);
    }
    let extra: u64 = u.arbitrary().ok()?;
    let features = VIRTIO_F_VERSION_1 | (extra & 0xffff_ffff_0000_ffff);
    let fail = u.arbitrary::<u8>().ok()? & 1 == 1;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let probe = Probe { sizes: sizes.clone(), features, fail, config: *b"microvm\0", seen: seen.clone() };
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("memory");
    let mut t = MmioTransport::new(Box::new(probe), mem).ok()?;
    let identity = [0x000, 0x004, 0x008, 0x00c].map(|o| read32(&t, o));

    for _ in 0..256 {
        if u.is_empty() {
            break;
        }
        let op: u8 = u.arbitrary().ok()?;
        let value: u32 = u.arbitrary().ok()?;
        if op & 0x80 != 0 {
            // A guided step: what a correct driver writes, with the value from the input.
            let (offset, value) = match op % 12 {
                0 => (0x070, value & 0xff),
                1 => (0x070, status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK),
                2 => (0x070, status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK),
                3 => (0x024, value & 1),
                4 => (0x020, value),
                5 => (0x030, value % 4),
                6 => (0x038, 1 << (value % 10)),
                7 => (0x080, value % MEM_SIZE as u32),
                8 => (0x090, value % MEM_SIZE as u32),
                9 => (0x0a0, value % MEM_SIZE as u32),
                10 => (0x044, value & 1),
                _ => (0x064, value),
            };
            t.write(offset, &value.to_le_bytes());
            if (offset, value) == (0x070, 0) {
                check_after_reset(&mut t, &sizes, &seen);
            }
            continue;
        }
        let offset = u64::from(u.arbitrary::<u16>().ok()?) % (MMIO_WINDOW + 0x10);
        let size = [1usize, 2, 4, 8][usize::from(op >> 1 & 3)];
        let mut bytes = [0u8; 8];
        bytes[..4].copy_from_slice(&value.to_le_bytes());
        if op & 1 == 0 {
            let mut out = [0xa5u8; 8];
            t.read(offset, &mut out[..size]);
            if offset < 0x100 && size != 4 {
                assert!(out[..size].iter().all(|b| *b == 0), "a non-32-bit register read is not zero");
            }
        } else {
            t.write(offset, &bytes[..size]);
            if (offset, size, value) == (0x070, 4, 0) {
                check_after_reset(&mut t, &sizes, &seen);
            }
        }
    }

    assert_eq!(identity, [0x000, 0x004, 0x008, 0x00c].map(|o| read32(&t, o)), "identity registers changed");
    let seen = seen.lock().expect("lock");
    for acked in &seen.acked {
        assert_eq!(acked & !features, 0, "acknowledged features {acked:#x} beyond {features:#x}");
        assert_ne!(acked & VIRTIO_F_VERSION_1, 0, "acknowledged features without VERSION_1");
    }
    Some(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(data);
});
