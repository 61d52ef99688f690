//! virtio-net (virtio 1.2, section 5.1): one Ethernet interface, its frames carried over a
//! connected Unix stream socket to a user-mode network stack (passt), or to a tap device the
//! runtime opened beside a container's veth ([`Backend`]; the wire: [`stream`]).
//!
//! The device offers only its MAC address: no checksum or segmentation offloads, one rx and
//! one tx queue. [`frame`] moves one frame between a descriptor chain and a buffer (no file
//! descriptors, tested with a mock driver); [`stream`] frames the socket's bytes; the
//! worker below joins them on one epoll: tx buffers are written to the socket as they come
//! and frames from the socket go to rx buffers as the guest posts them. The socket is read
//! only while a frame can be delivered, so a guest that posts no buffers backs up the stack
//! rather than our memory.

pub mod frame;
pub mod stream;

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;

use virtio_queue::QueueT;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::log_limit::LogLimit;
use super::{read_config_bytes, ActivateError, ActiveQueue, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
use stream::{Framing, Inbound, Outbound};

/// Device ID of a network card (section 5).
pub const VIRTIO_ID_NET: u32 = 1;
/// The device has a given MAC address (section 5.1.3).
pub const VIRTIO_NET_F_MAC: u64 = 1 << 5;
/// rx and tx (section 5.1.2).
const QUEUE_SIZES: [u16; 2] = [256; 2];

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("network backend socket: {0}")]
    Socket(io::Error),
}

/// Where a card's frames go: a stream socket (length-prefixed) or a tap device (one frame per
/// read or write). Either is made non-blocking by [`Net::new`].
pub enum Backend {
    Stream(UnixStream),
    Tap(File),
}

impl Backend {
    fn framing(&self) -> Framing {
        match self {
            Backend::Stream(_) => Framing::LengthPrefixed,
            Backend::Tap(_) => Framing::Datagram,
        }
    }

    fn set_nonblocking(&self) -> io::Result<()> {
        match self {
            Backend::Stream(s) => s.set_nonblocking(true),
            Backend::Tap(f) => {
                // SAFETY: fcntl on a descriptor `f` owns, with integer arguments only.
                let flags = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETFL) };
                // SAFETY: as above.
                if flags < 0 || unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            }
        }
    }
}

impl AsRawFd for Backend {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Backend::Stream(s) => s.as_raw_fd(),
            Backend::Tap(f) => f.as_raw_fd(),
        }
    }
}

impl Read for Backend {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Backend::Stream(s) => s.read(buf),
            Backend::Tap(f) => f.read(buf),
        }
    }
}

impl Write for Backend {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Backend::Stream(s) => s.write(buf),
            Backend::Tap(f) => f.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

pub struct Net {
    mac: [u8; 6],
    /// Taken by the worker at activation.
    socket: Option<Backend>,
}

impl Net {
    /// A network card with address `mac` whose frames go to and come from `backend`.
    pub fn new(mac: [u8; 6], backend: Backend) -> Result<Self, NetError> {
        backend.set_nonblocking().map_err(NetError::Socket)?;
        Ok(Self { mac, socket: Some(backend) })
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn name(&self) -> &'static str {
        "virtio-net"
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC
    }

    fn ack_features(&mut self, _features: u64) {}

    /// Config space: `mac` (section 5.1.4); the fields after it need features we do not offer.
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.mac, offset, data);
    }

    fn activate(&mut self, mem: GuestMemoryMmap, queues: Vec<ActiveQueue>, interrupt: Interrupt) -> Result<(), ActivateError> {
        let fail = |what: String| ActivateError::Device { device: "virtio-net", what };
        let count = queues.len();
        let [rx, tx]: [ActiveQueue; 2] = queues.try_into().map_err(|_| fail(format!("{count} queues ready, need rx and tx")))?;
        let socket = self.socket.take().ok_or_else(|| fail("already activated".into()))?;
        let worker = Worker::new(mem, rx, tx, socket, interrupt).map_err(|e| fail(e.to_string()))?;
        std::thread::Builder::new()
            .name("virtio-net".into())
            .spawn(move || worker.run())
            .map(|_| ())
            .map_err(|e| fail(format!("start worker: {e}")))
    }
}

const TOKEN_RX: u64 = 0;
const TOKEN_TX: u64 = 1;
const TOKEN_SOCKET: u64 = 2;

struct Worker {
    mem: GuestMemoryMmap,
    rx: ActiveQueue,
    tx: ActiveQueue,
    socket: Backend,
    interrupt: Interrupt,
    epoll: Epoll,
    inbound: Inbound,
    outbound: Outbound,
    /// What the socket is watched for now (see [`Worker::watch`]).
    watching: EventSet,
    /// A tx frame, reused.
    frame: Vec<u8>,
    bad_chains: LogLimit,
}

