//! COM1: a 16550A UART (vm-superio) whose output goes to a host file or stdout.
//!
//! The writer also watches the guest console for the kernel's panic line, so that a guest
//! that panics and then resets (`panic=-1 reboot=k`) is reported as a panic, with its reason,
//! rather than as a reboot.

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use vm_superio::Trigger;
use vmm_sys_util::eventfd::EventFd;

/// COM1's I/O ports and its ISA interrupt line.
pub const COM1_PORT: u16 = 0x3f8;
pub const COM1_PORT_COUNT: u16 = 8;
pub const COM1_IRQ: u32 = 4;

const PANIC_MARKER: &str = "Kernel panic - not syncing";
const MAX_LINE: usize = 512;

/// The UART's interrupt line: an eventfd registered with KVM as an irqfd.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// What the guest's first panic line said, shared with the vCPU that sees the reset.
pub type PanicLine = Arc<Mutex<Option<String>>>;

/// Console output: passes every byte on, remembers the first kernel panic line.
pub struct ConsoleWriter {
    out: Box<dyn Write + Send>,
    line: Vec<u8>,
    panic: PanicLine,
}

impl ConsoleWriter {
    pub fn new(out: Box<dyn Write + Send>, panic: PanicLine) -> Self {
        Self { out, line: Vec::with_capacity(MAX_LINE), panic }
    }

    fn scan(&mut self, byte: u8) {
        if byte != b'\n' {
            if self.line.len() < MAX_LINE {
                self.line.push(byte);
            }
            return;
        }
        let line = String::from_utf8_lossy(&self.line);
        if let Some(at) = line.find(PANIC_MARKER) {
            if let Ok(mut slot) = self.panic.lock() {
                slot.get_or_insert_with(|| line[at..].trim_end().to_string());
            }
        }
        self.line.clear();
    }
}

impl Write for ConsoleWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        buf.iter().for_each(|b| self.scan(*b));
        // A console that cannot be written (a closed pipe) must not stop the guest.
        let _ = self.out.write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

pub type Serial = vm_superio::Serial<IrqTrigger, vm_superio::serial::NoEvents, ConsoleWriter>;

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn remembers_the_first_panic_line_only() {
        let panic = PanicLine::default();
        let mut w = ConsoleWriter::new(Box::new(io::sink()), panic.clone());
        w.write_all(b"[    0.1] ok\n[    0.2] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000000\r\n").unwrap();
        w.write_all(b"Kernel panic - not syncing: second\n").unwrap();
        assert_eq!(
            panic.lock().unwrap().as_deref(),
            Some("Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000000")
        );
    }

    #[test]
    fn ordinary_output_is_not_a_panic_and_long_lines_are_bounded() {
        let panic = PanicLine::default();
        let mut w = ConsoleWriter::new(Box::new(io::sink()), panic.clone());
        w.write_all(&vec![b'x'; 10 * MAX_LINE]).unwrap();
        assert!(w.line.len() <= MAX_LINE);
        w.write_all(b"\nhello\n").unwrap();
        assert!(panic.lock().unwrap().is_none());
    }
}
