//! Seccomp allow-lists for the VMM's own threads, installed before the first KVM_RUN.
//!
//! A filter is per thread and inherited by the threads it starts, and filters stack (a call
//! must pass every filter of the thread). Threads start one another in a chain, so each list
//! holds its own needs plus those of the threads it starts:
//!
//! ```text
//! runtime (run's main thread: agent session, stdio relays, signals)   ThreadKind::Runtime
//!   └ control (the thread in Vmm::run: waits for an exit, kicks vCPUs)  ThreadKind::Control
//!       └ vCPU threads (KVM_RUN, port and MMIO exits, device activation) ThreadKind::Vcpu
//!           └ device workers (virtio queues: disk I/O, vsock sockets)  ThreadKind::Device
//! ```
//! A thread's effective list is the intersection along its chain, so a device worker can do
//! only what [`ThreadKind::Device`] allows, a vCPU what [`ThreadKind::Vcpu`] allows, and so on.
//! `microvm boot` has no runtime thread: its main thread is the control thread.
//!
//! Arguments are checked where it is cheap: `ioctl` only with the request numbers each thread
//! uses (the six KVM vCPU calls after boot, the terminal calls of the runtime), `prctl` only
//! to name a thread or set no_new_privs, `socket` only for AF_UNIX. A call outside the list kills the process
//! with SIGSYS ([`SeccompMode::Enforce`]), or is logged by the kernel and allowed
//! ([`SeccompMode::Log`], for debugging: `dmesg | grep type=1326`).

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// What happens to a system call outside a thread's list.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SeccompMode {
    /// Kill the process with SIGSYS.
    #[default]
    Enforce,
    /// Let it through and have the kernel log it.
    Log,
    /// No filter at all.
    Off,
}

/// Which thread a filter is for; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    Runtime,
    Control,
    Vcpu,
    Device,
}

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("seccomp: build the {kind:?} filter: {source}")]
    Build {
        kind: ThreadKind,
        source: seccompiler::BackendError,
    },
    #[error("seccomp: install the {kind:?} filter: {source}")]
    Install {
        kind: ThreadKind,
        source: seccompiler::Error,
    },
}

/// The process's mode, set once by [`set_mode`] when a VM boots; until then [`install`] does
/// nothing (unit tests start device workers without a VM).
static MODE: std::sync::OnceLock<SeccompMode> = std::sync::OnceLock::new();

/// Sets the mode for every later [`install`]; the first call wins.
pub fn set_mode(mode: SeccompMode) {
    let _ = MODE.set(mode);
}

/// Installs the filter for `kind` on the calling thread, as the mode says (and sets
/// no_new_privs, which seccomp needs without CAP_SYS_ADMIN).
pub fn install(kind: ThreadKind) -> Result<(), SeccompError> {
    let mode = MODE.get().copied().unwrap_or(SeccompMode::Off);
    let mismatch = match mode {
        SeccompMode::Off => return Ok(()),
        SeccompMode::Enforce => SeccompAction::KillProcess,
        SeccompMode::Log => SeccompAction::Log,
    };
    // The refusal first: once the allow-list is on, a device worker may not install more.
    if kind != ThreadKind::Runtime {
        let refuse = refuse_opening(kind)?;
        seccompiler::apply_filter(&refuse).map_err(|source| SeccompError::Install { kind, source })?;
    }
    let program = program(kind, mismatch)?;
    seccompiler::apply_filter(&program).map_err(|source| SeccompError::Install { kind, source })
}

/// The VMM's own threads open no file, but libc may try (glibc's malloc reads
/// /proc/sys/vm/overcommit_memory when it trims a thread's heap, and copes when it cannot).
/// So `open` and `openat` pass the allow-list and a second filter makes them fail with
/// EACCES: of two stacked filters the kernel keeps the stricter answer, ERRNO over ALLOW.
fn refuse_opening(kind: ThreadKind) -> Result<BpfProgram, SeccompError> {
    let build = |source| SeccompError::Build { kind, source };
    let rules = [libc::SYS_open, libc::SYS_openat].into_iter().map(|call| (call, Vec::new())).collect();
    let errno = SeccompAction::Errno(libc::EACCES as u32);
    SeccompFilter::new(rules, SeccompAction::Allow, errno, TargetArch::x86_64)
        .and_then(TryInto::try_into)
        .map_err(build)
}

fn program(kind: ThreadKind, mismatch: SeccompAction) -> Result<BpfProgram, SeccompError> {
    let build = |source| SeccompError::Build { kind, source };
    let filter = SeccompFilter::new(rules(kind).map_err(build)?, mismatch, SeccompAction::Allow, TargetArch::x86_64)
        .map_err(build)?;
    filter.try_into().map_err(build)
}

