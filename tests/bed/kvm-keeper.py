#!/usr/bin/env python3
"""Run in L1 for its whole life (nested.sh starts it): holds one idle KVM VM with an in-kernel
interrupt controller and one vCPU that never runs, then sleeps.

Why: KVM flips static keys in L1's kernel when the first VM appears and the last one goes
(preempt notifiers on VM create/destroy; the `apic_sw_disabled` key while a vCPU's local APIC
is software-disabled, as it is from creation until its guest enables it). Each flip rewrites
kernel text with the INT3-breakpoint protocol (text_poke_bp). In the bed, L1 was seen frozen
with every vCPU looping in exc_int3 (tests/bed/README.md): QEMU's TCG running a stale
translation of patched code. With this VM alive those keys stay on, so starting and stopping
guests patches no L1 kernel text. It changes nothing for the guests themselves.
"""
import fcntl
import os
import signal

KVM_CREATE_VM = 0xAE01
KVM_CREATE_IRQCHIP = 0xAE60
KVM_CREATE_VCPU = 0xAE41

kvm = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
vm = fcntl.ioctl(kvm, KVM_CREATE_VM, 0)
fcntl.ioctl(vm, KVM_CREATE_IRQCHIP, 0)
vcpu = fcntl.ioctl(vm, KVM_CREATE_VCPU, 0)
print(f"kvm-keeper: pid {os.getpid()} holds VM fd {vm}, vCPU fd {vcpu}", flush=True)
while True:
    signal.pause()
