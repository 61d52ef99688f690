//! How the OCI verbs talk to a container's VMM process: one JSON request and one JSON answer,
//! each a line, per connection to `<root>/<id>/monitor.sock`. Only the runtime's own verbs
//! connect; the socket is root's (mode 0600 inside a 0700 directory).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A verb gives up on a VMM process that does not answer within this long.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest line either side reads.
const MAX_LINE: u64 = 64 * 1024;

/// The container's status as `state` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Created,
    Running,
    Paused,
    Stopped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum ControlRequest {
    Status,
    /// Let the created process exec.
    Start,
    /// Send `signal` to the container's process (`all`: to every process in it).
    Kill { signal: i32, all: bool },
    /// Park the VM's vCPUs.
    Pause,
    Resume,
    /// New cgroup limits for the container (in the guest).
    Update { resources: Box<oci_spec::runtime::LinuxResources> },
    /// The guest-state report (vCPU registers, the console's end), for a silent guest:
    /// `echo '"debug"' | socat - UNIX-CONNECT:<root>/<id>/monitor.sock`.
    Debug,
    /// The container cgroup's counters, from the agent.
    Stats,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum ControlAnswer {
    Status(Status),
    Ok,
    Error(String),
    /// The answer to [`ControlRequest::Debug`].
    Report(String),
    /// The answer to [`ControlRequest::Stats`].
    Stats(protocol::CgroupStats),
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Nothing listens: the VMM process is gone (or not yet there).
    #[error("container not running")]
    NotRunning,
    #[error("container's VMM process: {0}")]
    Io(#[from] std::io::Error),
    #[error("container's VMM process: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{0}")]
    Refused(String),
}

/// A unix socket's address holds at most 107 bytes, and `<root>/<64-character id>/...` can
/// be longer: sockets are bound and reached by name from their directory, which becomes the
/// process's working directory (the verbs are one-shot; the VMM process lives in it).
pub fn enter_dir_of(socket: &Path) -> std::io::Result<&Path> {
    if let Some(dir) = socket.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::env::set_current_dir(dir)?;
    }
    Ok(socket.file_name().map_or(socket, Path::new))
}

/// Sends `request` to the VMM process behind `socket` and returns its answer.
pub fn call(socket: &Path, request: &ControlRequest) -> Result<ControlAnswer, ControlError> {
    let stream = match UnixStream::connect(enter_dir_of(socket)?) {
        Ok(stream) => stream,
        Err(e) if matches!(
            e.kind(),
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
        ) => return Err(ControlError::NotRunning),
        Err(e) => return Err(e.into()),
    };
    stream.set_read_timeout(Some(ANSWER_TIMEOUT))?;
    send_line(&stream, request)?;
    match read_line(&stream)? {
        Some(ControlAnswer::Error(message)) => Err(ControlError::Refused(message)),
        Some(answer) => Ok(answer),
        None => Err(ControlError::NotRunning),
    }
}

pub fn send_line<T: Serialize>(mut stream: &UnixStream, message: &T) -> Result<(), ControlError> {
    let mut line = serde_json::to_vec(message)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    Ok(())
}

/// The next line as a `T`; `None` at the end of the stream.
pub fn read_line<T: for<'de> Deserialize<'de>>(stream: &UnixStream) -> Result<Option<T>, ControlError> {
    let mut line = Vec::new();
    BufReader::new(stream).take(MAX_LINE).read_until(b'\n', &mut line)?;
    if line.is_empty() {
        return Ok(None);
    }
    Ok(Some(serde_json::from_slice(&line)?))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn one_request_one_answer_and_nothing_listening_is_not_running() {
        let dir = std::env::temp_dir().join(format!("microvm-control-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("s");
        assert!(matches!(call(&socket, &ControlRequest::Status), Err(ControlError::NotRunning)));
        let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let server = std::thread::spawn(move || {
            for answer in [ControlAnswer::Status(Status::Created), ControlAnswer::Error("no".into())] {
                let (conn, _) = listener.accept().unwrap();
                let request: ControlRequest = read_line(&conn).unwrap().unwrap();
                assert!(matches!(request, ControlRequest::Status | ControlRequest::Kill { signal: 9, all: false }));
                send_line(&conn, &answer).unwrap();
            }
        });
        assert_eq!(call(&socket, &ControlRequest::Status).unwrap(), ControlAnswer::Status(Status::Created));
        let refused = call(&socket, &ControlRequest::Kill { signal: 9, all: false }).unwrap_err();
        assert_eq!(refused.to_string(), "no");
        server.join().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_debug_request_is_a_plain_word_and_its_report_a_string() {
        assert_eq!(serde_json::to_string(&ControlRequest::Debug).unwrap(), r#""debug""#);
        let report = ControlAnswer::Report("vCPU 0: rip=0x1\n".into());
        assert_eq!(serde_json::to_string(&report).unwrap(), r#"{"report":"vCPU 0: rip=0x1\n"}"#);
    }
}
