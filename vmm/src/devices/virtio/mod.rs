//! virtio devices (virtio 1.2) behind the MMIO transport (section 4.2).
//!
//! A device implements [`VirtioDevice`]: its identity, features and config space, and what it
//! does once the driver has set it up ([`VirtioDevice::activate`]). The transport
//! ([`mmio::MmioTransport`]) owns the register file, the queues' configuration and the
//! interrupt status, and hands the device its queues, their notification eventfds and an
//! [`Interrupt`] at activation.

pub mod block;
pub mod fs;
pub mod log_limit;
pub mod mmio;
pub mod net;
#[cfg(test)]
#[allow(clippy::unwrap_used)] // test support: a failed unwrap is a failed test
mod test_driver;
pub mod vsock;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// VIRTIO_F_VERSION_1 (virtio 1.2, section 6): we implement only the modern interface.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Interrupt status bits (section 4.2.2, InterruptStatus).
pub const INT_USED_RING: u32 = 1;
pub const INT_CONFIG: u32 = 2;

/// A device's interrupt line: sets the transport's InterruptStatus bit and signals the irqfd.
#[derive(Clone)]
pub struct Interrupt {
    status: Arc<AtomicU32>,
    irqfd: Arc<EventFd>,
}

impl Interrupt {
    pub fn new(status: Arc<AtomicU32>, irqfd: Arc<EventFd>) -> Self {
        Self { status, irqfd }
    }

    /// Tells the driver that used buffers are ready.
    pub fn signal_used(&self) -> std::io::Result<()> {
        self.status.fetch_or(INT_USED_RING, Ordering::SeqCst);
        self.irqfd.write(1)
    }
}

/// One queue as the driver configured it, with the eventfd KVM signals on QueueNotify.
pub struct ActiveQueue {
    pub queue: Queue,
    pub kick: EventFd,
}

#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("{device}: {what}")]
    Device { device: &'static str, what: String },
}

pub trait VirtioDevice: Send {
    /// Device ID (section 5): 2 block, 4 entropy, 19 socket, ...
    fn device_type(&self) -> u32;
    /// A short name for messages.
    fn name(&self) -> &'static str;
    /// Maximum size of each queue; their number is the device's queue count.
    fn queue_max_sizes(&self) -> &[u16];
    /// Features offered, [`VIRTIO_F_VERSION_1`] included.
    fn features(&self) -> u64;
    /// The features the driver accepted (a subset of [`Self::features`]).
    fn ack_features(&mut self, features: u64);
    /// Reads device config space at `offset`; out-of-range bytes read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes device config space; most devices ignore it.
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// The driver set DRIVER_OK: start serving the queues.
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<ActiveQueue>,
        interrupt: Interrupt,
    ) -> Result<(), ActivateError>;
}

/// Copies the part of `config` that `offset..offset + data.len()` covers; the rest reads zero.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else { return };
    if start >= config.len() {
        return;
    }
    let n = data.len().min(config.len() - start);
    data[..n].copy_from_slice(&config[start..start + n]);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn config_reads_are_bounded() {
        let cfg = [1u8, 2, 3, 4];
        let mut d = [0xffu8; 4];
        read_config_bytes(&cfg, 2, &mut d);
        assert_eq!(d, [3, 4, 0, 0]);
        read_config_bytes(&cfg, 100, &mut d);
        assert_eq!(d, [0; 4]);
        read_config_bytes(&cfg, u64::MAX, &mut d);
        assert_eq!(d, [0; 4]);
    }
}
