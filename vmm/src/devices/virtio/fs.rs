//! virtio-fs (virtio 1.2, section 5.11) served by a vhost-user backend, virtiofsd.
//!
//! The VMM does not parse FUSE: it is the vhost-user *frontend* (rust-vmm's `vhost` crate).
//! At boot it connects, takes ownership of the backend and reads its features; when the
//! driver sets DRIVER_OK it sends the backend the guest's memory (the memfd regions, so the
//! backend maps the same pages), each queue's size and addresses, the queue's kick eventfd
//! (the ioeventfd KVM signals on QueueNotify, so guest kicks reach the backend without us)
//! and a call eventfd per queue. A worker thread relays the call eventfds to the guest's
//! interrupt line: the MMIO transport's InterruptStatus must show the used-ring bit, which
//! an irqfd alone would not set.
//!
//! If the backend dies, its socket hangs up. The worker then serves the queues itself and
//! answers every request, those the backend took and never answered included, with a FUSE
//! error (EIO), so the guest's file system calls fail instead of hanging the container.

use std::io;
use std::num::Wrapping;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::{Frontend, VhostUserFrontend, VhostUserVirtioFeatures};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::log_limit::LogLimit;
use super::{read_config_bytes, ActivateError, ActiveQueue, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};

/// Device ID of a file system device (section 5).
pub const VIRTIO_ID_FS: u32 = 26;
/// The `tag` field of the config space, a name the guest mounts by (section 5.11.4).
pub const TAG_LEN: usize = 36;
/// One high-priority queue (FUSE_INTERRUPT, FORGET) and one request queue.
const QUEUE_SIZES: [u16; 2] = [1024; 2];
/// FUSE_FORGET and FUSE_BATCH_FORGET: requests without a reply.
const FUSE_FORGET: u32 = 2;
const FUSE_BATCH_FORGET: u32 = 42;
/// `struct fuse_in_header` and `struct fuse_out_header` (include/uapi/linux/fuse.h).
const FUSE_IN_HEADER_LEN: usize = 40;
const FUSE_OUT_HEADER_LEN: u32 = 16;

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("virtio-fs tag {0:?}: 1 to {TAG_LEN} bytes")]
    Tag(String),
    #[error("virtio-fs {tag}: vhost-user backend: {source}")]
    Backend { tag: String, source: vhost::Error },
}

pub struct Fs {
    tag: String,
    frontend: Frontend,
    /// The backend's virtio features, VHOST_USER_F_PROTOCOL_FEATURES included.
    backend_features: u64,
    acked: u64,
}

impl Fs {
    /// A device named `tag` whose backend listens on the other end of `socket`: takes
    /// ownership of the backend and settles the protocol features now, so a backend that is
    /// not there fails the boot rather than the guest's mount.
    pub fn new(socket: UnixStream, tag: &str) -> Result<Self, FsError> {
        if tag.is_empty() || tag.len() > TAG_LEN {
            return Err(FsError::Tag(tag.to_string()));
        }
        let backend = |source| FsError::Backend { tag: tag.to_string(), source };
        let mut frontend = Frontend::from_stream(socket, QUEUE_SIZES.len() as u64);
        frontend.set_owner().map_err(backend)?;
        let backend_features = frontend.get_features().map_err(backend)?;
        if backend_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0 {
            // We use none of the protocol extensions; asking for the set keeps the rings
            // disabled until SET_VRING_ENABLE, which is the behaviour we rely on.
            frontend.get_protocol_features().map_err(backend)?;
            frontend.set_protocol_features(VhostUserProtocolFeatures::empty()).map_err(backend)?;
        }
        Ok(Self { tag: tag.to_string(), frontend, backend_features, acked: 0 })
    }

