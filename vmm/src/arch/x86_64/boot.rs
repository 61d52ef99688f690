//! Loading the kernel and initrd, and writing the boot information for either entry:
//! the Linux boot protocol's `boot_params` (Documentation/x86/boot.rst, zero-page.rst) or
//! PVH's `hvm_start_info` (xen/include/public/arch-x86/hvm/start_info.h).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::elf::PvhBootCapability;
use linux_loader::loader::{load_cmdline, BzImage, Cmdline, Elf, KernelLoader};
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::layout::{
    CMDLINE_MAX_SIZE, CMDLINE_START, HIMEM_START, PVH_INFO_START, PVH_MEMMAP_START,
    PVH_MODLIST_START, ZERO_PAGE_START,
};
use super::memory::{e820_map, low_ram_end};
use super::regs::EntryMode;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("kernel {path}: {source}")]
    KernelOpen { path: PathBuf, source: std::io::Error },
    #[error("kernel {path}: not an ELF vmlinux or a bzImage")]
    KernelFormat { path: PathBuf },
    #[error("kernel {path}: its image ends at {end:#x}, outside guest memory")]
    KernelTooLarge { path: PathBuf, end: u64 },
    #[error("kernel {path}: {source}")]
    KernelLoad { path: PathBuf, source: linux_loader::loader::Error },
    #[error("initrd {path}: {source}")]
    InitrdOpen { path: PathBuf, source: std::io::Error },
    #[error("initrd {path}: {size} bytes do not fit in guest memory above the kernel")]
    InitrdTooLarge { path: PathBuf, size: u64 },
    #[error("initrd {path}: read into guest memory: {source}")]
    InitrdLoad { path: PathBuf, source: vm_memory::GuestMemoryError },
    #[error("kernel command line: {0}")]
    Cmdline(linux_loader::cmdline::Error),
    #[error("kernel command line: {0}")]
    CmdlineLoad(linux_loader::loader::Error),
    #[error("write boot parameters: {0}")]
    BootParams(linux_loader::configurator::Error),
}

type Result<T> = std::result::Result<T, BootError>;

/// Where and how the loaded kernel is entered.
#[derive(Clone, Copy, Debug)]
pub struct KernelEntry {
    pub entry: u64,
    pub mode: EntryMode,
    /// End of the loaded image; the initrd goes above it.
    pub end: u64,
    /// A bzImage's setup header, copied into boot_params.
    setup_header: Option<setup_header>,
}

const ELF_MAGIC: [u8; 4] = *b"\x7fELF";
/// bzImage's 64-bit entry is `startup_64`, 0x200 past the load address (boot.rst).
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;

/// Loads an ELF vmlinux (entered through PVH when it carries the PVH note) or a bzImage.
/// The whole image must lie in guest RAM: linux-loader copies only the ELF segments' file
/// bytes, so a segment whose memory size (its bss) runs past the end of RAM would otherwise
/// be accepted (found by the `kernel_loader` fuzz target).
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<KernelEntry> {
    let kernel = load_kernel_image(mem, path)?;
    let last = kernel.end.checked_sub(1).map(GuestAddress);
    if last.is_some_and(|last| !mem.address_in_range(last)) {
        return Err(BootError::KernelTooLarge { path: path.to_owned(), end: kernel.end });
    }
    Ok(kernel)
}

