//! microvm's virtual machine monitor: boots a Linux guest on KVM with a minimal device set.
//!
//! [`Vmm::boot`] builds the VM in order, each step with its own error:
//! 1. check the configuration;
//! 2. open `/dev/kvm` and check its capabilities;
//! 3. allocate guest memory (RAM below the MMIO gap, the rest above 4 GiB);
//! 4. create the VM with in-kernel PIC/IOAPIC/LAPIC and PIT, and map the memory into it;
//! 5. create the devices: COM1 console, i8042 reset line, boot timer, and the virtio-mmio
//!    devices (disks, vsock, network cards), each declared on the kernel command line;
//! 6. load the kernel (ELF vmlinux via PVH, or bzImage), the initrd, the command line, the
//!    boot information and the MP table;
//! 7. create and configure the vCPUs.
//!
//! [`Vmm::run`] then starts one thread per vCPU and waits for the guest to stop. A
//! [`PauseHandle`], taken before, stops and restarts the vCPUs meanwhile; a [`DumpHandle`]
//! reports what the guest is doing.

pub mod arch;
pub mod config;
pub mod devices;
pub mod exit;
pub mod seccomp;
pub mod vstate;

#[cfg(test)]
mod kvm_tests;

use std::fs::File;
use std::io::{LineWriter, Write};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{register_signal_handler, Killable};

use arch::x86_64::{boot, cpuid, layout::EBDA_START, mptable};
use config::{Console, VmConfig};
use devices::boot_timer::BootTimer;
use devices::serial::{ConsoleWriter, IrqTrigger, PanicLine, Serial, COM1_IRQ};
use devices::mmio_bus::MmioBus;
use devices::virtio::{block::Block, mmio::MmioTransport, net::Net, vsock::Vsock};
use devices::LegacyDevices;
use exit::{ExitState, VmExit};
use vstate::dump::DumpState;
use vstate::pause::PauseState;
use vstate::vcpu::{kick_signal, Vcpu, VcpuShared};

pub use config::ConfigError;
pub use vstate::dump::DumpHandle;
pub use vstate::pause::{PauseError, PauseHandle};

/// How often idle vCPUs are kicked to see whether the guest has halted for good (or, when a
/// pause is asked for, to get them out of KVM_RUN).
const KICK_INTERVAL: Duration = Duration::from_millis(10);

