//! virtio-vsock device (virtio 1.2, section 5.10), host side as a Unix socket.
//!
//! A "hybrid" vsock, after Firecracker's and Cloud Hypervisor's: the guest sees a vsock device
//! with CID `guest_cid`; the host sees Unix sockets.
//! - Host to guest: a client connects to `uds_path` and writes `CONNECT <port>\n`; the device
//!   asks the guest for a connection to that port from a fresh host port; when the guest
//!   accepts, the client reads `OK <host port>\n` and then talks to the guest socket. If
//!   nobody listens in the guest, the client is closed.
//! - Guest to host: a connection to host (CID 2) port P is relayed to `<uds_path>_<P>`.
//!
//! Stream sockets only, flow-controlled by credit (section 5.10.6.3). The event queue is held
//! but unused (no transport reset events). Layout: [`packet`] (the header, parsing guest
//! packets), [`credit`] and [`connection`] (per-connection logic, no fds), [`handshake`] (the
//! CONNECT line), [`muxer`] (routing, testable with mock queues), [`event_handler`] (the
//! worker thread and its epoll), [`uds`] (the Unix sockets themselves).

pub mod connection;
pub mod credit;
pub mod event_handler;
pub mod handshake;
pub mod muxer;
pub mod packet;
pub mod uds;

use std::path::{Path, PathBuf};

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::{read_config_bytes, ActivateError, ActiveQueue, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
use event_handler::Worker;
use uds::UdsListener;

/// Device ID of a socket device (section 5).
pub const VIRTIO_ID_VSOCK: u32 = 19;
/// rx, tx and event queues (section 5.10.2).
const QUEUE_SIZES: [u16; 3] = [256; 3];

#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("vsock guest cid {0}: must be at least 3 and below 4294967295")]
    InvalidCid(u64),
    #[error("vsock socket {path}: bind: {source}")]
    Bind { path: PathBuf, source: std::io::Error },
    #[error("vsock stop event: {0}")]
    StopEvent(std::io::Error),
}

pub struct Vsock {
    guest_cid: u64,
    /// Taken by the worker at activation.
    listener: Option<UdsListener>,
    config: [u8; 8],
    /// Written once the VM has stopped: the worker ends, and with it every host connection
    /// (a host waiting on the agent reads end-of-file instead of waiting forever).
    stop: EventFd,
}

impl Vsock {
    /// A vsock device for a guest with CID `guest_cid`, listening on `uds_path` now, so that a
    /// path in use fails here rather than when the guest starts. The socket file is removed
    /// when the device (or its worker) is dropped.
    pub fn new(guest_cid: u64, uds_path: &Path) -> Result<Self, VsockError> {
        // 0-2 are reserved and u32::MAX is VMADDR_CID_ANY; Linux keeps CIDs in 32 bits
        // (struct sockaddr_vm, include/uapi/linux/vm_sockets.h).
        if !(3..u64::from(u32::MAX)).contains(&guest_cid) {
            return Err(VsockError::InvalidCid(guest_cid));
        }
        let listener =
            UdsListener::bind(uds_path).map_err(|source| VsockError::Bind { path: uds_path.to_owned(), source })?;
        let stop = EventFd::new(libc::EFD_NONBLOCK).map_err(VsockError::StopEvent)?;
        Ok(Self { guest_cid, listener: Some(listener), config: guest_cid.to_le_bytes(), stop })
    }

    /// The event that stops the device once the VM has stopped: its worker closes every host
    /// connection and the listener. Before activation there is no worker, and the listener
    /// goes with the device.
    pub fn stopper(&self) -> Result<EventFd, VsockError> {
        self.stop.try_clone().map_err(VsockError::StopEvent)
    }

    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn name(&self) -> &'static str {
        "virtio-vsock"
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    /// No VIRTIO_VSOCK_F_STREAM/SEQPACKET bits: without them a device offers streams only
    /// (section 5.10.3).
    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn ack_features(&mut self, _features: u64) {}

    /// Config space: `guest_cid`, le64 (section 5.10.4).
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, mem: GuestMemoryMmap, queues: Vec<ActiveQueue>, interrupt: Interrupt) -> Result<(), ActivateError> {
        let fail = |what: String| ActivateError::Device { device: "virtio-vsock", what };
        let count = queues.len();
        let queues: [ActiveQueue; 3] =
            queues.try_into().map_err(|_| fail(format!("{count} queues ready, need rx, tx and event")))?;
        let listener = self.listener.take().ok_or_else(|| fail("already activated".into()))?;
        let stop = self.stop.try_clone().map_err(|e| fail(format!("stop event: {e}")))?;
        let worker =
            Worker::new(mem, queues, listener, interrupt, self.guest_cid, stop).map_err(|e| fail(e.to_string()))?;
        std::thread::Builder::new()
            .name("virtio-vsock".into())
            .spawn(move || worker.run())
            .map(|_| ())
            .map_err(|e| fail(format!("start worker: {e}")))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use vmm_sys_util::tempdir::TempDir;

    #[test]
    fn identity_and_config_space() {
        let dir = TempDir::new().unwrap();
        let dev = Vsock::new(3, &dir.as_path().join("v.sock")).unwrap();
        assert_eq!((dev.device_type(), dev.queue_max_sizes().len(), dev.features()), (19, 3, VIRTIO_F_VERSION_1));
        let mut cfg = [0xffu8; 8];
        dev.read_config(0, &mut cfg);
        assert_eq!(u64::from_le_bytes(cfg), 3);
        let mut high = [0xffu8; 4];
        dev.read_config(4, &mut high);
        assert_eq!(high, [0; 4]);
    }

    #[test]
    fn bad_cids_and_paths_in_use_fail_naming_the_thing() {
        let dir = TempDir::new().unwrap();
        let path = dir.as_path().join("v.sock");
        for cid in [0, 2, u64::from(u32::MAX), u64::MAX] {
            let e = Vsock::new(cid, &path).err().unwrap();
            assert!(e.to_string().contains(&cid.to_string()), "{e}");
        }
        let _first = Vsock::new(3, &path).unwrap();
        let e = Vsock::new(4, &path).err().unwrap();
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
    }

    #[test]
    fn activation_needs_all_three_queues() {
        let dir = TempDir::new().unwrap();
        let mut dev = Vsock::new(3, &dir.as_path().join("v.sock")).unwrap();
        let mem = GuestMemoryMmap::from_ranges(&[(vm_memory::GuestAddress(0), 1 << 20)]).unwrap();
        let irq = Interrupt::new(Default::default(), std::sync::Arc::new(vmm_sys_util::eventfd::EventFd::new(0).unwrap()));
        let e = dev.activate(mem, Vec::new(), irq).err().unwrap();
        assert!(e.to_string().contains("0 queues ready"), "{e}");
    }
}