    /// Sends the backend the memory table and the rings, and enables them.
    fn start_backend(&self, mem: &GuestMemoryMmap, queues: &[ActiveQueue], calls: &[EventFd]) -> Result<(), String> {
        let protocol = self.backend_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        let fe = &self.frontend;
        fe.set_features(self.acked | protocol).map_err(|e| format!("SET_FEATURES: {e}"))?;
        let regions = mem
            .iter()
            .map(VhostUserMemoryRegionInfo::from_guest_region)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("guest memory is not shareable: {e}"))?;
        fe.set_mem_table(&regions).map_err(|e| format!("SET_MEM_TABLE: {e}"))?;
        for (index, (active, call)) in queues.iter().zip(calls).enumerate() {
            let q = &active.queue;
            let host = |addr: GuestAddress| {
                mem.get_host_address(addr).map(|p| p as u64).map_err(|e| format!("queue {index}: {e}"))
            };
            let config = VringConfigData {
                queue_max_size: q.max_size(),
                queue_size: q.size(),
                flags: 0,
                desc_table_addr: host(GuestAddress(q.desc_table()))?,
                used_ring_addr: host(GuestAddress(q.used_ring()))?,
                avail_ring_addr: host(GuestAddress(q.avail_ring()))?,
                log_addr: None,
            };
            let step = |what: &'static str| move |e: vhost::Error| format!("queue {index}: {what}: {e}");
            fe.set_vring_num(index, q.size()).map_err(step("SET_VRING_NUM"))?;
            fe.set_vring_addr(index, &config).map_err(step("SET_VRING_ADDR"))?;
            fe.set_vring_base(index, 0).map_err(step("SET_VRING_BASE"))?;
            fe.set_vring_call(index, call).map_err(step("SET_VRING_CALL"))?;
            fe.set_vring_kick(index, &active.kick).map_err(step("SET_VRING_KICK"))?;
        }
        if protocol != 0 {
            let mut fe = self.frontend.clone();
            for index in 0..queues.len() {
                fe.set_vring_enable(index, true).map_err(|e| format!("queue {index}: SET_VRING_ENABLE: {e}"))?;
            }
        }
        Ok(())
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_FS
    }

    fn name(&self) -> &'static str {
        "virtio-fs"
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    /// Only VERSION_1: the backend serves the rings, but the fallback worker below does too,
    /// and it keeps to the plain ring (no EVENT_IDX, no indirect descriptors needed).
    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn ack_features(&mut self, features: u64) {
        self.acked = features;
    }

    /// Config space (section 5.11.4): `tag[36]` (NUL-padded), `num_request_queues` (le32).
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut config = [0u8; TAG_LEN + 4];
        config[..self.tag.len()].copy_from_slice(self.tag.as_bytes());
        config[TAG_LEN..].copy_from_slice(&(QUEUE_SIZES.len() as u32 - 1).to_le_bytes());
        read_config_bytes(&config, offset, data);
    }

    fn activate(&mut self, mem: GuestMemoryMmap, queues: Vec<ActiveQueue>, interrupt: Interrupt) -> Result<(), ActivateError> {
        let fail = |what: String| ActivateError::Device { device: "virtio-fs", what };
        if queues.len() != QUEUE_SIZES.len() {
            return Err(fail(format!("{} queues ready, need {}", queues.len(), QUEUE_SIZES.len())));
        }
        let calls = (0..queues.len())
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<io::Result<Vec<_>>>()
            .map_err(|e| fail(format!("call eventfd: {e}")))?;
        self.start_backend(&mem, &queues, &calls).map_err(|e| fail(format!("{}: {e}", self.tag)))?;
        let worker = Worker::new(mem, queues, calls, self.frontend.as_raw_fd(), interrupt, self.tag.clone())
            .map_err(|e| fail(e.to_string()))?;
        // The worker holds a clone of the frontend so the socket stays open as long as it runs.
        let frontend = self.frontend.clone();
        std::thread::Builder::new()
            .name("virtio-fs".into())
            .spawn(move || {
                let _keep = frontend;
                worker.run()
            })
            .map(|_| ())
            .map_err(|e| fail(format!("start worker: {e}")))
    }
}

