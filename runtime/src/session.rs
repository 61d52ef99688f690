//! The host's side of one agent: the control connection (requests, responses, the exit event)
//! and the process's stdio streams, each a vsock connection through the VMM's socket. Used by
//! `microvm run` and by the OCI runtime's VMM process.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use protocol::{Event, ExitStatusWire, Message, Request, Response, Stream, StreamHello};

/// How long the agent may take to answer on vsock after the VM starts.
const AGENT_TIMEOUT: Duration = Duration::from_secs(120);

/// How long the guest may take to accept or refuse one vsock connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Receives the VMM's report once the VM has stopped (see [`crate::vm::RunningVm::done`]).
pub type VmDone = mpsc::Receiver<Result<vmm::RunReport, vmm::VmmError>>;

/// How long an agent error waits for the VM's report: the VMM closes the guest's connections
/// as it records the stop, so the report is there or about to be.
const STOP_REPORT_WAIT: Duration = Duration::from_secs(2);

/// `error`, from the agent's connection, told as the VM's stop when the VM has stopped: the
/// guest's end (a panic, a triple fault) is what the user needs, not the closed connection.
pub fn explain_by_vm_stop(error: anyhow::Error, vm_done: &VmDone) -> anyhow::Error {
    match vm_done.recv_timeout(STOP_REPORT_WAIT) {
        Ok(Ok(report)) => anyhow!("the VM stopped while its container ran: {}", report.exit),
        Ok(Err(e)) => anyhow!("the VM failed while its container ran: {e}"),
        Err(_) => error,
    }
}

/// Where the process's stdio goes on the host.
pub struct HostStdio {
    /// Its stdout, or its terminal's output.
    pub stdout: Box<dyn Write + Send>,
    /// Its stderr; `None` with a terminal (which has none).
    pub stderr: Option<Box<dyn Write + Send>>,
    /// What it reads, when it was started with stdin.
    pub stdin: Option<Box<dyn Read + Send>>,
}

/// Sends requests on a [`Session`]'s connection from another thread.
#[derive(Clone)]
pub struct Sender(Arc<Mutex<UnixStream>>);

impl Sender {
    /// Sends `request`; its response is skipped by [`Session::wait_exit`]. Errors mean the
    /// agent is gone, which the session's reader sees too.
    pub fn send(&self, request: Request) {
        if let Ok(mut w) = self.0.lock() {
            let _ = protocol::write_frame(&mut *w, &Message::Request(request));
        }
    }
}

/// The control connection to the agent. Requests go out through a shared writer (the signal
/// thread sends too); responses and events come back in order on the reader.
pub struct Session {
    reader: UnixStream,
    writer: Arc<Mutex<UnixStream>>,
    /// Copied files the container changed, as the agent reported them before its exit.
    changed_files: Vec<(String, Option<Vec<u8>>)>,
}

impl Session {
    /// Connects to the agent's control port, retrying while the guest boots, and shakes hands.
    pub fn connect(uds: &Path, vm_done: &VmDone) -> anyhow::Result<Self> {
        let deadline = Instant::now() + AGENT_TIMEOUT;
        let stream = loop {
            match vm_done.try_recv() {
                Ok(Ok(report)) => {
                    bail!("the VM stopped before its agent answered: {}", report.exit)
                }
                Ok(Err(e)) => bail!("the VM failed before its agent answered: {e}"),
                Err(_) => {}
            }
            match vsock_connect(uds, protocol::AGENT_CONTROL_PORT) {
                Ok(s) => break s,
                Err(e) if Instant::now() > deadline => {
                    bail!("agent did not answer within {AGENT_TIMEOUT:?}: {e}")
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        Self::handshake(stream)
    }

    /// Connects to the agent of a VM that is up (`microvm exec`: a second control connection
    /// beside the VMM process's), and shakes hands.
    pub fn attach(uds: &Path) -> anyhow::Result<Self> {
        let stream = vsock_connect(uds, protocol::AGENT_CONTROL_PORT)
            .with_context(|| format!("connect to the agent through {}", uds.display()))?;
        Self::handshake(stream)
    }

    /// Shakes hands within [`AGENT_TIMEOUT`] (an agent that stops answering must not hold
    /// us); what follows waits as long as the process runs.
    fn handshake(stream: UnixStream) -> anyhow::Result<Self> {
        stream
            .set_read_timeout(Some(AGENT_TIMEOUT))
            .context("vsock control connection")?;
        let writer = stream.try_clone().context("vsock control connection")?;
        let mut reader = stream;
        let mut both = ReadWrite {
            r: &mut reader,
            w: &writer,
        };
        protocol::host_handshake(&mut both, env!("CARGO_PKG_VERSION"))
            .context("agent handshake")?;
        reader.set_read_timeout(None).context("vsock control connection")?;
        Ok(Self {
            reader,
            writer: Arc::new(Mutex::new(writer)),
            changed_files: Vec::new(),
        })
    }

    pub fn send(&self, request: Request) -> anyhow::Result<()> {
        let mut w = self
            .writer
            .lock()
            .map_err(|_| anyhow!("control connection lock poisoned"))?;
        protocol::write_frame(&mut *w, &Message::Request(request)).context("send to agent")
    }

    /// The next frame from the agent; the agent is untrusted, so anything but a response or
    /// an event is an error.
    fn next(&mut self) -> anyhow::Result<Message> {
        protocol::read_frame(&mut self.reader)
            .context("read from agent")?
            .ok_or_else(|| anyhow!("agent closed the control connection"))
    }

    /// Sends `request` and returns its response (no event can come before it here: the only
    /// event is an exit, and it follows the WaitProcess answer).
    pub fn call(&mut self, request: Request) -> anyhow::Result<Response> {
        self.send(request)?;
        match self.next()? {
            Message::Response(r) => Ok(r),
            Message::Event(e) => bail!("agent sent {e:?} before answering"),
            other => bail!("agent sent {other:?} on the control connection"),
        }
    }

    pub fn call_ok(&mut self, request: Request) -> anyhow::Result<()> {
        match self.call(request)? {
            Response::Ok => Ok(()),
            other => bail!("agent answered {other:?}"),
        }
    }

    /// Opens the process's stdio streams and starts copying them: its stdout (or terminal
    /// output) and stderr into `io`'s writers, `io.stdin` (if any) into the process until EOF.
    /// Returns the output copiers.
    pub fn attach_stdio(&self, uds: &Path, pid: u32, io: HostStdio) -> anyhow::Result<Vec<JoinHandle<()>>> {
        let mut outputs = Vec::new();
        let mut sinks = vec![(Stream::Stdout, io.stdout)];
        if let Some(stderr) = io.stderr {
            sinks.push((Stream::Stderr, stderr));
        }
        for (stream, mut sink) in sinks {
            let mut conn = open_stream(uds, stream, pid)?;
            outputs.push(std::thread::spawn(move || {
                if let Err(e) = copy_flushing(&mut conn, &mut sink) {
                    tracing::debug!("{stream:?}: {e}");
                }
            }));
        }
        if let Some(mut stdin) = io.stdin {
            let mut conn = open_stream(uds, Stream::Stdin, pid)?;
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut stdin, &mut conn);
                let _ = conn.shutdown(std::net::Shutdown::Write);
            });
        }
        Ok(outputs)
    }

