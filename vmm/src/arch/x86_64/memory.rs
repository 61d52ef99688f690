//! Guest RAM regions and the e820 map that describes them to the guest.

use super::layout::{EBDA_START, HIMEM_START, MMIO_GAP_END, MMIO_GAP_START};

/// e820 type of usable RAM (arch/x86/include/uapi/asm/e820.h... E820_TYPE_RAM).
pub const E820_RAM: u32 = 1;
/// e820 type of reserved memory (E820_TYPE_RESERVED).
pub const E820_RESERVED: u32 = 2;

/// One e820 entry: `[addr, addr + size)` of `kind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// The RAM regions `(start, size)` to back a guest of `mem_size` bytes: one below the MMIO
/// gap, and a second from 4 GiB for whatever did not fit under it.
pub fn ram_regions(mem_size: u64) -> Vec<(u64, u64)> {
    if mem_size <= MMIO_GAP_START {
        vec![(0, mem_size)]
    } else {
        vec![(0, MMIO_GAP_START), (MMIO_GAP_END, mem_size - MMIO_GAP_START)]
    }
}

/// The e820 map for a guest of `mem_size` bytes. The EBDA (MP table) up to 1 MiB is left
/// out of RAM so the guest does not allocate over the tables we wrote there.
pub fn e820_map(mem_size: u64) -> Vec<E820Entry> {
    let mut map = vec![
        E820Entry { addr: 0, size: EBDA_START, kind: E820_RAM },
        E820Entry { addr: EBDA_START, size: HIMEM_START - EBDA_START, kind: E820_RESERVED },
    ];
    for (start, size) in ram_regions(mem_size) {
        let (start, size) = if start == 0 { (HIMEM_START, size - HIMEM_START) } else { (start, size) };
        map.push(E820Entry { addr: start, size, kind: E820_RAM });
    }
    map
}

/// Highest address (exclusive) of RAM below the MMIO gap.
pub fn low_ram_end(mem_size: u64) -> u64 {
    mem_size.min(MMIO_GAP_START)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    #[test]
    fn small_guest_has_one_region_and_no_ram_in_the_ebda() {
        assert_eq!(ram_regions(128 * MIB), vec![(0, 128 * MIB)]);
        let map = e820_map(128 * MIB);
        assert_eq!(
            map,
            vec![
                E820Entry { addr: 0, size: 0x9fc00, kind: E820_RAM },
                E820Entry { addr: 0x9fc00, size: 0x100000 - 0x9fc00, kind: E820_RESERVED },
                E820Entry { addr: 0x100000, size: 127 * MIB, kind: E820_RAM },
            ]
        );
    }

    #[test]
    fn large_guest_skips_the_mmio_gap() {
        let regions = ram_regions(4 * GIB);
        assert_eq!(regions, vec![(0, 3 * GIB), (4 * GIB, GIB)]);
        let map = e820_map(4 * GIB);
        assert_eq!(map.last(), Some(&E820Entry { addr: 4 * GIB, size: GIB, kind: E820_RAM }));
        for e in &map {
            let overlaps_gap = e.addr < MMIO_GAP_END && e.addr + e.size > MMIO_GAP_START;
            assert!(!(e.kind == E820_RAM && overlaps_gap), "RAM in MMIO gap: {e:?}");
        }
        let ram: u64 = map.iter().filter(|e| e.kind == E820_RAM).map(|e| e.size).sum();
        assert_eq!(ram, 4 * GIB - (HIMEM_START - EBDA_START));
    }

    #[test]
    fn guest_exactly_at_the_gap_has_one_region() {
        assert_eq!(ram_regions(MMIO_GAP_START), vec![(0, MMIO_GAP_START)]);
        assert_eq!(low_ram_end(8 * GIB), MMIO_GAP_START);
    }
}
