//! Boots the microVM that runs one container: the rootfs packed into an image (cached) or
//! shared over virtio-fs ([`Route`]), the agent in an initramfs, the VM built in this
//! process, then the jail and seccomp before the guest's first instruction. Shared by
//! `microvm run` and the OCI runtime's VMM process.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

use anyhow::Context;
use vmm::config::{Console, DiskConfig, VmConfig, VsockConfig, DEFAULT_CMDLINE};
use vmm::Vmm;

use crate::confinement::Confinement;

/// The VMM's vsock socket, in the VM's directory.
pub const VSOCK_SOCKET: &str = "vsock.sock";

/// The guest's vsock context id (2 is the host; 3 is the first guest id).
const GUEST_CID: u64 = 3;

/// What a container's VM is made of.
pub struct VmSpec<'a> {
    /// The container's root filesystem directory.
    pub rootfs: &'a Path,
    /// Whose root it is, which decides where the container's writes go.
    pub root: Root,
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

/// Whose root filesystem a VM gets, and so where the container's writes to it go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Root {
    /// An image (`microvm run ROOTFS`): the directory is the user's image, never written;
    /// the guest writes to a tmpfs overlay over it, packed or shared read-only as the
    /// config's `rootfs` transport says.
    Image,
    /// An OCI bundle's root: under runc the container writes it in place, and callers read
    /// those writes (`docker cp`, `podman commit`, `podman diff`). Shared read-write over
    /// virtio-fs and written in place unless it is read-only (`root.readonly`: nothing to
    /// write back, so it goes as an image does) or the config asks for `erofs`, which keeps
    /// writes in the guest (docs/DESIGN.md, "The rootfs").
    Bundle { read_only: bool },
}

impl Root {
    /// A bundle's root as its config says (`root.readonly`).
    pub fn of_bundle(spec: &oci_spec::runtime::Spec) -> Self {
        Root::Bundle { read_only: spec.root().as_ref().and_then(|r| r.readonly()).unwrap_or(false) }
    }
}

/// How the rootfs directory reaches the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// Packed into a cached EROFS image on a read-only disk, under the guest's overlay.
    Packed,
    /// Shared read-only over virtio-fs, under the guest's overlay.
    SharedReadOnly,
    /// Shared read-write over virtio-fs, the container's root itself.
    InPlace,
}

impl Route {
    /// A writable bundle root goes in place unless the config asks for `erofs`; everything
    /// else goes by the configured transport, EROFS by default.
    fn of(root: Root, transport: Option<crate::layout::RootfsTransport>) -> Self {
        use crate::layout::RootfsTransport::{Erofs, Virtiofs};
        match (root, transport) {
            (Root::Bundle { read_only: false }, None | Some(Virtiofs)) => Route::InPlace,
            (_, None | Some(Erofs)) => Route::Packed,
            (_, Some(Virtiofs)) => Route::SharedReadOnly,
        }
    }
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

    // The rootfs: a writable bundle root shared read-write over virtio-fs by a virtiofsd of
    // its own; an image packed into a cached EROFS image on a read-only disk, or shared
    // read-only beside the volumes (`MICROVM_ROOTFS=virtiofs`, or `rootfs` in the config).
    // See [`Root`] and [`Route`].
    let mut shares = spec.shares.to_vec();
    let route = Route::of(spec.root, layout.rootfs_transport()?);
    let shared_rootfs = |read_only| -> anyhow::Result<crate::volumes::Share> {
        let rootfs = std::path::absolute(spec.rootfs).with_context(|| format!("{}", spec.rootfs.display()))?;
        Ok(crate::volumes::Share { host: rootfs, read_only })
    };
    let (image, in_place) = match route {
        Route::Packed => (Some(pack(spec.rootfs, &layout)?), None),
        Route::SharedReadOnly => {
            shares.push(shared_rootfs(true)?);
            (None, None)
        }
        Route::InPlace => (None, Some(shared_rootfs(false)?)),
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
    match route {
        Route::Packed => config.disks = image.into_iter().map(|path| DiskConfig { path, read_only: true }).collect(),
        Route::SharedReadOnly => config.cmdline.push_str(&format!(" {}={}", protocol::ROOTFS_PARAM, shares.len() - 1)),
        Route::InPlace => config.cmdline.push_str(&format!(" {}", protocol::ROOTFS_WRITABLE_PARAM)),
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

    // One virtiofsd for the volumes, one for a root written in place (each with its own
    // policy, see volumes::ROOTFS). Each ends when the VMM's socket closes, however the VMM
    // ends; until the VM is built, dropping the handle kills it.
    let mut served = Vec::new();
    if !shares.is_empty() {
        served.push((&crate::volumes::VOLUMES, shares));
        config.cmdline.push(' ');
        config.cmdline.push_str(protocol::SHARED_PARAM);
    }
    if let Some(rootfs) = in_place {
        served.push((&crate::volumes::ROOTFS, vec![rootfs]));
    }
    let mut virtiofsds = Vec::with_capacity(served.len());
    for (service, shares) in served {
        let binary = layout.virtiofsd()?.path;
        let socket = format!("virtiofs-{}.sock", service.dir);
        let virtiofsd = crate::volumes::Virtiofsd::start(&binary, &dir, Path::new(&socket), service, &shares)?;
        let tag = service.tag.to_string();
        config.filesystems.push(vmm::config::FsConfig { tag, socket: virtiofsd.socket.clone() });
        virtiofsds.push(virtiofsd);
    }

    config.seccomp = spec.confinement.seccomp;
    let vmm = match Vmm::boot(&config, start) {
        Ok(vmm) => vmm,
        Err(e) => return Err(virtiofsds.iter_mut().fold(e.into(), |e, v| v.explain(e))),
    };
    virtiofsds.into_iter().for_each(crate::volumes::Virtiofsd::handed_over);
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


#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::RootfsTransport::{Erofs, Virtiofs};

    #[test]
    fn a_writable_bundle_root_is_written_in_place_unless_erofs_is_asked_for() {
        let writable = Root::Bundle { read_only: false };
        let read_only = Root::Bundle { read_only: true };
        assert_eq!(Route::of(writable, None), Route::InPlace);
        assert_eq!(Route::of(writable, Some(Virtiofs)), Route::InPlace);
        assert_eq!(Route::of(writable, Some(Erofs)), Route::Packed);
        // Nothing of a read-only root or an image is written back: as the transport says.
        for root in [read_only, Root::Image] {
            assert_eq!(Route::of(root, None), Route::Packed);
            assert_eq!(Route::of(root, Some(Erofs)), Route::Packed);
            assert_eq!(Route::of(root, Some(Virtiofs)), Route::SharedReadOnly);
        }
    }
}
