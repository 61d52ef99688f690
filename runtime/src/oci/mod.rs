//! The OCI runtime: the runc command-line contract (`create`, `start`, `state`, `kill`,
//! `delete`, ...) as podman's conmon and containerd's runc shim drive it, each container in its
//! own microVM. See docs/DESIGN.md, "OCI runtime".

pub mod console;
pub mod control;
pub mod exec;
pub mod hooks;
pub mod monitor;
pub mod state;
pub mod stats;
