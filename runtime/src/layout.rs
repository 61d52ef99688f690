//! Where microvm finds what it needs: the guest kernel, the guest agent and the image cache.
//!
//! podman, docker and containerd start the runtime with no variable of ours and often with no
//! writable home, so an installed microvm must find everything by itself. Each item is looked
//! up in this order, and the first source that names it decides (a named file that is missing
//! is an error naming it, never a silent fall-through to the next source):
//!
//! 1. the command-line flag (`--kernel`, `--agent`), then the `MICROVM_*` variable;
//! 2. the config file, `/etc/microvm/config.toml` (`$MICROVM_CONFIG` for another):
//!    `kernel = "/path/vmlinux"`, `agent = "/path/microvm-agent"`, `cache = "/var/cache/microvm"`;
//! 3. the installed layout beside the binary (`install.sh`): `PREFIX/bin/microvm`,
//!    `PREFIX/lib/microvm/vmlinux`, `PREFIX/lib/microvm/microvm-agent`;
//! 4. the build tree: the kernel `kernel-config/build.sh` cached (`~/.cache/microvm/kernel/current`)
//!    and the static agent under `target/static/`.
//!
//! virtiofsd (volumes) is looked up the same way (`$MICROVM_VIRTIOFSD`, the config's
//! `virtiofsd`, `PREFIX/lib/microvm/virtiofsd`), then in `/usr/libexec`, `$PATH` and where
//! images/build-virtiofsd.sh installs it (`~/.cache/microvm/virtiofsd/current`).
//!
//! The image cache (packed root filesystems) must be writable: `$MICROVM_CACHE`, the config's
//! `cache`, then `~/.cache/microvm`, `/var/cache/microvm` and `/run/microvm-cache`, the first
//! that can be written; passing over `~/.cache/microvm` is said once on stderr, with the reason.
//! Its size is bounded by the config's `cache_limit_mib` (see `rootfs::prune`).

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use serde::Deserialize;

/// The config file read when `$MICROVM_CONFIG` names none.
pub const CONFIG_FILE: &str = "/etc/microvm/config.toml";
/// The image cache's bound when the config file sets none.
const DEFAULT_CACHE_LIMIT_MIB: u64 = 8192;
/// Root-owned places for the image cache when the home directory cannot take it (in order).
const SYSTEM_CACHES: [&str; 2] = ["/var/cache/microvm", "/run/microvm-cache"];

/// `/etc/microvm/config.toml`: every key optional, unknown keys refused (a typo must not
/// silently fall back to a default).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    kernel: Option<PathBuf>,
    agent: Option<PathBuf>,
    cache: Option<PathBuf>,
    cache_limit_mib: Option<u64>,
    virtiofsd: Option<PathBuf>,
    rootfs: Option<RootfsTransport>,
}

/// How a container's root filesystem directory reaches the guest, when the config or
/// `MICROVM_ROOTFS` names one (what each default is: `vm::Route::of`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RootfsTransport {
    /// Packed into an EROFS image (cached by the tree's metadata) on a read-only virtio-blk
    /// disk; the guest's writes stay in the guest, an OCI bundle's too.
    Erofs,
    /// Shared over virtio-fs, with the volumes: nothing packed.
    Virtiofs,
}

/// A path and the source that named it, for messages and `microvm check`.
#[derive(Debug, Clone)]
pub struct Found {
    pub path: PathBuf,
    pub from: String,
}

/// The sources, read once.
#[derive(Debug)]
pub struct Layout {
    config: Config,
    config_path: PathBuf,
    /// The directory holding this binary (`PREFIX/bin` when installed).
    exe_dir: Option<PathBuf>,
    /// `$MICROVM_KERNEL`, `$MICROVM_AGENT`, `$MICROVM_CACHE`, read once (unit tests set them).
    kernel_variable: Option<PathBuf>,
    agent_variable: Option<PathBuf>,
    virtiofsd_variable: Option<PathBuf>,
    /// `$MICROVM_ROOTFS` (`erofs` or `virtiofs`), read once.
    rootfs_variable: Option<String>,
    /// `$PATH`'s directories, read once.
    path: Vec<PathBuf>,
    cache_variable: Option<PathBuf>,
    /// `$MICROVM_CACHE` or `~/.cache/microvm`: the per-user cache the kernel build writes.
    user_cache: Option<PathBuf>,
    /// [`SYSTEM_CACHES`] (other places in unit tests).
    system_caches: Vec<PathBuf>,
}

