//! Helpers shared by the unit tests: one sample of every message, hand-made headers, and a
//! tiny PRNG for fuzz-ish tests without a dev-dependency.

use crate::frame::MAGIC;
use crate::messages::{
    CgroupStats, ErrorKind, Event, ExitStatusWire, Message, Request, Response, StartProcess, Stream,
    StreamHello, TerminalSize,
};

/// One of every message variant.
pub(crate) fn samples() -> Vec<Message> {
    let mut start = StartProcess::command(
        &["/bin/sh", "-c", "echo ü"],
        &["PATH=/usr/bin:/bin", "TERM=xterm"],
    );
    start.terminal = Some(TerminalSize { rows: 24, cols: 80 });
    start.stdin = true;
    start.init = true;
    let size = TerminalSize {
        rows: 50,
        cols: 132,
    };
    vec![
        Request::Hello {
            protocol_version: 1,
            runtime_version: "0.1.0".into(),
        }
        .into(),
        Request::StartProcess(start.clone()).into(),
        Request::CreateProcess(start.clone()).into(),
        Request::StartCreated { pid: 7 }.into(),
        Request::StartProcess(StartProcess {
            terminal: None,
            stdin: false,
            ..start
        })
        .into(),
        Request::Signal { pid: 7, signal: 15 }.into(),
        Request::ResizeTerminal { pid: 7, size }.into(),
        Request::CloseStdin { pid: 7 }.into(),
        Request::WaitProcess { pid: 7 }.into(),
        Request::Shutdown.into(),
        Request::Stats.into(),
        Response::Stats(CgroupStats {
            cpu: [("usage_usec".to_owned(), 10)].into(),
            memory_current: 4096,
            memory_max: Some(1 << 20),
            memory: [("anon".to_owned(), 1024)].into(),
            pids_current: 1,
            pids_max: None,
        })
        .into(),
        Event::FileChanged { path: "/run/microvm-files/0".into(), contents: Some(b"x\n".to_vec()) }.into(),
        Event::FileChanged { path: "/run/microvm-files/1".into(), contents: None }.into(),
        Response::HelloAck {
            agent_version: "0.1.0".into(),
            protocol_version: 1,
        }
        .into(),
        Response::ProcessStarted {
            pid: 7,
            setup_micros: 1234,
        }
        .into(),
        Response::Ok.into(),
        Response::Error {
            kind: ErrorKind::NotFound,
            message: "no such file".into(),
        }
        .into(),
        Event::ProcessExited {
            pid: 7,
            status: ExitStatusWire::Exited(3),
        }
        .into(),
        Event::ProcessExited {
            pid: 7,
            status: ExitStatusWire::Signaled(9),
        }
        .into(),
        StreamHello {
            stream: Stream::Stdin,
            process_id: 7,
        }
        .into(),
        StreamHello {
            stream: Stream::Stdout,
            process_id: 7,
        }
        .into(),
        StreamHello {
            stream: Stream::Stderr,
            process_id: 7,
        }
        .into(),
    ]
}

/// xorshift64: deterministic noise without a dev-dependency.
pub(crate) struct XorShift(pub u64);

impl XorShift {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Up to `max_len - 1` random bytes.
    pub(crate) fn noise(&mut self, max_len: u64) -> Vec<u8> {
        let len = self.next() % max_len;
        (0..len).map(|_| self.next() as u8).collect()
    }
}

pub(crate) fn header(version: u16, kind: u16, len: u32) -> Vec<u8> {
    let mut bytes = MAGIC.to_vec();
    bytes.extend_from_slice(&version.to_le_bytes());
    bytes.extend_from_slice(&kind.to_le_bytes());
    bytes.extend_from_slice(&len.to_le_bytes());
    bytes
}
