//! Tiny guests: a few hand-assembled x86-64 instructions wrapped in an ELF executable that the
//! VMM loads like a vmlinux (64-bit entry, no PVH note). They need no Linux, so they run even
//! on an emulating /dev/kvm in milliseconds.

/// Where the code is loaded and entered (1 MiB, where protected-mode kernels go).
pub const LOAD_ADDR: u64 = 0x10_0000;

/// `mov dx, 0x3f0; mov al, 123; out dx, al`: the boot-timer write.
pub const BOOT_TIMER: &[u8] = &[0x66, 0xba, 0xf0, 0x03, 0xb0, 0x7b, 0xee];
/// `mov al, 0xfe; out 0x64, al`: pulse the i8042 reset line.
pub const I8042_RESET: &[u8] = &[0xb0, 0xfe, 0xe6, 0x64];
/// `cli; hlt`: stop for good.
pub const CLI_HLT: &[u8] = &[0xfa, 0xf4];
/// `sti; hlt; jmp $-1`: park with interrupts on (nothing sends any), so the VM stays up.
pub const STI_HLT_LOOP: &[u8] = &[0xfb, 0xf4, 0xeb, 0xfd];
/// `hlt; jmp $-1`: park.
pub const HLT_LOOP: &[u8] = &[0xf4, 0xeb, 0xfd];
/// `int3` with an empty IDT: #BP -> #GP -> #DF -> triple fault.
pub const INT3: &[u8] = &[0xcc];

/// `mov dx, 0x3f8; mov al, b; out dx, al` for each byte: print on COM1.
pub fn serial_print(text: &[u8]) -> Vec<u8> {
    let mut code = vec![0x66, 0xba, 0xf8, 0x03];
    for b in text {
        code.extend_from_slice(&[0xb0, *b, 0xee]);
    }
    code
}

/// Concatenates code pieces.
pub fn program(pieces: &[&[u8]]) -> Vec<u8> {
    pieces.concat()
}

/// An ELF64 executable with one PT_LOAD segment holding `code` at [`LOAD_ADDR`].
pub fn elf(code: &[u8]) -> Vec<u8> {
    const EHDR: u64 = 64;
    const PHDR: u64 = 56;
    let mut f = Vec::new();
    f.extend_from_slice(b"\x7fELF");
    f.extend_from_slice(&[2, 1, 1, 0]); // 64-bit, little-endian, version 1, System V
    f.extend_from_slice(&[0; 8]);
    f.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f.extend_from_slice(&0x3eu16.to_le_bytes()); // EM_X86_64
    f.extend_from_slice(&1u32.to_le_bytes());
    f.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // e_entry
    f.extend_from_slice(&EHDR.to_le_bytes()); // e_phoff
    f.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    f.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    f.extend_from_slice(&(EHDR as u16).to_le_bytes());
    f.extend_from_slice(&(PHDR as u16).to_le_bytes());
    f.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
    f.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
    f.extend_from_slice(&[0; 4]); // e_shnum, e_shstrndx
    f.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    f.extend_from_slice(&5u32.to_le_bytes()); // R+X
    f.extend_from_slice(&(EHDR + PHDR).to_le_bytes()); // p_offset
    f.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // p_vaddr
    f.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // p_paddr
    f.extend_from_slice(&(code.len() as u64).to_le_bytes()); // p_filesz
    f.extend_from_slice(&(code.len() as u64).to_le_bytes()); // p_memsz
    f.extend_from_slice(&0x1000u64.to_le_bytes()); // p_align
    f.extend_from_slice(code);
    f
}


/// `mov dword [addr], value` (absolute address below 2 GiB).
pub fn store32(addr: u32, value: u32) -> Vec<u8> {
    let mut code = vec![0xc7, 0x04, 0x25];
    code.extend_from_slice(&addr.to_le_bytes());
    code.extend_from_slice(&value.to_le_bytes());
    code
}

