//! Guest side: an OCI `linux.seccomp` object compiled into a stack of seccomp BPF filters.
//!
//! # Why a stack
//! A seccompiler `SeccompFilter` has one match action and one mismatch action, while a
//! container profile has a default action and rules of several actions (Docker's: default
//! ERRNO(EPERM), most rules ALLOW, clone3 ERRNO(ENOSYS); others use KILL, TRAP, LOG). So one
//! profile becomes several filters, and we rely on the kernel running every installed filter
//! on every syscall and keeping the most restrictive result (include/uapi/linux/seccomp.h:
//! KILL_PROCESS > KILL_THREAD > TRAP > ERRNO > USER_NOTIF > TRACE > LOG > ALLOW; on equal
//! actions, kernel/seccomp.c `seccomp_run_filters` keeps the newest filter's result, data
//! such as the errno included). The filters:
//! * the base filter: every rule, whatever its action, matches as ALLOW; a mismatch gives the
//!   default action. It answers "does any rule cover this call?". Left out when the default
//!   is ALLOW (it would allow everything).
//! * one filter per distinct (action, errno) other than ALLOW among the rules: its rules match
//!   as that action, a mismatch gives ALLOW.
//! * the guard (x32 and foreign architectures, below).
//!
//! For one syscall invocation:
//! * no rule matches: the base filter gives the default action, every other filter ALLOW, so
//!   the default action it is;
//! * a rule of action A matches, and no rule of another action: the base filter gives ALLOW,
//!   A's filter gives A, the others ALLOW, so A;
//! * an ALLOW rule matches, and no other: every filter gives ALLOW.
//!
//! That is libseccomp's (and so runc's) result for every profile without conflicts. A
//! conflict is one invocation matching rules of different actions: e.g. ALLOW `personality`
//! when arg0 == 0 and ERRNO `personality` unconditionally. libseccomp refuses some conflicts
//! (the same syscall and arguments twice) and resolves others by the shape of its decision
//! tree; here the most restrictive matching action wins (ERRNO above, for every argument),
//! and between two ERRNO (or TRACE) rules of different values, the one whose first rule
//! comes first in the profile (its filter is installed after the other's). Rules whose
//! action equals the default action are left out, as runc does (libseccomp refuses them):
//! they cannot change the result of a profile without conflicts.
//!
//! # Installing
//! [`apply`] installs the filters in order with seccomp(SECCOMP_SET_MODE_FILTER) (the caller
//! has set PR_SET_NO_NEW_PRIVS or holds CAP_SYS_ADMIN); every filter already installed judges
//! the later seccomp calls, and the caller's later prctl calls, too. The guard and the filters whose rules name
//! neither prctl nor seccomp allow both; the base filter allows both unless the default action
//! refuses them and some call of either is left to it. [`compile`] puts the one filter that
//! may refuse them last, and fails when there are two or more (a profile that both leaves
//! prctl or seccomp to a refusing default and gives them a non-ALLOW rule).
//!
//! # Architectures and x32
//! Only x86_64 is supported: the profile's `architectures` must be empty or include
//! SCMP_ARCH_X86_64 (SCMP_ARCH_X86 and SCMP_ARCH_X32 beside it are accepted and mean nothing:
//! the guest kernel runs neither i386 nor x32 code). seccompiler starts every filter with an
//! architecture check that kills the process on a syscall whose `seccomp_data.arch` is not
//! AUDIT_ARCH_X86_64 (i386 syscalls through int 0x80). x32 syscalls carry AUDIT_ARCH_X86_64
//! and the number with bit 30 (`__X32_SYSCALL_BIT`) set; they match no rule (rules hold x86_64
//! numbers), so the base filter gives them the default action, but a filter of a profile whose
//! default is ALLOW would let x32 `chmod` past a rule denying x86_64 `chmod`. The guard, a
//! hand-written filter installed first, gives every x32 syscall ERRNO(ENOSYS), what a kernel
//! without CONFIG_X86_X32_ABI (ours) answers. With the base filter installed after it, x32
//! syscalls get the default action when that is ERRNO or stricter, ENOSYS otherwise.
//!
//! # Arguments
//! Arguments are compared as 64-bit values, as libseccomp does. For SCMP_CMP_MASKED_EQ the
//! OCI `value` is the mask and `valueTwo` the datum (libseccomp's datum_a and datum_b, runc's
//! convention); seccompiler compares `arg & mask == datum & mask`. The conditions of one rule
//! are all ANDed, also several on the same argument (runc instead splits a rule whose
//! conditions repeat an argument index into one rule per condition, ORed).
//!
//! # Not done
//! * Syscall names the x86_64 table of the `syscalls` crate does not know are skipped, as runc
//!   skips names libseccomp does not know (profiles list syscalls of other architectures and
//!   newer kernels), and returned so callers can log them.
//! * runc makes syscalls newer than every syscall the profile names fail with ENOSYS, so that
//!   libcs fall back; here they get the default action.
//! * `flags` are ignored: no TSYNC (filters go on one thread, before exec), no LOG, no
//!   SPEC_ALLOW. SCMP_ACT_NOTIFY is refused.