/// `_IOC` request numbers (include/uapi/asm-generic/ioctl.h): the KVM vCPU calls a running
/// VM makes, and the terminal calls of the runtime.
mod ioctls {
    const KVMIO: u64 = 0xAE;
    const fn io(nr: u64) -> u64 {
        (KVMIO << 8) | nr
    }
    const fn ior(nr: u64, size: u64) -> u64 {
        (2 << 30) | (size << 16) | (KVMIO << 8) | nr
    }
    pub const KVM_RUN: u64 = io(0x80);
    pub const KVM_GET_REGS: u64 = ior(0x81, std::mem::size_of::<kvm_bindings::kvm_regs>() as u64);
    pub const KVM_GET_SREGS: u64 = ior(0x83, std::mem::size_of::<kvm_bindings::kvm_sregs>() as u64);
    pub const KVM_GET_MP_STATE: u64 = ior(0x98, std::mem::size_of::<kvm_bindings::kvm_mp_state>() as u64);
    /// For the guest-state report (`Vcpu::dump`).
    pub const KVM_GET_VCPU_EVENTS: u64 = ior(0x9f, std::mem::size_of::<kvm_bindings::kvm_vcpu_events>() as u64);
    /// After a pause: tells the guest's kvmclock that the vCPU was stopped.
    pub const KVM_KVMCLOCK_CTRL: u64 = io(0xad);
    pub const VCPU: [u64; 6] =
        [KVM_RUN, KVM_GET_REGS, KVM_GET_SREGS, KVM_GET_MP_STATE, KVM_GET_VCPU_EVENTS, KVM_KVMCLOCK_CTRL];
    pub const FIONBIO: u64 = 0x5421;
    /// TCGETS, TCSETS, TCSETSW, TCSETSF, TIOCGWINSZ, FIOCLEX.
    pub const TERMINAL: [u64; 6] = [0x5401, 0x5402, 0x5403, 0x5404, 0x5413, 0x5451];
}

/// What every thread of a Rust program does: memory, locks, time, signals returning, exiting,
/// and the calls std makes when a thread ends or a panic aborts (tgkill for SIGABRT).
/// restart_syscall: the kernel's own call to resume a sleep (clock_nanosleep, poll, futex
/// with a timeout) that a caught signal interrupted, such as SIGUSR2's report.
const BASE: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_close,
    libc::SYS_futex,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_mprotect,
    libc::SYS_brk,
    libc::SYS_rt_sigreturn,
    libc::SYS_restart_syscall,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_tgkill,
    libc::SYS_getrandom,
    libc::SYS_getcwd,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// What starting a thread takes (std::thread::spawn), in the parent and in the new thread.
const THREADS: &[i64] = &[libc::SYS_clone, libc::SYS_clone3, libc::SYS_set_robust_list, libc::SYS_rseq];

/// Device workers: event loops, disk I/O, and the vsock device's host sockets.
const DEVICE: &[i64] = &[
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_eventfd2,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_lseek,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_connect,
    libc::SYS_accept4,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
    libc::SYS_shutdown,
    libc::SYS_getsockopt,
    libc::SYS_fcntl,
    libc::SYS_dup,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
];

/// The control thread: waiting, kicking vCPUs (tgkill, in BASE), flushing the console.
const CONTROL: &[i64] = &[libc::SYS_rt_sigaction, libc::SYS_poll, libc::SYS_ppoll];

/// The runtime's main thread and what it starts: the agent session over Unix sockets, the
/// stdio relays, signal handling (signal-hook's self-pipe), the host terminal, writing back
/// copied files and removing the sandbox directory at the end.
const RUNTIME: &[i64] = &[
    libc::SYS_bind,
    libc::SYS_pipe2,
    libc::SYS_socketpair,
    libc::SYS_dup2,
    libc::SYS_dup3,
    libc::SYS_getdents64,
    libc::SYS_rmdir,
    libc::SYS_wait4,
    libc::SYS_kill,
    libc::SYS_splice,
    libc::SYS_sendfile,
    libc::SYS_copy_file_range,
    // Cutting a bind-mounted file to the container's copy at its end (runtime binds.rs).
    libc::SYS_ftruncate,
];

