//! The typed messages: what the host asks ([`Request`]), what the agent answers ([`Response`]),
//! what the agent reports unasked ([`Event`]), and the one frame that opens a stdio connection
//! ([`StreamHello`]). [`Message`] wraps the four; the frame header's kind says which one a
//! payload holds, so a payload is the JSON of the inner type alone.
//!
//! Structs and struct variants deny unknown fields: both sides speak exactly the same protocol
//! version, so an unknown field is a bug worth an error, not something to skip.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use oci_spec::runtime::{LinuxResources, Process, Spec};
use serde::{Deserialize, Serialize};

use crate::{AGENT_STDERR_PORT, AGENT_STDIN_PORT, AGENT_STDOUT_PORT};

/// Anything that travels in a frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Request(Request),
    Response(Response),
    Event(Event),
    StreamHello(StreamHello),
}

impl From<Request> for Message {
    fn from(request: Request) -> Self {
        Message::Request(request)
    }
}

impl From<Response> for Message {
    fn from(response: Response) -> Self {
        Message::Response(response)
    }
}

impl From<Event> for Message {
    fn from(event: Event) -> Self {
        Message::Event(event)
    }
}

impl From<StreamHello> for Message {
    fn from(hello: StreamHello) -> Self {
        Message::StreamHello(hello)
    }
}

/// Host -> agent, on the control connection. Each request gets exactly one [`Response`], and
/// responses come back in the order the requests were sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum Request {
    /// The first request on a connection. Answered by [`Response::HelloAck`].
    Hello {
        protocol_version: u16,
        runtime_version: String,
    },
    /// Start the container process. Answered by [`Response::ProcessStarted`] or
    /// [`Response::Error`] (whose [`ErrorKind::exit_code`] is then the exit code to report).
    StartProcess(StartProcess),
    /// Build the container and its process as StartProcess does, but hold the process just
    /// before it execs (OCI `create`). Answered like StartProcess; the process's streams can be
    /// attached, and it can be signalled or waited for, before [`Request::StartCreated`].
    CreateProcess(StartProcess),
    /// Start another process in the container the first one runs in (OCI `exec`): it joins
    /// that process's namespaces and cgroup and gets the container's seccomp filter, with the
    /// identity, capabilities and rlimits of its own `process`. Answered like StartProcess.
    ExecProcess(ExecProcess),
    /// Change the container's cgroup limits (OCI `update`): the pids and memory limits of
    /// `resources` that are set are written; the rest is left alone. Answered by
    /// [`Response::Ok`].
    UpdateResources { resources: Box<LinuxResources> },
    /// Let the process that CreateProcess held exec (OCI `start`). Answered by
    /// [`Response::Ok`] once it has, or [`Response::Error`] when exec failed.
    StartCreated { pid: u32 },
    /// Send `signal` (a Linux signal number) to process `pid`. Answered by [`Response::Ok`].
    Signal { pid: u32, signal: i32 },
    /// Resize the terminal of process `pid`. Answered by [`Response::Ok`].
    ResizeTerminal { pid: u32, size: TerminalSize },
    /// Close the stdin of process `pid`, as EOF on the stdin stream would. Answered by
    /// [`Response::Ok`].
    CloseStdin { pid: u32 },
    /// Ask to be told when `pid` exits. Answered at once by [`Response::Ok`]; the
    /// [`Event::ProcessExited`] follows once the process has exited and its stdout and stderr
    /// have been written out (at once if that already happened).
    WaitProcess { pid: u32 },
    /// Power the VM off. Answered by [`Response::Ok`] just before the agent does so.
    Shutdown,
    /// The container's cgroup counters (OCI `events --stats`, containerd's Stats). Answered by
    /// [`Response::Stats`].
    Stats,
}

