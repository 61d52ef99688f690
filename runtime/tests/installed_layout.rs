//! How microvm finds its kernel, agent and image cache with no flag and no variable of ours
//! (as podman and docker start it), and how it bounds the cache, as a user meets it: through
//! the binary's own commands (`check`, `pack`, `cache prune`). No guest is started.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::time::{Duration, SystemTime};

use test_support::{Microvm, TempDir};

fn microvm() -> Microvm {
    Microvm::new(env!("CARGO_BIN_EXE_microvm")).without_microvm_env()
}

#[test]
fn the_config_file_names_the_kernel_agent_and_cache_and_check_says_so() {
    let dir = TempDir::new("layout-config");
    std::fs::write(dir.path("vmlinux"), b"kernel").unwrap();
    std::fs::write(dir.path("agent"), b"agent").unwrap();
    let config = dir.path("config.toml");
    let text = format!(
        "kernel = \"{}\"\nagent = \"{}\"\ncache = \"{}\"\n",
        dir.path("vmlinux").display(),
        dir.path("agent").display(),
        dir.path("cache").display()
    );
    std::fs::write(&config, text).unwrap();
    let out = microvm().env("MICROVM_CONFIG", &config).arg("check").run();
    let from = format!("({})", config.display());
    for (what, path) in [("guest kernel:", "vmlinux"), ("guest agent:", "agent"), ("image cache:", "cache")] {
        let line = out.stdout.lines().find(|l| l.starts_with(what)).unwrap_or_default();
        assert!(line.contains(&dir.path(path).display().to_string()) && line.ends_with(&from), "{what} {out:?}");
    }
    // A named file that is missing is an error naming it, not a fall-through.
    std::fs::remove_file(dir.path("agent")).unwrap();
    let out = microvm().env("MICROVM_CONFIG", &config).arg("check").run();
    let line = out.stdout.lines().find(|l| l.starts_with("guest agent:")).unwrap();
    assert!(line.contains(&format!("agent {}: not found (named by {})", dir.path("agent").display(), config.display())), "{out:?}");
}

#[test]
fn a_malformed_config_is_one_line_naming_the_file_and_key() {
    let dir = TempDir::new("layout-bad");
    let config = dir.path("config.toml");
    std::fs::write(&config, "kernal = \"/typo\"\n").unwrap();
    std::fs::create_dir(dir.path("tree")).unwrap();
    let out = microvm().env("MICROVM_CONFIG", &config).arg("pack").arg(dir.path("tree")).run();
    assert_eq!(out.code, Some(125), "{out:?}");
    let lines = out.error_lines();
    assert_eq!(lines.len(), 1, "{out:?}");
    assert!(lines[0].contains(&format!("config {}", config.display())) && lines[0].contains("kernal"), "{out:?}");
}

#[test]
fn a_cache_that_cannot_be_written_is_named_as_such() {
    let dir = TempDir::new("layout-ro");
    std::fs::write(dir.path("file"), b"").unwrap();
    std::fs::create_dir(dir.path("tree")).unwrap();
    let out = microvm().env("MICROVM_CACHE", dir.path("file/cache")).arg("pack").arg(dir.path("tree")).run();
    assert_eq!(out.code, Some(125), "{out:?}");
    assert!(out.stderr.contains(&format!("image cache {}", dir.path("file/cache/rootfs").display())), "{out:?}");
    assert!(!out.stderr.contains("mkfs.erofs"), "{out:?}");
}

#[test]
fn cache_prune_removes_images_not_in_use() {
    let dir = TempDir::new("layout-prune");
    let cache = dir.path("cache");
    std::fs::create_dir(dir.path("tree")).unwrap();
    std::fs::write(dir.path("tree/file"), b"x").unwrap();
    let out = microvm().env("MICROVM_CACHE", &cache).arg("pack").arg(dir.path("tree")).run();
    assert_eq!(out.code, Some(0), "{out:?}");
    let image = std::path::PathBuf::from(out.stdout.trim());
    // Just used: --all spares it.
    let out = microvm().env("MICROVM_CACHE", &cache).args(["cache", "prune", "--all"]).run();
    assert!(out.stdout.starts_with("removed 0 images") && image.exists(), "{out:?}");
    let f = std::fs::File::options().append(true).open(&image).unwrap();
    f.set_modified(SystemTime::now() - Duration::from_secs(3600)).unwrap();
    // Under the default limit nothing goes; with --all the unused image does.
    let out = microvm().env("MICROVM_CACHE", &cache).args(["cache", "prune"]).run();
    assert!(out.stdout.starts_with("removed 0 images") && image.exists(), "{out:?}");
    let out = microvm().env("MICROVM_CACHE", &cache).args(["cache", "prune", "--all"]).run();
    assert!(out.stdout.starts_with("removed 1 images") && !image.exists(), "{out:?}");
}
