//! virtio-blk (virtio 1.2, section 5.2): one backing file, read-only or read-write, with
//! flush and the device-ID request. Request logic lives in [`request`] (no file descriptors,
//! tested with a mock queue); this module holds the device's identity and its worker thread,
//! which waits on the queue's notification eventfd.

pub mod request;

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::{read_config_bytes, ActivateError, ActiveQueue, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
use request::{Disk, ID_LEN, SECTOR_SIZE};

/// Device ID of a block device (section 5).
pub const VIRTIO_ID_BLOCK: u32 = 2;
/// Feature bits (section 5.2.3).
pub const VIRTIO_BLK_F_RO: u64 = 1 << 5;
pub const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
const QUEUE_SIZE: u16 = 256;

#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("disk {path}: {source}")]
    Open { path: PathBuf, source: std::io::Error },
}

pub struct Block {
    file: Option<File>,
    size: u64,
    read_only: bool,
    id: [u8; ID_LEN],
    config: [u8; 8],
}

impl Block {
    /// Opens `path` as the disk; its size is rounded down to whole sectors.
    pub fn open(path: &Path, read_only: bool, id: &str) -> Result<Self, BlockError> {
        let open_err = |source| BlockError::Open { path: path.to_owned(), source };
        let file = OpenOptions::new().read(true).write(!read_only).open(path).map_err(open_err)?;
        let size = file.metadata().map_err(open_err)?.len() / SECTOR_SIZE * SECTOR_SIZE;
        let mut id_bytes = [0u8; ID_LEN];
        let n = id.len().min(ID_LEN);
        id_bytes[..n].copy_from_slice(&id.as_bytes()[..n]);
        Ok(Self {
            file: Some(file),
            size,
            read_only,
            id: id_bytes,
            config: (size / SECTOR_SIZE).to_le_bytes(),
        })
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn name(&self) -> &'static str {
        "virtio-blk"
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_BLK_F_FLUSH | if self.read_only { VIRTIO_BLK_F_RO } else { 0 }
    }

    fn ack_features(&mut self, _features: u64) {}

    /// Config space: only `capacity`, in 512-byte sectors.
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, mem: GuestMemoryMmap, mut queues: Vec<ActiveQueue>, interrupt: Interrupt) -> Result<(), ActivateError> {
        let fail = |what: &str| ActivateError::Device { device: "virtio-blk", what: what.into() };
        let active = queues.pop().ok_or_else(|| fail("the request queue is not ready"))?;
        let file = self.file.take().ok_or_else(|| fail("already activated"))?;
        let (size, read_only, id) = (self.size, self.read_only, self.id);
        std::thread::Builder::new()
            .name("virtio-blk".into())
            .spawn(move || serve(mem, active.queue, active.kick, interrupt, file, size, read_only, id))
            .map(|_| ())
            .map_err(|e| fail(&format!("start worker: {e}")))
    }
}

/// The worker: on each notification, runs every available request, then interrupts the guest.
#[allow(clippy::too_many_arguments)]
fn serve(mem: GuestMemoryMmap, mut queue: Queue, kick: EventFd, interrupt: Interrupt, mut file: File, size: u64, read_only: bool, id: [u8; ID_LEN]) {
    if let Err(error) = crate::seccomp::install(crate::seccomp::ThreadKind::Device) {
        tracing::error!("virtio-blk: {error}; the disk stops");
        return;
    }
    let mut disk = Disk { backend: &mut file, size, read_only, id: &id };
    while kick.read().is_ok() {
        if process_queue(&mem, &mut queue, &mut disk) {
            if let Err(e) = interrupt.signal_used() {
                tracing::warn!("virtio-blk: interrupt: {e}");
            }
        }
    }
}

/// One notification's work: runs every available request in `queue` against `disk` and
/// returns whether the guest should be interrupted. The worker's loop body, public so that
/// the fuzz targets (fuzz/) drive exactly this code.
pub fn process_queue(mem: &GuestMemoryMmap, queue: &mut Queue, disk: &mut Disk<'_>) -> bool {
    while let Some(chain) = queue.pop_descriptor_chain(mem) {
        let head = chain.head_index();
        let used = request::process(mem, chain, disk).unwrap_or_else(|e| {
            tracing::warn!("virtio-blk: request {head} rejected: {e}");
            0
        });
        if let Err(e) = queue.add_used(mem, head, used) {
            tracing::warn!("virtio-blk: used ring: {e:?}");
        }
    }
    queue.needs_notification(mem).unwrap_or(true)
}
