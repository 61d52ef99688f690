//! virtio-net's tx and rx paths on guest-controlled memory and a backend-controlled stream.
//!
//! Input: a 2-byte configuration (tx and rx queue sizes), a 2-byte length N, then N bytes the
//! backend sends (length-prefixed frames, or anything), then the guest memory image (64 KiB,
//! zero-filled past the input). Both queues' descriptor tables and rings live in the image,
//! laid out as a hostile guest likes. The device side runs the worker's own loop bodies,
//! [`process_tx`] and [`process_rx`]; the backend is an in-memory stream that takes at most
//! a few KiB, so the "socket full" path runs too.

#![no_main]

use std::io;

use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm::devices::virtio::log_limit::LogLimit;
use vmm::devices::virtio::net::stream::{Inbound, Outbound};
use vmm::devices::virtio::net::{process_rx, process_tx};

const MEM_SIZE: usize = 0x1_0000;

/// What the device writes to the backend: kept up to a bound, then "would block".
struct Sink {
    taken: usize,
}

impl io::Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.taken >= 8192 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(8192 - self.taken);
        self.taken += n;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The backend's bytes, then "would block".
struct Source<'a>(&'a [u8]);

impl io::Read for Source<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.0.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.0.len());
        buf[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        Ok(n)
    }
}

fn queue(mem: &GuestMemoryMmap, size_log: u8, base: u64) -> Option<Queue> {
    let mut q = Queue::new(256).ok()?;
    // 1..=256, powers of two; other sizes are refused by the transport before activation.
    q.set_size(1u16 << (size_log % 9));
    q.try_set_desc_table_address(GuestAddress(base)).ok()?;
    q.try_set_avail_ring_address(GuestAddress(base + 0x1000)).ok()?;
    q.try_set_used_ring_address(GuestAddress(base + 0x2000)).ok()?;
    q.set_ready(true);
    // The transport activates only queues that pass this check.
    q.is_valid(mem).then_some(q)
}

fuzz_target!(|data: &[u8]| {
    let Some(([tx_log, rx_log, n_hi, n_lo], rest)) = data.split_first_chunk::<4>().map(|(c, r)| (*c, r)) else { return };
    let n = usize::from(u16::from_be_bytes([n_hi, n_lo])).min(rest.len());
    let (stream, image) = rest.split_at(n);

    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("guest memory");
    mem.write_slice(&image[..image.len().min(MEM_SIZE)], GuestAddress(0)).expect("image fits");
    let (Some(mut tx), Some(mut rx)) = (queue(&mem, tx_log, 0), queue(&mem, rx_log, 0x8000)) else { return };

    let (mut frame, mut outbound, mut sink, mut log) = (Vec::new(), Outbound::default(), Sink { taken: 0 }, LogLimit::default());
    let _ = process_tx(&mem, &mut tx, &mut frame, &mut outbound, &mut sink, &mut log);
    let (mut inbound, mut source) = (Inbound::default(), Source(stream));
    // Twice each: the second finds whatever the first left.
    let _ = process_rx(&mem, &mut rx, &mut inbound, &mut source, &mut log);
    let _ = process_rx(&mem, &mut rx, &mut inbound, &mut source, &mut log);
    let _ = process_tx(&mem, &mut tx, &mut frame, &mut outbound, &mut sink, &mut log);
});
