//! OCI hooks (runtime-spec config.md, "POSIX-platform Hooks"), run on the host in runc's order:
//!
//! | stage             | when                                                     | a failure              |
//! |-------------------|----------------------------------------------------------|------------------------|
//! | `prestart`        | `create`, once the VMM process is in the container's     | fails `create`, undone |
//! |                   | network namespace, before the VM is built                |                        |
//! | `createRuntime`   | `create`, after `prestart`                               | fails `create`, undone |
//! | `createContainer` | `create`, once the VM and the container exist            | fails `create`, undone |
//! | `poststart`       | `start`, after the process has started                   | a warning              |
//! | `poststop`        | `delete`, after the container is gone                    | a warning              |
//!
//! Every hook runs on the host with the container's state on stdin, its own `args` (`args[0]`
//! as argv[0]), only its own `env` and the bundle as its working directory (where containerd
//! and conmon start runc, whose hooks inherit it), and is killed when its `timeout` passes. The spec runs
//! `createContainer` in the container's namespaces; the container lives in a guest kernel where
//! no host binary can run, so it runs on the host (docs/DESIGN.md, differences from runc).
//! `startContainer` hooks must run inside the container, which a host binary cannot: `create`
//! refuses a config that has any ([`refuse_unsupported`]).

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use oci_spec::runtime::{Hook, Hooks};

/// The hook stages microvm runs (for `features`).
pub const SUPPORTED: [&str; 5] = ["prestart", "createRuntime", "createContainer", "poststart", "poststop"];
/// How much of a failed hook's stderr its error quotes.
const STDERR_QUOTED: usize = 512;

/// One stage's hooks.
pub fn of<'a>(hooks: Option<&'a Hooks>, stage: &str) -> &'a [Hook] {
    let Some(hooks) = hooks else { return &[] };
    let list = match stage {
        "prestart" => hooks.prestart(),
        "createRuntime" => hooks.create_runtime(),
        "createContainer" => hooks.create_container(),
        "startContainer" => hooks.start_container(),
        "poststart" => hooks.poststart(),
        "poststop" => hooks.poststop(),
        _ => &None,
    };
    list.as_deref().unwrap_or_default()
}

/// `startContainer` hooks cannot run where the spec says they run (inside the container).
pub fn refuse_unsupported(hooks: Option<&Hooks>) -> anyhow::Result<()> {
    if let Some(hook) = of(hooks, "startContainer").first() {
        bail!(
            "hooks.startContainer ({}): hooks that run inside the container are not supported: the container runs in a guest kernel",
            hook.path().display()
        );
    }
    Ok(())
}

/// Runs `stage`'s hooks in order with `state` on stdin; the first failure is the error.
pub fn run(hooks: Option<&Hooks>, stage: &str, state: &serde_json::Value) -> anyhow::Result<()> {
    let bundle = bundle_of(state);
    let state = serde_json::to_vec(state).context("hook state")?;
    for (i, hook) in of(hooks, stage).iter().enumerate() {
        run_one(hook, &state, bundle).with_context(|| format!("hook {stage}[{i}] {}", hook.path().display()))?;
    }
    Ok(())
}

/// Runs `stage`'s hooks, each failure a warning (poststart, poststop).
pub fn run_warning(hooks: Option<&Hooks>, stage: &str, state: &serde_json::Value) {
    let Ok(bytes) = serde_json::to_vec(state) else { return };
    for (i, hook) in of(hooks, stage).iter().enumerate() {
        if let Err(e) = run_one(hook, &bytes, bundle_of(state)) {
            eprintln!("microvm: warning: hook {stage}[{i}] {}: {}", hook.path().display(), crate::errors::one_line(&e));
        }
    }
}

/// The state's bundle directory, when it has one.
fn bundle_of(state: &serde_json::Value) -> Option<&std::path::Path> {
    state["bundle"].as_str().map(std::path::Path::new).filter(|b| b.is_dir())
}

