//! containerd-shim-microvm-v2: containerd's runtime v2 shim for microvm. containerd starts it
//! for `--runtime io.containerd.microvm.v2` (the binary is found by that name on PATH) and
//! calls its task service over ttrpc; each container runs in its own microVM, driven through
//! the `microvm` runc-compatible command line installed beside this binary.

mod exits;
mod io;
mod metrics;
mod rootfs;
mod runtime;
mod service;

/// The runtime's name in containerd's configuration and `ctr run --runtime`.
const RUNTIME_ID: &str = "io.containerd.microvm.v2";

fn main() {
    containerd_shim::run::<service::Service>(RUNTIME_ID, None);
}
