//! Opening KVM, checking what we need of it, and creating the VM with guest memory, the
//! in-kernel interrupt controllers (PIC, IOAPIC, LAPICs) and PIT.

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, Kvm, VmFd};
use std::fs::File;
use std::os::fd::FromRawFd;
use std::sync::Arc;

use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::arch::x86_64::layout::KVM_TSS_ADDRESS;
use crate::arch::x86_64::memory::ram_regions;

/// The KVM device node.
pub const KVM_PATH: &str = "/dev/kvm";

/// Capabilities the VMM relies on, with their uapi names (include/uapi/linux/kvm.h).
pub const REQUIRED_CAPS: &[(Cap, &str)] = &[
    (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
    (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
    (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
    (Cap::Pit2, "KVM_CAP_PIT2"),
    (Cap::PitState2, "KVM_CAP_PIT_STATE2"),
    (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
    (Cap::MpState, "KVM_CAP_MP_STATE"),
    (Cap::Irqfd, "KVM_CAP_IRQFD"),
    (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
    (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
];

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("{KVM_PATH}: {0}")]
    Open(kvm_ioctls::Error),
    #[error("{KVM_PATH}: KVM API version {0}, expected 12")]
    ApiVersion(i32),
    #[error("{KVM_PATH}: missing capability {0}")]
    MissingCap(&'static str),
    #[error("allocate {mib} MiB of guest memory: {source}")]
    Memory { mib: u64, source: vm_memory::mmap::FromRangesError },
    #[error("allocate {mib} MiB of shared guest memory (memfd): {source}")]
    SharedMemory { mib: u64, source: std::io::Error },
    #[error("KVM_{op}: {source}")]
    Kvm { op: &'static str, source: kvm_ioctls::Error },
}

type Result<T> = std::result::Result<T, VmError>;

fn kvm_err(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { op, source }
}

/// Opens /dev/kvm and checks the API version and every capability in [`REQUIRED_CAPS`].
pub fn open_kvm() -> Result<Kvm> {
    let kvm = open_kvm_unchecked()?;
    if let Some((_, name)) = missing_caps(&kvm).first() {
        return Err(VmError::MissingCap(name));
    }
    Ok(kvm)
}

/// Opens /dev/kvm and checks only the API version.
pub fn open_kvm_unchecked() -> Result<Kvm> {
    let kvm = Kvm::new().map_err(VmError::Open)?;
    if kvm.get_api_version() != 12 {
        return Err(VmError::ApiVersion(kvm.get_api_version()));
    }
    Ok(kvm)
}

/// The required capabilities this KVM lacks.
pub fn missing_caps(kvm: &Kvm) -> Vec<(Cap, &'static str)> {
    REQUIRED_CAPS.iter().filter(|(cap, _)| !kvm.check_extension(*cap)).cloned().collect()
}

/// Guest memory of `mem_bytes`, leaving the MMIO gap unbacked: anonymous private memory, or,
/// when `shared`, one memfd mapped shared, so that a vhost-user backend (virtiofsd) can map the
/// same pages from the descriptors it is sent ([`crate::devices::virtio::fs`]).
pub fn create_guest_memory(mem_bytes: u64, shared: bool) -> Result<GuestMemoryMmap> {
    let mib = mem_bytes >> 20;
    let regions = ram_regions(mem_bytes);
    if !shared {
        let ranges: Vec<_> = regions.into_iter().map(|(start, size)| (GuestAddress(start), size as usize)).collect();
        return GuestMemoryMmap::from_ranges(&ranges).map_err(|source| VmError::Memory { mib, source });
    }
    let file = Arc::new(memfd(mem_bytes).map_err(|source| VmError::SharedMemory { mib, source })?);
    // Each region at its own offset of the one file, in guest-address order.
    let mut offset = 0;
    let ranges: Vec<_> = regions
        .into_iter()
        .map(|(start, size)| {
            let range = (GuestAddress(start), size as usize, Some(FileOffset::from_arc(file.clone(), offset)));
            offset += size;
            range
        })
        .collect();
    GuestMemoryMmap::from_ranges_with_files(&ranges).map_err(|source| VmError::Memory { mib, source })
}

/// An anonymous memory file of `size` bytes (memfd_create(2), close-on-exec).
fn memfd(size: u64) -> std::io::Result<File> {
    // SAFETY: the name is a NUL-terminated literal and the flags are plain integers.
    let fd = unsafe { libc::memfd_create(c"microvm-guest-ram".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: memfd_create returned a new descriptor that nothing else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size)?;
    Ok(file)
}

/// Creates the VM. Its interrupt controllers come from [`create_irq_chips`] and its memory
/// from [`map_guest_memory`]; the VMM runs the two side by side.
pub fn create_vm(kvm: &Kvm) -> Result<VmFd> {
    kvm.create_vm().map_err(kvm_err("CREATE_VM"))
}

/// The in-kernel PIC, IOAPIC and (per vCPU, later) LAPIC, and the PIT. Must precede the
/// vCPUs. Creating the PIT starts a kernel worker thread, which takes milliseconds on some
/// hosts.
pub fn create_irq_chips(vm: &VmFd) -> Result<()> {
    vm.set_tss_address(KVM_TSS_ADDRESS as usize).map_err(kvm_err("SET_TSS_ADDR"))?;
    vm.create_irq_chip().map_err(kvm_err("CREATE_IRQCHIP"))?;
    // The PC speaker port is a dummy so guest beeps do not exit to us.
    let pit = kvm_pit_config { flags: KVM_PIT_SPEAKER_DUMMY, ..Default::default() };
    vm.create_pit2(pit).map_err(kvm_err("CREATE_PIT2"))
}

/// Maps every guest memory region into the VM (KVM_SET_USER_MEMORY_REGION). On some hosts
/// each call waits for an SRCU grace period (milliseconds), so the VMM runs this beside the
/// kernel loading rather than before it.
pub fn map_guest_memory(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<()> {
    for (slot, region) in mem.iter().enumerate() {
        let host_addr = mem
            .get_host_address(region.start_addr())
            .map_err(|_| VmError::Kvm { op: "SET_USER_MEMORY_REGION", source: kvm_ioctls::Error::new(libc::EFAULT) })?;
        let region = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host_addr as u64,
            flags: 0,
        };
        // SAFETY: the region is a live mmap owned by `mem`, which outlives the VM: both are
        // held by the `Vmm` until the process exits, and it is never unmapped before.
        unsafe { vm.set_user_memory_region(region) }.map_err(kvm_err("SET_USER_MEMORY_REGION"))?;
    }
    Ok(())
}
