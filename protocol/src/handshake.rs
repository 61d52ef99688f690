//! The handshake that opens the control connection: the host sends [`Request::Hello`], the
//! agent answers [`Response::HelloAck`]. Both sides must speak the same [`PROTOCOL_VERSION`].
//!
//! A mismatch is caught by whichever side first reads a frame of the other version (every
//! frame header carries it); the agent still answers a mismatched hello with an error frame of
//! its own version, so the host learns the agent's version instead of seeing a bare close.

use std::io::{Read, Write};

use crate::frame::FrameError;
use crate::io::{read_frame, write_frame, TransportError};
use crate::messages::{ErrorKind, Message, Request, Response};
use crate::PROTOCOL_VERSION;

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("handshake: {0}")]
    Transport(#[source] TransportError),
    #[error("protocol version mismatch: this side speaks version {local}, the peer {peer}")]
    VersionMismatch { local: u16, peer: u16 },
    #[error("peer closed the connection during the handshake")]
    Closed,
    #[error("handshake expected {expected}, got {got:?}")]
    Unexpected {
        expected: &'static str,
        got: Box<Message>,
    },
    #[error("agent refused the handshake ({kind:?}): {message}")]
    Refused { kind: ErrorKind, message: String },
}

impl From<TransportError> for HandshakeError {
    fn from(error: TransportError) -> Self {
        match error {
            TransportError::Frame(FrameError::VersionMismatch { found, expected }) => {
                HandshakeError::VersionMismatch {
                    local: expected,
                    peer: found,
                }
            }
            other => HandshakeError::Transport(other),
        }
    }
}

/// What the host learns from a successful handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentInfo {
    pub agent_version: String,
}

/// Host side: says hello and checks the agent's answer.
pub fn host_handshake<S: Read + Write + ?Sized>(
    conn: &mut S,
    runtime_version: &str,
) -> Result<AgentInfo, HandshakeError> {
    let hello = Request::Hello {
        protocol_version: PROTOCOL_VERSION,
        runtime_version: runtime_version.to_owned(),
    };
    write_frame(conn, &hello.into())?;
    match read_frame(conn)?.ok_or(HandshakeError::Closed)? {
        Message::Response(Response::HelloAck {
            agent_version,
            protocol_version,
        }) => {
            if protocol_version != PROTOCOL_VERSION {
                return Err(HandshakeError::VersionMismatch {
                    local: PROTOCOL_VERSION,
                    peer: protocol_version,
                });
            }
            Ok(AgentInfo { agent_version })
        }
        Message::Response(Response::Error { kind, message }) => {
            Err(HandshakeError::Refused { kind, message })
        }
        other => Err(HandshakeError::Unexpected {
            expected: "HelloAck",
            got: Box::new(other),
        }),
    }
}

/// Agent side: waits for the host's hello and acknowledges it; returns the runtime's version.
/// On a version mismatch it answers with an error before returning one.
pub fn agent_handshake<S: Read + Write + ?Sized>(
    conn: &mut S,
    agent_version: &str,
) -> Result<String, HandshakeError> {
    let (protocol_version, runtime_version) = match read_frame(conn) {
        Ok(Some(Message::Request(Request::Hello {
            protocol_version,
            runtime_version,
        }))) => (protocol_version, runtime_version),
        Ok(Some(other)) => {
            return Err(HandshakeError::Unexpected {
                expected: "Hello",
                got: Box::new(other),
            })
        }
        Ok(None) => return Err(HandshakeError::Closed),
        Err(error) => {
            let error = HandshakeError::from(error);
            if let HandshakeError::VersionMismatch { peer, .. } = error {
                refuse(conn, peer);
            }
            return Err(error);
        }
    };
    if protocol_version != PROTOCOL_VERSION {
        let mismatch = HandshakeError::VersionMismatch {
            local: PROTOCOL_VERSION,
            peer: protocol_version,
        };
        refuse(conn, protocol_version);
        return Err(mismatch);
    }
    let ack = Response::HelloAck {
        agent_version: agent_version.to_owned(),
        protocol_version: PROTOCOL_VERSION,
    };
    write_frame(conn, &ack.into())?;
    Ok(runtime_version)
}