impl Layout {
    /// Reads the config file if there is one; a malformed one is an error naming it.
    pub fn load() -> anyhow::Result<Self> {
        let config_path =
            std::env::var_os("MICROVM_CONFIG").map_or_else(|| PathBuf::from(CONFIG_FILE), PathBuf::from);
        let config = match std::fs::read_to_string(&config_path) {
            Ok(text) => toml::from_str(&text)
                .map_err(|e| anyhow!("config {}: {}", config_path.display(), e.message()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Config::default(),
            Err(e) => return Err(e).with_context(|| format!("config {}", config_path.display())),
        };
        let exe_dir = std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf));
        let cache_variable = std::env::var_os("MICROVM_CACHE").map(PathBuf::from);
        let user_cache = cache_variable.clone().or_else(|| home().map(|h| h.join(".cache/microvm")));
        let system_caches = SYSTEM_CACHES.iter().map(PathBuf::from).collect();
        let variable = |name: &str| std::env::var_os(name).map(PathBuf::from);
        Ok(Self {
            config,
            config_path,
            exe_dir,
            kernel_variable: variable("MICROVM_KERNEL"),
            agent_variable: variable("MICROVM_AGENT"),
            virtiofsd_variable: variable("MICROVM_VIRTIOFSD"),
            rootfs_variable: std::env::var("MICROVM_ROOTFS").ok(),
            path: std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default(),
            cache_variable,
            user_cache,
            system_caches,
        })
    }

    /// The guest kernel (`vmlinux`).
    pub fn kernel(&self, flag: Option<&Path>) -> anyhow::Result<Found> {
        let mut fallbacks = Vec::new();
        if let Some(prefix) = self.prefix() {
            fallbacks.push(Found { path: prefix.join("lib/microvm/vmlinux"), from: "installed".into() });
        }
        if let Some(cache) = &self.user_cache {
            fallbacks.push(Found { path: cache.join("kernel/current/vmlinux"), from: "built".into() });
        }
        self.find(
            "kernel",
            flag,
            ("MICROVM_KERNEL", self.kernel_variable.as_deref()),
            self.config.kernel.as_deref(),
            fallbacks,
            "build one with kernel-config/build.sh and install it with install.sh, or pass --kernel",
        )
    }

    /// The static guest agent.
    pub fn agent(&self, flag: Option<&Path>) -> anyhow::Result<Found> {
        let mut fallbacks = Vec::new();
        if let (Some(dir), Some(prefix)) = (&self.exe_dir, self.prefix()) {
            for (path, from) in [
                (prefix.join("lib/microvm/microvm-agent"), "installed"),
                (dir.join("microvm-agent"), "beside the binary"),
                (prefix.join("static/x86_64-unknown-linux-gnu/release/guest-agent"), "built"),
            ] {
                fallbacks.push(Found { path, from: from.into() });
            }
        }
        self.find(
            "agent",
            flag,
            ("MICROVM_AGENT", self.agent_variable.as_deref()),
            self.config.agent.as_deref(),
            fallbacks,
            "build it with images/build-agent.sh and install it with install.sh, or pass --agent",
        )
    }

    /// virtiofsd, the vhost-user file server of shared directories (volumes): installed beside
    /// the agent by install.sh, else Debian's package, `$PATH`, and images/build-virtiofsd.sh's.
    pub fn virtiofsd(&self) -> anyhow::Result<Found> {
        let mut fallbacks = Vec::new();
        if let Some(prefix) = self.prefix() {
            fallbacks.push(Found { path: prefix.join("lib/microvm/virtiofsd"), from: "installed".into() });
        }
        fallbacks.push(Found { path: PathBuf::from("/usr/libexec/virtiofsd"), from: "system".into() });
        for dir in &self.path {
            fallbacks.push(Found { path: dir.join("virtiofsd"), from: "$PATH".into() });
        }
        if let Some(cache) = &self.user_cache {
            fallbacks.push(Found { path: cache.join("virtiofsd/current/bin/virtiofsd"), from: "built".into() });
        }
        self.find(
            "virtiofsd",
            None,
            ("MICROVM_VIRTIOFSD", self.virtiofsd_variable.as_deref()),
            self.config.virtiofsd.as_deref(),
            fallbacks,
            "volumes need it: cargo install --locked virtiofsd, then install.sh",
        )
    }

