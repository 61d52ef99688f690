//! Guest physical memory layout for x86_64 guests.
//!
//! ```text
//! 0x0000_0000  real-mode IVT and BIOS data area (RAM, left zero)
//! 0x0000_0500  boot GDT                       (BOOT_GDT_START)
//! 0x0000_0520  boot IDT, empty                (BOOT_IDT_START)
//! 0x0000_6000  PVH hvm_start_info + modules   (PVH_INFO_START, PVH_MODLIST_START)
//! 0x0000_7000  Linux zero page / PVH memmap   (ZERO_PAGE_START, PVH_MEMMAP_START)
//! 0x0000_8ff0  boot stack top                 (BOOT_STACK_POINTER)
//! 0x0000_9000  PML4, PDPT, PD: identity map of the first 1 GiB
//! 0x0002_0000  kernel command line            (CMDLINE_START)
//! 0x0009_fc00  EBDA: MP table                 (EBDA_START), reserved in e820
//! 0x0010_0000  kernel (bzImage code32_start; ELF vmlinux loads at its own paddr)
//!    ...       RAM up to MMIO_GAP_START; initrd at the top of it
//! 0xc000_0000  MMIO gap (no RAM): virtio-mmio devices from 0xd000_0000, 4 KiB each;
//!              IOAPIC 0xfec0_0000, LAPIC 0xfee0_0000
//! 0x1_0000_0000 RAM above 4 GiB, for guests larger than the gap start
//! ```

/// Where the GDT used to enter long mode (or 32-bit PVH mode) lives.
pub const BOOT_GDT_START: u64 = 0x500;
/// An empty IDT: the guest installs its own before enabling interrupts.
pub const BOOT_IDT_START: u64 = 0x520;
/// PVH `hvm_start_info` (xen/include/public/arch-x86/hvm/start_info.h).
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (the initrd), right after `hvm_start_info`.
pub const PVH_MODLIST_START: u64 = 0x6040;
/// PVH memory map; only one of the two boot protocols is used per boot.
pub const PVH_MEMMAP_START: u64 = 0x7000;
/// Linux `boot_params` ("zero page", Documentation/x86/zero-page.rst).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack for the boot CPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Page map level 4 of the boot identity map.
pub const PML4_START: u64 = 0x9000;
/// Page directory pointer table of the boot identity map.
pub const PDPTE_START: u64 = 0xa000;
/// Page directory (2 MiB pages) of the boot identity map.
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Largest command line we pass; x86 COMMAND_LINE_SIZE (arch/x86/include/asm/setup.h).
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Extended BIOS data area; Linux scans its first KiB for the MP floating pointer.
pub const EBDA_START: u64 = 0x9fc00;
/// Start of "high" memory, where protected-mode kernels are loaded.
pub const HIMEM_START: u64 = 0x100000;
/// Start of the hole below 4 GiB kept free of RAM for device MMIO.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the MMIO hole.
pub const MMIO_GAP_END: u64 = 1 << 32;
/// First virtio-mmio device window; each device gets `MMIO_WINDOW` (4 KiB) from here.
pub const MMIO_DEVICES_START: u64 = 0xd000_0000;
/// First interrupt line for virtio-mmio devices (ISA IRQs 0-4 are taken: timer, PIC cascade,
/// COM1 is 4); device `i` uses `VIRTIO_IRQ_BASE + i`, up to IOAPIC pin 23.
pub const VIRTIO_IRQ_BASE: u32 = 5;
/// IOAPIC base (the architectural default).
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Local APIC base (the architectural default).
pub const APIC_START: u64 = 0xfee0_0000;
/// The TSS region KVM needs on Intel hosts (KVM_SET_TSS_ADDR): three pages below the IOAPIC.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// Smallest guest we accept: the kernel, its page tables and an initrd must fit.
pub const MIN_MEM_MIB: u64 = 16;