const TOKEN_SOCKET: u64 = u64::MAX;
/// Tokens: `i` for queue `i`'s call eventfd, `KICK + i` for its kick eventfd.
const KICK: u64 = 1 << 32;

struct Worker {
    mem: GuestMemoryMmap,
    queues: Vec<ActiveQueue>,
    calls: Vec<EventFd>,
    interrupt: Interrupt,
    epoll: Epoll,
    /// The backend's socket, watched for its hang-up (the frontend owns it).
    socket: i32,
    tag: String,
    bad_chains: LogLimit,
}

impl Worker {
    fn new(
        mem: GuestMemoryMmap,
        queues: Vec<ActiveQueue>,
        calls: Vec<EventFd>,
        socket: i32,
        interrupt: Interrupt,
        tag: String,
    ) -> io::Result<Self> {
        let epoll = Epoll::new()?;
        for (i, call) in calls.iter().enumerate() {
            epoll.ctl(ControlOperation::Add, call.as_raw_fd(), EpollEvent::new(EventSet::IN, i as u64))?;
        }
        // Only hang-ups: the backend sends nothing unasked once the rings run.
        epoll.ctl(ControlOperation::Add, socket, EpollEvent::new(EventSet::HANG_UP, TOKEN_SOCKET))?;
        Ok(Self { mem, queues, calls, interrupt, epoll, socket, tag, bad_chains: LogLimit::default() })
    }

    fn run(mut self) {
        if let Err(error) = crate::seccomp::install(crate::seccomp::ThreadKind::Device) {
            tracing::error!("virtio-fs worker: {error}");
            return;
        }
        let mut events = vec![EpollEvent::default(); 8];
        loop {
            let n = match self.epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::error!("virtio-fs {}: epoll: {e}", self.tag);
                    return;
                }
            };
            for event in &events[..n] {
                match event.data() {
                    TOKEN_SOCKET => self.backend_gone(),
                    token if token >= KICK => {
                        let index = (token - KICK) as usize;
                        if let Some(queue) = self.queues.get(index) {
                            let _ = queue.kick.read(); // readable: does not block
                        }
                        self.fail_requests(index);
                    }
                    index => {
                        if let Some(call) = self.calls.get(index as usize) {
                            let _ = call.read();
                            let _ = self.interrupt.signal_used();
                        }
                    }
                }
            }
        }
    }

    /// The backend's socket hung up: from now on we answer the queues ourselves.
    fn backend_gone(&mut self) {
        tracing::error!("virtio-fs {}: the backend (virtiofsd) is gone; file requests now fail with EIO", self.tag);
        let _ = self.epoll.ctl(ControlOperation::Delete, self.socket, EpollEvent::default());
        for i in 0..self.queues.len() {
            let queue = &mut self.queues[i];
            // Resume where the backend's completions stopped: what it took and never
            // answered is answered here too.
            match queue.queue.used_idx(&self.mem, Ordering::Acquire) {
                Ok(Wrapping(used)) => {
                    queue.queue.set_next_avail(used);
                    queue.queue.set_next_used(used);
                }
                Err(e) => tracing::error!("virtio-fs {}: queue {i}: used ring: {e}", self.tag),
            }
            let kick = queue.kick.as_raw_fd();
            if let Err(e) = self.epoll.ctl(ControlOperation::Add, kick, EpollEvent::new(EventSet::IN, KICK + i as u64)) {
                tracing::error!("virtio-fs {}: queue {i}: watch kicks: {e}", self.tag);
            }
            self.fail_requests(i);
        }
        for call in &self.calls {
            let _ = self.epoll.ctl(ControlOperation::Delete, call.as_raw_fd(), EpollEvent::default());
        }
    }

    /// Answers every request waiting on queue `index` with EIO (no answer for FORGETs).
    fn fail_requests(&mut self, index: usize) {
        let Some(active) = self.queues.get_mut(index) else { return };
        let mut used_any = false;
        while let Some(chain) = active.queue.pop_descriptor_chain(&self.mem) {
            let head = chain.head_index();
            let written = match fail_request(&self.mem, chain) {
                Ok(n) => n,
                Err(e) => {
                    crate::limited_warn!(self.bad_chains, "virtio-fs {}: bad request chain: {e}", self.tag);
                    0
                }
            };
            if let Err(e) = active.queue.add_used(&self.mem, head, written) {
                crate::limited_warn!(self.bad_chains, "virtio-fs {}: used ring: {e}", self.tag);
            }
            used_any = true;
        }
        if used_any {
            let _ = self.interrupt.signal_used();
        }
    }
}

