//! vCPUs: creation and boot state, and the run loop that routes each exit.
//!
//! Each vCPU runs in its own thread. The main thread kicks them with [`KICK_SIGNAL`] at a
//! steady pace; a kicked vCPU that finds itself halted with interrupts disabled (or never
//! started) records that it can never run again, and when all have, the guest is powered off:
//! without ACPI that is how Linux ends `poweroff` and `halt`. Between two KVM_RUNs a vCPU
//! parks while the VM is paused (see [`super::pause`]), and records its state when a
//! guest-state report asks for it (see [`super::dump`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use kvm_bindings::{
    CpuId, KVM_MP_STATE_HALTED, KVM_MP_STATE_INIT_RECEIVED, KVM_MP_STATE_RUNNABLE,
    KVM_MP_STATE_SIPI_RECEIVED, KVM_MP_STATE_UNINITIALIZED,
    KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};
use vm_memory::GuestMemoryMmap;

use crate::arch::x86_64::boot::KernelEntry;
use crate::arch::x86_64::{cpuid, regs};
use crate::devices::mmio_bus::MmioBus;
use crate::devices::LegacyDevices;
use crate::exit::{ExitState, VmExit};
use crate::vstate::dump::DumpState;
use crate::vstate::pause::PauseState;

/// The real-time signal used to kick vCPU threads out of KVM_RUN.
pub fn kick_signal() -> i32 {
    vmm_sys_util::signal::SIGRTMIN()
}

#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("vCPU {index}: KVM_{op}: {source}")]
    Kvm { index: u8, op: &'static str, source: kvm_ioctls::Error },
    #[error("vCPU {index}: {source}")]
    Regs { index: u8, source: regs::RegsError },
}

/// What every vCPU thread shares.
pub struct VcpuShared {
    pub devices: LegacyDevices,
    pub mmio: MmioBus,
    pub exits: Arc<ExitState>,
    /// Per vCPU: halted with interrupts off, or never started.
    pub stopped: Vec<AtomicBool>,
    pub start: Instant,
    /// When the boot vCPU first entered the guest, from VMM start.
    pub first_run: OnceLock<Duration>,
    pub pause: Arc<PauseState>,
    pub dump: Arc<DumpState>,
}

pub struct Vcpu {
    fd: VcpuFd,
    index: u8,
}

impl Vcpu {
    /// Creates vCPU `index` of `count` with its CPUID, MSRs and local APIC set.
    pub fn new(vm: &VmFd, index: u8, count: u8, supported: &CpuId, extras: cpuid::Extras) -> Result<Self, VcpuError> {
        let kvm_err = |op| move |source| VcpuError::Kvm { index, op, source };
        let regs_err = |source| VcpuError::Regs { index, source };
        let fd = vm.create_vcpu(u64::from(index)).map_err(kvm_err("CREATE_VCPU"))?;
        let mut cpuid = supported.clone();
        cpuid::filter(cpuid.as_mut_slice(), index, count, extras);
        fd.set_cpuid2(&cpuid).map_err(kvm_err("SET_CPUID2"))?;
        regs::setup_msrs(&fd).map_err(regs_err)?;
        regs::setup_lapic(&fd).map_err(regs_err)?;
        Ok(Self { fd, index })
    }

    /// Registers and page tables for entering the kernel. Only the boot vCPU needs them:
    /// the others start at the guest's INIT-SIPI-SIPI.
    pub fn setup_boot(&self, mem: &GuestMemoryMmap, kernel: &KernelEntry) -> Result<(), VcpuError> {
        let regs_err = |source| VcpuError::Regs { index: self.index, source };
        regs::setup_sregs(mem, &self.fd, kernel.mode).map_err(regs_err)?;
        regs::setup_regs(&self.fd, kernel.mode, kernel.entry).map_err(regs_err)?;
        regs::setup_fpu(&self.fd).map_err(regs_err)
    }

    /// Runs until the VM has an exit reason, parking while the VM is paused.
    pub fn run(mut self, shared: Arc<VcpuShared>) {
        if let Err(error) = crate::seccomp::install(crate::seccomp::ThreadKind::Vcpu) {
            shared.exits.set(VmExit::VcpuFailure(format!("vCPU {}: {error}", self.index)));
            return;
        }
        if self.index == 0 {
            let _ = shared.first_run.set(shared.start.elapsed());
        }
        shared.dump.set_running(self.index, true);
        loop {
            let parked = shared.pause.park();
            if shared.exits.is_set() {
                break;
            }
            if parked {
                // Tells a Linux guest that its clock jumped because we paused it, not because
                // it locked up (no soft-lockup or RCU-stall reports). Fails with EINVAL unless
                // the guest uses kvmclock, which is fine.
                let _ = self.fd.kvmclock_ctrl();
            }
            shared.dump.answer(self.index, || format!("{:#}", self.dump()));
            if let Some(exit) = self.run_once(&shared) {
                shared.exits.set(exit);
            }
        }
        shared.dump.set_running(self.index, false);
    }

