//! The wire protocol between the host runtime (`microvm`) and the guest agent (PID 1 in the
//! VM), spoken over virtio-vsock. Both sides link this crate, so they share one definition.
//!
//! # Connections
//! The agent listens on well-known vsock ports and the host connects to them (through the
//! VMM's hybrid-vsock Unix socket):
//! - [`AGENT_CONTROL_PORT`] carries framed control messages: requests, their responses, and
//!   events.
//! - [`AGENT_STDIN_PORT`], [`AGENT_STDOUT_PORT`] and [`AGENT_STDERR_PORT`] each carry one
//!   standard stream of one process. Such a connection opens with a single [`StreamHello`]
//!   frame naming the stream and the process; after it the connection is raw bytes in one
//!   direction until EOF. Keeping stdio off the control connection means bulk output can never
//!   hold up a signal, a resize or an exit status, and stdio needs no framing or escaping.
//!   The agent drops a stream connection whose hello names an unknown process or whose stream
//!   does not match the port ([`Stream::from_port`]).
//!
//! # A `microvm run`
//! 1. Host connects to the control port; [`host_handshake`] / [`agent_handshake`] exchange
//!    `Hello` and `HelloAck` and fail with [`HandshakeError::VersionMismatch`] unless both
//!    speak [`PROTOCOL_VERSION`].
//! 2. Host sends [`Request::StartProcess`]; the agent answers [`Response::ProcessStarted`] with
//!    the pid, or [`Response::Error`] whose [`ErrorKind::exit_code`] (127, 126, 1) is what
//!    `run` exits with.
//! 3. Host connects stdout, stderr (not with a terminal) and stdin (if it asked for it), each
//!    opening with a `StreamHello`. Until a stream is attached the process's writes wait in
//!    its pipe, so no early output is lost.
//! 4. Host sends [`Request::WaitProcess`], then relays signals ([`Request::Signal`]), window
//!    sizes ([`Request::ResizeTerminal`]) and stdin; stdin ends by half-closing the stdin
//!    connection or with [`Request::CloseStdin`].
//! 5. The agent sends [`Event::ProcessExited`] after the process exited and its stdout and
//!    stderr reached EOF and were written out. The host exits with
//!    [`ExitStatusWire::shell_code`] once it has that event and EOF on its output streams.
//! 6. Host sends [`Request::Shutdown`]; the agent answers `Ok` and powers the VM off.
//!
//! # An OCI `create`, then `start`
//! As above, but step 2 is [`Request::CreateProcess`]: the container is built and its process
//! waits just before exec. The host attaches the streams and sends `WaitProcess` at once (so a
//! `kill` before `start` is reported like any exit); [`Request::StartCreated`] lets it exec.
//!
//! Each request gets exactly one response, in request order; events may arrive between
//! responses, and the frame kind tells them apart.
//!
//! # Frames
//! A 12-byte header (magic, version, kind, payload length; little-endian, see [`frame`]) and a
//! payload of at most [`MAX_PAYLOAD_LEN`], checked before any allocation. Use [`write_frame`]
//! and [`read_frame`] on blocking connections, [`FrameDecoder`] in event loops. Decoding
//! returns errors and never panics, whatever the bytes.
//!
//! # Why JSON payloads
//! Payloads are `serde_json`. Control messages are few and small (a handful per container),
//! so compactness buys nothing, while JSON can be read in a hex dump or a test failure, keeps
//! field names on the wire (a reordered struct cannot silently shift meaning the way it would
//! in `postcard` or `bincode`), and is a dependency the runtime needs anyway to parse OCI
//! `config.json`. For the statically linked agent it adds `serde_json` and its three small
//! pure-Rust dependencies (itoa, memchr, zmij), no C and no build script. The binary header,
//! not the payload, does the work that must be exact: framing, size limits and versioning.

pub mod decoder;
pub mod frame;
pub mod handshake;
pub mod io;
pub mod messages;
#[cfg(test)]
mod test_util;

pub use decoder::FrameDecoder;
pub use frame::{
    encode_frame, FrameError, FrameHeader, FrameKind, HEADER_LEN, MAGIC, MAX_PAYLOAD_LEN,
};
pub use handshake::{agent_handshake, host_handshake, AgentInfo, HandshakeError};
pub use io::{read_frame, write_frame, TransportError};
pub use messages::{
    CgroupStats, ErrorKind, Event, ExecProcess, ExitStatusWire, GuestFile, Message, Request, Response, StartProcess,
    Stream, StreamHello, TerminalSize, GUEST_FILES_DIR, MAX_FILE_BACK, GUEST_SHARED_DIR, ROOTFS_PARAM, ROOTFS_TAG, ROOTFS_WRITABLE_PARAM, GUEST_ROOTFS_SHARED_DIR, SHARED_PARAM, SHARED_TAG,
};

/// The version both sides must speak; bump it on any change to frames or messages.
pub const PROTOCOL_VERSION: u16 = 4;

/// Vsock port of the control connection.
pub const AGENT_CONTROL_PORT: u32 = 1024;
/// Vsock port for a process's stdin (host writes).
pub const AGENT_STDIN_PORT: u32 = 1025;
/// Vsock port for a process's stdout, or its terminal output (agent writes).
pub const AGENT_STDOUT_PORT: u32 = 1026;
/// Vsock port for a process's stderr (agent writes).
pub const AGENT_STDERR_PORT: u32 = 1027;
