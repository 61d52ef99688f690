//! virtio-vsock: the device's handling of guest tx packets, driven as its worker drives it.
//!
//! The input is a script of operations for a hostile guest and a host peer:
//! - the guest queues a tx packet: a 44-byte header from the input (its CIDs optionally
//!   forced to the right ones, so most packets get past the CID check), a payload, and a
//!   split of header + payload over descriptors (some may point outside guest memory);
//! - the guest gives rx buffers of input-chosen sizes;
//! - the host peer accepts connections the guest made (to host port 52 via `<uds>_52`),
//!   writes bytes to them, shuts them down or closes them, or reads what they received;
//! - a host client connects to the device socket and sends a CONNECT line.
//!
//! After each operation the production [`Muxer`] is pumped the way the worker's loop does it
//! (`process_tx`, `process_rx`, `sync` on a real epoll, `on_ready` for each event). Every
//! packet the device puts on the rx queue is checked: addressed from the host to this guest,
//! a stream packet with a known op, its payload within the buffer and the used length right.

#![no_main]

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, ByteValued, Bytes, GuestAddress, GuestMemoryMmap};
use vmm::devices::virtio::vsock::event_handler::{readiness, EpollRegistry};
use vmm::devices::virtio::vsock::muxer::Muxer;
use vmm::devices::virtio::vsock::packet::{Header, HEADER_SIZE, HOST_CID, OP_CREDIT_REQUEST, OP_REQUEST, TYPE_STREAM};
use vmm::devices::virtio::vsock::uds::port_path;
use vmm_sys_util::epoll::{Epoll, EpollEvent};
use vmm_sys_util::tempdir::TempDir;

const CID: u64 = 3;
const QSIZE: u16 = 64;
const MEM_SIZE: usize = 0x10_0000;
const RX_RING: u64 = 0;
const TX_RING: u64 = 0x1_0000;
const RX_BUFS: u64 = 0x2_0000;
const RX_SLOT: u64 = 0x1100;
const TX_BUFS: u64 = 0x8_0000;
const TX_SLOT: u64 = 0x2000;
/// Largest payload the script writes (the header's len field may claim anything).
const TX_PAYLOAD_MAX: usize = (TX_SLOT as usize) - HEADER_SIZE;
/// The host port a guest can reach: `<uds>_52` has a listener.
const HOST_PORT: u32 = 52;
const OUTSIDE: u64 = 0xffff_0000_0000;

/// The device socket's directory and the host listener for port 52, made once.
struct Host {
    _dir: TempDir,
    uds: PathBuf,
    listener: UnixListener,
}

fn host() -> &'static Host {
    static HOST: OnceLock<Host> = OnceLock::new();
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    // Statics are never dropped: remove the directory when libFuzzer exits.
    extern "C" fn remove_dir() {
        if let Some(dir) = DIR.get() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    HOST.get_or_init(|| {
        let dir = TempDir::new_with_prefix("/tmp/vsock-fuzz-").expect("tempdir");
        let _ = DIR.set(dir.as_path().to_owned());
        // SAFETY: registers a function with no preconditions to run at exit.
        unsafe { libc::atexit(remove_dir) };
        let uds = dir.as_path().join("v.sock");
        let listener = UnixListener::bind(port_path(&uds, HOST_PORT)).expect("bind port 52");
        listener.set_nonblocking(true).expect("nonblocking");
        Host { _dir: dir, uds, listener }
    })
}

/// Driver side of one split queue (descriptors at `base`, avail at +0x1000, used at +0x2000).
struct Ring {
    base: u64,
    next_desc: u16,
    used_seen: u16,
}

impl Ring {
    fn new(base: u64) -> Self {
        Self { base, next_desc: 0, used_seen: 0 }
    }

    fn queue(&self) -> Queue {
        let mut q = Queue::new(QSIZE).expect("queue");
        q.set_size(QSIZE);
        q.try_set_desc_table_address(GuestAddress(self.base)).expect("desc");
        q.try_set_avail_ring_address(GuestAddress(self.base + 0x1000)).expect("avail");
        q.try_set_used_ring_address(GuestAddress(self.base + 0x2000)).expect("used");
        q.set_ready(true);
        q
    }

