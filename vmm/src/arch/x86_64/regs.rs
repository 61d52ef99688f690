//! Initial vCPU state: the GDT, identity-mapped page tables, segment and control registers for
//! 64-bit Linux boot or 32-bit PVH entry, general registers, FPU, MSRs and the local APIC.
//! Register values follow Documentation/x86/boot.rst ("64-bit Boot Protocol") and the PVH ABI
//! (xen docs/misc/pvh.pandoc).

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, Msrs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{
    BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, PDE_START, PDPTE_START, PML4_START,
    PVH_INFO_START, ZERO_PAGE_START,
};

#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    #[error("write boot page tables and GDT to guest memory: {0}")]
    GuestMemory(#[from] vm_memory::GuestMemoryError),
    #[error("KVM_{op}: {source}")]
    Kvm { op: &'static str, source: kvm_ioctls::Error },
    #[error("KVM_SET_MSRS set {set} of {wanted} MSRs")]
    MsrsPartial { set: usize, wanted: usize },
    #[error("build MSR list: {0:?}")]
    MsrList(vmm_sys_util::fam::Error),
}

type Result<T> = std::result::Result<T, RegsError>;

fn kvm(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> RegsError {
    move |source| RegsError::Kvm { op, source }
}

/// Which entry the kernel is started at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryMode {
    /// 64-bit Linux boot protocol: long mode, paging on, `rsi` = boot_params.
    Linux64,
    /// PVH: 32-bit protected mode, paging off, `rbx` = hvm_start_info.
    Pvh,
}

const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// A GDT descriptor from its access/flags word, base and limit (Intel SDM 3A, 3.4.5).
pub fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let (flags, base, limit) = (u64::from(flags), u64::from(base), u64::from(limit));
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0xffff)
}

/// The KVM segment that loading selector `index` of a GDT holding `entry` would produce.
pub fn segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    let limit = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    let granular = (entry >> 55) & 1 == 1;
    kvm_segment {
        base: ((entry >> 16) & 0xff_ffff) | ((entry >> 32) & 0xff00_0000),
        limit: if granular { (limit << 12) | 0xfff } else { limit },
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g: granular as u8,
        avl: ((entry >> 52) & 1) as u8,
        unusable: u8::from((entry >> 47) & 1 == 0),
        padding: 0,
    }
}

/// The boot GDT: null, code, data, TSS.
pub fn boot_gdt(mode: EntryMode) -> [u64; 4] {
    match mode {
        // 64-bit code (L=1), flat data.
        EntryMode::Linux64 => [
            0,
            gdt_entry(0xa09b, 0, 0xfffff),
            gdt_entry(0xc093, 0, 0xfffff),
            gdt_entry(0x808b, 0, 0xfffff),
        ],
        // PVH wants flat 32-bit code and data with 4 GiB limits.
        EntryMode::Pvh => [
            0,
            gdt_entry(0xc09b, 0, 0xfffff),
            gdt_entry(0xc093, 0, 0xfffff),
            gdt_entry(0x008b, 0, 0x67),
        ],
    }
}