use std::collections::BTreeMap;
use std::str::FromStr;

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompOperator,
};
use seccompiler::{
    sock_filter, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};
use syscalls::x86_64::Sysno;

use crate::error::{describe_names, Error, RuleError};

/// A compiled profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compiled {
    /// The filters, in the order [`apply`] must install them.
    pub programs: Vec<BpfProgram>,
    /// Syscall names the x86_64 syscall table does not know, each once, in profile order;
    /// their rules were applied without them.
    pub skipped: Vec<String>,
}

/// What one filter matches for one syscall number.
enum Match {
    /// Every call, whatever the arguments.
    Any,
    /// Calls whose arguments satisfy one of these rules.
    Rules(Vec<SeccompRule>),
}

/// Syscall number -> what a filter matches for it.
type RuleMap = BTreeMap<i64, Match>;

/// The syscalls that installing a filter makes (see "Installing" above).
const INSTALLER_SYSCALLS: [Sysno; 2] = [Sysno::prctl, Sysno::seccomp];

/// Compiles `seccomp` into filters for [`apply`]; see the module documentation.
pub fn compile(seccomp: &LinuxSeccomp) -> Result<Compiled, Error> {
    check_architectures(seccomp.architectures().as_deref())?;
    let default = seccompiler_action(seccomp.default_action(), seccomp.default_errno_ret())
        .ok_or(Error::DefaultNotify)?;

    let mut base = RuleMap::new();
    // (action, its rules), in the order of each action's first rule.
    let mut by_action: Vec<(SeccompAction, RuleMap)> = Vec::new();
    let mut skipped: Vec<String> = Vec::new();
    for (index, syscall) in seccomp.syscalls().iter().flatten().enumerate() {
        let fail = |problem| Error::Rule {
            index,
            names: describe_names(syscall.names()),
            problem,
        };
        let action = seccompiler_action(syscall.action(), syscall.errno_ret())
            .ok_or_else(|| fail(RuleError::Notify))?;
        let rule = conditions(syscall.args().as_deref().unwrap_or_default()).map_err(fail)?;
        let mut numbers = Vec::with_capacity(syscall.names().len());
        for name in syscall.names() {
            match Sysno::from_str(name) {
                Ok(sysno) => numbers.push(nr(sysno)),
                Err(()) if !skipped.contains(name) => skipped.push(name.clone()),
                Err(()) => {}
            }
        }
        if action == default {
            continue;
        }
        if action != SeccompAction::Allow {
            let position = match by_action.iter().position(|(a, _)| *a == action) {
                Some(position) => position,
                None => {
                    by_action.push((action, RuleMap::new()));
                    by_action.len() - 1
                }
            };
            numbers
                .iter()
                .for_each(|nr| add(&mut by_action[position].1, *nr, rule.as_ref()));
        }
        numbers
            .iter()
            .for_each(|nr| add(&mut base, *nr, rule.as_ref()));
    }

    // (program, whether it may refuse prctl or seccomp), in installation order.
    let mut stack: Vec<(BpfProgram, bool)> = vec![(x32_guard(), false)];
    // Reversed: on equal actions the filter installed last wins, and it should be the one of
    // the action that comes first in the profile.
    for (action, rules) in by_action.into_iter().rev() {
        let refuses = action != SeccompAction::Log
            && INSTALLER_SYSCALLS
                .iter()
                .any(|s| rules.contains_key(&nr(*s)));
        stack.push((build(rules, SeccompAction::Allow, action)?, refuses));
    }
    if default != SeccompAction::Allow {
        let refuses = default != SeccompAction::Log
            && !INSTALLER_SYSCALLS
                .iter()
                .all(|s| matches!(base.get(&nr(*s)), Some(Match::Any)));
        stack.push((build(base, default, SeccompAction::Allow)?, refuses));
    }
    if stack.iter().filter(|(_, refuses)| *refuses).count() > 1 {
        return Err(Error::Uninstallable);
    }
    // Stable: the others keep their order, the one that may refuse goes last.
    stack.sort_by_key(|(_, refuses)| *refuses);
    Ok(Compiled {
        programs: stack.into_iter().map(|(program, _)| program).collect(),
        skipped,
    })
}