/// Maps the 2 MiB page at `mmio` (in 3..4 GiB) into the boot identity map, uncached: a page
/// directory at 0xc000 for the fourth GiB, then a CR3 reload. The VMM's boot tables map only
/// the first GiB (PML4 0x9000, PDPT 0xa000).
pub fn map_mmio_page(mmio: u32) -> Vec<u8> {
    const PD: u32 = 0xc000;
    let entry = PD + ((mmio - 0xc000_0000) >> 21) * 8;
    let mut code = [store32(0xa018, PD | 0x3), store32(entry, mmio | 0x93)].concat();
    code.extend_from_slice(&[0x0f, 0x20, 0xd8, 0x0f, 0x22, 0xd8]); // mov rax, cr3; mov cr3, rax
    code
}

/// `mov eax, base` then, per `(offset, value)`, `mov dword [rax + offset], value`.
pub fn mmio_writes(base: u32, writes: &[(u32, u32)]) -> Vec<u8> {
    let mut code = vec![0xb8];
    code.extend_from_slice(&base.to_le_bytes());
    for (offset, value) in writes {
        code.extend_from_slice(&[0xc7, 0x80]);
        code.extend_from_slice(&offset.to_le_bytes());
        code.extend_from_slice(&value.to_le_bytes());
    }
    code
}

/// Spins until the 16-bit value at `addr + 2` (a used ring's idx) equals `value`.
pub fn wait_u16_at_plus2(addr: u32, value: u8) -> Vec<u8> {
    let mut code = vec![0x8b, 0x04, 0x25]; // mov eax, [addr]
    code.extend_from_slice(&addr.to_le_bytes());
    code.extend_from_slice(&[0xc1, 0xe8, 0x10]); // shr eax, 16
    code.extend_from_slice(&[0x83, 0xf8, value]); // cmp eax, value
    code.extend_from_slice(&[0x75, 0xf1]); // jne back to the mov (15 bytes)
    code
}

/// Where [`blk_driver`] puts its rings and buffers (all in the first MiB of guest memory).
pub mod blk {
    pub const MMIO: u32 = 0xd000_0000;
    pub const DESC: u32 = 0x3_0000;
    pub const AVAIL: u32 = 0x3_1000;
    pub const USED: u32 = 0x3_2000;
    /// Request headers and status bytes live from here (zeroed memory: a read of sector 0).
    pub const HDR: u32 = 0x4_0000;
    pub const NEXT: u32 = 1;
    pub const WRITE: u32 = 2;
    /// The queue size the driver sets.
    pub const QUEUE_SIZE: u32 = 8;
}