    /// A handle that sends requests from another thread (signals, window sizes); their
    /// responses are skipped by [`Session::wait_exit`].
    pub fn sender(&self) -> Sender {
        Sender(self.writer.clone())
    }

    /// Waits for the process's exit event. Responses that arrive meanwhile (to requests sent
    /// through a [`Sender`]) go to `responses`, or are dropped without one.
    pub fn wait_exit(
        &mut self,
        pid: u32,
        responses: Option<&mpsc::Sender<Response>>,
    ) -> anyhow::Result<ExitStatusWire> {
        loop {
            match self.next()? {
                Message::Event(Event::ProcessExited { pid: p, status }) if p == pid => {
                    return Ok(status)
                }
                Message::Event(Event::FileChanged { path, contents }) => {
                    self.changed_files.push((path, contents));
                }
                Message::Response(r) => {
                    if let Some(tx) = responses {
                        let _ = tx.send(r);
                    }
                }
                Message::Event(_) => {}
                other => bail!("agent sent {other:?} on the control connection"),
            }
        }
    }

    /// The copied files the container changed (see [`crate::binds::write_back`]), reported
    /// before its first process's exit.
    pub fn take_changed_files(&mut self) -> Vec<(String, Option<Vec<u8>>)> {
        std::mem::take(&mut self.changed_files)
    }

    /// Asks the agent to power the VM off; errors mean it is already going.
    pub fn shutdown(&mut self) {
        let _ = self.send(Request::Shutdown);
    }
}

/// Connects through the VMM's vsock socket to guest `port` (the hybrid-vsock handshake:
/// `CONNECT <port>\n`, answered `OK <host port>\n`).
pub fn vsock_connect(uds: &Path, port: u32) -> std::io::Result<UnixStream> {
    let mut s = UnixStream::connect(uds)?;
    // The VMM answers once the guest accepts or refuses; a guest that does neither must not
    // hold us (a timeout reads as WouldBlock, and the caller's retry or error follows).
    s.set_read_timeout(Some(CONNECT_TIMEOUT))?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())?;
    // Byte by byte, so nothing after the line is consumed; the answer is at most 32 bytes.
    let mut line = Vec::with_capacity(32);
    let mut byte = [0u8];
    while line.len() < 32 {
        if s.read(&mut byte)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "guest port not listening",
            ));
        }
        if byte[0] == b'\n' {
            break;
        }
        line.push(byte[0]);
    }
    if !line.starts_with(b"OK ") {
        return Err(std::io::Error::other(format!(
            "vsock answered {:?}",
            String::from_utf8_lossy(&line)
        )));
    }
    s.set_read_timeout(None)?;
    Ok(s)
}

fn open_stream(uds: &Path, stream: Stream, pid: u32) -> anyhow::Result<UnixStream> {
    let mut conn =
        vsock_connect(uds, stream.port()).with_context(|| format!("open {stream:?} stream"))?;
    protocol::write_frame(
        &mut conn,
        &Message::StreamHello(StreamHello {
            stream,
            process_id: pid,
        }),
    )
    .with_context(|| format!("open {stream:?} stream"))?;
    Ok(conn)
}

/// Copies to EOF, flushing after every read so interactive output is not held back.
fn copy_flushing(from: &mut impl Read, to: &mut impl Write) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return to.flush(),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
        to.flush()?;
    }
}

/// A reader and a writer of one connection, as the handshake wants one `Read + Write`.
struct ReadWrite<'a> {
    r: &'a mut UnixStream,
    w: &'a UnixStream,
}

impl Read for ReadWrite<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.r.read(buf)
    }
}

impl Write for ReadWrite<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        (&mut &*self.w).write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

