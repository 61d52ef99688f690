//! `microvm boot`: boot a kernel directly, for bring-up and benchmarks (`run` is the verb for
//! containers). Exit status: 0 when the guest powers off or reboots, 1 when it panics or dies
//! (triple fault, KVM error), 125 when the VM cannot be started. SIGUSR2 writes the guest's
//! state (vCPU registers, the console's end) to stderr, and the guest runs on.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use signal_hook::consts::SIGUSR2;
use signal_hook::iterator::Signals;
use vmm::config::{Console, DiskConfig, VmConfig, DEFAULT_CMDLINE};
use vmm::seccomp::ThreadKind;
use vmm::Vmm;

/// Boot a Linux kernel in a microVM and wait for it to stop
#[derive(Args)]
pub struct BootArgs {
    /// Kernel: an ELF vmlinux (entered through PVH when it has the note) or a bzImage
    #[arg(long)]
    kernel: PathBuf,
    /// Initial ramdisk (a cpio archive)
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel command line, replacing the default
    #[arg(long, default_value = DEFAULT_CMDLINE)]
    cmdline: String,
    /// Extra kernel command line arguments, appended
    #[arg(long)]
    append: Option<String>,
    /// Guest memory in MiB
    #[arg(long, default_value_t = 128)]
    memory: u64,
    /// Number of vCPUs
    #[arg(long, default_value_t = 1)]
    cpus: u8,
    /// Write the guest's serial console to FILE ("-" for stdout, the default)
    #[arg(long, value_name = "FILE")]
    console: Option<PathBuf>,
    /// Attach FILE as a read-write virtio-blk disk (repeatable; /dev/vda, vdb, ... in order)
    #[arg(long, value_name = "FILE")]
    disk: Vec<PathBuf>,
    /// Attach FILE as a read-only virtio-blk disk (after the --disk ones)
    #[arg(long, value_name = "FILE")]
    ro_disk: Vec<PathBuf>,
    #[command(flatten)]
    confinement: super::ConfinementArgs,
}

pub fn run(args: BootArgs, start: Instant) -> anyhow::Result<u8> {
    // SIGUSR2: the guest-state report on stderr, answered once the VM runs (caught from now
    // on, so that an early one does not kill the VMM).
    let usr2 = Signals::new([SIGUSR2]).context("install the SIGUSR2 handler")?;
    let mut config = VmConfig::new(args.kernel);
    config.initrd = args.initrd;
    config.cmdline = match args.append {
        Some(extra) => format!("{} {extra}", args.cmdline),
        None => args.cmdline,
    };
    config.mem_mib = args.memory;
    config.vcpus = args.cpus;
    let confinement = args.confinement.confinement();
    config.seccomp = confinement.seccomp;
    config.console = match args.console {
        Some(path) if path.as_os_str() != "-" => Console::File(path),
        _ => Console::Stdout,
    };

    config.disks = args
        .disk
        .into_iter()
        .map(|path| DiskConfig { path, read_only: false })
        .chain(args.ro_disk.into_iter().map(|path| DiskConfig { path, read_only: true }))
        .collect();

    // The jail's root holds a sandbox directory of its own (removed at the end).
    let sandbox = crate::sandbox::SandboxDir::create(None)?;
    let vmm = Vmm::boot(&config, start)?;
    confinement.enter_jail(sandbox.path())?;
    // boot keeps nothing in it: removed now (with the handle on its parent), the directory lives on (deleted) as the jail's
    // only content, and nothing is left behind however the VMM ends.
    drop(sandbox);
    // The report's thread confines itself as the main thread will in `run` (not yet now).
    crate::vm::report_guest_state(usr2, vmm.dump_handle(), Some(ThreadKind::Control), false)?;
    let report = vmm.run()?;
    let ms = |d: Option<std::time::Duration>| {
        d.map_or("-".to_string(), |d| format!("{:.2} ms", d.as_secs_f64() * 1e3))
    };
    eprintln!(
        "microvm: {}; first KVM_RUN {}, guest init {}, stopped {}",
        report.exit,
        ms(report.first_kvm_run),
        report.guest_init_ms.map_or("-".to_string(), |m| format!("{m:.2} ms")),
        ms(Some(report.total)),
    );
    Ok(if report.exit.is_clean() { 0 } else { 1 })
}
