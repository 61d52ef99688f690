//! What this host offers for running microVMs: KVM, its flavour, CPU virtualization support,
//! nesting, and the guest kernel. Used by `microvm check`; the test bed applies the same rules.

use std::path::Path;

/// Facts read off the host.
#[derive(Debug)]
pub struct HostReport {
    pub kvm_error: Option<String>,
    pub missing_caps: Vec<&'static str>,
    /// `vmx` or `svm` when the CPU flags show hardware virtualization.
    pub hw_virt: Option<&'static str>,
    /// The module serving /dev/kvm: kvm_intel, kvm_amd or kvm_pvm.
    pub kvm_module: Option<&'static str>,
    /// This host is itself a guest (CPUID hypervisor bit), and the hypervisor's vendor id.
    pub hypervisor: Option<String>,
    /// Whether the KVM module allows nesting (its `nested` parameter).
    pub nested_param: Option<bool>,
    /// The guest kernel, agent and image cache, or why each is missing.
    pub kernel: Result<crate::layout::Found, String>,
    pub agent: Result<crate::layout::Found, String>,
    pub cache: Result<crate::layout::Found, String>,
    /// For volumes only: not part of the verdict.
    pub virtiofsd: Result<crate::layout::Found, String>,
}

impl HostReport {
    pub fn gather() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let flags = cpu_flags(&cpuinfo);
        let kvm_module = ["kvm_pvm", "kvm_intel", "kvm_amd"]
            .into_iter()
            .find(|m| Path::new("/sys/module").join(m).exists());
        let nested_param = kvm_module.and_then(|m| {
            let p = Path::new("/sys/module").join(m).join("parameters/nested");
            std::fs::read_to_string(p).ok().map(|v| matches!(v.trim(), "Y" | "1"))
        });
        let (kvm_error, missing_caps) = match vmm::vstate::vm::open_kvm_unchecked() {
            Ok(kvm) => (None, vmm::vstate::vm::missing_caps(&kvm).into_iter().map(|(_, n)| n).collect()),
            Err(e) => (Some(e.to_string()), Vec::new()),
        };
        let layout = crate::layout::Layout::load().map_err(|e| e.to_string());
        Self {
            kvm_error,
            missing_caps,
            hw_virt: ["vmx", "svm"].into_iter().find(|f| flags.contains(f)),
            kvm_module,
            hypervisor: flags.contains(&"hypervisor").then(hypervisor_vendor),
            nested_param,
            kernel: layout.as_ref().map_err(Clone::clone).and_then(|l| l.kernel(None).map_err(|e| e.to_string())),
            agent: layout.as_ref().map_err(Clone::clone).and_then(|l| l.agent(None).map_err(|e| e.to_string())),
            cache: layout.as_ref().map_err(Clone::clone).and_then(|l| l.image_cache().map_err(|e| e.to_string())),
            virtiofsd: layout.as_ref().map_err(Clone::clone).and_then(|l| l.virtiofsd().map_err(|e| e.to_string())),
        }
    }

    /// Whether microVMs will run here at hardware speed: KVM usable with every capability we
    /// need, backed by VMX/SVM and not by an emulating or paravirtual KVM, and a guest kernel.
    pub fn verdict(&self) -> Result<(), String> {
        if let Some(e) = &self.kvm_error {
            return Err(format!("KVM unusable: {e}"));
        }
        if !self.missing_caps.is_empty() {
            return Err(format!("KVM lacks {}", self.missing_caps.join(", ")));
        }
        if self.kvm_module == Some("kvm_pvm") {
            return Err("/dev/kvm is PVM (kvm_pvm): stock guest kernels run fully emulated, about 1000 times slower; use the nested test bed".into());
        }
        if self.hw_virt.is_none() {
            return Err("the CPU shows neither vmx nor svm: no hardware virtualization".into());
        }
        for found in [&self.kernel, &self.agent] {
            if let Err(e) = found {
                return Err(e.clone());
            }
        }
        Ok(())
    }
}

fn cpu_flags(cpuinfo: &str) -> Vec<&str> {
    cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, f)| f.split_whitespace().collect())
        .unwrap_or_default()
}

/// CPUID leaf 0x4000_0000's vendor id, as hypervisors report it ("KVMKVMKVM", "Microsoft Hv").
fn hypervisor_vendor() -> String {
    let r = std::arch::x86_64::__cpuid(0x4000_0000);
    let bytes: Vec<u8> = [r.ebx, r.ecx, r.edx].iter().flat_map(|w| w.to_le_bytes()).collect();
    let vendor = String::from_utf8_lossy(&bytes).trim_matches('\0').trim().to_string();
    if vendor.is_empty() { "unknown".into() } else { vendor }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn flags_are_read_from_the_first_cpu() {
        let info = "processor: 0\nflags\t\t: fpu vme svm hypervisor\n\nprocessor: 1\nflags: fpu\n";
        assert_eq!(cpu_flags(info), vec!["fpu", "vme", "svm", "hypervisor"]);
        assert!(cpu_flags("").is_empty());
    }

    fn good() -> HostReport {
        let found = |path: &str| Ok(crate::layout::Found { path: path.into(), from: "installed".into() });
        HostReport {
            kvm_error: None,
            missing_caps: Vec::new(),
            hw_virt: Some("vmx"),
            kvm_module: Some("kvm_intel"),
            hypervisor: None,
            nested_param: None,
            kernel: found("/k/vmlinux"),
            agent: found("/k/microvm-agent"),
            cache: found("/var/cache/microvm"),
            virtiofsd: found("/k/virtiofsd"),
        }
    }

    #[test]
    fn verdict_needs_hardware_kvm_and_a_kernel() {
        assert_eq!(good().verdict(), Ok(()));
        let pvm = HostReport { kvm_module: Some("kvm_pvm"), ..good() };
        assert!(pvm.verdict().unwrap_err().contains("PVM"));
        let no_hw = HostReport { hw_virt: None, ..good() };
        assert!(no_hw.verdict().unwrap_err().contains("vmx nor svm"));
        let no_kvm = HostReport { kvm_error: Some("/dev/kvm: No such file".into()), ..good() };
        assert!(no_kvm.verdict().unwrap_err().starts_with("KVM unusable"));
        let caps = HostReport { missing_caps: vec!["KVM_CAP_IRQFD"], ..good() };
        assert!(caps.verdict().unwrap_err().contains("KVM_CAP_IRQFD"));
        let no_kernel = HostReport { kernel: Err("kernel: not found (looked for /k/vmlinux)".into()), ..good() };
        assert!(no_kernel.verdict().unwrap_err().starts_with("kernel: not found"));
        let no_agent = HostReport { agent: Err("agent: not found".into()), ..good() };
        assert!(no_agent.verdict().unwrap_err().starts_with("agent: not found"));
    }
}