/// Installs `programs` (from [`compile`], in order) on the calling thread with seccomp(2).
///
/// Unlike seccompiler's `apply_filter` this does not set no_new_privs: the caller decides, as
/// `process.noNewPrivileges` says, and must either have set it or hold CAP_SYS_ADMIN (the
/// kernel refuses the filter otherwise). Hand-written for that reason: seccompiler always sets
/// the flag, which would make every setuid program in a container powerless.
/// Allocates nothing: callable between fork and exec.
pub fn apply(programs: &[BpfProgram]) -> Result<(), Error> {
    for (index, program) in programs.iter().enumerate() {
        let len = u16::try_from(program.len()).map_err(|_| Error::Apply {
            index,
            source: seccompiler::Error::Prctl(std::io::Error::from_raw_os_error(libc::E2BIG)),
        })?;
        let prog = libc::sock_fprog {
            len,
            // The kernel only reads the program; the cast drops const for the C struct.
            filter: program.as_ptr().cast::<libc::sock_filter>().cast_mut(),
        };
        // SAFETY: seccomp(SECCOMP_SET_MODE_FILTER, 0, &prog): `prog` points at `program`, a
        // live slice of `len` instructions, for the duration of the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0,
                std::ptr::from_ref(&prog),
            )
        };
        if rc != 0 {
            return Err(Error::Apply {
                index,
                source: seccompiler::Error::Seccomp(std::io::Error::last_os_error()),
            });
        }
    }
    Ok(())
}

/// An empty list, or SCMP_ARCH_X86_64 (or the native one, x86_64) among them.
fn check_architectures(arches: Option<&[Arch]>) -> Result<(), Error> {
    match arches {
        None | Some([]) => Ok(()),
        Some(arches)
            if arches
                .iter()
                .any(|a| matches!(a, Arch::ScmpArchX86_64 | Arch::ScmpArchNative)) =>
        {
            Ok(())
        }
        Some(arches) => Err(Error::UnsupportedArch(
            arches
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        )),
    }
}

/// The seccompiler action for an OCI action; `None` for SCMP_ACT_NOTIFY. ERRNO and TRACE
/// without `errnoRet` use EPERM, as runc does.
fn seccompiler_action(action: LinuxSeccompAction, errno_ret: Option<u32>) -> Option<SeccompAction> {
    const EPERM: u32 = libc::EPERM.unsigned_abs();
    Some(match action {
        LinuxSeccompAction::ScmpActAllow => SeccompAction::Allow,
        LinuxSeccompAction::ScmpActErrno => SeccompAction::Errno(errno_ret.unwrap_or(EPERM)),
        // libseccomp's SCMP_ACT_KILL is SCMP_ACT_KILL_THREAD.
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            SeccompAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => SeccompAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => SeccompAction::Trap,
        LinuxSeccompAction::ScmpActLog => SeccompAction::Log,
        LinuxSeccompAction::ScmpActTrace => SeccompAction::Trace(errno_ret.unwrap_or(EPERM)),
        LinuxSeccompAction::ScmpActNotify => return None,
    })
}