    fn offer(&mut self, mem: &GuestMemoryMmap, descs: &[(u64, u32, bool)]) -> u16 {
        let head = self.next_desc;
        for (k, &(addr, len, writable)) in descs.iter().enumerate() {
            let index = self.next_desc;
            self.next_desc = (self.next_desc + 1) % QSIZE;
            let mut flags = if writable { VRING_DESC_F_WRITE as u16 } else { 0 };
            if k + 1 < descs.len() {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            let desc = SplitDescriptor::new(addr, len, flags, self.next_desc);
            mem.write_obj(desc, GuestAddress(self.base + 16 * u64::from(index))).expect("desc write");
        }
        let avail = GuestAddress(self.base + 0x1000);
        let idx: u16 = mem.read_obj(avail.unchecked_add(2)).expect("avail idx");
        mem.write_obj(head, avail.unchecked_add(4 + 2 * u64::from(idx % QSIZE))).expect("avail ring");
        mem.write_obj(idx.wrapping_add(1), avail.unchecked_add(2)).expect("avail idx");
        head
    }

    fn used(&mut self, mem: &GuestMemoryMmap) -> Vec<(u16, u32)> {
        let used = GuestAddress(self.base + 0x2000);
        let idx: u16 = mem.read_obj(used.unchecked_add(2)).expect("used idx");
        let mut out = Vec::new();
        while self.used_seen != idx {
            let at = used.unchecked_add(4 + 8 * u64::from(self.used_seen % QSIZE));
            let id: u32 = mem.read_obj(at).expect("used id");
            let len: u32 = mem.read_obj(at.unchecked_add(4)).expect("used len");
            out.push((id as u16, len));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }
}

struct Bed {
    mem: GuestMemoryMmap,
    rx: Ring,
    tx: Ring,
    rxq: Queue,
    txq: Queue,
    muxer: Muxer,
    epoll: Epoll,
    /// rx buffers given: (head, room in bytes).
    rx_given: Vec<(u16, u32)>,
    /// Host ends of connections the guest made to port 52, and of host clients.
    peers: Vec<UnixStream>,
}

impl Bed {
    fn new() -> Self {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("memory");
        let (rx, tx) = (Ring::new(RX_RING), Ring::new(TX_RING));
        let (rxq, txq) = (rx.queue(), tx.queue());
        let muxer = Muxer::new(CID, host().uds.clone());
        let epoll = Epoll::new().expect("epoll");
        Self { mem, rx, tx, rxq, txq, muxer, epoll, rx_given: Vec::new(), peers: Vec::new() }
    }

    /// The worker's service loop plus one round of epoll events, until quiet.
    fn pump(&mut self) {
        for _ in 0..16 {
            let mut run_tx = true;
            for _ in 0..64 {
                if run_tx {
                    self.muxer.process_tx(&self.mem, &mut self.txq);
                }
                self.muxer.process_rx(&self.mem, &mut self.rxq);
                let closed = self.muxer.sync(&mut EpollRegistry(&self.epoll));
                run_tx = self.muxer.tx_stalled() && self.muxer.tx_can_resume();
                if !run_tx && !closed {
                    break;
                }
            }
            self.check_rx();
            let mut events = [EpollEvent::default(); 16];
            let n = self.epoll.wait(0, &mut events).expect("epoll wait");
            if n == 0 {
                return;
            }
            for e in &events[..n] {
                self.muxer.on_ready(e.data(), readiness(e.event_set()));
            }
        }
    }

    /// Every packet the device gave the guest is well formed and fits its buffer.
    fn check_rx(&mut self) {
        for (id, len) in self.rx.used(&self.mem) {
            let Some(pos) = self.rx_given.iter().position(|(head, _)| *head == id) else {
                panic!("device used rx descriptor {id}, which is not an outstanding buffer");
            };
            let (_, room) = self.rx_given.remove(pos);
            if len == 0 {
                continue; // a buffer the device could not use (too small for a header)
            }
            assert!(len <= room, "used length {len} over the {room}-byte buffer");
            let at = GuestAddress(RX_BUFS + u64::from(id) * RX_SLOT);
            let h: Header = self.mem.read_obj(at).expect("rx header");
            assert_eq!(len as usize, HEADER_SIZE + h.payload_len() as usize, "used length vs header len");
            assert_eq!((h.src_cid(), h.dst_cid()), (HOST_CID, CID), "rx packet addressing");
            assert_eq!(h.kind(), TYPE_STREAM);
            assert!((OP_REQUEST..=OP_CREDIT_REQUEST).contains(&h.op()), "rx op {}", h.op());
        }
    }

    fn send(&mut self, u: &mut Unstructured<'_>) -> Option<()> {
        let mut raw = [0u8; HEADER_SIZE];
        u.fill_buffer(&mut raw).ok()?;
        let mut header = Header::from_slice(&raw).copied().unwrap_or_default();
        let flags: u8 = u.arbitrary().ok()?;
        let payload_len = u.int_in_range(0..=TX_PAYLOAD_MAX).ok()?;
        let payload = u.bytes(payload_len.min(u.len())).ok()?.to_vec();
        if flags & 1 != 0 {
            // A well-addressed packet: keep the rest of the header as the input has it.
            let fixed = Header::from_guest(CID, header.src_port(), header.dst_port(), header.op())
                .with_kind(if flags & 2 != 0 { TYPE_STREAM } else { header.kind() })
                .with_flags(header.flags())
                .with_credit(header.buf_alloc(), header.fwd_cnt());
            header = fixed.with_len(if flags & 4 != 0 { payload.len() as u32 } else { header.payload_len() });
        }
        let slot = TX_BUFS + u64::from(self.tx.next_desc) * TX_SLOT;
        self.mem.write_slice(header.as_slice(), GuestAddress(slot)).ok()?;
        self.mem.write_slice(&payload, GuestAddress(slot + HEADER_SIZE as u64)).ok()?;
        // Split header + payload over 1..=4 descriptors at input-chosen cut points.
        let total = (HEADER_SIZE + payload.len()) as u32;
        let pieces = u.int_in_range(1..=4u8).ok()?;
        let mut descs = Vec::new();
        let mut offset = 0u32;
        for k in 0..pieces {
            let len = if k + 1 == pieces { total - offset } else { u.int_in_range(0..=total - offset).ok()? };
            let kind: u8 = u.arbitrary().ok()?;
            let addr = match kind % 16 {
                0 => OUTSIDE,
                _ => slot + u64::from(offset),
            };
            // Some chains carry a device-writable descriptor, which a tx reader stops at.
            descs.push((addr, len, kind % 16 == 1));
            offset += len;
        }
        self.tx.offer(&self.mem, &descs);
        Some(())
    }

    fn give_rx(&mut self, u: &mut Unstructured<'_>) -> Option<()> {
        let n = u.int_in_range(1..=8u8).ok()?;
        for _ in 0..n {
            if self.rx_given.len() >= usize::from(QSIZE) {
                break;
            }
            let room = match u.arbitrary::<u8>().ok()? % 4 {
                0 => u.int_in_range(0..=(RX_SLOT as u32)).ok()?,
                _ => RX_SLOT as u32,
            };
            let id = self.rx.next_desc;
            let at = RX_BUFS + u64::from(id) * RX_SLOT;
            self.rx.offer(&self.mem, &[(at, room, true)]);
            self.rx_given.push((id, room));
        }
        Some(())
    }

    fn accept_peers(&mut self) {
        loop {
            match host().listener.accept() {
                Ok((s, _)) => {
                    s.set_nonblocking(true).expect("nonblocking");
                    self.peers.push(s);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }

    fn host_op(&mut self, u: &mut Unstructured<'_>) -> Option<()> {
        self.accept_peers();
        if self.peers.is_empty() {
            return Some(());
        }
        let i = u.choose_index(self.peers.len()).ok()?;
        match u.arbitrary::<u8>().ok()? % 4 {
            0 => {
                let n = u.int_in_range(0..=8192usize).ok()?;
                let bytes = u.bytes(n.min(u.len())).ok()?;
                let _ = self.peers[i].write(bytes);
            }
            1 => {
                let _ = self.peers[i].shutdown(std::net::Shutdown::Write);
            }
            2 => drop(self.peers.swap_remove(i)),
            _ => {
                let mut buf = [0u8; 4096];
                while matches!(self.peers[i].read(&mut buf), Ok(n) if n > 0) {}
            }
        }
        Some(())
    }

    fn host_client(&mut self, u: &mut Unstructured<'_>) -> Option<()> {
        let (ours, theirs) = UnixStream::pair().ok()?;
        let port: u8 = u.arbitrary().ok()?;
        let line = match u.arbitrary::<u8>().ok()? % 4 {
            0 => {
                let n = u.int_in_range(0..=40usize).ok()?;
                u.bytes(n.min(u.len())).ok()?.to_vec()
            }
            _ => format!("CONNECT {port}\n").into_bytes(),
        };
        (&ours).write_all(&line).ok()?;
        ours.set_nonblocking(true).ok()?;
        self.muxer.add_host_client(theirs);
        self.peers.push(ours);
        Some(())
    }
}

fn run(data: &[u8]) -> Option<()> {
    let mut u = Unstructured::new(data);
    let mut bed = Bed::new();
    for _ in 0..64 {
        if u.is_empty() {
            break;
        }
        match u.arbitrary::<u8>().ok()? % 8 {
            0..=3 => bed.send(&mut u)?,
            4 | 5 => bed.give_rx(&mut u)?,
            6 => bed.host_op(&mut u)?,
            _ => bed.host_client(&mut u)?,
        }
        bed.pump();
    }
    Some(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(data);
    // Connections nobody accepted would fill the listener's backlog for later inputs.
    while host().listener.accept().is_ok() {}
});
