//! The Intel MultiProcessor Specification 1.4 table that tells the guest about its CPUs,
//! IOAPIC and interrupt wiring (no ACPI in our guests).
//!
//! Written by hand: no maintained crate builds MP tables, and the format is a few fixed
//! little-endian records. Layout per MP spec 1.4, chapter 4; Linux reads it in
//! arch/x86/kernel/mpparse.c after scanning the EBDA for the floating pointer.

use super::layout::{APIC_START, EBDA_START, IOAPIC_START};

/// Most vCPUs the table can describe while it still fits in the 1 KiB EBDA.
pub const MAX_CPUS: u8 = 32;
/// IOAPIC input pins that KVM's in-kernel IOAPIC provides (KVM_IOAPIC_NUM_PINS).
const IOAPIC_PINS: u8 = 24;

const MPC_SPEC_REV: u8 = 4;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_FLAG_ENABLED: u8 = 1;
const CPU_FLAG_BOOT: u8 = 2;
/// Family 6 model 1 stepping 3 (the "generic" signature QEMU and Firecracker use).
const CPU_SIGNATURE: u32 = (6 << 8) | (1 << 4) | 3;
/// CPUID.1:EDX FPU and APIC.
const CPU_FEATURES: u32 = (1 << 9) | 1;

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MptableError {
    #[error("an MP table describes 1 to {MAX_CPUS} vCPUs, not {0}")]
    CpuCount(u8),
}

/// Builds the floating pointer followed by the configuration table, to be written at
/// [`EBDA_START`]. Returns the bytes.
pub fn build(num_cpus: u8) -> Result<Vec<u8>, MptableError> {
    if num_cpus == 0 || num_cpus > MAX_CPUS {
        return Err(MptableError::CpuCount(num_cpus));
    }
    let ioapic_id = num_cpus + 1;
    let table_addr = EBDA_START + 16;

    // Configuration table entries first, so the header can give their count and length.
    let mut entries = Vec::new();
    for cpu in 0..num_cpus {
        let flags = CPU_FLAG_ENABLED | if cpu == 0 { CPU_FLAG_BOOT } else { 0 };
        entries.extend_from_slice(&[ENTRY_PROCESSOR, cpu, APIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
    }
    entries.extend_from_slice(&[ENTRY_BUS, 0]);
    entries.extend_from_slice(b"ISA   ");
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&(IOAPIC_START as u32).to_le_bytes());
    for pin in 0..IOAPIC_PINS {
        // ISA IRQ n is wired to IOAPIC pin n, edge/high as the bus defaults ("conforms").
        entries.extend_from_slice(&[ENTRY_IO_INTERRUPT, INT_TYPE_INT, 0, 0, 0, pin, ioapic_id, pin]);
    }
    // LINT0 carries the 8259's ExtINT, LINT1 the NMI, on every local APIC (id 0xff).
    entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, INT_TYPE_EXTINT, 0, 0, 0, 0, 0xff, 0]);
    entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, INT_TYPE_NMI, 0, 0, 0, 0, 0xff, 1]);
    let entry_count = u16::from(num_cpus) + 1 + 1 + u16::from(IOAPIC_PINS) + 2;

    let mut table = Vec::with_capacity(44 + entries.len());
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&((44 + entries.len()) as u16).to_le_bytes());
    table.extend_from_slice(&[MPC_SPEC_REV, 0]); // checksum filled below
    table.extend_from_slice(b"MICROVM ");
    table.extend_from_slice(b"000000000000");
    table.extend_from_slice(&0u32.to_le_bytes()); // no OEM table
    table.extend_from_slice(&0u16.to_le_bytes());
    table.extend_from_slice(&entry_count.to_le_bytes());
    table.extend_from_slice(&(APIC_START as u32).to_le_bytes());
    table.extend_from_slice(&[0; 4]); // no extended table
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut fp = Vec::with_capacity(16 + table.len());
    fp.extend_from_slice(b"_MP_");
    fp.extend_from_slice(&(table_addr as u32).to_le_bytes());
    fp.extend_from_slice(&[1, MPC_SPEC_REV, 0, 0, 0, 0, 0, 0]);
    fp[10] = checksum(&fp);
    fp.extend_from_slice(&table);
    Ok(fp)
}

/// The byte that makes `bytes` sum to zero, as MP structures require.
fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |sum, b| sum.wrapping_add(*b)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
    }

    #[test]
    fn floating_pointer_and_table_checksum_to_zero() {
        let t = build(2).unwrap();
        assert_eq!(&t[0..4], b"_MP_");
        assert_eq!(sum(&t[0..16]), 0);
        assert_eq!(u32::from_le_bytes(t[4..8].try_into().unwrap()) as u64, EBDA_START + 16);
        let table = &t[16..];
        assert_eq!(&table[0..4], b"PCMP");
        let len = u16::from_le_bytes([table[4], table[5]]) as usize;
        assert_eq!(len, table.len());
        assert_eq!(sum(table), 0);
    }

    #[test]
    fn one_processor_entry_per_cpu_and_only_the_first_boots() {
        let t = build(3).unwrap();
        let table = &t[16..];
        assert_eq!(u16::from_le_bytes([table[34], table[35]]), 3 + 1 + 1 + 24 + 2);
        let cpus: Vec<&[u8]> = table[44..].chunks(20).take(3).collect();
        for (i, e) in cpus.iter().enumerate() {
            assert_eq!(e[0], ENTRY_PROCESSOR);
            assert_eq!(e[1], i as u8, "APIC id");
            assert_eq!(e[3] & CPU_FLAG_BOOT != 0, i == 0);
        }
    }

    #[test]
    fn largest_table_fits_in_the_ebda() {
        assert!(build(MAX_CPUS).unwrap().len() <= 1024);
    }

    #[test]
    fn cpu_count_is_bounded() {
        assert_eq!(build(0), Err(MptableError::CpuCount(0)));
        assert_eq!(build(MAX_CPUS + 1), Err(MptableError::CpuCount(MAX_CPUS + 1)));
    }
}