/// One seccompiler rule ANDing all of `args`; `None` when there are none (every call matches).
fn conditions(args: &[LinuxSeccompArg]) -> Result<Option<SeccompRule>, RuleError> {
    if args.is_empty() {
        return Ok(None);
    }
    let mut conditions = Vec::with_capacity(args.len());
    for arg in args {
        let index = u8::try_from(arg.index())
            .ok()
            .filter(|i| *i <= 5)
            .ok_or(RuleError::ArgIndex(arg.index()))?;
        let (op, datum) = match arg.op() {
            LinuxSeccompOperator::ScmpCmpNe => (SeccompCmpOp::Ne, arg.value()),
            LinuxSeccompOperator::ScmpCmpLt => (SeccompCmpOp::Lt, arg.value()),
            LinuxSeccompOperator::ScmpCmpLe => (SeccompCmpOp::Le, arg.value()),
            LinuxSeccompOperator::ScmpCmpEq => (SeccompCmpOp::Eq, arg.value()),
            LinuxSeccompOperator::ScmpCmpGe => (SeccompCmpOp::Ge, arg.value()),
            LinuxSeccompOperator::ScmpCmpGt => (SeccompCmpOp::Gt, arg.value()),
            LinuxSeccompOperator::ScmpCmpMaskedEq => (
                SeccompCmpOp::MaskedEq(arg.value()),
                arg.value_two().unwrap_or(0),
            ),
        };
        conditions.push(
            SeccompCondition::new(index, SeccompCmpArgLen::Qword, op, datum)
                .map_err(RuleError::Condition)?,
        );
    }
    SeccompRule::new(conditions)
        .map(Some)
        .map_err(RuleError::Condition)
}

/// Adds one rule (`None`: unconditional) for syscall `nr` to `map`. An unconditional rule
/// absorbs the conditional ones: together they match every call.
fn add(map: &mut RuleMap, nr: i64, rule: Option<&SeccompRule>) {
    let entry = map.entry(nr).or_insert_with(|| Match::Rules(Vec::new()));
    match (entry, rule) {
        (Match::Any, _) => {}
        (entry @ Match::Rules(_), None) => *entry = Match::Any,
        (Match::Rules(rules), Some(rule)) => rules.push(rule.clone()),
    }
}

/// The syscall number seccompiler wants.
fn nr(sysno: Sysno) -> i64 {
    i64::from(sysno.id())
}

/// One seccompiler filter.
fn build(
    rules: RuleMap,
    mismatch: SeccompAction,
    on_match: SeccompAction,
) -> Result<BpfProgram, Error> {
    let rules = rules
        .into_iter()
        .map(|(nr, matching)| match matching {
            // seccompiler's way of saying "whatever the arguments".
            Match::Any => (nr, Vec::new()),
            Match::Rules(rules) => (nr, rules),
        })
        .collect();
    let filter =
        SeccompFilter::new(rules, mismatch, on_match, TargetArch::x86_64).map_err(Error::Build)?;
    BpfProgram::try_from(filter).map_err(Error::Build)
}

