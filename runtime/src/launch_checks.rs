//! Launch checks on an OCI bundle before anything of it runs, after the suEXEC model Apache
//! applies before running CGI as another user: every condition is checked up front, and the
//! first failure refuses the launch with an error naming the offending thing.
//!
//! The bundle layout and `config.json` fields are those of the OCI runtime spec
//! (<https://github.com/opencontainers/runtime-spec/blob/main/bundle.md>, `config.md`); the
//! types come from the `oci-spec` crate.
//!
//! Id bound: a uid or gid is valid in `0..=0xFFFF_FFFE`. `u32::MAX` is `(uid_t)-1`, which
//! `setresuid(2)`, `setresgid(2)` and `chown(2)` read as "leave unchanged", so it can never name
//! a real identity. Values above `u32::MAX` do not fit the spec's `u32` fields and are refused
//! at parse time as a malformed config.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::{Capability, LinuxNamespaceType, Spec};

/// Largest uid/gid accepted; `u32::MAX` is the invalid id `(uid_t)-1` (see module docs).
pub const MAX_ID: u32 = 0xFFFF_FFFE;

/// The five capability sets of `process.capabilities`, as spelled in `config.json`.
const CAPABILITY_SETS: [&str; 5] = [
    "bounding",
    "effective",
    "inheritable",
    "permitted",
    "ambient",
];