fn run_one(hook: &Hook, state: &[u8], bundle: Option<&std::path::Path>) -> anyhow::Result<()> {
    let mut command = Command::new(hook.path());
    if let Some(dir) = bundle {
        command.current_dir(dir);
    }
    let args = hook.args().clone().unwrap_or_default();
    if let Some((first, rest)) = args.split_first() {
        command.arg0(first).args(rest);
    }
    command.env_clear();
    for entry in hook.env().as_deref().unwrap_or_default() {
        let (key, value) = entry.split_once('=').unwrap_or((entry, ""));
        command.env(key, value);
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawn")?;
    // A hook that does not read its stdin gets EPIPE, which is its business.
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(state);
    }
    let mut stderr = child.stderr.take().context("stderr")?;
    let reader = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = (&mut stderr).take(64 * 1024).read_to_end(&mut text);
        // Drain the rest so the hook never blocks on a full pipe.
        let _ = std::io::copy(&mut stderr, &mut std::io::sink());
        text
    });
    let timeout = hook.timeout().filter(|t| *t > 0).map(|t| Duration::from_secs(t.unsigned_abs()));
    let deadline = timeout.map(|t| Instant::now() + t);
    let status = loop {
        if let Some(status) = child.try_wait().context("wait")? {
            break status;
        }
        if deadline.is_some_and(|d| Instant::now() > d) {
            let _ = child.kill();
            let _ = child.wait();
            bail!("timed out after {} s", timeout.unwrap_or_default().as_secs());
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let stderr = reader.join().unwrap_or_default();
    if status.success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&stderr);
    let quoted: String = text.split_whitespace().collect::<Vec<_>>().join(" ").chars().take(STDERR_QUOTED).collect();
    Err(anyhow!("{status}{}", if quoted.is_empty() { String::new() } else { format!(": {quoted}") }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use oci_spec::runtime::{HookBuilder, HooksBuilder};

    fn sh(script: &str, timeout: Option<i64>) -> Hook {
        let mut hook = HookBuilder::default()
            .path("/bin/sh")
            .args(vec!["sh".to_string(), "-c".into(), script.into()])
            .env(vec!["GREETING=hi".to_string()])
            .build()
            .unwrap();
        hook.set_timeout(timeout);
        hook
    }

    #[test]
    fn hooks_get_the_state_on_stdin_their_env_only_and_run_in_order() {
        let dir = test_support::TempDir::new("hooks");
        let log = dir.path("log");
        let append = |tag: &str| sh(&format!("echo {tag} $GREETING ${{HOME:-nohome}} $(pwd) $(cat) >> {}", log.display()), None);
        let hooks = HooksBuilder::default()
            .create_runtime(vec![append("one"), append("two")])
            .build()
            .unwrap();
        let state = serde_json::json!({"bundle": dir.0});
        run(Some(&hooks), "createRuntime", &state).unwrap();
        let text = std::fs::read_to_string(&log).unwrap();
        let expected = format!("hi nohome {} {}", dir.0.display(), state);
        assert_eq!(text, format!("one {expected}\ntwo {expected}\n"));
        run(Some(&hooks), "poststop", &serde_json::json!({})).unwrap();
        assert_eq!(std::fs::read_to_string(&log).unwrap(), text, "no poststop hooks: nothing ran");
    }

    #[test]
    fn a_failing_or_slow_hook_is_an_error_naming_stage_index_and_path() {
        let hooks = HooksBuilder::default()
            .prestart(vec![sh("true", None), sh("echo no  GPU >&2; exit 3", None)])
            .poststart(vec![sh("sleep 10", Some(1))])
            .build()
            .unwrap();
        let dir = test_support::TempDir::new("hooks");
        let e = run(Some(&hooks), "prestart", &serde_json::json!({"bundle": dir.0})).unwrap_err();
        assert_eq!(crate::errors::one_line(&e), "hook prestart[1] /bin/sh: exit status: 3: no GPU");
        let started = Instant::now();
        let e = run(Some(&hooks), "poststart", &serde_json::json!({})).unwrap_err();
        assert_eq!(crate::errors::one_line(&e), "hook poststart[0] /bin/sh: timed out after 1 s");
        assert!(started.elapsed() < Duration::from_secs(5));
        let missing = HooksBuilder::default()
            .prestart(vec![HookBuilder::default().path("/nonexistent/hook").build().unwrap()])
            .build()
            .unwrap();
        let e = run(Some(&missing), "prestart", &serde_json::json!({})).unwrap_err();
        assert!(crate::errors::one_line(&e).starts_with("hook prestart[0] /nonexistent/hook: spawn: "), "{e:#}");
    }

    #[test]
    fn start_container_hooks_are_refused() {
        let hooks = HooksBuilder::default().start_container(vec![sh("true", None)]).build().unwrap();
        let e = refuse_unsupported(Some(&hooks)).unwrap_err().to_string();
        assert!(e.starts_with("hooks.startContainer (/bin/sh): "), "{e}");
        assert!(refuse_unsupported(None).is_ok());
    }
}