    /// How the rootfs reaches the guest: `$MICROVM_ROOTFS`, then the config's `rootfs`, then
    /// EROFS (see docs/DESIGN.md, "Volumes", for the measurement behind the default).
    pub fn rootfs_transport(&self) -> anyhow::Result<Option<RootfsTransport>> {
        match self.rootfs_variable.as_deref() {
            None => Ok(self.config.rootfs),
            Some("erofs") => Ok(Some(RootfsTransport::Erofs)),
            Some("virtiofs") => Ok(Some(RootfsTransport::Virtiofs)),
            Some(other) => bail!("MICROVM_ROOTFS={other:?}: expected erofs or virtiofs"),
        }
    }

    /// `PREFIX` of `PREFIX/bin/microvm` (`target` of `target/release/microvm` in a build tree).
    fn prefix(&self) -> Option<&Path> {
        self.exe_dir.as_deref().and_then(Path::parent)
    }

    /// The first source that names `what` decides; the fallbacks are tried in order.
    fn find(
        &self,
        what: &str,
        flag: Option<&Path>,
        (variable, value): (&str, Option<&Path>),
        configured: Option<&Path>,
        fallbacks: Vec<Found>,
        hint: &str,
    ) -> anyhow::Result<Found> {
        let named = flag
            .map(|p| Found { path: p.to_path_buf(), from: "flag".into() })
            .or_else(|| value.map(|p| Found { path: p.to_path_buf(), from: format!("${variable}") }))
            .or_else(|| {
                configured.map(|p| Found { path: p.to_path_buf(), from: self.config_path.display().to_string() })
            });
        if let Some(found) = named {
            if !found.path.is_file() {
                bail!("{what} {}: not found (named by {}); {hint}", found.path.display(), found.from);
            }
            return Ok(found);
        }
        let looked: Vec<String> = fallbacks.iter().map(|f| f.path.display().to_string()).collect();
        fallbacks
            .into_iter()
            .find(|f| f.path.is_file())
            .ok_or_else(|| anyhow!("{what}: not found (looked for {}); {hint}", looked.join(", ")))
    }

    /// The image cache's bound in bytes.
    pub fn cache_limit(&self) -> u64 {
        self.config.cache_limit_mib.unwrap_or(DEFAULT_CACHE_LIMIT_MIB).saturating_mul(1 << 20)
    }

    /// A writable directory for packed images (see the module's comment for the order).
    pub fn image_cache(&self) -> anyhow::Result<Found> {
        if let Some(path) = &self.cache_variable {
            return Ok(Found { path: path.clone(), from: "$MICROVM_CACHE".into() });
        }
        if let Some(path) = &self.config.cache {
            return Ok(Found { path: path.clone(), from: self.config_path.display().to_string() });
        }
        let mut passed_over = None;
        if let Some(home_cache) = &self.user_cache {
            match writable(home_cache) {
                Ok(()) => return Ok(Found { path: home_cache.clone(), from: "home".into() }),
                Err(why) => passed_over = Some(format!("{} is not writable ({why})", home_cache.display())),
            }
        }
        let mut reasons: Vec<String> = passed_over.iter().cloned().collect();
        for dir in &self.system_caches {
            match writable(dir) {
                Ok(()) => {
                    if let Some(why) = &passed_over {
                        eprintln!("microvm: image cache {why}; using {}", dir.display());
                    }
                    return Ok(Found { path: dir.clone(), from: "system".into() });
                }
                Err(why) => reasons.push(format!("{} ({why})", dir.display())),
            }
        }
        bail!("image cache: no writable directory: {}; set cache in {CONFIG_FILE}", reasons.join(", "))
    }
}

/// `$HOME`, when set to something absolute (podman may pass none).
fn home() -> Option<PathBuf> {
    std::env::var_os("HOME").map(PathBuf::from).filter(|h| h.is_absolute())
}

