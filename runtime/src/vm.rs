//! Boots the microVM that runs one container: the rootfs packed into an image (cached), the
//! agent in an initramfs, the VM built in this process, then the jail and seccomp before the
//! guest's first instruction. Shared by `microvm run` and the OCI runtime's VMM process.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

use anyhow::Context;
use vmm::config::{Console, DiskConfig, VmConfig, VsockConfig, DEFAULT_CMDLINE};
use vmm::Vmm;

use crate::confinement::Confinement;

/// The VMM's vsock socket, in the VM's directory.
pub const VSOCK_SOCKET: &str = "vsock.sock";
/// virtiofsd's socket while it starts, in the VM's directory (see volumes).
const VIRTIOFS_SOCKET: &str = "virtiofs.sock";

/// The guest's vsock context id (2 is the host; 3 is the first guest id).
const GUEST_CID: u64 = 3;

/// What a container's VM is made of.
pub struct VmSpec<'a> {
    /// The container's root filesystem directory.
    pub rootfs: &'a Path,
    /// Guest kernel; `None`: found as `layout` says.
    pub kernel: Option<&'a Path>,
    /// The static agent; `None`: found as `layout` says.
    pub agent: Option<&'a Path>,
    pub mem_mib: u64,
    pub vcpus: u8,
    /// The guest console's file; `None`: console.log in `dir`.
    pub console: Option<&'a Path>,
    /// The directory for the VM's runtime files (vsock socket, initramfs, console log); the
    /// jail keeps it and nothing else.
    pub dir: &'a Path,
    pub confinement: Confinement,
    /// The guest's eth0; none: the guest has no network card.
    pub network: Option<GuestNetwork>,
    /// Host paths shared into the guest (volumes); any starts a virtiofsd for this VM.
    pub shares: &'a [crate::volumes::Share],
}

/// The guest's network card: its MAC, its backend (passt's socket, see user_net, or a tap
/// beside the caller's veth, see tap_net) and the kernel's `ip=` parameter that configures it.
pub struct GuestNetwork {
    pub mac: [u8; 6],
    pub backend: vmm::config::NetBackend,
    pub kernel_ip: Option<String>,
}

/// A VM running on a thread of this process.
pub struct RunningVm {
    /// The VMM's vsock socket (hybrid vsock: `CONNECT <port>`).
    pub uds: PathBuf,
    /// Receives the VMM's report when the VM has stopped.
    pub done: mpsc::Receiver<Result<vmm::RunReport, vmm::VmmError>>,
    /// Parks and wakes the vCPUs (OCI `pause` and `resume`).
    pub pause: vmm::PauseHandle,
    /// The guest-state report (SIGUSR2, the monitor's `debug` request).
    pub dump: vmm::DumpHandle,
}

/// Packs `rootfs` into the image cache (cached by its metadata); returns the image.
fn pack(rootfs: &Path, layout: &crate::layout::Layout) -> anyhow::Result<PathBuf> {
    let cache = layout.image_cache()?.path;
    let packed = crate::rootfs::pack(rootfs, &cache)?;
    if !packed.cached {
        if let Err(e) = crate::rootfs::prune(&cache, layout.cache_limit()) {
            tracing::warn!("{e}");
        }
    }
    tracing::debug!("rootfs image {} ({})", packed.image.display(), if packed.cached { "cached" } else { "packed" });
    Ok(packed.image)
}