/// A virtio driver for the first virtio-mmio device (a virtio-blk disk) that may be hostile:
/// it sets queue 0 up by the book (size [`blk::QUEUE_SIZE`]), writes `descs` (addr low, addr
/// high, len, flags | next << 16) to the descriptor table and `heads` to the avail ring with
/// avail.idx = `avail_idx`, notifies `notifies` times, waits (a bounded spin, so a device that
/// never answers cannot hang the test) for the used ring's idx to reach `used`, signals the
/// boot timer and resets the machine. With a `canary` (address, value) the driver stores the
/// value there first and, at the end, triple-faults (int3 without an IDT) instead of resetting
/// if the device changed it.
pub fn blk_driver(descs: &[(u32, u32, u32, u32)], heads: &[u16], avail_idx: u16, notifies: u32, used: u8, canary: Option<(u32, u32)>) -> Vec<u8> {
    use blk::*;
    let mut code = map_mmio_page(MMIO);
    if let Some((addr, value)) = canary {
        code.extend(store32(addr, value));
    }
    for (i, (lo, hi, len, flags_next)) in descs.iter().enumerate() {
        let at = DESC + 16 * i as u32;
        code.extend([store32(at, *lo), store32(at + 4, *hi), store32(at + 8, *len), store32(at + 12, *flags_next)].concat());
    }
    for (i, pair) in heads.chunks(2).enumerate() {
        let word = u32::from(pair[0]) | u32::from(pair.get(1).copied().unwrap_or(0)) << 16;
        code.extend(store32(AVAIL + 4 + 4 * i as u32, word));
    }
    code.extend(store32(AVAIL, u32::from(avail_idx) << 16)); // flags 0, idx
    code.extend(mmio_writes(
        MMIO,
        &[
            (0x70, 0),            // reset
            (0x70, 3),            // ACKNOWLEDGE | DRIVER
            (0x24, 1),            // DriverFeaturesSel = 1
            (0x20, 1),            // VIRTIO_F_VERSION_1
            (0x70, 0xb),          // | FEATURES_OK
            (0x30, 0),            // QueueSel 0
            (0x38, QUEUE_SIZE),   // QueueNum
            (0x80, DESC),
            (0x90, AVAIL),
            (0xa0, USED),
            (0x44, 1),            // QueueReady
            (0x70, 0xf),          // | DRIVER_OK
        ],
    ));
    // rax = MMIO still; ecx = notifies; loop: mov dword [rax + 0x50], 0; dec ecx; jnz loop.
    code.push(0xb9);
    code.extend_from_slice(&notifies.max(1).to_le_bytes());
    code.extend_from_slice(&[0xc7, 0x80, 0x50, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xc9, 0x75, 0xf2]);
    code.extend(wait_used_bounded(USED, used, 0x2_0000));
    if let Some((addr, value)) = canary {
        code.extend_from_slice(&[0x81, 0x3c, 0x25]); // cmp dword [addr], value
        code.extend_from_slice(&addr.to_le_bytes());
        code.extend_from_slice(&value.to_le_bytes());
        code.extend_from_slice(&[0x74, 0x01]); // je over the int3
        code.extend_from_slice(INT3);
    }
    code.extend_from_slice(BOOT_TIMER);
    code.extend_from_slice(I8042_RESET);
    code.extend_from_slice(HLT_LOOP);
    code
}

/// Spins until the used ring's idx (the 16 bits at `addr + 2`) equals `value`, at most
/// `spins` times.
fn wait_used_bounded(addr: u32, value: u8, spins: u32) -> Vec<u8> {
    let mut code = vec![0xb9]; // mov ecx, spins
    code.extend_from_slice(&spins.to_le_bytes());
    code.extend_from_slice(&[0x8b, 0x04, 0x25]); // loop: mov eax, [addr]
    code.extend_from_slice(&addr.to_le_bytes());
    code.extend_from_slice(&[0xc1, 0xe8, 0x10]); // shr eax, 16
    code.extend_from_slice(&[0x83, 0xf8, value]); // cmp eax, value
    code.extend_from_slice(&[0x74, 0x04]); // je done
    code.extend_from_slice(&[0xff, 0xc9]); // dec ecx
    code.extend_from_slice(&[0x75, 0xed]); // jnz loop
    code // done:
}

/// Two bad chains, one that loops (0 -> 1 -> 0) and one whose data buffer lies at 28 GiB,
/// far outside guest memory.
pub fn hostile_blk_driver() -> Vec<u8> {
    use blk::*;
    let descs = [
        (HDR, 0, 16, NEXT | 1 << 16),
        (HDR + 0x10, 0, 1, NEXT | WRITE),
        (HDR, 0, 16, NEXT | 3 << 16),
        (0, 7, 4096, NEXT | WRITE | 4 << 16),
        (HDR + 0x20, 0, 1, WRITE),
    ];
    blk_driver(&descs, &[0, 2], 2, 1, 2, None)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn elf_headers_have_the_sizes_the_loader_checks() {
        let f = elf(&[0xf4]);
        assert_eq!(f.len(), 64 + 56 + 1);
        assert_eq!(u16::from_le_bytes([f[54], f[55]]), 56);
        assert_eq!(f[120], 0xf4);
    }
}
