//! Legacy port-I/O devices: COM1, the i8042 (only its CPU-reset command) and the boot timer.
//! Ports nobody claims read as 0xff and ignore writes, as on a bare ISA bus.

pub mod boot_timer;
pub mod mmio_bus;
pub mod serial;
pub mod virtio;

use std::sync::Mutex;

use vm_superio::I8042Device;

use crate::exit::{ExitState, VmExit};
use boot_timer::{BootTimer, BOOT_TIMER_PORT};
use serial::{PanicLine, Serial, COM1_PORT, COM1_PORT_COUNT};

/// i8042 data (0x60) .. command/status (0x64) ports.
const I8042_PORT: u16 = 0x60;
const I8042_PORT_COUNT: u16 = 5;

/// The i8042's CPU-reset line: a guest reset ends the VM (Linux `reboot=k`).
pub struct ResetTrigger {
    exits: std::sync::Arc<ExitState>,
    panic: PanicLine,
}

impl vm_superio::Trigger for ResetTrigger {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        let panic = self.panic.lock().ok().and_then(|p| p.clone());
        self.exits.set(match panic {
            Some(line) => VmExit::Panic(line),
            None => VmExit::Reboot,
        });
        Ok(())
    }
}

pub struct LegacyDevices {
    serial: Mutex<Serial>,
    i8042: Mutex<I8042Device<ResetTrigger>>,
    pub boot_timer: BootTimer,
}

impl LegacyDevices {
    pub fn new(serial: Serial, panic: PanicLine, exits: std::sync::Arc<ExitState>, boot_timer: BootTimer) -> Self {
        Self {
            serial: Mutex::new(serial),
            i8042: Mutex::new(I8042Device::new(ResetTrigger { exits, panic })),
            boot_timer,
        }
    }

    pub fn pio_read(&self, port: u16, data: &mut [u8]) {
        let value = if let Some(offset) = offset(port, COM1_PORT, COM1_PORT_COUNT) {
            self.serial.lock().map(|mut s| s.read(offset)).unwrap_or(0xff)
        } else if let Some(offset) = offset(port, I8042_PORT, I8042_PORT_COUNT) {
            self.i8042.lock().map(|mut d| d.read(offset)).unwrap_or(0xff)
        } else {
            0xff
        };
        data.fill(value);
    }

    pub fn pio_write(&self, port: u16, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        if let Some(offset) = offset(port, COM1_PORT, COM1_PORT_COUNT) {
            if let Ok(mut s) = self.serial.lock() {
                if let Err(e) = s.write(offset, value) {
                    tracing::warn!("serial: {e:?}");
                }
            }
        } else if let Some(offset) = offset(port, I8042_PORT, I8042_PORT_COUNT) {
            if let Ok(mut d) = self.i8042.lock() {
                let _ = d.write(offset, value);
            }
        } else if port == BOOT_TIMER_PORT {
            self.boot_timer.write(value);
        }
    }

    /// Flushes the console; called once the VM has stopped.
    pub fn flush(&self) {
        if let Ok(mut s) = self.serial.lock() {
            let _ = std::io::Write::flush(s.writer_mut());
        }
    }
}

fn offset(port: u16, base: u16, count: u16) -> Option<u8> {
    (port >= base && port < base + count).then(|| (port - base) as u8)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use serial::{ConsoleWriter, IrqTrigger};
    use std::sync::Arc;
    use std::time::Instant;
    use vmm_sys_util::eventfd::EventFd;

    fn devices(panic: PanicLine) -> (LegacyDevices, Arc<ExitState>) {
        let exits = Arc::new(ExitState::default());
        let writer = ConsoleWriter::new(Box::new(std::io::sink()), panic.clone());
        let serial = Serial::new(IrqTrigger(EventFd::new(0).unwrap()), writer);
        let d = LegacyDevices::new(serial, panic, exits.clone(), BootTimer::new(Instant::now()));
        (d, exits)
    }

    #[test]
    fn i8042_reset_is_a_reboot_or_a_panic() {
        let (d, exits) = devices(PanicLine::default());
        let mut status = [0u8];
        d.pio_read(0x64, &mut status);
        assert_eq!(status[0] & 0x2, 0, "input buffer empty, so Linux's kb_wait passes");
        d.pio_write(0x64, &[0xfe]);
        assert_eq!(exits.get(), Some(VmExit::Reboot));

        let panic = PanicLine::new(Mutex::new(Some("Kernel panic - not syncing: x".into())));
        let (d, exits) = devices(panic);
        d.pio_write(0x64, &[0xfe]);
        assert_eq!(exits.get(), Some(VmExit::Panic("Kernel panic - not syncing: x".into())));
    }

    #[test]
    fn unclaimed_ports_float_high_and_boot_timer_records() {
        let (d, exits) = devices(PanicLine::default());
        let mut data = [0u8; 2];
        d.pio_read(0x1234, &mut data);
        assert_eq!(data, [0xff, 0xff]);
        d.pio_write(0x80, &[1]);
        d.pio_write(BOOT_TIMER_PORT, &[boot_timer::BOOT_COMPLETE]);
        assert!(d.boot_timer.ms().is_some());
        assert_eq!(exits.get(), None);
    }

    #[test]
    fn serial_line_status_says_transmitter_empty() {
        let (d, _) = devices(PanicLine::default());
        let mut lsr = [0u8];
        d.pio_read(COM1_PORT + 5, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0);
    }
}