/// Checks the inputs, packs the rootfs, boots the VM and enters the jail.
pub fn boot(spec: &VmSpec<'_>, start: Instant) -> anyhow::Result<RunningVm> {
    let layout = crate::layout::Layout::load()?;
    let kernel = layout.kernel(spec.kernel)?.path;
    let agent = layout.agent(spec.agent)?.path;

    // The rootfs: packed into a cached EROFS image on a read-only disk, or shared read-only
    // over virtio-fs beside the volumes (`MICROVM_ROOTFS=virtiofs`, or `rootfs` in the config).
    let mut shares = spec.shares.to_vec();
    let image = match layout.rootfs_transport()? {
        crate::layout::RootfsTransport::Erofs => Some(pack(spec.rootfs, &layout)?),
        crate::layout::RootfsTransport::Virtiofs => {
            let rootfs = std::path::absolute(spec.rootfs).with_context(|| format!("{}", spec.rootfs.display()))?;
            shares.push(crate::volumes::Share { host: rootfs, read_only: true });
            None
        }
    };
    let initrd = spec.dir.join("initramfs.cpio");
    let agent_bytes =
        std::fs::read(&agent).with_context(|| format!("agent {}", agent.display()))?;
    let mut file = std::fs::File::create(&initrd)
        .with_context(|| format!("initramfs {}", initrd.display()))?;
    crate::initramfs::write(&mut file, &agent_bytes)
        .with_context(|| format!("initramfs {}", initrd.display()))?;
    drop(file);

    // The vsock socket is bound and reached by a name relative to the VM's directory, the
    // working directory from here on (see oci::control::enter_dir_of: a socket address holds
    // 107 bytes); every other path is made absolute first.
    let absolute = |p: &Path| std::path::absolute(p).with_context(|| format!("{}", p.display()));
    let (kernel, initrd) = (absolute(&kernel)?, absolute(&initrd)?);
    let image = image.as_deref().map(absolute).transpose()?;
    let console = absolute(&spec.console.map_or_else(|| spec.dir.join("console.log"), Path::to_path_buf))?;
    let dir = absolute(spec.dir)?;
    std::env::set_current_dir(&dir).with_context(|| format!("{}", dir.display()))?;
    let uds = PathBuf::from(VSOCK_SOCKET);
    let mut config = VmConfig::new(&kernel);
    config.initrd = Some(initrd);
    config.cmdline = DEFAULT_CMDLINE.to_string();
    config.mem_mib = spec.mem_mib;
    config.vcpus = spec.vcpus;
    config.console = Console::File(console);
    match image {
        Some(path) => config.disks = vec![DiskConfig { path, read_only: true }],
        None => {
            config.cmdline.push(' ');
            config.cmdline.push_str(&format!("{}={}", protocol::ROOTFS_PARAM, shares.len() - 1));
        }
    }
    config.vsock = Some(VsockConfig {
        guest_cid: GUEST_CID,
        uds_path: uds.clone(),
    });

    if let Some(network) = &spec.network {
        config.nets = vec![vmm::config::NetConfig { mac: network.mac, backend: network.backend.clone() }];
        if let Some(ip) = &network.kernel_ip {
            config.cmdline.push(' ');
            config.cmdline.push_str(ip);
        }
    }

    // virtiofsd ends when the VMM's socket closes, however the VMM ends; until the VM is
    // built, dropping the handle kills it.
    let mut virtiofsd = match &shares[..] {
        [] => None,
        shares => {
            let binary = layout.virtiofsd()?.path;
            Some(crate::volumes::Virtiofsd::start(&binary, &dir, Path::new(VIRTIOFS_SOCKET), shares)?)
        }
    };
    if let Some(v) = &virtiofsd {
        let tag = protocol::SHARED_TAG.to_string();
        config.filesystems = vec![vmm::config::FsConfig { tag, socket: v.socket.clone() }];
        config.cmdline.push(' ');
        config.cmdline.push_str(protocol::SHARED_PARAM);
    }

    config.seccomp = spec.confinement.seccomp;
    let vmm = match (Vmm::boot(&config, start), &mut virtiofsd) {
        (Ok(vmm), _) => vmm,
        (Err(e), Some(v)) => return Err(v.explain(e.into())),
        (Err(e), None) => return Err(e.into()),
    };
    if let Some(v) = virtiofsd {
        v.handed_over();
    }
    // Before the guest's first instruction: the jail, then seccomp for this thread and all it
    // starts (the VMM's among them, which add their own narrower filters).
    spec.confinement.enter_jail(&dir)?;
    // The jail keeps the directory at the same path; its new root is the working directory.
    std::env::set_current_dir(&dir).with_context(|| format!("{}", dir.display()))?;
    vmm::seccomp::install(vmm::seccomp::ThreadKind::Runtime)?;
    let pause = vmm.pause_handle();
    let dump = vmm.dump_handle();
    let (done_tx, done) = mpsc::channel();
    std::thread::Builder::new()
        .name("vmm".into())
        .spawn(move || {
            let _ = done_tx.send(vmm.run());
        })
        .context("start the VMM thread")?;
    Ok(RunningVm { uds, done, pause, dump })
}

/// How long a guest-state report waits for the vCPUs to leave the guest.
pub const DUMP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// Writes the guest-state report to stderr at each signal of `signals` (SIGUSR2 alone, for
/// `run` and `boot`); the VM runs on. The thread runs under its parent's seccomp filter plus
/// `confine`'s (`boot` starts it before its main thread is confined). `crlf`: a raw terminal.
pub fn report_guest_state(
    mut signals: signal_hook::iterator::Signals,
    dump: vmm::DumpHandle,
    confine: Option<vmm::seccomp::ThreadKind>,
    crlf: bool,
) -> anyhow::Result<()> {
    use std::io::Write;
    let (installed_tx, installed) = mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("guest-state".into())
        .spawn(move || {
            let result = confine.map_or(Ok(()), vmm::seccomp::install);
            let confined = result.is_ok();
            let _ = installed_tx.send(result);
            if !confined {
                return;
            }
            for _ in signals.forever() {
                let mut text = format!("microvm: guest state (SIGUSR2):\n{}", dump.dump(DUMP_TIMEOUT));
                if crlf {
                    text = text.replace('\n', "\r\n");
                }
                let _ = std::io::stderr().lock().write_all(text.as_bytes());
            }
        })
        .context("start the guest-state thread")?;
    installed.recv().context("the guest-state thread ended")??;
    Ok(())
}

