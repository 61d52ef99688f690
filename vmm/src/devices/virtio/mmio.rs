//! The virtio-mmio transport, version 2 (virtio 1.2, section 4.2): the register file a driver
//! uses to discover a device, negotiate features, set up queues and acknowledge interrupts.
//! Queue notifications normally bypass it (an ioeventfd per queue on QueueNotify); interrupts
//! leave through an irqfd. Every value the driver writes is checked before use: queue sizes
//! against the device maximum, ring addresses against guest memory at DRIVER_OK.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::{ActiveQueue, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};

/// Size of each device's register window.
pub const MMIO_WINDOW: u64 = 0x1000;
/// Offset of QueueNotify, where the per-queue ioeventfds sit.
pub const QUEUE_NOTIFY: u64 = 0x050;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR_ID: u32 = 0x4d56_4d00; // "\0MVM"
const CONFIG_SPACE: u64 = 0x100;

/// Device status bits (section 2.1).
pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const DEVICE_NEEDS_RESET: u32 = 64;
    pub const FAILED: u32 = 128;
}

pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
    kicks: Vec<EventFd>,
    interrupt_status: Arc<AtomicU32>,
    irqfd: Arc<EventFd>,
    device_status: u32,
    features_select: u32,
    driver_features_select: u32,
    driver_features: u64,
    queue_select: u32,
    config_generation: u32,
    activated: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum MmioError {
    #[error("{device}: queue of size {size}: {source:?}")]
    Queue { device: &'static str, size: u16, source: virtio_queue::Error },
    #[error("{device}: eventfd: {source}")]
    EventFd { device: &'static str, source: std::io::Error },
}

impl MmioTransport {
    pub fn new(device: Box<dyn VirtioDevice>, mem: GuestMemoryMmap) -> Result<Self, MmioError> {
        let name = device.name();
        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|&size| Queue::new(size).map_err(|source| MmioError::Queue { device: name, size, source }))
            .collect::<Result<Vec<_>, _>>()?;
        let eventfd = || {
            EventFd::new(libc::EFD_NONBLOCK).map_err(|source| MmioError::EventFd { device: name, source })
        };
        // Queue notifications are blocking eventfds: device workers wait on them.
        let kicks = queues
            .iter()
            .map(|_| EventFd::new(0).map_err(|source| MmioError::EventFd { device: name, source }))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            device,
            mem,
            queues,
            kicks,
            interrupt_status: Arc::new(AtomicU32::new(0)),
            irqfd: Arc::new(eventfd()?),
            device_status: 0,
            features_select: 0,
            driver_features_select: 0,
            driver_features: 0,
            queue_select: 0,
            config_generation: 0,
            activated: false,
        })
    }

    /// The eventfds to register with KVM as ioeventfds on QueueNotify, one per queue index.
    pub fn queue_kicks(&self) -> &[EventFd] {
        &self.kicks
    }

    /// The eventfd to register with KVM as this device's irqfd.
    pub fn irqfd(&self) -> &EventFd {
        &self.irqfd
    }

    pub fn device_name(&self) -> &'static str {
        self.device.name()
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_select as usize)
    }

    /// A driver read of `data.len()` bytes at `offset` in the window.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE {
            self.device.read_config(offset - CONFIG_SPACE, data);
            return;
        }
        let value = match offset {
            0x000 => MAGIC,
            0x004 => VERSION,
            0x008 => self.device.device_type(),
            0x00c => VENDOR_ID,
            0x010 => match self.features_select {
                0 => self.device.features() as u32,
                1 => (self.device.features() >> 32) as u32,
                _ => 0,
            },
            0x034 => self.queues.get(self.queue_select as usize).map_or(0, |q| u32::from(q.max_size())),
            0x044 => self.queues.get(self.queue_select as usize).map_or(0, |q| u32::from(q.ready())),
            0x060 => self.interrupt_status.load(Ordering::SeqCst),
            0x070 => self.device_status,
            // No shared memory regions: SHMLen reads as -1 (section 4.2.2).
            0x0b0 | 0x0b4 => u32::MAX,
            0x0fc => self.config_generation,
            _ => 0,
        };
        write_le(data, value);
    }

    /// A driver write at `offset`; DRIVER_OK after a good negotiation activates the device.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE {
            self.device.write_config(offset - CONFIG_SPACE, data);
            return;
        }
        let Some(value) = read_le(data) else { return };
        // Queue and feature setup is only allowed before DRIVER_OK (section 4.2.2).
        let configuring = self.device_status & status::DRIVER_OK == 0;
        match offset {
            0x014 => self.features_select = value,
            0x020 if configuring => match self.driver_features_select {
                0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(value),
                1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (u64::from(value) << 32),
                _ => {}
            },
            0x024 => self.driver_features_select = value,
            0x030 => self.queue_select = value,
            0x038 if configuring => {
                if let Some(q) = self.selected_queue() {
                    // Sizes above the maximum or not a power of two are refused by the queue.
                    q.set_size(value.min(u32::from(u16::MAX)) as u16);
                }
            }
            0x044 if configuring => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(value == 1);
                }
            }
            0x050 => {
                // Reaches us only when the ioeventfd is not registered (tests, or KVM refused).
                if let Some(kick) = self.kicks.get(value as usize) {
                    let _ = kick.write(1);
                }
            }
            0x064 => {
                self.interrupt_status.fetch_and(!value, Ordering::SeqCst);
            }
            0x070 => self.set_status(value),
            0x080 | 0x084 | 0x090 | 0x094 | 0x0a0 | 0x0a4 if configuring => {
                let (low, high) = if offset & 4 == 0 { (Some(value), None) } else { (None, Some(value)) };
                if let Some(q) = self.selected_queue() {
                    match offset & !4 {
                        0x080 => q.set_desc_table_address(low, high),
                        0x090 => q.set_avail_ring_address(low, high),
                        _ => q.set_used_ring_address(low, high),
                    }
                }
            }
            _ => {}
        }
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let newly = value & !self.device_status;
        if newly & status::FEATURES_OK != 0 {
            let offered = self.device.features();
            let accepted = self.driver_features;
            if accepted & !offered != 0 || accepted & VIRTIO_F_VERSION_1 == 0 {
                tracing::warn!("{}: driver features {accepted:#x} not acceptable", self.device.name());
                self.device_status = value & !status::FEATURES_OK;
                return;
            }
            self.device.ack_features(accepted);
        }
        self.device_status = value;
        if newly & status::DRIVER_OK != 0 && value & status::FEATURES_OK != 0 && !self.activated {
            self.activate();
        }
    }

    fn activate(&mut self) {
        let name = self.device.name();
        // Everything is checked before any queue is handed over: a refused activation must
        // leave the queues to the transport, or after a reset the driver would find them gone
        // (QueueNumMax 0) and could never set the device up again.
        if let Some(i) = self.queues.iter().position(|q| q.ready() && !q.is_valid(&self.mem)) {
            tracing::warn!("{name}: queue {i} rings lie outside guest memory or are misaligned");
            self.device_status |= status::DEVICE_NEEDS_RESET;
            return;
        }
        let mut kicks = Vec::with_capacity(self.queues.len());
        for (q, kick) in self.queues.iter().zip(&self.kicks) {
            if !q.ready() {
                continue;
            }
            match kick.try_clone() {
                Ok(kick) => kicks.push(kick),
                Err(e) => {
                    tracing::warn!("{name}: clone queue eventfd: {e}");
                    self.device_status |= status::DEVICE_NEEDS_RESET;
                    return;
                }
            }
        }
        // The device owns the ready queues from now on: the transport is done with them, as a
        // reset after activation is refused.
        let active = self
            .queues
            .iter_mut()
            .filter(|q| q.ready())
            .zip(kicks)
            .map(|(q, kick)| ActiveQueue { queue: std::mem::take(q), kick })
            .collect();
        let interrupt = Interrupt::new(self.interrupt_status.clone(), self.irqfd.clone());
        match self.device.activate(self.mem.clone(), active, interrupt) {
            Ok(()) => self.activated = true,
            Err(e) => {
                tracing::warn!("activate {e}");
                self.device_status |= status::DEVICE_NEEDS_RESET;
                // The device dropped the queues it was given: put fresh ones (as a reset
                // leaves them) in their place, so the driver can reset and try again.
                for (q, &max) in self.queues.iter_mut().zip(self.device.queue_max_sizes()) {
                    if q.max_size() == 0 {
                        if let Ok(fresh) = Queue::new(max) {
                            *q = fresh;
                        }
                    }
                }
            }
        }
    }

    fn reset(&mut self) {
        if self.activated {
            // Linux resets every device on its way to power-off. A running device keeps its
            // queues, so the driver cannot set it up again; it is told so by the status.
            tracing::debug!("{}: reset after activation: device needs a new VM", self.device.name());
            self.device_status = status::DEVICE_NEEDS_RESET;
            return;
        }
        self.queues.iter_mut().for_each(Queue::reset);
        self.device_status = 0;
        self.driver_features = 0;
        self.features_select = 0;
        self.driver_features_select = 0;
        self.queue_select = 0;
        self.interrupt_status.store(0, Ordering::SeqCst);
    }
}

