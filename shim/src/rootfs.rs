//! The container's root filesystem: containerd gives its snapshot as mounts (an overlay of
//! image layers) for the shim to mount on the bundle's `rootfs`, as runc's shim does; the
//! runtime packs or shares that directory into the VM.

use std::path::Path;

use containerd_shim::protos::types::mount::Mount;
use nix::mount::{umount2, MntFlags};

/// Mounts `mounts` on BUNDLE/rootfs; returns whether anything was mounted (containerd gives
/// no mounts when the bundle holds its rootfs already).
pub fn mount(bundle: &Path, mounts: &[Mount]) -> Result<bool, String> {
    if mounts.is_empty() {
        return Ok(false);
    }
    let target = bundle.join("rootfs");
    std::fs::create_dir_all(&target).map_err(|e| format!("{}: {e}", target.display()))?;
    for (done, m) in mounts.iter().enumerate() {
        if let Err(e) = containerd_shim::mount::mount_rootfs(Some(&m.type_), Some(&m.source), &m.options, &target) {
            if done > 0 {
                unmount(bundle);
            }
            return Err(format!("mount the rootfs ({} {}) on {}: {e}", m.type_, m.source, target.display()));
        }
    }
    Ok(true)
}

/// Unmounts whatever is stacked on BUNDLE/rootfs.
pub fn unmount(bundle: &Path) {
    let target = bundle.join("rootfs");
    while umount2(&target, MntFlags::MNT_DETACH).is_ok() {}
}