impl Worker {
    fn new(mem: GuestMemoryMmap, rx: ActiveQueue, tx: ActiveQueue, socket: Backend, interrupt: Interrupt) -> io::Result<Self> {
        let framing = socket.framing();
        let epoll = Epoll::new()?;
        for (fd, token) in [(rx.kick.as_raw_fd(), TOKEN_RX), (tx.kick.as_raw_fd(), TOKEN_TX)] {
            epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(EventSet::IN, token))?;
        }
        epoll.ctl(ControlOperation::Add, socket.as_raw_fd(), EpollEvent::new(EventSet::IN, TOKEN_SOCKET))?;
        Ok(Self {
            mem,
            rx,
            tx,
            socket,
            interrupt,
            epoll,
            inbound: Inbound::new(framing),
            outbound: Outbound::new(framing),
            watching: EventSet::IN,
            frame: Vec::with_capacity(frame::MAX_FRAME),
            bad_chains: LogLimit::default(),
        })
    }

    /// Serves the queues until the backend goes away; the guest then sees a link that
    /// carries nothing, and the VM runs on.
    fn run(mut self) {
        if let Err(error) = crate::seccomp::install(crate::seccomp::ThreadKind::Device) {
            tracing::error!("virtio-net: {error}; the device stops");
            return;
        }
        let mut events = [EpollEvent::default(); 4];
        loop {
            if let Err(e) = self.service() {
                tracing::warn!("virtio-net: {e}; the network is down");
                return;
            }
            let n = match self.epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::error!("virtio-net: epoll wait: {e}; the device stops");
                    return;
                }
            };
            for event in &events[..n] {
                // The eventfds are blocking, but epoll said they are readable; the socket is
                // served by `service` whatever woke us.
                match event.data() {
                    TOKEN_RX => drop(self.rx.kick.read()),
                    TOKEN_TX => drop(self.tx.kick.read()),
                    _ if event.event_set().intersects(EventSet::HANG_UP | EventSet::ERROR) => {
                        tracing::warn!("virtio-net: the network backend hung up; the network is down");
                        return;
                    }
                    _ => {}
                }
            }
        }
    }

    /// Moves every frame that can move both ways, interrupts the guest if it has news, and
    /// watches the socket for what would let more move.
    fn service(&mut self) -> io::Result<()> {
        let tx_used = self.send()?;
        let rx_used = self.receive()?;
        let mut notify = false;
        for (used, queue) in [(rx_used, &mut self.rx.queue), (tx_used, &mut self.tx.queue)] {
            notify |= used && queue.needs_notification(&self.mem).unwrap_or(true);
        }
        if notify {
            if let Err(e) = self.interrupt.signal_used() {
                tracing::warn!("virtio-net: interrupt: {e}");
            }
        }
        let mut wanted = EventSet::empty();
        // Readable only while a frame read could be delivered.
        wanted.set(EventSet::IN, !self.inbound_blocked());
        wanted.set(EventSet::OUT, !self.outbound.is_empty());
        self.watch(wanted)
    }

    fn send(&mut self) -> io::Result<bool> {
        process_tx(&self.mem, &mut self.tx.queue, &mut self.frame, &mut self.outbound, &mut self.socket, &mut self.bad_chains)
    }

    fn receive(&mut self) -> io::Result<bool> {
        process_rx(&self.mem, &mut self.rx.queue, &mut self.inbound, &mut self.socket, &mut self.bad_chains)
    }

    /// Whether reading the socket must wait for rx buffers.
    fn inbound_blocked(&self) -> bool {
        !has_buffers(&self.rx.queue, &self.mem)
    }

    fn watch(&mut self, wanted: EventSet) -> io::Result<()> {
        if wanted != self.watching {
            self.epoll.ctl(ControlOperation::Modify, self.socket.as_raw_fd(), EpollEvent::new(wanted, TOKEN_SOCKET))?;
            self.watching = wanted;
        }
        Ok(())
    }
}

/// Guest to backend: takes tx buffers while the socket keeps up (`frame` is scratch space).
/// Returns whether buffers were used. Public, with [`process_rx`], so that the fuzz target
/// (fuzz/) drives exactly the worker's code.
pub fn process_tx(
    mem: &GuestMemoryMmap,
    queue: &mut virtio_queue::Queue,
    frame: &mut Vec<u8>,
    outbound: &mut Outbound,
    socket: &mut impl io::Write,
    log: &mut LogLimit,
) -> io::Result<bool> {
    let mut used = false;
    while outbound.flush(socket)? {
        let Some(chain) = queue.pop_descriptor_chain(mem) else { break };
        let head = chain.head_index();
        match frame::read_tx(mem, chain, frame) {
            Ok(()) => outbound.push(frame),
            Err(e) => crate::limited_warn!(log, "virtio-net: tx chain {head} dropped: {e}"),
        }
        if let Err(e) = queue.add_used(mem, head, 0) {
            crate::limited_warn!(log, "virtio-net: tx used ring: {e:?}");
        }
        used = true;
    }
    Ok(used)
}