/// Makes `dir` if need be and checks that it can be written (a read-only home fails here, not
/// later inside mkfs.erofs with a message that hides the cause).
fn writable(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK).map_err(|e| e.desc().to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    fn layout(config: Config, exe_dir: &Path, user_cache: &Path) -> Layout {
        Layout {
            config,
            config_path: PathBuf::from("/test/config.toml"),
            exe_dir: Some(exe_dir.to_path_buf()),
            kernel_variable: None,
            agent_variable: None,
            virtiofsd_variable: None,
            rootfs_variable: None,
            path: Vec::new(),
            cache_variable: None,
            user_cache: Some(user_cache.to_path_buf()),
            system_caches: Vec::new(),
        }
    }

    fn touch(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"x").unwrap();
    }

    #[test]
    fn the_installed_layout_is_found_before_the_build_tree() {
        let dir = test_support::TempDir::new("layout");
        let prefix = dir.path("prefix");
        let cache = dir.path("cache");
        touch(&prefix.join("lib/microvm/vmlinux"));
        touch(&cache.join("kernel/current/vmlinux"));
        let l = layout(Config::default(), &prefix.join("bin"), &cache);
        let found = l.kernel(None).unwrap();
        assert_eq!(found.path, prefix.join("lib/microvm/vmlinux"));
        assert_eq!(found.from, "installed");
        std::fs::remove_file(prefix.join("lib/microvm/vmlinux")).unwrap();
        assert_eq!(l.kernel(None).unwrap().from, "built");
    }

    #[test]
    fn a_named_file_that_is_missing_is_an_error_naming_it_and_its_source() {
        let dir = test_support::TempDir::new("layout");
        let prefix = dir.path("prefix");
        touch(&prefix.join("lib/microvm/microvm-agent"));
        let config = Config { agent: Some(dir.path("gone/agent")), ..Config::default() };
        let l = layout(config, &prefix.join("bin"), &dir.path("cache"));
        let e = l.agent(None).unwrap_err().to_string();
        assert!(e.contains("gone/agent: not found (named by /test/config.toml)"), "{e}");
        // A flag comes before the config.
        let flag = prefix.join("lib/microvm/microvm-agent");
        assert_eq!(l.agent(Some(&flag)).unwrap().from, "flag");
    }

    #[test]
    fn nothing_found_says_where_it_looked_on_one_line() {
        let dir = test_support::TempDir::new("layout");
        let l = layout(Config::default(), &dir.path("bin"), &dir.path("cache"));
        let e = l.kernel(None).unwrap_err().to_string();
        assert!(e.starts_with("kernel: not found (looked for "), "{e}");
        assert!(e.contains("lib/microvm/vmlinux") && e.contains("kernel/current/vmlinux"), "{e}");
        assert!(!e.contains('\n'));
    }

    #[test]
    fn the_config_file_refuses_unknown_keys() {
        let config = toml::from_str::<Config>("kernel = \"/k\"\ncache = \"/c\"\ncache_limit_mib = 10").unwrap();
        assert_eq!(config.cache_limit_mib, Some(10));
        let config = toml::from_str::<Config>("rootfs = \"virtiofs\"").unwrap();
        assert_eq!(config.rootfs, Some(RootfsTransport::Virtiofs));
        assert!(toml::from_str::<Config>("rootfs = \"9p\"").is_err());
        let e = toml::from_str::<Config>("kernal = \"/k\"").unwrap_err();
        assert!(e.message().contains("kernal"), "{}", e.message());
    }

    #[test]
    fn an_unwritable_home_cache_falls_back_to_the_first_writable_system_cache() {
        let dir = test_support::TempDir::new("layout");
        std::fs::write(dir.path("file"), b"").unwrap();
        let mut l = layout(Config::default(), &dir.path("bin"), &dir.path("cache"));
        assert_eq!(l.image_cache().unwrap().path, dir.path("cache"));
        l.user_cache = Some(dir.path("file/cache"));
        l.system_caches = vec![dir.path("file/system"), dir.path("system")];
        let found = l.image_cache().unwrap();
        assert_eq!((found.path, found.from.as_str()), (dir.path("system"), "system"));
        l.system_caches.pop();
        let e = l.image_cache().unwrap_err().to_string();
        assert!(e.starts_with("image cache: no writable directory: ") && e.contains("file/cache is not writable"), "{e}");
        // A configured cache is taken as given.
        l.config.cache = Some(dir.path("configured"));
        assert_eq!(l.image_cache().unwrap().from, "/test/config.toml");
    }

    #[test]
    fn an_unwritable_directory_is_told_apart() {
        let dir = test_support::TempDir::new("layout");
        assert!(writable(&dir.path("not/yet/made")).is_ok());
        assert!(dir.path("not/yet/made").is_dir());
        // Unwritable even for root (the tests may run as root): below a regular file.
        std::fs::write(dir.path("file"), b"").unwrap();
        let why = writable(&dir.path("file/cache")).unwrap_err();
        assert!(why.contains("Not a directory"), "{why}");
    }
}