fn load_kernel_image(mem: &GuestMemoryMmap, path: &Path) -> Result<KernelEntry> {
    let open_err = |source| BootError::KernelOpen { path: path.to_owned(), source };
    let load_err = |source| BootError::KernelLoad { path: path.to_owned(), source };
    let mut file = File::open(path).map_err(open_err)?;
    let mut magic = [0u8; 4];
    file.read_exact(&mut magic)
        .map_err(|_| BootError::KernelFormat { path: path.to_owned() })?;
    file.seek(SeekFrom::Start(0)).map_err(open_err)?;

    if magic == ELF_MAGIC {
        let loaded = Elf::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START)))
            .map_err(load_err)?;
        let (entry, mode) = match loaded.pvh_boot_cap {
            PvhBootCapability::PvhEntryPresent(addr) => (addr.0, EntryMode::Pvh),
            _ => (loaded.kernel_load.0, EntryMode::Linux64),
        };
        return Ok(KernelEntry { entry, mode, end: loaded.kernel_end, setup_header: None });
    }
    let loaded = BzImage::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START)))
        .map_err(|e| match e {
            linux_loader::loader::Error::Bzimage(_) => {
                BootError::KernelFormat { path: path.to_owned() }
            }
            other => load_err(other),
        })?;
    Ok(KernelEntry {
        entry: loaded.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET,
        mode: EntryMode::Linux64,
        end: loaded.kernel_end,
        setup_header: loaded.setup_header,
    })
}

/// Loads the initrd at the top of low RAM, page aligned. Returns `(address, size)`.
pub fn load_initrd(mem: &GuestMemoryMmap, path: &Path, kernel_end: u64) -> Result<(u64, u64)> {
    let open_err = |source| BootError::InitrdOpen { path: path.to_owned(), source };
    let mut file = File::open(path).map_err(open_err)?;
    let size = file.metadata().map_err(open_err)?.len();
    // Linux's default initrd_addr_max is 2 GiB - 1 (boot.rst).
    let top = low_ram_end(mem.last_addr().0 + 1).min(0x8000_0000);
    let addr = top
        .checked_sub(size)
        .map(|a| a & !0xfff)
        .filter(|a| *a >= kernel_end)
        .ok_or_else(|| BootError::InitrdTooLarge { path: path.to_owned(), size })?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(|source| BootError::InitrdLoad { path: path.to_owned(), source })?;
    Ok((addr, size))
}

/// Writes the command line and the boot information the entry mode expects.
pub fn write_boot_info(
    mem: &GuestMemoryMmap,
    kernel: &KernelEntry,
    cmdline: &str,
    initrd: Option<(u64, u64)>,
    mem_size: u64,
) -> Result<()> {
    let cmdline = Cmdline::try_from(cmdline, CMDLINE_MAX_SIZE).map_err(BootError::Cmdline)?;
    load_cmdline(mem, GuestAddress(CMDLINE_START), &cmdline).map_err(BootError::CmdlineLoad)?;
    let cmdline_len = cmdline.as_cstring().map_err(BootError::Cmdline)?.as_bytes().len();

    match kernel.mode {
        EntryMode::Linux64 => {
            let params =
                linux_boot_params(kernel.setup_header, cmdline_len as u32, initrd, mem_size);
            let bp = BootParams::new(&params, GuestAddress(ZERO_PAGE_START));
            LinuxBootConfigurator::write_bootparams(&bp, mem).map_err(BootError::BootParams)
        }
        EntryMode::Pvh => {
            let (info, memmap, module) = pvh_start_info(initrd, mem_size);
            let mut bp = BootParams::new(&info, GuestAddress(PVH_INFO_START));
            bp.set_sections(&memmap, GuestAddress(PVH_MEMMAP_START));
            if let Some(module) = module {
                bp.set_modules(&[module], GuestAddress(PVH_MODLIST_START));
            }
            PvhBootConfigurator::write_bootparams(&bp, mem).map_err(BootError::BootParams)
        }
    }
}