/// Backend to guest: reads frames while the guest has rx buffers for them. Returns whether
/// buffers were used.
pub fn process_rx(
    mem: &GuestMemoryMmap,
    queue: &mut virtio_queue::Queue,
    inbound: &mut Inbound,
    socket: &mut impl io::Read,
    log: &mut LogLimit,
) -> io::Result<bool> {
    let mut used = false;
    while has_buffers(queue, mem) {
        let Some(frame) = inbound.read_frame(socket)? else { break };
        let Some(chain) = queue.pop_descriptor_chain(mem) else { break };
        let head = chain.head_index();
        let len = frame::write_rx(mem, chain, frame).unwrap_or_else(|e| {
            crate::limited_warn!(log, "virtio-net: rx frame dropped, buffer {head}: {e}");
            0
        });
        inbound.take();
        if let Err(e) = queue.add_used(mem, head, len) {
            crate::limited_warn!(log, "virtio-net: rx used ring: {e:?}");
        }
        used = true;
    }
    Ok(used)
}

/// Whether the driver has made buffers available that the device has not taken; a ring we
/// cannot read has none.
fn has_buffers(queue: &virtio_queue::Queue, mem: &GuestMemoryMmap) -> bool {
    queue
        .avail_idx(mem, std::sync::atomic::Ordering::Acquire)
        .is_ok_and(|idx| idx.0 != queue.next_avail())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use crate::devices::virtio::test_driver::Ring;
    use std::io::{Read, Write};
    use std::sync::atomic::AtomicU32;
    use std::sync::Arc;
    use std::time::Duration;
    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::eventfd::EventFd;

    #[test]
    fn identity_and_config_space() {
        let (a, _b) = UnixStream::pair().unwrap();
        let dev = Net::new([0x52, 0x54, 0, 0x12, 0x34, 0x56], Backend::Stream(a)).unwrap();
        assert_eq!((dev.device_type(), dev.queue_max_sizes().len()), (1, 2));
        assert_eq!(dev.features(), VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC);
        let mut cfg = [0xffu8; 8];
        dev.read_config(0, &mut cfg);
        assert_eq!(cfg, [0x52, 0x54, 0, 0x12, 0x34, 0x56, 0, 0]);
    }

    #[test]
    fn frames_cross_both_ways_and_a_bad_chain_is_dropped_alone() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        let (mut rx, mut tx) = (Ring::new(0), Ring::new(0x1_0000));
        let kicks = [(); 2].map(|_| EventFd::new(0).unwrap());
        let irq = Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let interrupt = Interrupt::new(Arc::new(AtomicU32::new(0)), irq.clone());
        let (device_end, mut backend) = UnixStream::pair().unwrap();
        let mut dev = Net::new([2; 6], Backend::Stream(device_end)).unwrap();
        let queues = [&rx, &tx].into_iter().zip(&kicks).map(|(r, k)| ActiveQueue { queue: r.queue(), kick: k.try_clone().unwrap() });
        dev.activate(mem.clone(), queues.collect(), interrupt).unwrap();
        backend.set_read_timeout(Some(Duration::from_secs(5))).unwrap();

        // Guest to backend: a bad chain (too short) is used and dropped, the good one follows.
        let frame: Vec<u8> = (0..64u8).collect();
        mem.write_slice(&frame, GuestAddress(0x20_0000 + 12)).unwrap();
        tx.offer(&mem, &[(0x20_0000, 5, false)]);
        tx.offer(&mem, &[(0x20_0000, 12 + 64, false)]);
        kicks[1].write(1).unwrap();
        let mut got = [0u8; 4 + 64];
        backend.read_exact(&mut got).unwrap();
        assert_eq!((&got[..4], &got[4..]), (&[0u8, 0, 0, 64][..], &frame[..]));
        let mut used = tx.wait_used(&mem);
        if used.len() < 2 {
            used.extend(tx.wait_used(&mem));
        }
        assert_eq!(used, [(0, 0), (1, 0)]);

        // Backend to guest: the frame waits in the socket until the guest posts a buffer.
        let reply = [0xabu8; 60];
        backend.write_all(&[0, 0, 0, 60]).unwrap();
        backend.write_all(&reply).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert!(rx.used(&mem).is_empty());
        rx.offer(&mem, &[(0x30_0000, 1526, true)]);
        kicks[0].write(1).unwrap();
        assert_eq!(rx.wait_used(&mem), [(0, 12 + 60)]);
        let mut body = [0u8; 60];
        mem.read_slice(&mut body, GuestAddress(0x30_0000 + 12)).unwrap();
        assert_eq!(body, reply);
        assert!(irq.read().unwrap() > 0, "the guest was interrupted");
    }
}