/// Writes the GDT, the empty IDT and (for 64-bit entry) an identity map of the first GiB
/// with 2 MiB pages, and sets the segment and control registers accordingly.
pub fn setup_sregs(mem: &GuestMemoryMmap, vcpu: &VcpuFd, mode: EntryMode) -> Result<()> {
    let mut sregs = vcpu.get_sregs().map_err(kvm("GET_SREGS"))?;
    let gdt = boot_gdt(mode);
    for (i, entry) in gdt.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(BOOT_GDT_START + 8 * i as u64))?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))?;
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&gdt) - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;

    let code = segment_from_gdt(gdt[1], 1);
    let data = segment_from_gdt(gdt[2], 2);
    sregs.cs = code;
    (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
    sregs.tr = segment_from_gdt(gdt[3], 3);

    match mode {
        EntryMode::Linux64 => {
            write_identity_map(mem)?;
            sregs.cr3 = PML4_START;
            sregs.cr4 |= CR4_PAE;
            sregs.cr0 |= CR0_PE | CR0_PG;
            sregs.efer |= EFER_LME | EFER_LMA;
        }
        EntryMode::Pvh => {
            sregs.cr0 = CR0_PE | CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
    }
    vcpu.set_sregs(&sregs).map_err(kvm("SET_SREGS"))
}

fn write_identity_map(mem: &GuestMemoryMmap) -> Result<()> {
    const PRESENT_WRITABLE: u64 = 0x3;
    const HUGE_PAGE: u64 = 0x80;
    mem.write_obj(PDPTE_START | PRESENT_WRITABLE, GuestAddress(PML4_START))?;
    mem.write_obj(PDE_START | PRESENT_WRITABLE, GuestAddress(PDPTE_START))?;
    for i in 0..512u64 {
        mem.write_obj((i << 21) | HUGE_PAGE | PRESENT_WRITABLE, GuestAddress(PDE_START + i * 8))?;
    }
    Ok(())
}

/// Sets the instruction pointer, stack and boot-information pointer.
pub fn setup_regs(vcpu: &VcpuFd, mode: EntryMode, entry: u64) -> Result<()> {
    let mut regs = kvm_regs { rflags: 0x2, rip: entry, ..Default::default() };
    match mode {
        EntryMode::Linux64 => {
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
            regs.rsi = ZERO_PAGE_START;
        }
        EntryMode::Pvh => regs.rbx = PVH_INFO_START,
    }
    vcpu.set_regs(&regs).map_err(kvm("SET_REGS"))
}

/// x87 control word and MXCSR at their reset values.
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<()> {
    let fpu = kvm_fpu { fcw: 0x37f, mxcsr: 0x1f80, ..Default::default() };
    vcpu.set_fpu(&fpu).map_err(kvm("SET_FPU"))
}

/// MSR numbers from arch/x86/include/asm/msr-index.h.
mod msr {
    pub const IA32_TSC: u32 = 0x10;
    pub const IA32_SYSENTER_CS: u32 = 0x174;
    pub const IA32_SYSENTER_ESP: u32 = 0x175;
    pub const IA32_SYSENTER_EIP: u32 = 0x176;
    pub const IA32_MISC_ENABLE: u32 = 0x1a0;
    pub const MTRR_DEF_TYPE: u32 = 0x2ff;
    pub const STAR: u32 = 0xc000_0081;
    pub const LSTAR: u32 = 0xc000_0082;
    pub const CSTAR: u32 = 0xc000_0083;
    pub const SYSCALL_MASK: u32 = 0xc000_0084;
    pub const KERNEL_GS_BASE: u32 = 0xc000_0102;
}

/// The boot MSRs: syscall MSRs cleared, fast strings on, MTRRs enabled with write-back default.
pub fn boot_msrs() -> Vec<kvm_msr_entry> {
    const MISC_ENABLE_FAST_STRING: u64 = 1;
    const MTRR_ENABLE_WB: u64 = (1 << 11) | 6;
    [
        (msr::IA32_SYSENTER_CS, 0),
        (msr::IA32_SYSENTER_ESP, 0),
        (msr::IA32_SYSENTER_EIP, 0),
        (msr::STAR, 0),
        (msr::CSTAR, 0),
        (msr::KERNEL_GS_BASE, 0),
        (msr::SYSCALL_MASK, 0),
        (msr::LSTAR, 0),
        (msr::IA32_TSC, 0),
        (msr::IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (msr::MTRR_DEF_TYPE, MTRR_ENABLE_WB),
    ]
    .into_iter()
    .map(|(index, data)| kvm_msr_entry { index, data, ..Default::default() })
    .collect()
}

pub fn setup_msrs(vcpu: &VcpuFd) -> Result<()> {
    let entries = boot_msrs();
    let msrs = Msrs::from_entries(&entries).map_err(RegsError::MsrList)?;
    let set = vcpu.set_msrs(&msrs).map_err(kvm("SET_MSRS"))?;
    if set != entries.len() {
        return Err(RegsError::MsrsPartial { set, wanted: entries.len() });
    }
    Ok(())
}

/// Local APIC: LINT0 delivers the 8259's ExtINT, LINT1 NMIs, matching the MP table.
pub fn setup_lapic(vcpu: &VcpuFd) -> Result<()> {
    const LVT_LINT0: usize = 0x350;
    const LVT_LINT1: usize = 0x360;
    const MODE_NMI: u32 = 4;
    const MODE_EXTINT: u32 = 7;
    let mut lapic = vcpu.get_lapic().map_err(kvm("GET_LAPIC"))?;
    for (reg, mode) in [(LVT_LINT0, MODE_EXTINT), (LVT_LINT1, MODE_NMI)] {
        let bytes: [u8; 4] = std::array::from_fn(|i| lapic.regs[reg + i] as u8);
        let value = (u32::from_le_bytes(bytes) & !0x700) | (mode << 8);
        for (i, b) in value.to_le_bytes().iter().enumerate() {
            lapic.regs[reg + i] = *b as _;
        }
    }
    vcpu.set_lapic(&lapic).map_err(kvm("SET_LAPIC"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_decode_to_the_segments_linux_expects() {
        let gdt = boot_gdt(EntryMode::Linux64);
        let cs = segment_from_gdt(gdt[1], 1);
        assert_eq!((cs.selector, cs.type_, cs.l, cs.db, cs.present, cs.s), (8, 0xb, 1, 0, 1, 1));
        assert_eq!((cs.base, cs.limit, cs.g), (0, 0xffff_ffff, 1));
        let ds = segment_from_gdt(gdt[2], 2);
        assert_eq!((ds.selector, ds.type_, ds.db, ds.l), (16, 0x3, 1, 0));
        let tr = segment_from_gdt(gdt[3], 3);
        assert_eq!((tr.type_, tr.s, tr.unusable), (0xb, 0, 0));
        assert_eq!(segment_from_gdt(0, 0).unusable, 1);
    }

    #[test]
    fn pvh_code_segment_is_32_bit_flat() {
        let cs = segment_from_gdt(boot_gdt(EntryMode::Pvh)[1], 1);
        assert_eq!((cs.l, cs.db, cs.base, cs.limit), (0, 1, 0, 0xffff_ffff));
    }

    #[test]
    fn gdt_entry_packs_base_and_limit() {
        let e = gdt_entry(0x008b, 0x1234_5678, 0xabcde);
        let s = segment_from_gdt(e, 3);
        assert_eq!(s.base, 0x1234_5678);
        assert_eq!(s.limit, 0xabcde);
    }

    #[test]
    fn identity_map_covers_the_first_gib() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write_identity_map(&mem).unwrap();
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4 & !0xfff, PDPTE_START);
        let last: u64 = mem.read_obj(GuestAddress(PDE_START + 511 * 8)).unwrap();
        assert_eq!(last, (511 << 21) | 0x83);
    }

    #[test]
    fn msrs_enable_mtrr_write_back() {
        let m = boot_msrs();
        let def = m.iter().find(|e| e.index == msr::MTRR_DEF_TYPE).unwrap();
        assert_eq!(def.data, 0x806);
    }
}