/// What the caller asks for beyond the checks that always apply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Policy {
    /// Refuse a process that would run as uid 0.
    pub require_nonroot: bool,
    /// Refuse a root.path that resolves outside the bundle. On for `microvm run --bundle`;
    /// off for the OCI verbs, whose callers (podman, containerd) point root.path at an
    /// overlay mount they made elsewhere.
    pub root_inside_bundle: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("{}: config.json is missing", path.display())]
    ConfigMissing { path: PathBuf },
    #[error("{}: read: {source}", path.display())]
    ConfigRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: malformed config.json: {source}", path.display())]
    ConfigMalformed {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{}: owned by uid {owner}, not by the caller (uid {caller}) or root", path.display())]
    ConfigOwner {
        path: PathBuf,
        owner: u32,
        caller: u32,
    },
    #[error("{}: mode {mode:04o} is group- or world-writable", path.display())]
    ConfigWritable { path: PathBuf, mode: u32 },
    #[error("root.path is missing from config.json")]
    RootMissing,
    #[error("root.path {}: contains '..'", path.display())]
    RootDotDot { path: PathBuf },
    #[error("root.path {}: {source}", path.display())]
    RootUnresolvable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("root.path {}: not a directory", path.display())]
    RootNotDirectory { path: PathBuf },
    #[error("root.path {}: resolves to {} outside the bundle {}", path.display(), resolved.display(), bundle.display())]
    RootOutsideBundle {
        path: PathBuf,
        resolved: PathBuf,
        bundle: PathBuf,
    },
    #[error("process is missing from config.json")]
    ProcessMissing,
    #[error("process.args is missing or empty")]
    ArgsEmpty,
    #[error("process.cwd {}: must be absolute without '..'", cwd.display())]
    BadCwd { cwd: PathBuf },
    #[error("mounts[{index}].destination {}: must be absolute without '..'", destination.display())]
    BadMountDestination { index: usize, destination: PathBuf },
    #[error("process.env[{index}] {entry:?}: {reason}")]
    BadEnv {
        index: usize,
        entry: String,
        reason: &'static str,
    },
    #[error("process.user.{field} {id}: out of range (valid ids are 0..={MAX_ID})")]
    IdOutOfRange { field: &'static str, id: u32 },
    #[error("process.capabilities.{set}: unknown capability {name:?}")]
    UnknownCapability { set: &'static str, name: String },
    #[error("process.user.uid is 0 and the policy requires a non-root process")]
    RunsAsRoot,
    #[error("seccomp profile {}: {message}", path.display())]
    SeccompProfile { path: PathBuf, message: String },
    #[error("linux.namespaces: the {typ} namespace is listed twice")]
    DuplicateNamespace { typ: &'static str },
    #[error("linux.namespaces ({typ}).path {}: {reason}", path.display())]
    BadNamespacePath {
        typ: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error(
        "linux.namespaces ({typ}).path {}: a namespace of the host cannot be joined: the \
         container's {typ} namespace is in its own guest kernel (only the network namespace, \
         which the VMM joins, can be shared)", path.display()
    )]
    HostNamespace { typ: &'static str, path: PathBuf },
    #[error(
        "linux.maskedPaths and linux.readonlyPaths need a mount namespace of the container's \
         own: add one to linux.namespaces or drop them"
    )]
    MaskedWithoutMountNamespace,
    #[error("linux.uidMappings and linux.gidMappings: a user namespace needs both (mapping the container's ids)")]
    UserNamespaceUnmapped,
    #[error("linux.uidMappings and linux.gidMappings: given without a user namespace in linux.namespaces")]
    MappingsWithoutUserNamespace,
    #[error("{field} {label:?}: SELinux labels cannot be applied: the guest kernel has no SELinux")]
    SelinuxLabel { field: &'static str, label: String },
}

/// Load `<bundle>/config.json` and refuse it unless every launch check passes.
pub fn check_bundle(bundle: &Path, policy: &Policy) -> Result<Spec, LaunchError> {
    let spec = load_config(bundle)?;
    check_root(bundle, &spec, policy)?;
    check_spec(&spec, policy)?;
    Ok(spec)
}

/// The checks on the config itself, whether it came from a bundle or from `run`'s flags.
pub fn check_spec(spec: &Spec, policy: &Policy) -> Result<(), LaunchError> {
    let process = spec.process().as_ref().ok_or(LaunchError::ProcessMissing)?;
    if process.args().as_ref().is_none_or(|args| args.is_empty()) {
        return Err(LaunchError::ArgsEmpty);
    }
    if !is_clean_absolute(process.cwd()) {
        return Err(LaunchError::BadCwd {
            cwd: process.cwd().clone(),
        });
    }
    check_env(process.env().as_deref().unwrap_or_default())?;
    let user = process.user();
    check_id("uid", user.uid())?;
    check_id("gid", user.gid())?;
    for gid in user.additional_gids().as_deref().unwrap_or_default() {
        check_id("additionalGids", *gid)?;
    }
    if policy.require_nonroot && user.uid() == 0 {
        return Err(LaunchError::RunsAsRoot);
    }
    for (index, mount) in spec
        .mounts()
        .as_deref()
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        if !is_clean_absolute(mount.destination()) {
            return Err(LaunchError::BadMountDestination {
                index,
                destination: mount.destination().clone(),
            });
        }
    }
    check_namespaces(spec)?;
    check_labels(spec)
}

/// Each namespace type at most once; a `path` must name a namespace of its type (runc's
/// check), and only the network's can be joined: the VMM process enters it and the guest's
/// card stands for what the caller made there. Any other type's namespace lives in the host
/// kernel, which the container's processes never reach. Without a mount namespace the
/// container is chrooted in the guest's, and the masked and read-only paths, which would then
/// cover the agent's own view, are refused as runc refuses them.
fn check_namespaces(spec: &Spec) -> Result<(), LaunchError> {
    let Some(linux) = spec.linux() else {
        return Ok(());
    };
    let namespaces = linux.namespaces().as_deref().unwrap_or_default();
    let mut seen = Vec::new();
    for namespace in namespaces {
        let (typ, flag) = namespace_kind(namespace.typ());
        if seen.contains(&typ) {
            return Err(LaunchError::DuplicateNamespace { typ });
        }
        seen.push(typ);
        let Some(path) = namespace.path() else {
            continue;
        };
        check_namespace_file(typ, flag, path)?;
        if namespace.typ() != LinuxNamespaceType::Network {
            return Err(LaunchError::HostNamespace { typ, path: path.clone() });
        }
    }
    let restricted = linux.masked_paths().as_ref().is_some_and(|p| !p.is_empty())
        || linux.readonly_paths().as_ref().is_some_and(|p| !p.is_empty());
    if restricted && !seen.contains(&"mount") {
        return Err(LaunchError::MaskedWithoutMountNamespace);
    }
    // runc's rules for the maps, which the guest's agent writes (guest-agent's userns).
    let mapped = |m: &Option<Vec<oci_spec::runtime::LinuxIdMapping>>| m.as_ref().is_some_and(|m| !m.is_empty());
    let (uids, gids) = (mapped(linux.uid_mappings()), mapped(linux.gid_mappings()));
    match (seen.contains(&"user"), uids && gids, uids || gids) {
        (true, false, _) => Err(LaunchError::UserNamespaceUnmapped),
        (false, _, true) => Err(LaunchError::MappingsWithoutUserNamespace),
        _ => Ok(()),
    }
}

/// A namespace type as config.json spells it, and its `CLONE_NEW*` flag (what
/// `NS_GET_NSTYPE` answers for a namespace of that type).
fn namespace_kind(typ: LinuxNamespaceType) -> (&'static str, libc::c_int) {
    match typ {
        LinuxNamespaceType::Mount => ("mount", libc::CLONE_NEWNS),
        LinuxNamespaceType::Cgroup => ("cgroup", libc::CLONE_NEWCGROUP),
        LinuxNamespaceType::Uts => ("uts", libc::CLONE_NEWUTS),
        LinuxNamespaceType::Ipc => ("ipc", libc::CLONE_NEWIPC),
        LinuxNamespaceType::User => ("user", libc::CLONE_NEWUSER),
        LinuxNamespaceType::Pid => ("pid", libc::CLONE_NEWPID),
        LinuxNamespaceType::Network => ("network", libc::CLONE_NEWNET),
        // CLONE_NEWTIME (linux/sched.h); libc does not export it.
        LinuxNamespaceType::Time => ("time", 0x80),
    }
}

/// `path` opens, and the kernel says it is a namespace of type `typ`, whose flag is
/// `expected` (`NS_GET_NSTYPE`).
fn check_namespace_file(typ: &'static str, expected: libc::c_int, path: &Path) -> Result<(), LaunchError> {
    let bad = |reason: String| LaunchError::BadNamespacePath { typ, path: path.to_owned(), reason };
    let file = File::open(path).map_err(|e| bad(e.to_string()))?;
    // NS_GET_NSTYPE is _IO(0xb7, 0x3) (linux/nsfs.h); libc does not export it.
    const NS_GET_NSTYPE: libc::Ioctl = 0xb703;
    // SAFETY: NS_GET_NSTYPE takes no argument and returns the CLONE_NEW* flag of the
    // namespace `file` refers to, or -1 (ENOTTY) for a file that is no namespace.
    let kind = unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&file), NS_GET_NSTYPE) };
    match kind {
        -1 => Err(bad("not a namespace".into())),
        kind if kind != expected => Err(bad(format!("not a {typ} namespace"))),
        _ => Ok(()),
    }
}