/// The Linux zero page: the image's setup header (or a minimal one for vmlinux), the command
/// line, the initrd and the e820 map.
pub fn linux_boot_params(
    header: Option<setup_header>,
    cmdline_len: u32,
    initrd: Option<(u64, u64)>,
    mem_size: u64,
) -> boot_params {
    const LOADER_UNDEFINED: u8 = 0xff;
    const BOOT_FLAG: u16 = 0xaa55;
    const HDRS_MAGIC: u32 = 0x5372_6448;
    const KERNEL_ALIGNMENT: u32 = 0x0100_0000;

    let mut params = boot_params::default();
    if let Some(hdr) = header {
        params.hdr = hdr;
    } else {
        params.hdr.boot_flag = BOOT_FLAG;
        params.hdr.header = HDRS_MAGIC;
        params.hdr.kernel_alignment = KERNEL_ALIGNMENT;
    }
    params.hdr.type_of_loader = LOADER_UNDEFINED;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline_len;
    if let Some((addr, size)) = initrd {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    let map = e820_map(mem_size);
    for (slot, e) in params.e820_table.iter_mut().zip(&map) {
        slot.addr = e.addr;
        slot.size = e.size;
        slot.r#type = e.kind;
    }
    params.e820_entries = map.len() as u8;
    params
}

/// `hvm_start_info` and friends need `ByteValued` to be written; the orphan rule asks for
/// local newtypes.
#[derive(Clone, Copy, Default)]
#[repr(transparent)]
pub struct StartInfo(pub hvm_start_info);
#[derive(Clone, Copy, Default)]
#[repr(transparent)]
pub struct MemmapEntry(pub hvm_memmap_table_entry);
#[derive(Clone, Copy, Default)]
#[repr(transparent)]
pub struct ModlistEntry(pub hvm_modlist_entry);
// SAFETY: each wraps a plain-old-data C struct of integers (bindgen output, no padding
// invariants), so any byte pattern is a valid value.
unsafe impl ByteValued for StartInfo {}
// SAFETY: as above.
unsafe impl ByteValued for MemmapEntry {}
// SAFETY: as above.
unsafe impl ByteValued for ModlistEntry {}

/// The PVH start info, memory map and (with an initrd) module entry.
pub fn pvh_start_info(
    initrd: Option<(u64, u64)>,
    mem_size: u64,
) -> (StartInfo, Vec<MemmapEntry>, Option<ModlistEntry>) {
    const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;
    let memmap: Vec<MemmapEntry> = e820_map(mem_size)
        .iter()
        .map(|e| {
            MemmapEntry(hvm_memmap_table_entry {
                addr: e.addr,
                size: e.size,
                type_: e.kind,
                reserved: 0,
            })
        })
        .collect();
    let module = initrd.map(|(paddr, size)| {
        ModlistEntry(hvm_modlist_entry { paddr, size, ..Default::default() })
    });
    let info = StartInfo(hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        nr_modules: u32::from(module.is_some()),
        modlist_paddr: if module.is_some() { PVH_MODLIST_START } else { 0 },
        cmdline_paddr: CMDLINE_START,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: memmap.len() as u32,
        ..Default::default()
    });
    (info, memmap, module)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use crate::arch::x86_64::memory::{E820_RAM, E820_RESERVED};

    const MIB: u64 = 1 << 20;

    #[test]
    fn zero_page_for_vmlinux_has_magic_cmdline_initrd_and_e820() {
        let p = linux_boot_params(None, 42, Some((0x7f0_0000, 0x1000)), 128 * MIB);
        assert_eq!({ p.hdr.boot_flag }, 0xaa55);
        assert_eq!({ p.hdr.header }, 0x5372_6448);
        assert_eq!({ p.hdr.type_of_loader }, 0xff);
        assert_eq!({ p.hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!({ p.hdr.cmdline_size }, 42);
        assert_eq!(({ p.hdr.ramdisk_image }, { p.hdr.ramdisk_size }), (0x7f0_0000, 0x1000));
        assert_eq!(p.e820_entries, 3);
        let t = p.e820_table;
        assert_eq!(({ t[1].r#type }), E820_RESERVED);
        assert_eq!(({ t[2].addr }, { t[2].size }, { t[2].r#type }), (MIB, 127 * MIB, E820_RAM));
    }

    #[test]
    fn zero_page_keeps_the_bzimage_header() {
        let hdr = setup_header { version: 0x20f, loadflags: 1, ..Default::default() };
        let p = linux_boot_params(Some(hdr), 1, None, 64 * MIB);
        assert_eq!({ p.hdr.version }, 0x20f);
        assert_eq!({ p.hdr.type_of_loader }, 0xff);
        assert_eq!({ p.hdr.ramdisk_image }, 0);
    }

    #[test]
    fn pvh_start_info_points_at_memmap_cmdline_and_module() {
        let (info, memmap, module) = pvh_start_info(Some((0x10_0000, 0x2000)), 256 * MIB);
        assert_eq!(info.0.magic, 0x336e_c578);
        assert_eq!(info.0.memmap_entries as usize, memmap.len());
        assert_eq!(info.0.cmdline_paddr, CMDLINE_START);
        assert_eq!(info.0.nr_modules, 1);
        assert_eq!(module.unwrap().0.size, 0x2000);
        let (info, _, module) = pvh_start_info(None, 256 * MIB);
        assert_eq!((info.0.nr_modules, info.0.modlist_paddr), (0, 0));
        assert!(module.is_none());
    }

    #[test]
    fn start_info_layout_matches_the_abi() {
        assert_eq!(std::mem::size_of::<StartInfo>(), 56);
        assert_eq!(std::mem::size_of::<MemmapEntry>(), 24);
        assert_eq!(std::mem::size_of::<ModlistEntry>(), 32);
    }

    #[test]
    fn missing_and_garbage_kernels_are_named_errors() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
        let err = load_kernel(&mem, Path::new("/nonexistent/vmlinux")).unwrap_err();
        assert!(err.to_string().starts_with("kernel /nonexistent/vmlinux: "), "{err}");
        let dir = std::env::temp_dir().join(format!("microvm-boot-test-{}", std::process::id()));
        std::fs::write(&dir, vec![0x5au8; 4096]).unwrap();
        let err = load_kernel(&mem, &dir).unwrap_err();
        std::fs::remove_file(&dir).unwrap();
        assert!(matches!(err, BootError::KernelFormat { .. }), "{err}");
        let empty = dir.with_extension("empty");
        std::fs::write(&empty, b"").unwrap();
        let err = load_kernel(&mem, &empty).unwrap_err();
        std::fs::remove_file(&empty).unwrap();
        assert!(matches!(err, BootError::KernelFormat { .. }), "{err}");
    }

    /// Found by the `kernel_loader` fuzz target: an ELF segment with 16 file bytes and a
    /// memory size of 3 TiB was accepted, its end far outside the guest.
    #[test]
    fn kernel_image_beyond_guest_memory_is_refused() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        let elf = |memsz: u64| {
            let mut f = Vec::new();
            f.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
            for v in [2u16, 0x3e] {
                f.extend_from_slice(&v.to_le_bytes());
            }
            f.extend_from_slice(&1u32.to_le_bytes());
            for v in [HIMEM_START, 64, 0] {
                f.extend_from_slice(&v.to_le_bytes());
            }
            f.extend_from_slice(&0u32.to_le_bytes());
            for v in [64u16, 56, 1, 64, 0, 0] {
                f.extend_from_slice(&v.to_le_bytes());
            }
            // PT_LOAD, R+X, 16 file bytes at offset 120 to HIMEM_START.
            f.extend_from_slice(&1u32.to_le_bytes());
            f.extend_from_slice(&5u32.to_le_bytes());
            for v in [120, HIMEM_START, HIMEM_START, 16, memsz, 0x1000] {
                f.extend_from_slice(&v.to_le_bytes());
            }
            f.extend_from_slice(&[0xf4; 16]);
            f
        };
        let path = std::env::temp_dir().join(format!("microvm-boot-test-big-{}", std::process::id()));
        std::fs::write(&path, elf(16)).unwrap();
        let ok = load_kernel(&mem, &path).unwrap();
        assert_eq!(ok.end, HIMEM_START + 16);
        std::fs::write(&path, elf(3 << 40)).unwrap();
        let err = load_kernel(&mem, &path).unwrap_err();
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(err, BootError::KernelTooLarge { end, .. } if end == HIMEM_START + (3 << 40)), "{err}");
    }
}
