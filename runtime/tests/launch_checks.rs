//! The launch checks as a user meets them: `microvm run --bundle` (and `run`'s flags) refused
//! before anything boots, with one line naming the fault, exit status 125, and nothing left
//! in the runtime directory. No guest is started, so these run on any host.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::os::unix::fs::PermissionsExt;

use test_support::{Microvm, Outcome, TempDir};

/// A valid config; each test breaks one thing in it.
const GOOD: &str = r#"{
  "ociVersion": "1.0.2",
  "root": { "path": "rootfs" },
  "process": {
    "args": ["/bin/true"], "env": ["PATH=/bin"], "cwd": "/",
    "user": { "uid": 1000, "gid": 1000 },
    "capabilities": { "bounding": ["CAP_KILL"] }
  },
  "mounts": [{ "destination": "/proc", "type": "proc", "source": "proc" }]
}"#;

struct Bundle {
    dir: TempDir,
    runtime: TempDir,
}

impl Bundle {
    fn new(config: &str) -> Self {
        let dir = TempDir::new("bundle");
        std::fs::create_dir_all(dir.path("rootfs")).unwrap();
        let bundle = Bundle { dir, runtime: TempDir::new("bundle-runtime") };
        bundle.write(config);
        bundle
    }

    fn write(&self, config: &str) {
        let path = self.dir.path("config.json");
        std::fs::write(&path, config).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    }

    fn run(&self, extra: &[&str]) -> Outcome {
        Microvm::new(env!("CARGO_BIN_EXE_microvm"))
            .env("MICROVM_RUNTIME_DIR", &self.runtime.0)
            .env("MICROVM_CACHE", self.runtime.path("cache"))
            .args(["run", "--kernel", "/nonexistent/vmlinux"])
            .args(extra)
            .arg("--bundle")
            .arg(&self.dir.0)
            .run()
    }

    /// Refused with one line holding `needle`, status 125, and nothing made.
    fn refused(&self, extra: &[&str], needle: &str) {
        let out = self.run(extra);
        assert_eq!(out.code, Some(125), "{out:?}");
        let lines = out.error_lines();
        assert_eq!(lines.len(), 1, "one line: {out:?}");
        assert!(lines[0].starts_with("microvm: ") && lines[0].contains(needle), "{needle:?} not in {out:?}");
        assert!(!out.stderr.contains("kernel"), "checked before the kernel: {out:?}");
        let left: Vec<_> = std::fs::read_dir(&self.runtime.0).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
        assert!(left.is_empty(), "left behind: {left:?}");
    }
}

fn with(from: &str, to: &str) -> String {
    assert!(GOOD.contains(from), "{from}");
    GOOD.replace(from, to)
}

#[test]
fn a_good_bundle_passes_the_checks() {
    // It gets as far as the kernel, which does not exist.
    let out = Bundle::new(GOOD).run(&[]);
    assert_eq!(out.code, Some(125), "{out:?}");
    assert!(out.stderr.contains("kernel /nonexistent/vmlinux: not found"), "{out:?}");
}

#[test]
fn rootfs_missing_not_a_directory_dot_dot_or_escaping() {
    let bundle = Bundle::new(GOOD);
    std::fs::remove_dir(bundle.dir.path("rootfs")).unwrap();
    bundle.refused(&[], "root.path rootfs: No such file or directory");
    std::fs::write(bundle.dir.path("rootfs"), "").unwrap();
    bundle.refused(&[], "root.path rootfs: not a directory");
    bundle.write(&with(r#""path": "rootfs""#, r#""path": "../rootfs""#));
    bundle.refused(&[], "root.path ../rootfs: contains '..'");
    std::os::unix::fs::symlink("/tmp", bundle.dir.path("escape")).unwrap();
    bundle.write(&with(r#""path": "rootfs""#, r#""path": "escape""#));
    bundle.refused(&[], "resolves to /tmp outside the bundle");
}

#[test]
fn config_missing_malformed_foreign_or_writable() {
    let bundle = Bundle::new(GOOD);
    bundle.write("{ not json");
    bundle.refused(&[], "malformed config.json");
    bundle.write(GOOD);
    let config = bundle.dir.path("config.json");
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o666)).unwrap();
    bundle.refused(&[], "mode 0666 is group- or world-writable");
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::os::unix::fs::chown(&config, Some(4242), None).unwrap();
    // Refused unless the caller is uid 4242 or root owns it; as root here, uid 4242 is foreign.
    bundle.refused(&[], "owned by uid 4242, not by the caller");
    std::fs::remove_file(&config).unwrap();
    bundle.refused(&[], "config.json is missing");
}

#[test]
fn process_fields() {
    let bundle = Bundle::new(&with(r#""cwd": "/""#, r#""cwd": "work""#));
    bundle.refused(&[], "process.cwd work: must be absolute without '..'");
    bundle.write(&with(r#""args": ["/bin/true"]"#, r#""args": []"#));
    bundle.refused(&[], "process.args is missing or empty");
    bundle.write(&with(r#""PATH=/bin""#, r#""=oops""#));
    bundle.refused(&[], "process.env[0] \"=oops\": empty name");
    bundle.write(&with(r#""uid": 1000"#, r#""uid": 4294967295"#));
    bundle.refused(&[], "process.user.uid 4294967295: out of range");
    bundle.write(&with(r#""CAP_KILL""#, r#""CAP_MAKE_COFFEE""#));
    bundle.refused(&[], "process.capabilities.bounding: unknown capability \"CAP_MAKE_COFFEE\"");
    bundle.write(&with(r#""destination": "/proc""#, r#""destination": "/proc/../etc""#));
    bundle.refused(&[], "mounts[0].destination /proc/../etc: must be absolute without '..'");
    bundle.write(&with(r#""uid": 1000"#, r#""uid": 0"#));
    bundle.refused(&["--require-nonroot"], "process.user.uid is 0 and the policy requires a non-root process");
}

#[test]
fn run_flags_go_through_the_same_checks() {
    let runtime = TempDir::new("flags-runtime");
    let rootfs = TempDir::new("flags-rootfs");
    let profile = rootfs.path("bad-profile.json");
    std::fs::write(&profile, r#"{"defaultAction": "SCMP_ACT_SOMETIMES"}"#).unwrap();
    let run = |extra: &[&str]| {
        Microvm::new(env!("CARGO_BIN_EXE_microvm"))
            .env("MICROVM_RUNTIME_DIR", &runtime.0)
            .args(["run", "--kernel", "/nonexistent/vmlinux"])
            .args(extra)
            .arg(&rootfs.0)
            .args(["--", "true"])
            .run()
    };
    let cases: [(&[&str], String); 5] = [
        (&["-w", "relative"], "process.cwd relative: must be absolute".into()),
        (&["-e", "=x"], "empty name".into()),
        (&["--cap-add", "CAP_MAKE_COFFEE"], "capability \"CAP_MAKE_COFFEE\": unknown".into()),
        (&["--require-nonroot"], "policy requires a non-root process".into()),
        (&["--security-opt", &format!("seccomp={}", profile.display())], format!("seccomp profile {}: unknown action \"SCMP_ACT_SOMETIMES\"", profile.display())),
    ];
    for (extra, needle) in cases {
        let out = run(extra);
        assert_eq!(out.code, Some(125), "{extra:?}: {out:?}");
        assert_eq!(out.error_lines().len(), 1, "{extra:?}: {out:?}");
        assert!(out.stderr.contains(&needle), "{needle:?} not in {out:?}");
    }
    assert!(std::fs::read_dir(&runtime.0).map(|d| d.count() == 0).unwrap_or(true), "left behind");
}
