//! Thin wrappers over kvm-ioctls: the KVM handle and VM, and the vCPUs with their run loop
//! and its pause.

pub mod pause;
pub mod vcpu;
pub mod vm;