    /// One KVM_RUN and the handling of its exit; `Some` when the VM must stop.
    fn run_once(&mut self, shared: &VcpuShared) -> Option<VmExit> {
        let result = self.fd.run();
        let stopped = &shared.stopped[usize::from(self.index)];
        match result {
            Ok(VcpuExit::IoIn(port, data)) => shared.devices.pio_read(port, data),
            Ok(VcpuExit::IoOut(port, data)) => shared.devices.pio_write(port, data),
            Ok(VcpuExit::MmioRead(addr, data)) => shared.mmio.read(addr, data),
            Ok(VcpuExit::MmioWrite(addr, data)) => shared.mmio.write(addr, data),
            Ok(VcpuExit::Shutdown) => return Some(VmExit::TripleFault(self.dump().to_string())),
            Ok(VcpuExit::InternalError) => {
                return Some(VmExit::VcpuFailure(format!(
                    "vCPU {}: KVM internal error: {}",
                    self.index,
                    self.dump()
                )))
            }
            Ok(VcpuExit::FailEntry(reason, cpu)) => {
                return Some(VmExit::VcpuFailure(format!(
                    "vCPU {}: entry failed (hardware reason {reason:#x} on host CPU {cpu}): {}",
                    self.index,
                    self.dump()
                )))
            }
            Ok(VcpuExit::SystemEvent(kind, _)) if kind == KVM_SYSTEM_EVENT_SHUTDOWN => {
                return Some(VmExit::PowerOff)
            }
            Ok(VcpuExit::SystemEvent(kind, _)) if kind == KVM_SYSTEM_EVENT_RESET => {
                return Some(VmExit::Reboot)
            }
            Ok(other) => {
                let what = format!("{other:?}");
                return Some(VmExit::VcpuFailure(format!(
                    "vCPU {}: unexpected exit {what}: {}",
                    self.index,
                    self.dump()
                )));
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                stopped.store(self.can_never_run(), Ordering::SeqCst);
                if shared.stopped.iter().all(|s| s.load(Ordering::SeqCst)) {
                    return Some(VmExit::PowerOff);
                }
                return None;
            }
            Err(e) => {
                return Some(VmExit::VcpuFailure(format!("vCPU {}: KVM_RUN: {e}", self.index)))
            }
        }
        stopped.store(false, Ordering::Relaxed);
        None
    }

    /// Halted with interrupts disabled, or still waiting for its startup IPI.
    fn can_never_run(&self) -> bool {
        let Ok(mp) = self.fd.get_mp_state() else { return false };
        match mp.mp_state {
            KVM_MP_STATE_HALTED => {
                self.fd.get_regs().map(|r| r.rflags & RFLAGS_IF == 0).unwrap_or(false)
            }
            KVM_MP_STATE_UNINITIALIZED | KVM_MP_STATE_INIT_RECEIVED => true,
            _ => false,
        }
    }

    /// The state worth seeing when a vCPU dies or the guest goes silent: registers, run
    /// state and pending events. `{}` shows it on one line, `{:#}` on a few.
    fn dump(&self) -> VcpuDump {
        let mut parts = Vec::new();
        let regs = self.fd.get_regs();
        match (&regs, &self.fd.get_sregs()) {
            (Ok(r), Ok(s)) => parts.push(format!(
                "rip={:#x} rsp={:#x} rflags={:#x} rax={:#x} cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x} cs={:#x}",
                r.rip, r.rsp, r.rflags, r.rax, s.cr0, s.cr2, s.cr3, s.cr4, s.efer, s.cs.selector
            )),
            (Err(e), _) | (_, Err(e)) => parts.push(format!("registers unavailable: {e}")),
        }
        let mp_state = match self.fd.get_mp_state() {
            Ok(mp) => mp_state_name(mp.mp_state),
            Err(e) => format!("unavailable ({e})"),
        };
        let interrupts = match &regs {
            Ok(r) if r.rflags & RFLAGS_IF != 0 => "on",
            Ok(_) => "off",
            Err(_) => "?",
        };
        parts.push(format!("mp_state={mp_state} interrupts={interrupts}"));
        if let Ok(r) = &regs {
            parts.push(format!(
                "rbx={:#x} rcx={:#x} rdx={:#x} rsi={:#x} rdi={:#x} rbp={:#x}",
                r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp
            ));
            parts.push(format!(
                "r8={:#x} r9={:#x} r10={:#x} r11={:#x} r12={:#x} r13={:#x} r14={:#x} r15={:#x}",
                r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15
            ));
        }
        parts.push(match self.fd.get_vcpu_events() {
            Ok(e) => {
                let exception = if e.exception.injected != 0 || e.exception.pending != 0 {
                    let code = if e.exception.has_error_code != 0 { format!("({:#x})", e.exception.error_code) } else { String::new() };
                    let how = if e.exception.injected != 0 { "injected" } else { "pending" };
                    format!("#{}{code} {how}", e.exception.nr)
                } else {
                    "none".into()
                };
                let interrupt = if e.interrupt.injected != 0 { format!("vector {:#x}", e.interrupt.nr) } else { "none".into() };
                let nmi = match (e.nmi.injected, e.nmi.pending) {
                    (0, 0) => "none",
                    (0, _) => "pending",
                    _ => "injected",
                };
                format!("events: exception={exception} interrupt={interrupt} nmi={nmi} shadow={}", e.interrupt.shadow)
            }
            Err(e) => format!("events unavailable: {e}"),
        });
        VcpuDump(parts)
    }
}

/// RFLAGS.IF: maskable interrupts enabled.
const RFLAGS_IF: u64 = 1 << 9;

/// A vCPU's state as text; see `Vcpu::dump`.
pub struct VcpuDump(Vec<String>);

impl std::fmt::Display for VcpuDump {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join(if f.alternate() { "\n    " } else { " " }))
    }
}

fn mp_state_name(state: u32) -> String {
    let name = match state {
        KVM_MP_STATE_RUNNABLE => "RUNNABLE",
        KVM_MP_STATE_UNINITIALIZED => "UNINITIALIZED",
        KVM_MP_STATE_INIT_RECEIVED => "INIT_RECEIVED",
        KVM_MP_STATE_HALTED => "HALTED",
        KVM_MP_STATE_SIPI_RECEIVED => "SIPI_RECEIVED",
        other => return other.to_string(),
    };
    name.to_string()
}