/// The container's cgroup v2 counters, as the guest kernel keeps them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CgroupStats {
    /// `cpu.stat`, key by key (usage_usec, user_usec, system_usec, nr_periods, ...).
    pub cpu: std::collections::BTreeMap<String, u64>,
    /// `memory.current`, in bytes.
    pub memory_current: u64,
    /// `memory.max`; `None` for "max".
    pub memory_max: Option<u64>,
    /// `memory.stat`, key by key (anon, file, ...).
    pub memory: std::collections::BTreeMap<String, u64>,
    /// `pids.current`.
    pub pids_current: u64,
    /// `pids.max`; `None` for "max".
    pub pids_max: Option<u64>,
}

/// The container to build and the process to run in it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartProcess {
    /// The OCI runtime config (`config.json`), checked by the host: `process` says what to run
    /// (`args[0]` is looked up in the `PATH` of `process.env` when it has no `/`), the rest how
    /// to confine it. `root.path` means nothing in the guest, whose root is the VM's first disk;
    /// `root.readonly` and everything else apply.
    pub spec: Box<Spec>,
    /// `Some` allocates a pseudo-terminal of that size: stdout then carries the terminal's
    /// output and there is no stderr stream. `None` gives separate stdout and stderr pipes.
    pub terminal: Option<TerminalSize>,
    /// Whether the host will attach a stdin stream; without one stdin is `/dev/null`.
    pub stdin: bool,
    /// Run the agent's reaping init as PID 1 of the container, with the process as its child,
    /// as `docker run --init` does with tini.
    pub init: bool,
    /// Small files to write into the guest before the container is built: the copied sources
    /// of the spec's bind mounts (podman's /etc/hosts and the like), which name them by path.
    #[serde(default)]
    pub files: Vec<GuestFile>,
}

/// A second process for a running container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecProcess {
    /// What to run and as whom (runc's `exec --process` file).
    pub process: Box<Process>,
    /// As in [`StartProcess::terminal`].
    pub terminal: Option<TerminalSize>,
    /// As in [`StartProcess::stdin`].
    pub stdin: bool,
}

/// A file the host copies into the guest, under [`GUEST_FILES_DIR`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestFile {
    pub path: String,
    pub contents: Vec<u8>,
}

/// Where the agent writes [`GuestFile`]s; a file elsewhere is refused.
pub const GUEST_FILES_DIR: &str = "/run/microvm-files";

/// Where the agent mounts the sandbox's shared directory (virtio-fs, when the kernel command
/// line has `microvm.shared`); each volume is a directory or file in it, named by its index.
pub const GUEST_SHARED_DIR: &str = "/run/microvm-shared";
/// The virtio-fs tag of the shared directory.
pub const SHARED_TAG: &str = "microvm-shared";
/// On the kernel command line when the VM has the shared directory.
pub const SHARED_PARAM: &str = "microvm.shared";
/// `microvm.rootfs=N` on the kernel command line: the rootfs is the shared directory's entry N
/// (shared over virtio-fs rather than packed on a disk).
pub const ROOTFS_PARAM: &str = "microvm.rootfs";
/// On the kernel command line when the container's root is served read-write by a virtio-fs
/// device of its own ([`ROOTFS_TAG`], its entry 0) and written in place, as runc writes an
/// OCI bundle's root, rather than being the lower layer of an overlay.
pub const ROOTFS_WRITABLE_PARAM: &str = "microvm.rootfs.writable";
/// The virtio-fs tag of the writable root's device.
pub const ROOTFS_TAG: &str = "microvm-rootfs";
/// Where the agent mounts the writable root's device.
pub const GUEST_ROOTFS_SHARED_DIR: &str = "/run/microvm-rootfs";

impl StartProcess {
    /// A process with no sandbox settings beyond the spec's defaults: `args` with `env`, in
    /// `/`, as root, without terminal or stdin.
    pub fn command(args: &[&str], env: &[&str]) -> Self {
        let mut process = Process::default();
        process.set_args(Some(args.iter().map(|a| (*a).to_owned()).collect()));
        process.set_env(Some(env.iter().map(|e| (*e).to_owned()).collect()));
        process.set_cwd("/".into());
        let mut spec = Spec::default();
        spec.set_process(Some(process));
        StartProcess {
            spec: Box::new(spec),
            terminal: None,
            stdin: false,
            init: false,
            files: Vec::new(),
        }
    }