fn rules(kind: ThreadKind) -> Result<BTreeMap<i64, Vec<SeccompRule>>, seccompiler::BackendError> {
    // open and openat: refused with EACCES by a second filter (see refuse_opening), except
    // in the runtime's threads, which remove the sandbox directory at the end.
    let mut calls: Vec<i64> = BASE.iter().chain(DEVICE).copied().chain([libc::SYS_open, libc::SYS_openat]).collect();
    // Every thread may make a socket non-blocking (vsock's host connections).
    let mut ioctls: Vec<u64> = vec![ioctls::FIONBIO];
    let mut unix_sockets = kind == ThreadKind::Device; // vsock connects to the host's listeners
    let mut thread_names = false;
    if kind != ThreadKind::Device {
        calls.extend(THREADS);
        ioctls.extend(ioctls::VCPU);
        thread_names = true;
        unix_sockets = true;
    }
    if matches!(kind, ThreadKind::Control | ThreadKind::Runtime) {
        calls.extend(CONTROL);
    }
    if kind == ThreadKind::Runtime {
        calls.extend(RUNTIME);
        ioctls.extend(ioctls::TERMINAL);
    }

    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = calls.into_iter().map(|call| (call, Vec::new())).collect();
    let arg_eq = |index, value| SeccompCondition::new(index, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value);
    {
        let allowed = ioctls
            .into_iter()
            .map(|request| SeccompRule::new(vec![arg_eq(1, request)?]))
            .collect::<Result<Vec<_>, _>>()?;
        rules.insert(libc::SYS_ioctl, allowed);
    }
    if thread_names {
        // Naming a new thread, and installing the filter of a thread started later (no_new_privs,
        // then seccomp(2): filters only ever add restrictions).
        let prctls = [libc::PR_SET_NAME, libc::PR_SET_NO_NEW_PRIVS]
            .into_iter()
            .map(|op| SeccompRule::new(vec![arg_eq(0, op as u64)?]))
            .collect::<Result<Vec<_>, _>>()?;
        rules.insert(libc::SYS_prctl, prctls);
        rules.insert(libc::SYS_seccomp, Vec::new());
    }
    if unix_sockets {
        rules.insert(libc::SYS_socket, vec![SeccompRule::new(vec![arg_eq(0, libc::AF_UNIX as u64)?])?]);
    }
    if kind == ThreadKind::Runtime {
        // Read timeouts on the runtime's own sockets (the OCI VMM process's control socket).
        let timeout = SeccompRule::new(vec![
            arg_eq(1, libc::SOL_SOCKET as u64)?,
            arg_eq(2, libc::SO_RCVTIMEO as u64)?,
        ])?;
        rules.insert(libc::SYS_setsockopt, vec![timeout]);
    }
    Ok(rules)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn every_filter_builds_and_each_list_contains_the_next() {
        let kinds = [ThreadKind::Runtime, ThreadKind::Control, ThreadKind::Vcpu, ThreadKind::Device];
        for kind in kinds {
            assert!(!program(kind, SeccompAction::KillProcess).unwrap().is_empty());
        }
        // A thread's list holds every call of the threads it starts, with the same arguments.
        for pair in kinds.windows(2) {
            let (outer, inner) = (rules(pair[0]).unwrap(), rules(pair[1]).unwrap());
            for (call, conditions) in &inner {
                let outer_conditions = outer.get(call).unwrap_or_else(|| panic!("{:?} lacks {call} of {:?}", pair[0], pair[1]));
                assert!(
                    outer_conditions.is_empty() || conditions.iter().all(|c| outer_conditions.contains(c)),
                    "{:?} narrows syscall {call} of {:?}",
                    pair[0],
                    pair[1]
                );
            }
        }
    }

    #[test]
    fn vcpu_ioctls_are_the_running_vms_six() {
        assert_eq!(ioctls::KVM_RUN, 0xAE80);
        // The sizes of kvm_regs (144 bytes) and kvm_sregs (312) are in the request numbers.
        assert_eq!(ioctls::KVM_GET_REGS, 0x8090_AE81);
        assert_eq!(ioctls::KVM_GET_SREGS, 0x8138_AE83);
        assert_eq!(ioctls::KVM_GET_MP_STATE, 0x8004_AE98);
        assert_eq!(ioctls::KVM_GET_VCPU_EVENTS, 0x8040_AE9F); // kvm_vcpu_events: 64 bytes
        assert_eq!(ioctls::KVM_KVMCLOCK_CTRL, 0xAEAD);
        let device = rules(ThreadKind::Device).unwrap();
        assert_eq!(device[&libc::SYS_ioctl].len(), 1, "device workers only set FIONBIO");
        assert!(!device.contains_key(&libc::SYS_clone3), "device workers start no thread");
    }
}
