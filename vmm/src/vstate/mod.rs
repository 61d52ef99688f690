//! Thin wrappers over kvm-ioctls: the KVM handle and VM, and the vCPUs with their run loop
//! and its pause, and the guest-state report.

pub mod dump;
pub mod pause;
pub mod vcpu;
pub mod vm;