/// Tells a host that spoke `host_version` why the agent hangs up. Best effort: the connection
/// is dropped either way, and the caller reports the mismatch itself.
fn refuse<S: Write + ?Sized>(conn: &mut S, host_version: u16) {
    let message = format!(
        "agent speaks protocol version {PROTOCOL_VERSION}, host sent version {host_version}"
    );
    let refusal = Response::Error {
        kind: ErrorKind::InvalidRequest,
        message,
    };
    let _ignored = write_frame(conn, &refusal.into());
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use std::io::{self, Cursor};
    use std::os::unix::net::UnixStream;

    use super::*;
    use crate::frame::{encode_frame, FrameKind};
    use crate::test_util::header;

    /// Reads from `input`, records what is written.
    struct Duplex {
        input: Cursor<Vec<u8>>,
        output: Vec<u8>,
    }

    impl Duplex {
        fn replying(frames: &[Message]) -> Self {
            let input = frames
                .iter()
                .flat_map(|m| encode_frame(m).expect("encode"))
                .collect();
            Duplex {
                input: Cursor::new(input),
                output: Vec::new(),
            }
        }

        fn written(&self) -> Vec<Message> {
            let mut output = &self.output[..];
            std::iter::from_fn(|| read_frame(&mut output).expect("own frames")).collect()
        }
    }

    impl Read for Duplex {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.input.read(buf)
        }
    }

    impl Write for Duplex {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.output.write(buf)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn hello(protocol_version: u16) -> Message {
        Request::Hello {
            protocol_version,
            runtime_version: "host 1".into(),
        }
        .into()
    }

    fn ack(protocol_version: u16) -> Message {
        Response::HelloAck {
            agent_version: "agent 2".into(),
            protocol_version,
        }
        .into()
    }

    #[test]
    fn handshake_over_a_socket_pair() {
        let (mut host, mut agent) = UnixStream::pair().expect("socketpair");
        let agent = std::thread::spawn(move || agent_handshake(&mut agent, "agent 2"));
        let info = host_handshake(&mut host, "host 1").expect("host side");
        assert_eq!(
            info,
            AgentInfo {
                agent_version: "agent 2".into()
            }
        );
        assert_eq!(
            agent.join().expect("agent thread").expect("agent side"),
            "host 1"
        );
    }

    #[test]
    fn host_reports_an_agent_of_another_version() {
        // The agent's frame header carries its version; the host never decodes the payload.
        let mut reply = encode_frame(&ack(PROTOCOL_VERSION + 1)).expect("encode");
        reply[4..6].copy_from_slice(&(PROTOCOL_VERSION + 1).to_le_bytes());
        let mut conn = Duplex {
            input: Cursor::new(reply),
            output: Vec::new(),
        };
        let error = host_handshake(&mut conn, "host 1").expect_err("mismatch accepted");
        assert!(
            matches!(error, HandshakeError::VersionMismatch { local: PROTOCOL_VERSION, peer }
                if peer == PROTOCOL_VERSION + 1),
            "{error}"
        );
        assert_eq!(conn.written(), vec![hello(PROTOCOL_VERSION)]);

        // Same header version but a different version in the acknowledgement itself.
        let mut conn = Duplex::replying(&[ack(PROTOCOL_VERSION + 1)]);
        let error = host_handshake(&mut conn, "host 1").expect_err("mismatch accepted");
        assert!(
            matches!(error, HandshakeError::VersionMismatch { .. }),
            "{error}"
        );
    }

    #[test]
    fn agent_refuses_a_host_of_another_version() {
        let mut input = header(PROTOCOL_VERSION + 1, FrameKind::Request as u16, 2);
        input.extend_from_slice(b"{}");
        let mut conn = Duplex {
            input: Cursor::new(input),
            output: Vec::new(),
        };
        let error = agent_handshake(&mut conn, "agent 2").expect_err("mismatch accepted");
        assert!(
            matches!(error, HandshakeError::VersionMismatch { .. }),
            "{error}"
        );
        let refusal = conn.written();
        assert!(
            matches!(&refusal[..], [Message::Response(Response::Error { message, .. })]
                if message.contains("protocol version")),
            "{refusal:?}"
        );

        let mut conn = Duplex::replying(&[hello(PROTOCOL_VERSION + 1)]);
        let error = agent_handshake(&mut conn, "agent 2").expect_err("mismatch accepted");
        assert!(
            matches!(error, HandshakeError::VersionMismatch { .. }),
            "{error}"
        );
        assert!(matches!(
            &conn.written()[..],
            [Message::Response(Response::Error { .. })]
        ));
    }

    #[test]
    fn out_of_order_and_closed_handshakes_fail() {
        let mut conn = Duplex::replying(&[Request::Shutdown.into()]);
        let error = agent_handshake(&mut conn, "agent 2").expect_err("no hello");
        assert!(
            matches!(
                error,
                HandshakeError::Unexpected {
                    expected: "Hello",
                    ..
                }
            ),
            "{error}"
        );

        let mut conn = Duplex::replying(&[]);
        assert!(matches!(
            agent_handshake(&mut conn, "a"),
            Err(HandshakeError::Closed)
        ));
        assert!(matches!(
            host_handshake(&mut conn, "h"),
            Err(HandshakeError::Closed)
        ));

        let refusal = Response::Error {
            kind: ErrorKind::Other,
            message: "busy".into(),
        };
        let mut conn = Duplex::replying(&[refusal.into()]);
        let error = host_handshake(&mut conn, "host 1").expect_err("refused");
        assert_eq!(
            error.to_string(),
            "agent refused the handshake (Other): busy"
        );
    }
}