/// Writes a FUSE reply carrying EIO for the request in `chain`; returns the bytes written.
fn fail_request<M>(mem: &GuestMemoryMmap, chain: virtio_queue::DescriptorChain<M>) -> Result<u32, String>
where
    M: std::ops::Deref,
    M::Target: GuestMemory,
{
    let mut header = None;
    let mut reply_to = None;
    for desc in chain {
        if desc.is_write_only() {
            if reply_to.is_none() && desc.len() >= FUSE_OUT_HEADER_LEN {
                reply_to = Some(desc.addr());
            }
        } else if header.is_none() && desc.len() as usize >= FUSE_IN_HEADER_LEN {
            let mut bytes = [0u8; FUSE_IN_HEADER_LEN];
            mem.read_slice(&mut bytes, desc.addr()).map_err(|e| e.to_string())?;
            header = Some(bytes);
        }
    }
    let header = header.ok_or("no FUSE request header")?;
    let opcode = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if matches!(opcode, FUSE_FORGET | FUSE_BATCH_FORGET) {
        return Ok(0);
    }
    let Some(reply_to) = reply_to else { return Ok(0) };
    let mut reply = [0u8; FUSE_OUT_HEADER_LEN as usize];
    reply[..4].copy_from_slice(&FUSE_OUT_HEADER_LEN.to_le_bytes());
    reply[4..8].copy_from_slice(&(-libc::EIO).to_le_bytes());
    reply[8..16].copy_from_slice(&header[8..16]); // `unique`
    mem.write_slice(&reply, reply_to).map_err(|e| e.to_string())?;
    Ok(FUSE_OUT_HEADER_LEN)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    use crate::devices::virtio::test_driver::Ring;

    /// A FUSE request header with `opcode` and `unique` at guest address `at`.
    fn request(mem: &GuestMemoryMmap, at: u64, opcode: u32, unique: u64) {
        let mut h = [0u8; FUSE_IN_HEADER_LEN];
        h[..4].copy_from_slice(&(FUSE_IN_HEADER_LEN as u32).to_le_bytes());
        h[4..8].copy_from_slice(&opcode.to_le_bytes());
        h[8..16].copy_from_slice(&unique.to_le_bytes());
        mem.write_slice(&h, GuestAddress(at)).unwrap();
    }

    #[test]
    fn without_a_backend_requests_get_eio_and_forgets_nothing() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let mut ring = Ring::new(0);
        let mut queue = ring.queue();
        request(&mem, 0x8000, 1, 0xabcd); // LOOKUP
        ring.offer(&mem, &[(0x8000, 48, false), (0x9000, 64, true)]);
        request(&mem, 0xa000, FUSE_FORGET, 7);
        ring.offer(&mem, &[(0xa000, 48, false)]);
        ring.offer(&mem, &[(0xb000, 8, false), (0xc000, 64, true)]); // too short for a header

        let chain = queue.pop_descriptor_chain(&mem).unwrap();
        assert_eq!(fail_request(&mem, chain), Ok(FUSE_OUT_HEADER_LEN));
        let mut reply = [0u8; 16];
        mem.read_slice(&mut reply, GuestAddress(0x9000)).unwrap();
        assert_eq!(u32::from_le_bytes(reply[..4].try_into().unwrap()), 16);
        assert_eq!(i32::from_le_bytes(reply[4..8].try_into().unwrap()), -libc::EIO);
        assert_eq!(u64::from_le_bytes(reply[8..].try_into().unwrap()), 0xabcd);

        let chain = queue.pop_descriptor_chain(&mem).unwrap();
        assert_eq!(fail_request(&mem, chain), Ok(0));
        let chain = queue.pop_descriptor_chain(&mem).unwrap();
        assert!(fail_request(&mem, chain).is_err());
    }

    /// The backend took the first request and died: that one and a later one both get EIO,
    /// and the guest is interrupted.
    #[test]
    fn when_the_backend_hangs_up_pending_and_later_requests_fail_with_eio() {
        use std::sync::atomic::AtomicU32;
        use std::sync::Arc;
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let (hiprio, mut requests) = (Ring::new(0), Ring::new(0x1_0000));
        request(&mem, 0x8_0000, 1, 11);
        requests.offer(&mem, &[(0x8_0000, 48, false), (0x9_0000, 64, true)]);
        let kicks = [(); 2].map(|_| EventFd::new(0).unwrap());
        let calls = (0..2).map(|_| EventFd::new(EFD_NONBLOCK).unwrap()).collect();
        let irq = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
        let interrupt = Interrupt::new(Arc::new(AtomicU32::new(0)), irq.clone());
        let queues = [&hiprio, &requests].into_iter().zip(&kicks);
        let queues = queues.map(|(r, k)| ActiveQueue { queue: r.queue(), kick: k.try_clone().unwrap() }).collect();
        let (ours, backend) = UnixStream::pair().unwrap();
        let worker = Worker::new(mem.clone(), queues, calls, ours.as_raw_fd(), interrupt, "t".into()).unwrap();
        std::thread::spawn(move || {
            let _socket = ours;
            worker.run()
        });

        drop(backend);
        assert_eq!(requests.wait_used(&mem), [(0, FUSE_OUT_HEADER_LEN)]);
        assert!(irq.read().unwrap() > 0);
        request(&mem, 0xa_0000, 1, 12);
        requests.offer(&mem, &[(0xa_0000, 48, false), (0xb_0000, 64, true)]);
        kicks[1].write(1).unwrap();
        assert_eq!(requests.wait_used(&mem), [(2, FUSE_OUT_HEADER_LEN)]);
        let mut reply = [0u8; 16];
        mem.read_slice(&mut reply, GuestAddress(0xb_0000)).unwrap();
        assert_eq!(i32::from_le_bytes(reply[4..8].try_into().unwrap()), -libc::EIO);
        assert_eq!(u64::from_le_bytes(reply[8..].try_into().unwrap()), 12);
    }

    #[test]
    fn config_space_has_the_tag_and_one_request_queue() {
        let (a, _b) = UnixStream::pair().unwrap();
        let fs = Fs { tag: "vol".into(), frontend: Frontend::from_stream(a, 2), backend_features: 0, acked: 0 };
        let mut data = [0xffu8; TAG_LEN + 4];
        fs.read_config(0, &mut data);
        assert_eq!(&data[..4], b"vol\0");
        assert!(data[3..TAG_LEN].iter().all(|&b| b == 0));
        assert_eq!(&data[TAG_LEN..], &1u32.to_le_bytes());
    }

    #[test]
    fn tags_are_bounded() {
        let (a, _b) = UnixStream::pair().unwrap();
        assert!(matches!(Fs::new(a, ""), Err(FsError::Tag(_))));
        let (a, _b) = UnixStream::pair().unwrap();
        assert!(matches!(Fs::new(a, &"x".repeat(TAG_LEN + 1)), Err(FsError::Tag(_))));
    }

    #[test]
    fn a_backend_that_hangs_up_fails_the_device_with_its_tag() {
        let (a, b) = UnixStream::pair().unwrap();
        drop(b);
        let err = Fs::new(a, "vol").err().unwrap().to_string();
        assert!(err.starts_with("virtio-fs vol: vhost-user backend:"), "{err}");
    }
}