    /// The spec's process; a default one if the spec has none (the host refuses such specs).
    pub fn process(&self) -> std::borrow::Cow<'_, Process> {
        match self.spec.process() {
            Some(process) => std::borrow::Cow::Borrowed(process),
            None => std::borrow::Cow::Owned(Process::default()),
        }
    }
}

/// A terminal's size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TerminalSize {
    pub rows: u16,
    pub cols: u16,
}

/// Agent -> host, on the control connection: the answer to one [`Request`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum Response {
    HelloAck {
        agent_version: String,
        protocol_version: u16,
    },
    /// The process runs as `pid` in the guest; stdio streams name it as their `process_id`.
    ProcessStarted {
        pid: u32,
        /// How long the agent took to build the container (namespaces, mounts, cgroups,
        /// capabilities, seccomp) before starting the process; 0 without a sandbox.
        setup_micros: u64,
    },
    /// The request was carried out.
    Ok,
    /// The answer to [`Request::Stats`].
    Stats(CgroupStats),
    Error {
        kind: ErrorKind,
        message: String,
    },
}

/// Agent -> host, on the control connection, not an answer to any request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum Event {
    /// Sent once per [`Request::WaitProcess`], after the process has exited and its output has
    /// been written out.
    ProcessExited { pid: u32, status: ExitStatusWire },
    /// A [`GuestFile`] the container changed, sent just before the container's first process's
    /// [`Event::ProcessExited`] (never for an exec'd one), so that the host can write the
    /// change back to the file it copied. `contents` is `None` when the file grew past
    /// [`MAX_FILE_BACK`]. One event per file keeps each under the frame limit.
    FileChanged { path: String, contents: Option<Vec<u8>> },
}

/// The largest changed [`GuestFile`] carried back: its JSON (up to four bytes a byte) must fit
/// a frame.
pub const MAX_FILE_BACK: usize = 192 * 1024;

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The executable does not exist (`ENOENT` from `execve`).
    NotFound,
    /// The executable exists but cannot be run (`EACCES`, `ENOEXEC`).
    NotExecutable,
    /// No process with that `pid` was started by this agent.
    NoSuchProcess,
    /// The request makes no sense in the agent's state (a second `StartProcess`, a bad `cwd`).
    InvalidRequest,
    Other,
}

/// `ENOEXEC` from include/uapi/asm-generic/errno-base.h.
const ENOEXEC: i32 = 8;

impl ErrorKind {
    /// The exit code `microvm run` reports when starting the process failed this way, as a
    /// shell does: 127 for a missing command, 126 for one that cannot run, 1 otherwise.
    pub fn exit_code(self) -> i32 {
        match self {
            ErrorKind::NotFound => 127,
            ErrorKind::NotExecutable => 126,
            ErrorKind::NoSuchProcess | ErrorKind::InvalidRequest | ErrorKind::Other => 1,
        }
    }

    /// Classifies the error of a failed `execve`.
    pub fn from_exec_error(error: &std::io::Error) -> Self {
        match error.kind() {
            std::io::ErrorKind::NotFound => ErrorKind::NotFound,
            std::io::ErrorKind::PermissionDenied => ErrorKind::NotExecutable,
            _ if error.raw_os_error() == Some(ENOEXEC) => ErrorKind::NotExecutable,
            _ => ErrorKind::Other,
        }
    }
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitStatusWire {
    /// It called `exit(code)`.
    Exited(u8),
    /// Signal number `signo` killed it.
    Signaled(i32),
}

impl ExitStatusWire {
    /// The code a shell would report: `code`, or 128 + `signo`.
    pub fn shell_code(self) -> i32 {
        match self {
            ExitStatusWire::Exited(code) => i32::from(code),
            ExitStatusWire::Signaled(signo) => signo.saturating_add(128),
        }
    }

