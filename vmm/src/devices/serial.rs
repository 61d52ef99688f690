//! COM1: a 16550A UART (vm-superio) whose output goes to a host file or stdout.
//!
//! The writer also watches the guest console for the kernel's panic line, so that a guest
//! that panics and then resets (`panic=-1 reboot=k`) is reported as a panic, with its reason,
//! rather than as a reboot. It keeps the last [`TAIL_BYTES`] bytes too, whatever the sink, for
//! the guest-state report (see [`crate::vstate::dump`]).

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::{Arc, Mutex, PoisonError};

use vm_superio::Trigger;
use vmm_sys_util::eventfd::EventFd;

/// COM1's I/O ports and its ISA interrupt line.
pub const COM1_PORT: u16 = 0x3f8;
pub const COM1_PORT_COUNT: u16 = 8;
pub const COM1_IRQ: u32 = 4;

const PANIC_MARKER: &str = "Kernel panic - not syncing";
const MAX_LINE: usize = 512;
/// How much of the console's end the guest-state report shows.
pub const TAIL_BYTES: usize = 4096;

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

/// The last bytes the guest wrote to its console, readable from any thread.
#[derive(Clone, Debug)]
pub struct ConsoleTail {
    bytes: Arc<Mutex<VecDeque<u8>>>,
    capacity: usize,
}

impl ConsoleTail {
    pub(crate) fn new(capacity: usize) -> Self {
        Self { bytes: Arc::new(Mutex::new(VecDeque::with_capacity(capacity))), capacity }
    }

    pub(crate) fn push(&self, buf: &[u8]) {
        let capacity = self.capacity;
        let mut tail = self.bytes.lock().unwrap_or_else(PoisonError::into_inner);
        let buf = &buf[buf.len().saturating_sub(capacity)..];
        let excess = (tail.len() + buf.len()).saturating_sub(capacity);
        tail.drain(..excess);
        tail.extend(buf);
    }

    /// The bytes kept, oldest first.
    pub fn contents(&self) -> Vec<u8> {
        self.bytes.lock().unwrap_or_else(PoisonError::into_inner).iter().copied().collect()
    }
}

/// Console output: passes every byte on, remembers the first kernel panic line and the tail.
pub struct ConsoleWriter {
    out: Box<dyn Write + Send>,
    line: Vec<u8>,
    panic: PanicLine,
    tail: ConsoleTail,
}

impl ConsoleWriter {
    pub fn new(out: Box<dyn Write + Send>, panic: PanicLine) -> Self {
        Self { out, line: Vec::with_capacity(MAX_LINE), panic, tail: ConsoleTail::new(TAIL_BYTES) }
    }

    /// A view of the last [`TAIL_BYTES`] bytes written.
    pub fn tail(&self) -> ConsoleTail {
        self.tail.clone()
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
        self.tail.push(buf);
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

    #[test]
    fn the_tail_keeps_the_last_bytes_across_wrap_around() {
        let tail = ConsoleTail::new(8);
        tail.push(b"abc");
        assert_eq!(tail.contents(), b"abc");
        tail.push(b"defgh");
        assert_eq!(tail.contents(), b"abcdefgh");
        tail.push(b"ij");
        assert_eq!(tail.contents(), b"cdefghij");
        tail.push(b"0123456789xyz"); // longer than the buffer
        assert_eq!(tail.contents(), b"56789xyz");
        for b in b"ABCDEFGHIJ" {
            tail.push(&[*b]);
        }
        assert_eq!(tail.contents(), b"CDEFGHIJ");

        // The writer keeps TAIL_BYTES of what passes through it, even into a sink.
        let mut w = ConsoleWriter::new(Box::new(io::sink()), PanicLine::default());
        let text: Vec<u8> = (0..3 * TAIL_BYTES).map(|i| b'a' + (i % 26) as u8).collect();
        w.write_all(&text).unwrap();
        assert_eq!(w.tail().contents(), &text[text.len() - TAIL_BYTES..]);
    }
}