/// What to say about `process.apparmorProfile`: it is not applied, and not refused either.
/// runc applies it to the container's processes on the host kernel; here they run on the
/// guest's, which has no AppArmor, and the VM is their boundary. docker sets `docker-default`
/// for every container on a host with AppArmor, so a refusal would fail every docker run
/// there: the profile is accepted with this warning (docs/DESIGN.md, differences from runc).
pub fn apparmor_warning(spec: &Spec) -> Option<String> {
    let profile = spec.process().as_ref()?.apparmor_profile().clone()?;
    (!profile.is_empty() && profile != "unconfined").then(|| {
        format!("process.apparmorProfile {profile:?} is not applied: the container runs on the guest kernel, which has no AppArmor")
    })
}

/// SELinux labels are refused, as runc refuses them on a host without SELinux: the
/// container's processes and mounts are the guest kernel's, which has none.
fn check_labels(spec: &Spec) -> Result<(), LaunchError> {
    let process = spec.process().as_ref().and_then(|p| p.selinux_label().clone());
    let mount = spec.linux().as_ref().and_then(|l| l.mount_label().clone());
    for (field, label) in [("process.selinuxLabel", process), ("linux.mountLabel", mount)] {
        if let Some(label) = label.filter(|l| !l.is_empty()) {
            return Err(LaunchError::SelinuxLabel { field, label });
        }
    }
    Ok(())
}