/// Registers are 32-bit; narrower or wider accesses read as zero and are ignored on write.
fn read_le(data: &[u8]) -> Option<u32> {
    Some(u32::from_le_bytes(data.try_into().ok()?))
}

fn write_le(data: &mut [u8], value: u32) {
    if data.len() == 4 {
        data.copy_from_slice(&value.to_le_bytes());
    } else {
        data.fill(0);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use crate::devices::virtio::{read_config_bytes, ActivateError};
    use std::sync::Mutex;
    use vm_memory::GuestAddress;

    #[derive(Default)]
    struct Probe {
        acked: u64,
        activated: Arc<Mutex<Option<usize>>>,
        /// Refuse the first activation, as a device short of queues does.
        refuse_once: bool,
    }

    impl VirtioDevice for Probe {
        fn device_type(&self) -> u32 {
            4
        }
        fn name(&self) -> &'static str {
            "probe"
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16, 8]
        }
        fn features(&self) -> u64 {
            VIRTIO_F_VERSION_1 | 1
        }
        fn ack_features(&mut self, f: u64) {
            self.acked = f;
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            read_config_bytes(&[0xaa, 0xbb], offset, data)
        }
        fn activate(&mut self, _: GuestMemoryMmap, q: Vec<ActiveQueue>, _: Interrupt) -> Result<(), ActivateError> {
            if std::mem::take(&mut self.refuse_once) {
                return Err(ActivateError::Device { device: "probe", what: "refused".into() });
            }
            *self.activated.lock().unwrap() = Some(q.len());
            Ok(())
        }
    }

    fn transport() -> (MmioTransport, Arc<Mutex<Option<usize>>>) {
        transport_with(Probe::default())
    }

    fn transport_with(probe: Probe) -> (MmioTransport, Arc<Mutex<Option<usize>>>) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let activated = probe.activated.clone();
        (MmioTransport::new(Box::new(probe), mem).unwrap(), activated)
    }

    fn r(t: &MmioTransport, off: u64) -> u32 {
        let mut d = [0u8; 4];
        t.read(off, &mut d);
        u32::from_le_bytes(d)
    }

    fn w(t: &mut MmioTransport, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    fn setup_queue(t: &mut MmioTransport, index: u32, base: u64) {
        w(t, 0x030, index);
        w(t, 0x038, 8);
        w(t, 0x080, base as u32);
        w(t, 0x090, (base + 0x1000) as u32);
        w(t, 0x0a0, (base + 0x2000) as u32);
        w(t, 0x044, 1);
    }

    fn negotiate(t: &mut MmioTransport, features: u64) {
        w(t, 0x070, status::ACKNOWLEDGE | status::DRIVER);
        w(t, 0x024, 0);
        w(t, 0x020, features as u32);
        w(t, 0x024, 1);
        w(t, 0x020, (features >> 32) as u32);
        w(t, 0x070, status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK);
    }

    #[test]
    fn identity_registers() {
        let (t, _) = transport();
        assert_eq!((r(&t, 0), r(&t, 4), r(&t, 8)), (MAGIC, 2, 4));
        let mut narrow = [0xffu8; 2];
        t.read(0, &mut narrow);
        assert_eq!(narrow, [0, 0]);
        let mut cfg = [0u8; 2];
        t.read(0x100, &mut cfg);
        assert_eq!(cfg, [0xaa, 0xbb]);
    }

    #[test]
    fn feature_words_and_queue_maximums() {
        let (mut t, _) = transport();
        assert_eq!(r(&t, 0x010), 1);
        w(&mut t, 0x014, 1);
        assert_eq!(r(&t, 0x010), 1, "VERSION_1 is bit 32");
        w(&mut t, 0x030, 1);
        assert_eq!(r(&t, 0x034), 8);
        w(&mut t, 0x030, 7);
        assert_eq!(r(&t, 0x034), 0, "no such queue");
    }

    #[test]
    fn full_negotiation_activates_with_the_ready_queues() {
        let (mut t, activated) = transport();
        negotiate(&mut t, VIRTIO_F_VERSION_1 | 1);
        assert_ne!(r(&t, 0x070) & status::FEATURES_OK, 0);
        setup_queue(&mut t, 0, 0x10000);
        w(&mut t, 0x070, status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK);
        assert_eq!(*activated.lock().unwrap(), Some(1));
    }

    #[test]
    fn features_without_version_1_or_unknown_bits_are_refused() {
        for bad in [1u64, VIRTIO_F_VERSION_1 | 1 << 5] {
            let (mut t, _) = transport();
            negotiate(&mut t, bad);
            assert_eq!(r(&t, 0x070) & status::FEATURES_OK, 0, "{bad:#x}");
        }
    }

    #[test]
    fn rings_outside_guest_memory_do_not_activate() {
        let (mut t, activated) = transport();
        negotiate(&mut t, VIRTIO_F_VERSION_1);
        setup_queue(&mut t, 0, 0x4000_0000);
        w(&mut t, 0x070, status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK);
        assert_eq!(*activated.lock().unwrap(), None);
        assert_ne!(r(&t, 0x070) & status::DEVICE_NEEDS_RESET, 0);
    }

    /// Found by the `virtio_mmio_regs` fuzz target: a refused activation used to lose the
    /// queues it had taken (QueueNumMax then read 0), so the driver could never retry.
    #[test]
    fn refused_activation_leaves_the_queues_for_a_retry() {
        const ALL: u32 = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;
        let (mut t, activated) = transport_with(Probe { refuse_once: true, ..Probe::default() });
        negotiate(&mut t, VIRTIO_F_VERSION_1);
        setup_queue(&mut t, 0, 0x10000);
        w(&mut t, 0x070, ALL);
        assert_eq!(*activated.lock().unwrap(), None);
        assert_ne!(r(&t, 0x070) & status::DEVICE_NEEDS_RESET, 0);
        w(&mut t, 0x070, 0);
        w(&mut t, 0x030, 0);
        assert_eq!(r(&t, 0x034), 16, "queue 0 keeps its maximum size");
        negotiate(&mut t, VIRTIO_F_VERSION_1);
        setup_queue(&mut t, 0, 0x10000);
        w(&mut t, 0x070, ALL);
        assert_eq!(*activated.lock().unwrap(), Some(1));

        // A bad second queue is refused before the good first one is handed over.
        let (mut t, activated) = transport();
        negotiate(&mut t, VIRTIO_F_VERSION_1);
        setup_queue(&mut t, 0, 0x10000);
        setup_queue(&mut t, 1, 0x4000_0000);
        w(&mut t, 0x070, ALL);
        assert_eq!(*activated.lock().unwrap(), None);
        w(&mut t, 0x070, 0);
        w(&mut t, 0x030, 0);
        assert_eq!(r(&t, 0x034), 16);
    }

    #[test]
    fn oversized_queue_is_not_accepted() {
        let (mut t, _) = transport();
        w(&mut t, 0x030, 0);
        w(&mut t, 0x038, 4096);
        assert_eq!(t.queues[0].size(), 16, "size stays at the maximum");
        w(&mut t, 0x038, 6);
        assert_eq!(t.queues[0].size(), 16, "not a power of two");
    }

    #[test]
    fn interrupt_ack_clears_bits_and_reset_clears_state() {
        let (mut t, _) = transport();
        t.interrupt_status.store(3, Ordering::SeqCst);
        w(&mut t, 0x064, 1);
        assert_eq!(r(&t, 0x060), 2);
        negotiate(&mut t, VIRTIO_F_VERSION_1);
        w(&mut t, 0x070, 0);
        assert_eq!((r(&t, 0x070), r(&t, 0x060)), (0, 0));
    }
}
