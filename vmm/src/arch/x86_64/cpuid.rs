//! CPUID for the guest: KVM's supported set (KVM_GET_SUPPORTED_CPUID), adjusted per vCPU.
//!
//! KVM reports what the host and KVM can virtualize; it leaves the topology to the VMM.
//! We set each vCPU's APIC id, describe `count` single-threaded cores in one package, mark
//! the CPU as running under a hypervisor, and hide the PMU (we do not virtualize one).
//! KVM leaves one feature it emulates out of that set on purpose: the local APIC's TSC-deadline
//! mode (KVM_CAP_TSC_DEADLINE_TIMER; api.rst: userspace sets the bit when the capability is
//! there). We set it, as Firecracker and Cloud Hypervisor do: without it Linux calibrates the
//! APIC timer against the PIT at boot for ten ticks (100 ms at HZ=100; 230 ms of boot in the
//! nested bed).
//! Leaf numbers and bit positions: Intel SDM vol. 2A, "CPUID"; AMD APM vol. 3, appendix E.

use kvm_bindings::kvm_cpuid_entry2;

/// CPUID.1:ECX bit 31: "running under a hypervisor".
const ECX_HYPERVISOR: u32 = 1 << 31;
/// CPUID.1:ECX bit 24: the local APIC timer has TSC-deadline mode.
const ECX_TSC_DEADLINE: u32 = 1 << 24;
/// CPUID.1:EDX bit 28: more than one logical processor in the package.
const EDX_HTT: u32 = 1 << 28;
/// CPUID.0xB/0x1F level types.
const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;

/// What KVM emulates beyond its supported CPUID, from its capabilities.
#[derive(Clone, Copy, Debug, Default)]
pub struct Extras {
    /// KVM_CAP_TSC_DEADLINE_TIMER: the in-kernel local APIC has TSC-deadline mode.
    pub tsc_deadline: bool,
}

/// Adjusts KVM's supported CPUID entries for vCPU `index` of `count`.
pub fn filter(entries: &mut [kvm_cpuid_entry2], index: u8, count: u8, extras: Extras) {
    let (index, count) = (u32::from(index), u32::from(count));
    for e in entries.iter_mut() {
        match e.function {
            0x1 => {
                // EBX[31:24] initial APIC id, EBX[23:16] logical processors per package.
                e.ebx = (e.ebx & 0x0000_ffff) | (index << 24) | (count << 16);
                e.ecx |= ECX_HYPERVISOR;
                if extras.tsc_deadline {
                    e.ecx |= ECX_TSC_DEADLINE;
                }
                if count > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
            }
            0x4 => {
                // EAX[31:26] cores per package - 1; EAX[25:14] threads sharing this cache - 1:
                // every core has its own L1/L2, the last level is shared by all.
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 { count - 1 } else { 0 };
                e.eax = (e.eax & 0x3fff) | ((count - 1) << 26) | (sharing << 14);
            }
            0xa => {
                // Architectural performance monitoring: none.
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            0xb | 0x1f => {
                // Extended topology: one thread per core, `count` cores.
                e.edx = index;
                match e.index {
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = (LEVEL_TYPE_SMT << 8) | e.index;
                    }
                    1 => {
                        e.eax = bits_for(count);
                        e.ebx = count;
                        e.ecx = (LEVEL_TYPE_CORE << 8) | e.index;
                    }
                    _ => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = e.index;
                    }
                }
            }
            0x8000_0008 => {
                // AMD: ECX[7:0] cores - 1, ECX[15:12] APIC id bits for the core.
                e.ecx = (e.ecx & !0xf0ff) | (bits_for(count) << 12) | (count - 1);
            }
            _ => {}
        }
    }
}

/// Bits needed to number `n` items (ceil(log2(n))).
fn bits_for(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: 0xffff_ffff,
            ebx: 0x0000_0800, // CLFLUSH line size, must survive
            ecx: 0,
            edx: 0,
            ..Default::default()
        }
    }

    #[test]
    fn leaf_1_carries_apic_id_count_and_hypervisor_bit() {
        let mut e = [entry(1, 0)];
        filter(&mut e, 3, 4, Extras::default());
        assert_eq!(e[0].ebx >> 24, 3);
        assert_eq!((e[0].ebx >> 16) & 0xff, 4);
        assert_eq!(e[0].ebx & 0xffff, 0x0800);
        assert_ne!(e[0].ecx & ECX_HYPERVISOR, 0);
        assert_ne!(e[0].edx & EDX_HTT, 0);
        let mut one = [entry(1, 0)];
        one[0].edx = EDX_HTT;
        filter(&mut one, 0, 1, Extras::default());
        assert_eq!(one[0].edx & EDX_HTT, 0);
    }

    #[test]
    fn tsc_deadline_is_set_only_when_kvm_emulates_it() {
        let mut e = [entry(1, 0)];
        filter(&mut e, 0, 1, Extras::default());
        assert_eq!(e[0].ecx & ECX_TSC_DEADLINE, 0);
        filter(&mut e, 0, 1, Extras { tsc_deadline: true });
        assert_ne!(e[0].ecx & ECX_TSC_DEADLINE, 0);
    }

    #[test]
    fn pmu_is_hidden() {
        let mut e = [entry(0xa, 0)];
        filter(&mut e, 0, 1, Extras::default());
        assert_eq!((e[0].eax, e[0].ebx, e[0].ecx, e[0].edx), (0, 0, 0, 0));
    }

    #[test]
    fn extended_topology_describes_count_cores() {
        let mut e = [entry(0xb, 0), entry(0xb, 1), entry(0xb, 2)];
        filter(&mut e, 1, 2, Extras::default());
        assert!(e.iter().all(|l| l.edx == 1), "x2APIC id on every subleaf");
        assert_eq!((e[0].ebx, e[0].ecx >> 8), (1, LEVEL_TYPE_SMT));
        assert_eq!((e[1].eax, e[1].ebx, e[1].ecx >> 8), (1, 2, LEVEL_TYPE_CORE));
        assert_eq!((e[2].ebx, e[2].ecx >> 8), (0, 0));
    }

    #[test]
    fn cache_leaf_and_amd_core_count() {
        let mut l1 = entry(0x4, 0);
        l1.eax = 1 << 5; // level 1 data cache
        let mut l3 = entry(0x4, 3);
        l3.eax = 3 << 5;
        let mut amd = entry(0x8000_0008, 0);
        amd.ecx = 0xffff_ffff;
        let mut e = [l1, l3, amd];
        filter(&mut e, 0, 4, Extras::default());
        assert_eq!(e[0].eax >> 26, 3);
        assert_eq!((e[0].eax >> 14) & 0xfff, 0);
        assert_eq!((e[1].eax >> 14) & 0xfff, 3);
        assert_eq!(e[2].ecx & 0xff, 3);
        assert_eq!((e[2].ecx >> 12) & 0xf, 2);
    }

    #[test]
    fn bits_for_counts() {
        assert_eq!([1, 2, 3, 4, 5, 32].map(bits_for), [0, 1, 2, 2, 3, 5]);
    }
}
