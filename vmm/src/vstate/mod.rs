//! Thin wrappers over kvm-ioctls: the KVM handle and VM, and the vCPUs with their run loop.

pub mod vcpu;
pub mod vm;