    /// Reads a raw `waitpid` status; `None` for a stopped or continued child, which has not
    /// ended.
    pub fn from_wait_status(raw: i32) -> Option<Self> {
        let status = ExitStatus::from_raw(raw);
        if let Some(code) = status.code() {
            return u8::try_from(code).ok().map(ExitStatusWire::Exited);
        }
        status.signal().map(ExitStatusWire::Signaled)
    }
}

/// The first and only frame on a stdio connection; raw bytes follow it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamHello {
    pub stream: Stream,
    /// The `pid` from [`Response::ProcessStarted`].
    pub process_id: u32,
}

/// One of a process's standard streams, each on its own vsock connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stream {
    Stdin,
    Stdout,
    Stderr,
}

impl Stream {
    /// The agent's vsock port for this stream.
    pub fn port(self) -> u32 {
        match self {
            Stream::Stdin => AGENT_STDIN_PORT,
            Stream::Stdout => AGENT_STDOUT_PORT,
            Stream::Stderr => AGENT_STDERR_PORT,
        }
    }

    /// The stream whose port is `port`, if any.
    pub fn from_port(port: u32) -> Option<Self> {
        [Stream::Stdin, Stream::Stdout, Stream::Stderr]
            .into_iter()
            .find(|s| s.port() == port)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use crate::decoder::FrameDecoder;
    use crate::frame::encode_frame;
    use crate::test_util::samples;

    #[test]
    fn every_message_round_trips_through_a_frame() {
        for message in samples() {
            let bytes = encode_frame(&message).expect("encode");
            let mut decoder = FrameDecoder::new();
            decoder.feed(&bytes);
            assert_eq!(decoder.next_message().expect("decode"), Some(message));
            assert_eq!(decoder.buffered_len(), 0);
        }
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let json = r#"{"Signal":{"pid":1,"signal":9,"extra":0}}"#;
        assert!(serde_json::from_str::<Request>(json).is_err());
        let json = r#"{"rows":1,"cols":2,"depth":3}"#;
        assert!(serde_json::from_str::<TerminalSize>(json).is_err());
    }

    #[test]
    fn shell_codes_follow_the_shell() {
        assert_eq!(ExitStatusWire::Exited(0).shell_code(), 0);
        assert_eq!(ExitStatusWire::Exited(255).shell_code(), 255);
        assert_eq!(ExitStatusWire::Signaled(9).shell_code(), 137);
        assert_eq!(ExitStatusWire::Signaled(i32::MAX).shell_code(), i32::MAX);
    }

    #[test]
    fn wait_statuses_decode() {
        // Layouts from include/uapi/linux/wait.h users: exit code in bits 8..16, signal in 0..7.
        assert_eq!(
            ExitStatusWire::from_wait_status(3 << 8),
            Some(ExitStatusWire::Exited(3))
        );
        assert_eq!(
            ExitStatusWire::from_wait_status(9),
            Some(ExitStatusWire::Signaled(9))
        );
        assert_eq!(
            ExitStatusWire::from_wait_status(0x80 | 11),
            Some(ExitStatusWire::Signaled(11))
        );
        assert_eq!(
            ExitStatusWire::from_wait_status((19 << 8) | 0x7f),
            None,
            "stopped"
        );
        assert_eq!(ExitStatusWire::from_wait_status(0xffff), None, "continued");
    }

    #[test]
    fn exec_errors_map_to_exit_codes() {
        let code = |e: std::io::Error| ErrorKind::from_exec_error(&e).exit_code();
        assert_eq!(code(std::io::Error::from_raw_os_error(2)), 127, "ENOENT");
        assert_eq!(code(std::io::Error::from_raw_os_error(13)), 126, "EACCES");
        assert_eq!(code(std::io::Error::from_raw_os_error(ENOEXEC)), 126);
        assert_eq!(code(std::io::Error::from_raw_os_error(12)), 1, "ENOMEM");
    }

    #[test]
    fn stream_ports_are_distinct_and_invert() {
        for stream in [Stream::Stdin, Stream::Stdout, Stream::Stderr] {
            assert_eq!(Stream::from_port(stream.port()), Some(stream));
        }
        assert_eq!(Stream::from_port(crate::AGENT_CONTROL_PORT), None);
    }
}