/// Open config.json once, check its owner and mode on that descriptor, then parse it.
fn load_config(bundle: &Path) -> Result<Spec, LaunchError> {
    let path = bundle.join("config.json");
    let mut file = File::open(&path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => LaunchError::ConfigMissing { path: path.clone() },
        _ => LaunchError::ConfigRead {
            path: path.clone(),
            source,
        },
    })?;
    let meta = file.metadata().map_err(|source| LaunchError::ConfigRead {
        path: path.clone(),
        source,
    })?;
    let caller = geteuid();
    if meta.uid() != caller && meta.uid() != 0 {
        return Err(LaunchError::ConfigOwner {
            path,
            owner: meta.uid(),
            caller,
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(LaunchError::ConfigWritable { path, mode });
    }
    let mut text = Vec::new();
    file.read_to_end(&mut text)
        .map_err(|source| LaunchError::ConfigRead {
            path: path.clone(),
            source,
        })?;
    let value: serde_json::Value =
        serde_json::from_slice(&text).map_err(|source| LaunchError::ConfigMalformed {
            path: path.clone(),
            source,
        })?;
    // oci-spec refuses an unknown capability while parsing, with a message that names neither
    // the set nor the field; check the names first so the refusal says which one it was.
    check_capability_names(&value)?;
    serde_json::from_value(value).map_err(|source| LaunchError::ConfigMalformed { path, source })
}

/// Each string in the five capability sets must parse as an oci-spec `Capability`.
fn check_capability_names(config: &serde_json::Value) -> Result<(), LaunchError> {
    let Some(caps) = config.pointer("/process/capabilities") else {
        return Ok(());
    };
    for set in CAPABILITY_SETS {
        let Some(names) = caps.get(set).and_then(serde_json::Value::as_array) else {
            continue;
        };
        for name in names.iter().filter_map(serde_json::Value::as_str) {
            let known = serde_json::from_value::<Capability>(serde_json::Value::from(name)).is_ok();
            if !known {
                return Err(LaunchError::UnknownCapability {
                    set,
                    name: name.to_owned(),
                });
            }
        }
    }
    Ok(())
}

/// root.path must exist, be a directory, and (as `policy` says) resolve inside the bundle.
fn check_root(bundle: &Path, spec: &Spec, policy: &Policy) -> Result<(), LaunchError> {
    let root = spec.root().as_ref().ok_or(LaunchError::RootMissing)?;
    let path = root.path();
    if path.as_os_str().is_empty() {
        return Err(LaunchError::RootMissing);
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(LaunchError::RootDotDot { path: path.clone() });
    }
    let unresolvable = |source| LaunchError::RootUnresolvable {
        path: path.clone(),
        source,
    };
    let resolved = bundle.join(path).canonicalize().map_err(unresolvable)?;
    let bundle = bundle.canonicalize().map_err(unresolvable)?;
    if policy.root_inside_bundle && !resolved.starts_with(&bundle) {
        return Err(LaunchError::RootOutsideBundle {
            path: path.clone(),
            resolved,
            bundle,
        });
    }
    if !resolved.is_dir() {
        return Err(LaunchError::RootNotDirectory { path: path.clone() });
    }
    Ok(())
}

/// Each entry is `NAME=value` with a non-empty name and no NUL. The name ends at the first
/// '=', so a name holding '=' cannot be written; an entry without '=' is refused.
fn check_env(env: &[String]) -> Result<(), LaunchError> {
    for (index, entry) in env.iter().enumerate() {
        let reason = match entry.split_once('=') {
            _ if entry.contains('\0') => "contains NUL",
            None => "has no '='",
            Some(("", _)) => "empty name",
            Some(_) => continue,
        };
        return Err(LaunchError::BadEnv {
            index,
            entry: entry.clone(),
            reason,
        });
    }
    Ok(())
}

fn check_id(field: &'static str, id: u32) -> Result<(), LaunchError> {
    if id > MAX_ID {
        return Err(LaunchError::IdOutOfRange { field, id });
    }
    Ok(())
}

fn geteuid() -> u32 {
    // SAFETY: geteuid(2) takes no arguments, touches no memory of ours and cannot fail.
    unsafe { libc::geteuid() }
}

fn is_clean_absolute(path: &Path) -> bool {
    path.is_absolute() && !path.components().any(|c| c == Component::ParentDir)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A bundle directory under the temp dir, removed on drop.
    struct Bundle(PathBuf);

    impl Bundle {
        /// A bundle with `rootfs/` and a config.json of `config` at mode 0644.
        fn new(config: &serde_json::Value) -> Self {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "microvm-launch-checks-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            fs::create_dir_all(dir.join("rootfs")).unwrap();
            let bundle = Bundle(dir);
            bundle.write_config(&config.to_string());
            bundle
        }

        fn write_config(&self, text: &str) {
            let path = self.config();
            fs::write(&path, text).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        }

        fn config(&self) -> PathBuf {
            self.0.join("config.json")
        }

        /// As `run --bundle` checks: root.path inside the bundle.
        fn check(&self) -> Result<Spec, LaunchError> {
            check_bundle(
                &self.0,
                &Policy {
                    root_inside_bundle: true,
                    ..Policy::default()
                },
            )
        }
    }

    impl Drop for Bundle {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn minimal() -> serde_json::Value {
        serde_json::json!({
            "ociVersion": "1.2.0",
            "root": { "path": "rootfs" },
            "process": {
                "user": { "uid": 1000, "gid": 1000, "additionalGids": [10] },
                "args": ["/bin/sh"],
                "env": ["PATH=/bin", "EMPTY="],
                "cwd": "/",
                "capabilities": { "bounding": ["CAP_KILL"], "effective": ["CAP_KILL"] }
            },
            "mounts": [{ "destination": "/proc", "type": "proc", "source": "proc" }]
        })
    }

    /// `minimal()` with the value at JSON pointer `at` replaced by `value`.
    fn with(at: &str, value: serde_json::Value) -> serde_json::Value {
        let mut config = minimal();
        *config.pointer_mut(at).unwrap() = value;
        config
    }

    fn without(parent: &str, key: &str) -> serde_json::Value {
        let mut config = minimal();
        config
            .pointer_mut(parent)
            .unwrap()
            .as_object_mut()
            .unwrap()
            .remove(key);
        config
    }

    #[test]
    fn minimal_bundle_passes_and_returns_spec() {
        let bundle = Bundle::new(&minimal());
        let spec = bundle.check().unwrap();
        let process = spec.process().as_ref().unwrap();
        assert_eq!(process.args().as_ref().unwrap(), &["/bin/sh".to_string()]);
        assert_eq!(process.user().uid(), 1000);
        assert_eq!(spec.root().as_ref().unwrap().path(), Path::new("rootfs"));
    }

    #[test]
    fn config_missing() {
        let bundle = Bundle::new(&minimal());
        fs::remove_file(bundle.config()).unwrap();
        let err = bundle.check().unwrap_err();
        assert!(matches!(err, LaunchError::ConfigMissing { .. }), "{err}");
        assert!(err.to_string().contains("config.json"), "{err}");
    }

    #[test]
    fn config_malformed_names_parse_error() {
        let bundle = Bundle::new(&minimal());
        bundle.write_config("{ \"ociVersion\": ");
        let err = bundle.check().unwrap_err();
        assert!(matches!(err, LaunchError::ConfigMalformed { .. }), "{err}");
        assert!(err.to_string().contains("EOF"), "{err}");
        // Well-formed JSON of the wrong shape is malformed too.
        bundle.write_config(
            r#"{"process": {"args": "sh", "cwd": "/", "user": {"uid": 0, "gid": 0}}}"#,
        );
        let err = bundle.check().unwrap_err();
        assert!(matches!(err, LaunchError::ConfigMalformed { .. }), "{err}");
    }

    #[test]
    fn config_not_owned_by_caller_or_root() {
        if geteuid() != 0 {
            return; // chown to another uid needs root
        }
        let bundle = Bundle::new(&minimal());
        std::os::unix::fs::chown(bundle.config(), Some(12345), None).unwrap();
        let err = bundle.check().unwrap_err();
        assert!(
            matches!(err, LaunchError::ConfigOwner { owner: 12345, .. }),
            "{err}"
        );
    }

    #[test]
    fn config_group_or_world_writable() {
        let bundle = Bundle::new(&minimal());
        for mode in [0o664, 0o646] {
            fs::set_permissions(bundle.config(), fs::Permissions::from_mode(mode)).unwrap();
            let err = bundle.check().unwrap_err();
            assert!(
                matches!(err, LaunchError::ConfigWritable { mode: m, .. } if m == mode),
                "{err}"
            );
        }
    }

    #[test]
    fn root_missing() {
        let bundle = Bundle::new(&without("", "root"));
        assert!(matches!(
            bundle.check().unwrap_err(),
            LaunchError::RootMissing
        ));
        let bundle = Bundle::new(&with("/root/path", "".into()));
        assert!(matches!(
            bundle.check().unwrap_err(),
            LaunchError::RootMissing
        ));
    }

    #[test]
    fn root_path_does_not_exist() {
        let bundle = Bundle::new(&with("/root/path", "nope".into()));
        let err = bundle.check().unwrap_err();
        assert!(matches!(err, LaunchError::RootUnresolvable { .. }), "{err}");
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn root_not_a_directory() {
        let bundle = Bundle::new(&with("/root/path", "file".into()));
        fs::write(bundle.0.join("file"), "").unwrap();
        let err = bundle.check().unwrap_err();
        assert!(matches!(err, LaunchError::RootNotDirectory { .. }), "{err}");
    }

    #[test]
    fn root_outside_bundle() {
        // Absolute path elsewhere.
        let bundle = Bundle::new(&with("/root/path", "/".into()));
        let err = bundle.check().unwrap_err();
        assert!(
            matches!(err, LaunchError::RootOutsideBundle { .. }),
            "{err}"
        );
        // Relative symlink leading out.
        let bundle = Bundle::new(&with("/root/path", "escape".into()));
        std::os::unix::fs::symlink("/tmp", bundle.0.join("escape")).unwrap();
        let err = bundle.check().unwrap_err();
        assert!(
            matches!(err, LaunchError::RootOutsideBundle { .. }),
            "{err}"
        );
        // The OCI verbs' policy takes a root elsewhere (podman's overlay mount).
        let bundle = Bundle::new(&with("/root/path", "/".into()));
        check_bundle(&bundle.0, &Policy::default()).unwrap();
        // Absolute path inside the bundle is fine.
        let bundle = Bundle::new(&minimal());
        let inside = bundle.0.join("rootfs").to_str().unwrap().to_owned();
        bundle.write_config(&with("/root/path", inside.into()).to_string());
        bundle.check().unwrap();
    }

    #[test]
    fn root_dot_dot() {
        let bundle = Bundle::new(&with("/root/path", "rootfs/../rootfs".into()));
        let err = bundle.check().unwrap_err();
        assert!(matches!(err, LaunchError::RootDotDot { .. }), "{err}");
    }

    #[test]
    fn process_missing() {
        let bundle = Bundle::new(&without("", "process"));
        assert!(matches!(
            bundle.check().unwrap_err(),
            LaunchError::ProcessMissing
        ));
    }

    #[test]
    fn args_empty_or_absent() {
        let bundle = Bundle::new(&with("/process/args", serde_json::json!([])));
        assert!(matches!(
            bundle.check().unwrap_err(),
            LaunchError::ArgsEmpty
        ));
        let bundle = Bundle::new(&without("/process", "args"));
        assert!(matches!(
            bundle.check().unwrap_err(),
            LaunchError::ArgsEmpty
        ));
    }

    #[test]
    fn cwd_relative_or_dot_dot() {
        for cwd in ["work", "/srv/../etc"] {
            let bundle = Bundle::new(&with("/process/cwd", cwd.into()));
            let err = bundle.check().unwrap_err();
            assert!(matches!(err, LaunchError::BadCwd { .. }), "{cwd}: {err}");
            assert!(err.to_string().contains(cwd), "{err}");
        }
    }

    #[test]
    fn mount_destination_relative_or_dot_dot() {
        for dest in ["proc", "/proc/../etc"] {
            let bundle = Bundle::new(&with("/mounts/0/destination", dest.into()));
            let err = bundle.check().unwrap_err();
            assert!(
                matches!(err, LaunchError::BadMountDestination { index: 0, .. }),
                "{err}"
            );
            assert!(err.to_string().contains(dest), "{err}");
        }
    }

    #[test]
    fn env_entry_malformed() {
        for (entry, reason) in [
            ("=x", "empty name"),
            ("NOEQ", "has no '='"),
            ("A\0B=c", "contains NUL"),
            ("A=b\0", "contains NUL"),
        ] {
            let bundle = Bundle::new(&with("/process/env/1", entry.into()));
            let err = bundle.check().unwrap_err();
            assert!(
                matches!(&err, LaunchError::BadEnv { index: 1, reason: r, .. } if *r == reason),
                "{entry:?}: {err}"
            );
        }
    }

    #[test]
    fn ids_out_of_range() {
        for (at, field) in [
            ("/process/user/uid", "uid"),
            ("/process/user/gid", "gid"),
            ("/process/user/additionalGids/0", "additionalGids"),
        ] {
            let bundle = Bundle::new(&with(at, u32::MAX.into()));
            let err = bundle.check().unwrap_err();
            assert!(
                matches!(err, LaunchError::IdOutOfRange { field: f, id: u32::MAX } if f == field),
                "{err}"
            );
        }
        let bundle = Bundle::new(&with("/process/user/uid", MAX_ID.into()));
        bundle.check().unwrap();
        // Beyond u32 the field cannot hold it: oci-spec refuses it while parsing.
        let bundle = Bundle::new(&with("/process/user/uid", (u64::from(u32::MAX) + 1).into()));
        assert!(matches!(
            bundle.check().unwrap_err(),
            LaunchError::ConfigMalformed { .. }
        ));
    }

    #[test]
    fn unknown_capability_names_set_and_name() {
        for set in CAPABILITY_SETS {
            let bundle = Bundle::new(&with(
                "/process/capabilities",
                serde_json::json!({ set: ["CAP_KILL", "CAP_FLY"] }),
            ));
            let err = bundle.check().unwrap_err();
            assert!(
                matches!(&err, LaunchError::UnknownCapability { set: s, name } if *s == set && name == "CAP_FLY"),
                "{err}"
            );
        }
        // Without the pre-check, oci-spec alone refuses the whole config at parse time.
        let config = with(
            "/process/capabilities",
            serde_json::json!({ "ambient": ["CAP_FLY"] }),
        );
        assert!(serde_json::from_value::<Spec>(config).is_err());
        // oci-spec itself accepts names without the prefix and in any case.
        let bundle = Bundle::new(&with(
            "/process/capabilities",
            serde_json::json!({ "ambient": ["kill"] }),
        ));
        bundle.check().unwrap();
    }

    #[test]
    fn require_nonroot_refuses_uid_0() {
        let bundle = Bundle::new(&with("/process/user/uid", 0.into()));
        bundle.check().unwrap();
        let err = check_bundle(
            &bundle.0,
            &Policy {
                require_nonroot: true,
                ..Policy::default()
            },
        )
        .unwrap_err();
        assert!(matches!(err, LaunchError::RunsAsRoot), "{err}");
        let bundle = Bundle::new(&minimal());
        check_bundle(
            &bundle.0,
            &Policy {
                require_nonroot: true,
                ..Policy::default()
            },
        )
        .unwrap();
    }

    fn with_namespaces(namespaces: serde_json::Value) -> serde_json::Value {
        let mut config = minimal();
        config["linux"] = serde_json::json!({ "namespaces": namespaces });
        config
    }

    #[test]
    fn namespace_paths_must_name_a_namespace_of_their_type() {
        let net = serde_json::json!([{ "type": "network", "path": "/proc/self/ns/net" }, { "type": "mount" }]);
        Bundle::new(&with_namespaces(net)).check().unwrap();
        let cases = [
            ("/proc/self/ns/ipc", "linux.namespaces (network).path /proc/self/ns/ipc: not a network namespace"),
            ("/proc/self/cmdline", "linux.namespaces (network).path /proc/self/cmdline: not a namespace"),
            ("/nonexistent/ns", "linux.namespaces (network).path /nonexistent/ns: No such file or directory (os error 2)"),
        ];
        for (path, message) in cases {
            let config = with_namespaces(serde_json::json!([{ "type": "network", "path": path }]));
            let err = Bundle::new(&config).check().unwrap_err();
            assert_eq!(err.to_string(), message);
        }
    }

    #[test]
    fn host_namespaces_other_than_the_network_are_refused() {
        for typ in ["ipc", "uts", "pid", "mount", "cgroup"] {
            let path = format!("/proc/self/ns/{}", if typ == "mount" { "mnt" } else { typ });
            let config = with_namespaces(serde_json::json!([{ "type": typ, "path": path }]));
            let err = Bundle::new(&config).check().unwrap_err();
            assert!(matches!(err, LaunchError::HostNamespace { .. }), "{typ}: {err}");
            assert!(err.to_string().starts_with(&format!("linux.namespaces ({typ}).path {path}: ")), "{err}");
        }
    }

    #[test]
    fn a_namespace_listed_twice_is_refused() {
        let config = with_namespaces(serde_json::json!([{ "type": "pid" }, { "type": "mount" }, { "type": "pid" }]));
        let err = Bundle::new(&config).check().unwrap_err();
        assert_eq!(err.to_string(), "linux.namespaces: the pid namespace is listed twice");
    }

    #[test]
    fn masked_paths_need_a_mount_namespace() {
        let mut config = with_namespaces(serde_json::json!([{ "type": "pid" }]));
        config["linux"]["maskedPaths"] = serde_json::json!(["/proc/kcore"]);
        let err = Bundle::new(&config).check().unwrap_err();
        assert!(matches!(err, LaunchError::MaskedWithoutMountNamespace), "{err}");
        config["linux"]["namespaces"] = serde_json::json!([{ "type": "pid" }, { "type": "mount" }]);
        Bundle::new(&config).check().unwrap();
        // Without restrictions a config with no mount namespace passes (the guest chroots).
        Bundle::new(&with_namespaces(serde_json::json!([{ "type": "pid" }]))).check().unwrap();
    }

    #[test]
    fn a_user_namespace_needs_both_maps_and_maps_need_one() {
        let user = serde_json::json!([{ "type": "user" }, { "type": "mount" }]);
        let map = serde_json::json!([{ "containerID": 0, "hostID": 100000, "size": 65536 }]);
        let mut config = with_namespaces(user);
        let err = Bundle::new(&config).check().unwrap_err();
        assert!(matches!(err, LaunchError::UserNamespaceUnmapped), "{err}");
        config["linux"]["uidMappings"] = map.clone();
        let err = Bundle::new(&config).check().unwrap_err();
        assert!(matches!(err, LaunchError::UserNamespaceUnmapped), "{err}");
        config["linux"]["gidMappings"] = map;
        Bundle::new(&config).check().unwrap();
        config["linux"]["namespaces"] = serde_json::json!([{ "type": "mount" }]);
        let err = Bundle::new(&config).check().unwrap_err();
        assert!(matches!(err, LaunchError::MappingsWithoutUserNamespace), "{err}");
    }

    #[test]
    fn selinux_labels_are_refused() {
        let mut config = minimal();
        config["process"]["selinuxLabel"] = "system_u:system_r:container_t:s0".into();
        let err = Bundle::new(&config).check().unwrap_err();
        assert_eq!(
            err.to_string(),
            "process.selinuxLabel \"system_u:system_r:container_t:s0\": SELinux labels cannot be applied: the guest kernel has no SELinux"
        );
        let mut config = minimal();
        config["linux"] = serde_json::json!({ "mountLabel": "system_u:object_r:container_file_t:s0" });
        let err = Bundle::new(&config).check().unwrap_err();
        assert!(err.to_string().starts_with("linux.mountLabel "), "{err}");
        config["linux"]["mountLabel"] = "".into();
        Bundle::new(&config).check().unwrap();
    }

    #[test]
    fn an_apparmor_profile_is_named_in_a_warning() {
        let mut config = minimal();
        let spec = |config: &serde_json::Value| Bundle::new(config).check().unwrap();
        assert_eq!(apparmor_warning(&spec(&config)), None);
        config["process"]["apparmorProfile"] = "unconfined".into();
        assert_eq!(apparmor_warning(&spec(&config)), None);
        config["process"]["apparmorProfile"] = "docker-default".into();
        let warning = apparmor_warning(&spec(&config)).unwrap();
        assert!(warning.starts_with("process.apparmorProfile \"docker-default\" is not applied"), "{warning}");
    }
}
