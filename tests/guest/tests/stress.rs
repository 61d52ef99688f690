//! Many sandboxes at once (issue "runc fidelity", part 7: about one sandbox in ten once hung
//! when ten were started together). Inputs as for run.rs (set by tests/run.sh).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::process::Stdio;
use std::time::Duration;

use guest_tests::Case;
use test_support::KillAfter;

/// Rounds, and sandboxes started together in each.
const ROUNDS: usize = 5;
const AT_ONCE: usize = 10;
/// Far beyond what ten boots take on the bed's one emulated vCPU; a run still going then has
/// hung, and its guest state goes to its stderr before it is killed (KillAfter).
const LIMIT: Duration = Duration::from_secs(600);

/// Ten sandboxes started at once, five times over: all fifty come up, print their line and
/// exit 0, none hangs, and nothing of any is left.
#[test]
fn ten_sandboxes_at_once_five_times_over_all_come_up_and_exit() {
    let case = Case::new("ten-at-once");
    for round in 0..ROUNDS {
        let runs: Vec<_> = (0..AT_ONCE)
            .map(|i| {
                let line = format!("{round}.{i}");
                let child = case
                    .command("rootfs-busybox", &[], &["echo", &line])
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap();
                let limit = KillAfter::new(child.id(), LIMIT, &format!("run {line}"));
                (line, child, limit)
            })
            .collect();
        for (line, child, limit) in runs {
            let out = child.wait_with_output().unwrap();
            drop(limit);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(0), "run {line}: {stderr}");
            assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{line}\n"), "run {line}: {stderr}");
        }
    }
    case.assert_nothing_left();
}
