//! The virtio-mmio devices of a VM: where each sits, its interrupt, and the routing of vCPU
//! MMIO exits to it. Adding a device returns the kernel command-line entry that declares it to
//! the guest (`virtio_mmio.device=`, Documentation/admin-guide/kernel-parameters.txt);
//! [`MmioBus::register`] then tells KVM about each device's notification eventfds (ioeventfd on
//! QueueNotify) and its irqfd, once the VM's interrupt controllers exist.

use std::sync::Mutex;

use kvm_ioctls::{IoEventAddress, VmFd};

use crate::arch::x86_64::layout::{MMIO_DEVICES_START, VIRTIO_IRQ_BASE};
use crate::devices::virtio::mmio::{MmioTransport, MMIO_WINDOW, QUEUE_NOTIFY};

#[derive(Debug, thiserror::Error)]
pub enum MmioBusError {
    #[error("{device}: register {what} with KVM: {source}")]
    Kvm { device: &'static str, what: &'static str, source: kvm_ioctls::Error },
}

#[derive(Default)]
pub struct MmioBus {
    devices: Vec<Mutex<MmioTransport>>,
}

impl MmioBus {
    /// Places `transport` in the next window. Returns the command-line parameter declaring it.
    pub fn add(&mut self, transport: MmioTransport) -> String {
        let (base, irq) = slot(self.devices.len());
        self.devices.push(Mutex::new(transport));
        format!("virtio_mmio.device=4K@{base:#x}:{irq}")
    }

    /// Wires every device to KVM: ioeventfds on QueueNotify (matching the queue index), irqfds.
    pub fn register(&self, vm: &VmFd) -> Result<(), MmioBusError> {
        for (index, device) in self.devices.iter().enumerate() {
            let (base, irq) = slot(index);
            let Ok(transport) = device.lock() else { continue };
            let name = transport.device_name();
            let kvm_err = |what| move |source| MmioBusError::Kvm { device: name, what, source };
            for (queue, kick) in transport.queue_kicks().iter().enumerate() {
                vm.register_ioevent(kick, &IoEventAddress::Mmio(base + QUEUE_NOTIFY), queue as u32)
                    .map_err(kvm_err("ioeventfd"))?;
            }
            vm.register_irqfd(transport.irqfd(), irq).map_err(kvm_err("irqfd"))?;
        }
        Ok(())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.devices.len()
    }

    fn find(&self, addr: u64) -> Option<(&Mutex<MmioTransport>, u64)> {
        let offset = addr.checked_sub(MMIO_DEVICES_START)?;
        let device = self.devices.get(usize::try_from(offset / MMIO_WINDOW).ok()?)?;
        Some((device, offset % MMIO_WINDOW))
    }

    /// A vCPU read; addresses no device claims read as all ones.
    pub fn read(&self, addr: u64, data: &mut [u8]) {
        match self.find(addr) {
            Some((device, offset)) => match device.lock() {
                Ok(t) => t.read(offset, data),
                Err(_) => data.fill(0xff),
            },
            None => data.fill(0xff),
        }
    }

    /// A vCPU write; writes no device claims are dropped.
    pub fn write(&self, addr: u64, data: &[u8]) {
        if let Some((device, offset)) = self.find(addr) {
            if let Ok(mut t) = device.lock() {
                t.write(offset, data);
            }
        }
    }
}

/// Window base and interrupt line of device `index`.
fn slot(index: usize) -> (u64, u32) {
    (MMIO_DEVICES_START + index as u64 * MMIO_WINDOW, VIRTIO_IRQ_BASE + index as u32)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use crate::devices::virtio::block::Block;
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    #[test]
    fn devices_get_consecutive_windows_and_irqs_and_reads_route_by_address() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let file = std::env::temp_dir().join(format!("microvm-bus-{}", std::process::id()));
        std::fs::write(&file, vec![0u8; 4096]).unwrap();
        let mut bus = MmioBus::default();
        let mut decls = Vec::new();
        for _ in 0..2 {
            let dev = Block::open(&file, true, "t").unwrap();
            decls.push(bus.add(MmioTransport::new(Box::new(dev), mem.clone()).unwrap()));
        }
        std::fs::remove_file(&file).unwrap();
        assert_eq!(decls, ["virtio_mmio.device=4K@0xd0000000:5", "virtio_mmio.device=4K@0xd0001000:6"]);
        assert_eq!(bus.len(), 2);
        let mut magic = [0u8; 4];
        bus.read(MMIO_DEVICES_START + MMIO_WINDOW, &mut magic);
        assert_eq!(&magic, b"virt");
        bus.read(MMIO_DEVICES_START + 2 * MMIO_WINDOW, &mut magic);
        assert_eq!(magic, [0xff; 4], "no third device");
        bus.read(0x1000, &mut magic);
        assert_eq!(magic, [0xff; 4]);
    }
}