#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Vm(#[from] vstate::vm::VmError),
    #[error("console {path}: {source}")]
    Console { path: std::path::PathBuf, source: std::io::Error },
    #[error("serial interrupt: {0}")]
    SerialIrq(std::io::Error),
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    #[error(transparent)]
    Mptable(#[from] mptable::MptableError),
    #[error("write MP table: {0}")]
    MptableWrite(vm_memory::GuestMemoryError),
    #[error("KVM_GET_SUPPORTED_CPUID: {0}")]
    Cpuid(kvm_ioctls::Error),
    #[error(transparent)]
    Vcpu(#[from] vstate::vcpu::VcpuError),
    #[error(transparent)]
    Disk(#[from] devices::virtio::block::BlockError),
    #[error(transparent)]
    Vsock(#[from] devices::virtio::vsock::VsockError),
    #[error(transparent)]
    Net(#[from] devices::virtio::net::NetError),
    #[error(transparent)]
    Fs(#[from] devices::virtio::fs::FsError),
    #[error(transparent)]
    VirtioTransport(#[from] devices::virtio::mmio::MmioError),
    #[error(transparent)]
    MmioBus(#[from] devices::mmio_bus::MmioBusError),
    #[error("start vCPU thread: {0}")]
    Thread(std::io::Error),
    #[error("install the vCPU kick signal handler: {0}")]
    Signal(vmm_sys_util::errno::Error),
    #[error(transparent)]
    Seccomp(#[from] seccomp::SeccompError),
}

/// What happened, for the caller to report.
#[derive(Debug)]
pub struct RunReport {
    pub exit: VmExit,
    /// VMM start to the boot vCPU's first KVM_RUN.
    pub first_kvm_run: Option<Duration>,
    /// VMM start to the guest's boot-timer write, in milliseconds.
    pub guest_init_ms: Option<f64>,
    /// VMM start to the agent's "starting the process" write, in milliseconds.
    pub process_start_ms: Option<f64>,
    /// VMM start to the guest's stop.
    pub total: Duration,
}

/// A booted-but-not-yet-running VM.
pub struct Vmm {
    // Field order is drop order: vCPUs and the VM go before the memory mapped into them.
    vcpus: Vec<Vcpu>,
    shared: Arc<VcpuShared>,
    _vm: kvm_ioctls::VmFd,
    _mem: GuestMemoryMmap,
    start: Instant,
    /// `MICROVM_TEST_TRIGGER`, see [`test_trigger`].
    test_trigger: Option<String>,
    /// Ends the pause state when the VM is gone: when `run` returns, or without it.
    _pause_end: PauseEnd,
    /// Stops the vsock device once the guest has stopped (see [`Vsock::stopper`]).
    vsock_stop: Option<EventFd>,
}

/// Makes pausing fail, and wakes the parked vCPUs, once dropped.
struct PauseEnd(Arc<PauseState>);

impl Drop for PauseEnd {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// For the tests of the confinement only: `MICROVM_TEST_TRIGGER=seccomp` makes a system call
/// no list allows (vhangup), which must kill the process with SIGSYS; `=panic` panics, which
/// must not look like that.
/// Read when the VM is built: the jail empties the environment before the guest runs.
fn test_trigger(trigger: Option<&str>) {
    match trigger {
        // SAFETY: vhangup takes no arguments; the filter kills the process before it runs.
        Some("seccomp") => unsafe {
            libc::syscall(libc::SYS_vhangup);
        },
        Some("panic") => panic!("MICROVM_TEST_TRIGGER=panic"),
        _ => {}
    }
}

impl Vmm {
    /// Builds the VM described by `config`. `start` is when the VMM process started, so the
    /// boot timer and setup figures count from there.
    pub fn boot(config: &VmConfig, start: Instant) -> Result<Self, VmmError> {
        config.validate()?;
        seccomp::set_mode(config.seccomp);
        let kvm = vstate::vm::open_kvm()?;
        let mem = vstate::vm::create_guest_memory(config.mem_bytes(), !config.filesystems.is_empty())?;
        let vm = vstate::vm::create_vm(&kvm)?;

        // Step 5 first for the virtio devices: they add to the kernel command line.
        let mut config = config.clone();
        let mut mmio = MmioBus::default();
        let mut vsock_stop = None;
        for (i, disk) in config.disks.iter().enumerate() {
            let block = Block::open(&disk.path, disk.read_only, &format!("microvm-disk{i}"))?;
            let transport = MmioTransport::new(Box::new(block), mem.clone())?;
            let declaration = mmio.add(transport);
            config.cmdline.push(' ');
            config.cmdline.push_str(&declaration);
        }
        if let Some(vsock) = &config.vsock {
            let device = Vsock::new(vsock.guest_cid, &vsock.uds_path)?;
            vsock_stop = Some(device.stopper()?);
            let declaration = mmio.add(MmioTransport::new(Box::new(device), mem.clone())?);
            config.cmdline.push(' ');
            config.cmdline.push_str(&declaration);
        }
        for net in &config.nets {
            use devices::virtio::net::{Backend, NetError};
            let backend = match &net.backend {
                config::NetBackend::Stream(s) => s.try_clone().map(Backend::Stream),
                config::NetBackend::Tap(f) => f.try_clone().map(Backend::Tap),
            }
            .map_err(NetError::Socket)?;
            let declaration = mmio.add(MmioTransport::new(Box::new(Net::new(net.mac, backend)?), mem.clone())?);
            config.cmdline.push(' ');
            config.cmdline.push_str(&declaration);
        }
        for fs in &config.filesystems {
            use devices::virtio::fs::{Fs, FsError};
            let socket = fs.socket.try_clone().map_err(|e| FsError::Backend { tag: fs.tag.clone(), source: vhost::Error::IOError(e) })?;
            let declaration = mmio.add(MmioTransport::new(Box::new(Fs::new(socket, &fs.tag)?), mem.clone())?);
            config.cmdline.push(' ');
            config.cmdline.push_str(&declaration);
        }
        let config = &config;

        // The slow KVM calls of step 4 (interrupt controllers, memory slots: each can wait on
        // the host kernel for milliseconds) run on two threads while step 6 fills the memory.
        let kernel = std::thread::scope(|s| {
            let chips = s.spawn(|| vstate::vm::create_irq_chips(&vm));
            let mapping = s.spawn(|| vstate::vm::map_guest_memory(&vm, &mem));
            let loaded = load_guest(config, &mem);
            let join = |h: std::thread::ScopedJoinHandle<'_, _>| {
                h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
            };
            join(chips)?;
            join(mapping)?;
            loaded
        })?;

        mmio.register(&vm)?;

        let exits = Arc::new(ExitState::default());
        let panic = PanicLine::default();
        let serial = create_serial(&vm, &config.console, panic.clone())?;
        let console_tail = serial.writer().tail();
        let devices = LegacyDevices::new(serial, panic, exits.clone(), BootTimer::new(start));

        let supported = kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(VmmError::Cpuid)?;
        let extras = cpuid::Extras { tsc_deadline: kvm.check_extension(kvm_ioctls::Cap::TscDeadlineTimer) };
        let vcpus = (0..config.vcpus)
            .map(|i| Vcpu::new(&vm, i, config.vcpus, &supported, extras))
            .collect::<Result<Vec<_>, _>>()?;
        vcpus[0].setup_boot(&mem, &kernel)?;

        let pause = Arc::new(PauseState::new(vcpus.len()));
        let shared = Arc::new(VcpuShared {
            devices,
            mmio,
            exits,
            stopped: (0..config.vcpus).map(|_| AtomicBool::new(false)).collect(),
            start,
            first_run: OnceLock::new(),
            pause: pause.clone(),
            dump: Arc::new(DumpState::new(vcpus.len(), console_tail, pause.clone())),
        });
        let test_trigger = std::env::var("MICROVM_TEST_TRIGGER").ok();
        Ok(Self {
            vcpus,
            shared,
            _vm: vm,
            _mem: mem,
            start,
            test_trigger,
            _pause_end: PauseEnd(pause),
            vsock_stop,
        })
    }

    /// Pauses and resumes this VM's vCPUs while [`run`](Self::run) runs them; a pause asked
    /// before holds them at their first instruction.
    pub fn pause_handle(&self) -> PauseHandle {
        PauseHandle::new(self.shared.pause.clone())
    }

    /// Reports the vCPUs' state and the console's end while [`run`](Self::run) runs.
    pub fn dump_handle(&self) -> DumpHandle {
        DumpHandle::new(self.shared.dump.clone())
    }

    /// Runs the guest until it stops. vCPU threads still blocked in KVM_RUN are left to end
    /// with the process.
    pub fn run(self) -> Result<RunReport, VmmError> {
        extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}
        register_signal_handler(kick_signal(), on_kick).map_err(VmmError::Signal)?;
        // From here on the guest runs: this thread and every one it starts are confined.
        seccomp::install(seccomp::ThreadKind::Control)?;
        test_trigger(self.test_trigger.as_deref());

        let mut threads = Vec::with_capacity(self.vcpus.len());
        for vcpu in self.vcpus {
            let shared = self.shared.clone();
            let handle = std::thread::Builder::new()
                .name(format!("vcpu{}", threads.len()))
                .spawn(move || vcpu.run(shared))
                .map_err(VmmError::Thread)?;
            threads.push(handle);
        }
        let exit = loop {
            if let Some(exit) = self.shared.exits.wait(KICK_INTERVAL) {
                break exit;
            }
            if self.shared.pause.is_paused() {
                continue; // all parked, none in KVM_RUN
            }
            for t in &threads {
                // A vCPU between two KVM_RUNs misses this kick and gets the next one.
                let _ = t.kill(kick_signal());
            }
        };
        let total = self.start.elapsed();
        // vCPUs parked by a pause leave, and pausing fails from now on.
        self.shared.pause.end();
        // The guest cannot answer any more: its vsock connections end now, not with the process.
        if let Some(stop) = &self.vsock_stop {
            let _ = stop.write(1);
        }
        self.shared.devices.flush();
        Ok(RunReport {
            exit,
            first_kvm_run: self.shared.first_run.get().copied(),
            guest_init_ms: self.shared.devices.boot_timer.ms(),
            process_start_ms: self.shared.devices.boot_timer.process_start_ms(),
            total,
        })
    }
}

/// Step 6: kernel, initrd, command line, boot information and MP table into guest memory.
fn load_guest(config: &VmConfig, mem: &GuestMemoryMmap) -> Result<boot::KernelEntry, VmmError> {
    let kernel = boot::load_kernel(mem, &config.kernel)?;
    let initrd = match &config.initrd {
        Some(path) => Some(boot::load_initrd(mem, path, kernel.end)?),
        None => None,
    };
    boot::write_boot_info(mem, &kernel, &config.cmdline, initrd, config.mem_bytes())?;
    let table = mptable::build(config.vcpus)?;
    mem.write_slice(&table, GuestAddress(EBDA_START)).map_err(VmmError::MptableWrite)?;
    Ok(kernel)
}

fn create_serial(vm: &kvm_ioctls::VmFd, console: &Console, panic: PanicLine) -> Result<Serial, VmmError> {
    let out: Box<dyn Write + Send> = match console {
        Console::Stdout => Box::new(LineWriter::new(std::io::stdout())),
        Console::File(path) => Box::new(LineWriter::new(
            File::create(path).map_err(|source| VmmError::Console { path: path.clone(), source })?,
        )),
        Console::Discard => Box::new(std::io::sink()),
    };
    let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(VmmError::SerialIrq)?;
    vm.register_irqfd(&irq, COM1_IRQ)
        .map_err(|e| VmmError::SerialIrq(std::io::Error::from_raw_os_error(e.errno())))?;
    Ok(Serial::new(IrqTrigger(irq), ConsoleWriter::new(out, panic)))
}