/// The guard: kills on a foreign architecture (as seccompiler's filters do), ERRNO(ENOSYS)
/// for x32 syscalls, ALLOW for the rest.
fn x32_guard() -> BpfProgram {
    // linux/bpf_common.h, linux/audit.h, asm/unistd.h; struct seccomp_data's offsets.
    const BPF_LD: u16 = 0x00;
    const BPF_W: u16 = 0x00;
    const BPF_ABS: u16 = 0x20;
    const BPF_JMP: u16 = 0x05;
    const BPF_JEQ: u16 = 0x10;
    const BPF_JGE: u16 = 0x30;
    const BPF_K: u16 = 0x00;
    const BPF_RET: u16 = 0x06;
    const OFFSET_NR: u32 = 0;
    const OFFSET_ARCH: u32 = 4;
    const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;
    const X32_SYSCALL_BIT: u32 = 0x4000_0000;
    let insn = |code, jt, jf, k| sock_filter { code, jt, jf, k };
    vec![
        // 0: A = arch; on x86_64 go to 3, else kill (2).
        insn(BPF_LD | BPF_W | BPF_ABS, 0, 0, OFFSET_ARCH),
        insn(BPF_JMP | BPF_JEQ | BPF_K, 1, 0, AUDIT_ARCH_X86_64),
        insn(BPF_RET | BPF_K, 0, 0, libc::SECCOMP_RET_KILL_PROCESS),
        // 3: A = nr; x32 (5) or not (6).
        insn(BPF_LD | BPF_W | BPF_ABS, 0, 0, OFFSET_NR),
        insn(BPF_JMP | BPF_JGE | BPF_K, 0, 1, X32_SYSCALL_BIT),
        insn(
            BPF_RET | BPF_K,
            0,
            0,
            libc::SECCOMP_RET_ERRNO | libc::ENOSYS.unsigned_abs(),
        ),
        insn(BPF_RET | BPF_K, 0, 0, libc::SECCOMP_RET_ALLOW),
    ]
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::ffi::CString;
    use std::path::PathBuf;

    use nix::sys::signal::Signal;
    use nix::sys::wait::{waitpid, WaitStatus};
    use nix::unistd::{fork, ForkResult};

    use super::*;
    use crate::{default_profile, to_oci};

    /// Docker's default capability set: no CAP_SYS_ADMIN.
    fn docker_caps() -> Vec<String> {
        crate::DOCKER_CAPS.map(String::from).to_vec()
    }

    fn oci(json: &str) -> LinuxSeccomp {
        serde_json::from_str(json).unwrap()
    }

    fn default_seccomp() -> LinuxSeccomp {
        to_oci(
            default_profile().unwrap(),
            &docker_caps(),
            Arch::ScmpArchX86_64,
        )
        .unwrap()
    }

    #[test]
    fn every_default_profile_name_is_an_x86_64_syscall() {
        let unknown: Vec<&String> = default_profile()
            .unwrap()
            .syscalls
            .iter()
            .flat_map(|rule| &rule.names)
            .filter(|name| Sysno::from_str(name).is_err())
            .collect();
        assert!(unknown.is_empty(), "not x86_64 syscalls: {unknown:?}");
    }

    #[test]
    fn default_profile_compiles_to_base_enosys_and_guard() {
        for caps in [docker_caps(), vec!["CAP_SYS_ADMIN".to_string()]] {
            let seccomp = to_oci(default_profile().unwrap(), &caps, Arch::ScmpArchX86_64).unwrap();
            let compiled = compile(&seccomp).unwrap();
            assert!(compiled.skipped.is_empty(), "{:?}", compiled.skipped);
            let expected = if caps.len() == 1 { 2 } else { 3 };
            assert_eq!(
                compiled.programs.len(),
                expected,
                "guard, [clone3 ENOSYS], base"
            );
            assert_eq!(compiled.programs[0], x32_guard());
        }
    }

    #[test]
    fn unknown_names_are_skipped_and_reported() {
        let compiled = compile(&oci(r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                {"names": ["chmod", "chown32", "no_such_call"], "action": "SCMP_ACT_ERRNO"},
                {"names": ["chown32", "_llseek"], "action": "SCMP_ACT_KILL"}]}"#))
        .unwrap();
        assert_eq!(compiled.skipped, ["chown32", "no_such_call", "_llseek"]);
        // The guard, the KILL filter (with no syscalls left: it allows everything), ERRNO.
        assert_eq!(compiled.programs.len(), 3);
    }

    #[test]
    fn refusals_are_named() {
        let error = |json: &str| compile(&oci(json)).unwrap_err().to_string();
        assert_eq!(
            error(r#"{"defaultAction": "SCMP_ACT_NOTIFY"}"#),
            "seccomp profile: default action SCMP_ACT_NOTIFY is not supported"
        );
        assert_eq!(
            error(
                r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                {"names": ["read"], "action": "SCMP_ACT_LOG"},
                {"names": ["openat", "open"], "action": "SCMP_ACT_NOTIFY"}]}"#
            ),
            r#"seccomp profile: syscall rule 1 ("openat" and 1 more): action SCMP_ACT_NOTIFY is not supported"#
        );
        assert_eq!(
            error(r#"{"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]}"#),
            "seccomp profile: architectures [SCMP_ARCH_AARCH64, SCMP_ARCH_ARM] do not include SCMP_ARCH_X86_64, \
             the only one supported"
        );
        assert_eq!(
            error(
                r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO",
                "args": [{"index": 6, "value": 0, "op": "SCMP_CMP_EQ"}]}]}"#
            ),
            r#"seccomp profile: syscall rule 0 ("read"): argument index 6 is not in 0..=5"#
        );
        // The default refuses seccomp, and a rule refuses prctl: either filter would stop the
        // other from being installed.
        assert!(error(
            r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
                {"names": ["exit_group"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["prctl"], "action": "SCMP_ACT_KILL_PROCESS",
                 "args": [{"index": 0, "value": 22, "op": "SCMP_CMP_EQ"}]}]}"#
        )
        .starts_with("seccomp profile: cannot be installed: "));
        for arches in [
            r#""architectures": []"#,
            r#""architectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X86_64"]"#,
        ] {
            compile(&oci(&format!(
                r#"{{"defaultAction": "SCMP_ACT_ALLOW", {arches}}}"#
            )))
            .unwrap();
        }
    }

    #[test]
    fn the_filter_that_may_refuse_the_installer_goes_last() {
        // Default ALLOW, seccomp refused by a rule: the ERRNO filter must be last, after KILL.
        let compiled = compile(&oci(r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                {"names": ["seccomp"], "action": "SCMP_ACT_ERRNO"},
                {"names": ["getppid"], "action": "SCMP_ACT_KILL_PROCESS"}]}"#))
        .unwrap();
        let errno = build(
            [(nr(Sysno::seccomp), Match::Any)].into_iter().collect(),
            SeccompAction::Allow,
            SeccompAction::Errno(1),
        )
        .unwrap();
        assert_eq!(compiled.programs.len(), 3);
        assert_eq!(compiled.programs[2], errno);
    }

    // Real-kernel tests: a forked child installs the filters and reports through its exit
    // status. Between fork and exit the child only makes raw syscalls (async-signal-safe;
    // the test harness is multi-threaded), and everything it needs is prepared before fork.

    /// Makes syscall `nr` with `args`; the errno on failure.
    fn syscall(nr: libc::c_long, args: [u64; 5]) -> Result<libc::c_long, i32> {
        // SAFETY: the tests pass integers, null pointers (the kernel checks them) or pointers to
        // live NUL-terminated strings and local variables; no call unmaps or overwrites memory.
        let ret = unsafe { libc::syscall(nr, args[0], args[1], args[2], args[3], args[4]) };
        if ret == -1 {
            Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
        } else {
            Ok(ret)
        }
    }

    /// Forks; the child installs `programs`, runs `body` and exits with what it returns (0
    /// for success, else the number of the failed check). The child's wait status.
    fn in_child(programs: &[BpfProgram], body: impl FnOnce() -> i32) -> WaitStatus {
        // SAFETY: the child only makes raw syscalls and exits; it takes no lock and does not
        // allocate (apply does not), so the other threads of the parent cannot deadlock it.
        match unsafe { fork() }.unwrap() {
            ForkResult::Child => {
                // SAFETY: prctl with integer arguments; apply needs no_new_privs (or root).
                unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
                let code = match apply(programs) {
                    Ok(()) => body(),
                    Err(_) => 100,
                };
                // SAFETY: _exit ends the child without running the parent's atexit handlers.
                unsafe { libc::_exit(code) }
            }
            ForkResult::Parent { child } => waitpid(child, None).unwrap(),
        }
    }

    /// A file for chmod to work on, removed on drop.
    struct TempFile(PathBuf, CString);

    impl TempFile {
        fn new(name: &str) -> Self {
            let path =
                std::env::temp_dir().join(format!("oci-seccomp-{}-{name}", std::process::id()));
            std::fs::write(&path, b"x").unwrap();
            let c_path = CString::new(path.to_str().unwrap()).unwrap();
            TempFile(path, c_path)
        }

        fn ptr(&self) -> u64 {
            self.1.as_ptr() as u64
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    const X32_SYSCALL_BIT: libc::c_long = 0x4000_0000;

    #[test]
    fn kernel_errno_rule_under_default_allow() {
        let file = TempFile::new("errno");
        let path = file.ptr();
        let compiled = compile(&oci(r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                {"names": ["chmod", "fchmod", "fchmodat"], "action": "SCMP_ACT_ERRNO"}]}"#))
        .unwrap();
        let status = in_child(&compiled.programs, || {
            if syscall(libc::SYS_chmod, [path, 0o600, 0, 0, 0]) != Err(libc::EPERM) {
                return 1;
            }
            if syscall(
                libc::SYS_fchmodat,
                [libc::AT_FDCWD as u64, path, 0o600, 0, 0],
            ) != Err(libc::EPERM)
            {
                return 2;
            }
            if !matches!(syscall(libc::SYS_getpid, [0; 5]), Ok(pid) if pid > 0) {
                return 3;
            }
            // x32 chmod does not get past the rule: the guard answers ENOSYS.
            if syscall(X32_SYSCALL_BIT | libc::SYS_chmod, [path, 0o600, 0, 0, 0])
                != Err(libc::ENOSYS)
            {
                return 4;
            }
            0
        });
        assert_eq!(status, WaitStatus::Exited(status.pid().unwrap(), 0));
    }

    #[test]
    fn kernel_default_profile() {
        let file = TempFile::new("default");
        let path = file.ptr();
        let compiled = compile(&default_seccomp()).unwrap();
        let status = in_child(&compiled.programs, || {
            if syscall(libc::SYS_unshare, [libc::CLONE_NEWNS as u64, 0, 0, 0, 0])
                != Err(libc::EPERM)
            {
                return 1;
            }
            if syscall(libc::SYS_mount, [0; 5]) != Err(libc::EPERM) {
                return 2;
            }
            if syscall(libc::SYS_clone3, [0; 5]) != Err(libc::ENOSYS) {
                return 3;
            }
            if syscall(libc::SYS_chmod, [path, 0o600, 0, 0, 0]) != Ok(0) {
                return 4;
            }
            if syscall(libc::SYS_keyctl, [0; 5]) != Err(libc::EPERM) {
                return 5;
            }
            let flags = (libc::SIGCHLD | libc::CLONE_NEWNET) as u64;
            if syscall(libc::SYS_clone, [flags, 0, 0, 0, 0]) != Err(libc::EPERM) {
                return 6;
            }
            if syscall(
                libc::SYS_socket,
                [libc::AF_VSOCK as u64, libc::SOCK_STREAM as u64, 0, 0, 0],
            ) != Err(libc::EPERM)
            {
                return 7;
            }
            // clone without namespace flags, as fork: the grandchild exits 7 at once.
            match syscall(libc::SYS_clone, [libc::SIGCHLD as u64, 0, 0, 0, 0]) {
                Ok(0) => {
                    let _ = syscall(libc::SYS_exit_group, [7, 0, 0, 0, 0]);
                    return 8;
                }
                Ok(pid) => {
                    let mut status: libc::c_int = 0;
                    let status_ptr = &mut status as *mut libc::c_int as u64;
                    if syscall(libc::SYS_wait4, [pid as u64, status_ptr, 0, 0, 0]) != Ok(pid) {
                        return 9;
                    }
                    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 7 {
                        return 10;
                    }
                }
                Err(_) => return 11,
            }
            0
        });
        assert_eq!(status, WaitStatus::Exited(status.pid().unwrap(), 0));
    }

    #[test]
    fn kernel_argument_rules_and_stacked_errnos() {
        // Default ERRNO(EPERM), which leaves seccomp and prctl refused: the base filter must be
        // installed last. personality(0) is allowed, personality(8) gets EINVAL.
        let compiled = compile(&oci(
            r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
                {"names": ["exit", "exit_group"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}]},
                {"names": ["personality"], "action": "SCMP_ACT_ERRNO", "errnoRet": 22,
                 "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
                {"names": ["getpriority"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 3, "op": "SCMP_CMP_LE"},
                          {"index": 1, "value": 255, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]}]}"#,
        ))
        .unwrap();
        assert_eq!(compiled.programs.len(), 3);
        let status = in_child(&compiled.programs, || {
            if syscall(libc::SYS_personality, [0; 5]).is_err() {
                return 1;
            }
            if syscall(libc::SYS_personality, [8, 0, 0, 0, 0]) != Err(libc::EINVAL) {
                return 2;
            }
            if syscall(libc::SYS_personality, [0x20000, 0, 0, 0, 0]) != Err(libc::EPERM) {
                return 3;
            }
            // 64-bit comparison: 1 << 32 is not 0.
            if syscall(libc::SYS_personality, [1 << 32, 0, 0, 0, 0]) != Err(libc::EPERM) {
                return 4;
            }
            // getpriority(PRIO_PROCESS, 0): which <= 3 and who & 255 == 0.
            if syscall(libc::SYS_getpriority, [0; 5]).is_err() {
                return 5;
            }
            // who == 1: the mask sees it.
            if syscall(libc::SYS_getpriority, [0, 1, 0, 0, 0]) != Err(libc::EPERM) {
                return 6;
            }
            // who == 256: outside the mask, matches (no such process then).
            if syscall(libc::SYS_getpriority, [0, 1 << 20, 0, 0, 0]) != Err(libc::ESRCH) {
                return 7;
            }
            if syscall(libc::SYS_getpid, [0; 5]) != Err(libc::EPERM) {
                return 8;
            }
            0
        });
        assert_eq!(status, WaitStatus::Exited(status.pid().unwrap(), 0));
    }

    #[test]
    fn kernel_kill_process_wins_over_allow() {
        let compiled = compile(&oci(r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                {"names": ["chmod"], "action": "SCMP_ACT_ERRNO"},
                {"names": ["getppid"], "action": "SCMP_ACT_KILL_PROCESS"},
                {"names": ["getpid"], "action": "SCMP_ACT_TRAP"}]}"#))
        .unwrap();
        assert_eq!(compiled.programs.len(), 4);
        let status = in_child(&compiled.programs, || {
            let _ = syscall(libc::SYS_getppid, [0; 5]);
            1
        });
        assert!(
            matches!(status, WaitStatus::Signaled(_, Signal::SIGSYS, _)),
            "{status:?}"
        );
    }

    /// Runs `sh -c script` from `binary` (with `argv0` first) under the default profile.
    fn shell_under_default_profile(binary: &str, argv: &[&str], script: &str) -> WaitStatus {
        let compiled = compile(&default_seccomp()).unwrap();
        let binary = CString::new(binary).unwrap();
        let args: Vec<CString> = argv
            .iter()
            .copied()
            .chain(["-c", script])
            .map(|a| CString::new(a).unwrap())
            .collect();
        let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
        argv.push(std::ptr::null());
        let tmp = std::env::temp_dir().join(format!(
            "oci-seccomp-{}-{}",
            std::process::id(),
            args[0].to_str().unwrap()
        ));
        let env = [
            format!("T={}", tmp.display()),
            "PATH=/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
        ]
        .map(|e| CString::new(e).unwrap());
        let envp = [env[0].as_ptr(), env[1].as_ptr(), std::ptr::null()];
        in_child(&compiled.programs, || {
            // SAFETY: NUL-terminated strings and null-terminated arrays, alive in the child.
            unsafe { libc::execve(binary.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
            127
        })
    }

    /// What a container's shell does, and what it must not.
    const SCRIPT: &str = r#"set -e
        mkdir "$T"; cd "$T"
        echo hello > a; cat a > /dev/null; cp a b; chmod 600 b; ln -s b c; mv c d
        mkdir -p sub/dir; rm -r sub
        dd if=a of=e bs=1 count=2 2>/dev/null
        ls -la > /dev/null; id > /dev/null; ps > /dev/null; hostname > /dev/null; uname -a > /dev/null
        sleep 0; kill -0 $$; date > /dev/null; cat /proc/self/status > /dev/null
        (true) & wait
        cd /; rm -r "$T"
        if mount -t tmpfs none /mnt 2>/dev/null; then exit 3; fi
        if hostname other 2>/dev/null; then exit 4; fi
        exit 0"#;

    #[test]
    fn kernel_busybox_userland_runs_under_the_default_profile() {
        if !std::path::Path::new("/usr/bin/busybox").exists() {
            eprintln!("skipped: no /usr/bin/busybox");
            return;
        }
        let status = shell_under_default_profile("/usr/bin/busybox", &["busybox", "sh"], SCRIPT);
        assert_eq!(status, WaitStatus::Exited(status.pid().unwrap(), 0));
    }

    #[test]
    fn kernel_glibc_userland_runs_under_the_default_profile() {
        let status = shell_under_default_profile(
            "/bin/sh",
            &["sh"],
            &SCRIPT.replace("ps > /dev/null; ", ""),
        );
        assert_eq!(status, WaitStatus::Exited(status.pid().unwrap(), 0));
    }
}
