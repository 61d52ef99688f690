//! Serving the host: requests on the control connection, and the stdio stream connections.
//!
//! [`Agent`] holds what outlives a connection (the container process); [`Agent::serve`] runs one
//! control connection and [`Agent::attach_stream`] one stdio connection, each on its own thread.
//! Both are generic over their streams, so tests drive them over socket pairs.
//!
//! Ordering on the control connection: each request gets exactly one response, in order.
//! `WaitProcess` is answered `Ok` at once, and a waiter thread sends
//! [`Event::ProcessExited`] once the process has exited and its output is written out; it
//! takes the writer lock before the `Ok` is written, so the event can never overtake it.

use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::path::{Component, Path};
use std::sync::{Arc, Mutex};

use oci_spec::runtime::{LinuxResources, Spec};
use protocol::{
    agent_handshake, read_frame, write_frame, ErrorKind, Event, ExecProcess, GuestFile,
    HandshakeError, Message, Request, Response, StartProcess, Stream, TerminalSize,
    TransportError, GUEST_FILES_DIR, MAX_FILE_BACK,
};

use crate::container::{self, Held, Mode, SpawnConfig};
use crate::process::{lock, Exit, Process};
use crate::reaper::{OnExit, Reaper};
use crate::sandbox::cgroup;
use crate::stdio::{self, relay_input, relay_output, Connection, StdioError};

/// How a control connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// The host closed it.
    Closed,
    /// The host sent Shutdown (already answered): power off.
    Shutdown,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("control connection: {0}")]
    Handshake(#[from] HandshakeError),
    #[error("control connection: {0}")]
    Transport(#[from] TransportError),
}

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("vsock port {0} is not a stdio port")]
    NotAStreamPort(u32),
    #[error("stdio port {port}: read the stream hello: {source}")]
    Hello { port: u32, source: TransportError },
    #[error("stdio port {port}: closed before its stream hello")]
    Closed { port: u32 },
    #[error("stdio port {port}: expected a stream hello, got {got:?}")]
    NotAHello { port: u32, got: Box<Message> },
    #[error("stdio port {port}: the hello names {named:?}, but this is the {expected:?} port")]
    WrongPort {
        port: u32,
        named: Stream,
        expected: Stream,
    },
    #[error("{stream:?} stream: no process {pid}")]
    NoProcess { stream: Stream, pid: u32 },
    #[error("{stream:?} stream of process {pid}: none to attach (attached before, closed, or not asked for)")]
    NotWaiting { stream: Stream, pid: u32 },
    #[error("{stream:?} stream of process {pid}: keep a handle on the connection: {source}")]
    Handle {
        stream: Stream,
        pid: u32,
        source: io::Error,
    },
    #[error(transparent)]
    Relay(#[from] StdioError),
}

/// The agent's state across connections: the container's process (the first one, whose end
/// is the VM's), the spec it was built from, and the processes exec'd into it.
pub struct Agent {
    config: SpawnConfig,
    reaper: &'static Reaper,
    version: String,
    process: Mutex<Option<Arc<Process>>>,
    /// The config the container was built from, for exec and update.
    spec: Mutex<Option<Box<Spec>>>,
    /// Processes started by ExecProcess; those whose exit was reported are dropped at the next.
    execs: Mutex<Vec<Arc<Process>>>,
    /// The process CreateProcess built, waiting before exec for StartCreated.
    held: Mutex<Option<(u32, Held)>>,
    /// The files the host copied in, as it sent them: the container's changes to them are
    /// reported at its exit.
    files: Mutex<Vec<GuestFile>>,
}

impl Agent {
    pub fn new(config: SpawnConfig, reaper: &'static Reaper, version: impl Into<String>) -> Self {
        Agent {
            config,
            reaper,
            version: version.into(),
            process: Mutex::new(None),
            spec: Mutex::new(None),
            execs: Mutex::new(Vec::new()),
            files: Mutex::new(Vec::new()),
            held: Mutex::new(None),
        }
    }

    /// Whether the work is done: the process exited and its status reached the host.
    pub fn finished(&self) -> bool {
        lock(&self.process)
            .as_ref()
            .is_some_and(|process| process.exit.reported())
    }

    /// Serves one control connection, read through `reader` and written through `writer` (two
    /// handles on the same connection): the handshake, then requests until the host closes it
    /// or sends Shutdown.
    pub fn serve<R, W>(&self, mut reader: R, writer: W) -> Result<SessionEnd, ServerError>
    where
        R: Read,
        W: Write + Send + 'static,
    {
        let writer = Arc::new(Mutex::new(writer));
        agent_handshake(
            &mut Duplex {
                reader: &mut reader,
                writer: &writer,
            },
            &self.version,
        )?;
        // The processes this connection exec'd. Its host end stands in for them (their pid
        // to the caller, their exit status, their signals), so when it goes they go: a
        // stand-in killed by SIGKILL, which it cannot forward, must not leave its process
        // running where no one can reach it.
        let mut execs = Vec::new();
        let ended = self.serve_requests(&mut reader, &writer, &mut execs);
        for pid in execs {
            let _ = self.signal(pid, libc::SIGKILL);
        }
        ended
    }

    fn serve_requests<R, W>(
        &self,
        reader: &mut R,
        writer: &Arc<Mutex<W>>,
        execs: &mut Vec<u32>,
    ) -> Result<SessionEnd, ServerError>
    where
        R: Read,
        W: Write + Send + 'static,
    {
        loop {
            let request = match read_frame(reader)? {
                Some(Message::Request(request)) => request,
                Some(other) => {
                    let message = format!("expected a request, got {other:?}");
                    respond(writer, error(ErrorKind::InvalidRequest, message))?;
                    continue;
                }
                None => {
                    // A waiter may be between sending the exit event and recording that it
                    // did; its writer lock covers both.
                    drop(lock(writer));
                    return Ok(SessionEnd::Closed);
                }
            };
            match request {
                Request::Shutdown => {
                    respond(writer, Response::Ok)?;
                    return Ok(SessionEnd::Shutdown);
                }
                Request::WaitProcess { pid } => self.wait_process(pid, writer)?,
                exec @ Request::ExecProcess(_) => {
                    let response = self.handle(exec);
                    if let Response::ProcessStarted { pid, .. } = &response {
                        execs.push(*pid);
                    }
                    respond(writer, response)?;
                }
                other => respond(writer, self.handle(other))?,
            }
        }
    }

    /// Every request but WaitProcess and Shutdown, which need the connection.
    fn handle(&self, request: Request) -> Response {
        let result = match request {
            Request::Hello { .. } => Err(error(
                ErrorKind::InvalidRequest,
                "Hello again: the handshake is done".to_owned(),
            )),
            Request::StartProcess(start) => self.start_process(&start, Mode::Start),
            Request::CreateProcess(start) => self.start_process(&start, Mode::Create),
            Request::ExecProcess(exec) => self.exec_process(exec),
            Request::UpdateResources { resources } => self.update(&resources),
            Request::Stats => self.stats(),
            Request::StartCreated { pid } => self.start_created(pid),
            Request::Signal { pid, signal } => self.signal(pid, signal),
            Request::ResizeTerminal { pid, size } => self.resize(pid, size),
            Request::CloseStdin { pid } => self.find(pid).map(|process| {
                process.close_stdin();
                Response::Ok
            }),
            Request::WaitProcess { .. } | Request::Shutdown => Err(error(
                ErrorKind::Other,
                "request handled by the connection".to_owned(),
            )),
        };
        result.unwrap_or_else(|response| response)
    }

    /// StartProcess, or CreateProcess.
    fn start_process(&self, start: &StartProcess, mode: Mode) -> Result<Response, Response> {
        let mut slot = lock(&self.process);
        if let Some(process) = slot.as_ref() {
            let message = format!(
                "a process was started already (pid {}); this agent runs one container",
                process.pid
            );
            return Err(error(ErrorKind::InvalidRequest, message));
        }
        write_guest_files(&start.files)?;
        *lock(&self.files) = start.files.clone();
        let (process, setup_micros) = self.launch(start, mode)?;
        let pid = process.pid;
        *slot = Some(process);
        *lock(&self.spec) = Some(start.spec.clone());
        Ok(Response::ProcessStarted { pid, setup_micros })
    }

    /// ExecProcess: the container's spec with the new process, started in the container.
    fn exec_process(&self, exec: ExecProcess) -> Result<Response, Response> {
        let running = lock(&self.process)
            .as_ref()
            .filter(|p| !stdio::ExitWatch::has_exited(&*p.exit))
            .map(|p| p.pid);
        let (Some(target), Some(mut spec)) = (running, lock(&self.spec).clone()) else {
            let message = "exec: no container is running".to_owned();
            return Err(error(ErrorKind::InvalidRequest, message));
        };
        spec.set_process(Some(*exec.process));
        let start = StartProcess {
            spec,
            terminal: exec.terminal,
            stdin: exec.stdin,
            init: false,
            files: Vec::new(),
        };
        let (process, setup_micros) = self.launch(&start, Mode::Join(target))?;
        let pid = process.pid;
        let mut execs = lock(&self.execs);
        execs.retain(|p| !p.exit.reported());
        execs.push(process);
        Ok(Response::ProcessStarted { pid, setup_micros })
    }

    /// Spawns a process and wraps its stdio and exit for the connections.
    fn launch(&self, start: &StartProcess, mode: Mode) -> Result<(Arc<Process>, u64), Response> {
        let outputs = if start.terminal.is_some() { 1 } else { 2 };
        let exit = Exit::new(outputs).map_err(|e| {
            error(
                ErrorKind::Other,
                format!("start process: create an eventfd: {e}"),
            )
        })?;
        let exit = Arc::new(exit);
        let on_exit: OnExit = {
            let exit = Arc::clone(&exit);
            Box::new(move |status| exit.set_exited(status))
        };
        let mut spawned = container::spawn(start, &self.config, self.reaper, on_exit, mode)
            .map_err(|e| error(e.kind(), e.to_string()))?;
        let pid = spawned.pid;
        if let Some(held) = spawned.held.take() {
            *lock(&self.held) = Some((pid, held));
        }
        let setup_micros = u64::try_from(spawned.setup.as_micros()).unwrap_or(u64::MAX);
        let process = Arc::new(Process::new(
            pid,
            exit,
            spawned.terminal,
            spawned.stdin,
            spawned.stdout,
            spawned.stderr,
        ));
        Ok((process, setup_micros))
    }

    /// UpdateResources: the new limits into the container's cgroup.
    fn update(&self, resources: &LinuxResources) -> Result<Response, Response> {
        let Some(spec) = lock(&self.spec).clone() else {
            return Err(error(ErrorKind::InvalidRequest, "update: no container".to_owned()));
        };
        if !self.config.sandbox {
            let message = "update: no cgroup without a sandbox".to_owned();
            return Err(error(ErrorKind::InvalidRequest, message));
        }
        cgroup::apply(&cgroup::path_of(&spec), resources)
            .map(|()| Response::Ok)
            .map_err(|f| error(ErrorKind::Other, format!("update: {}: {}", f.step, f.message)))
    }

    /// Stats: the container cgroup's counters.
    fn stats(&self) -> Result<Response, Response> {
        let Some(spec) = lock(&self.spec).clone() else {
            return Err(error(ErrorKind::InvalidRequest, "stats: no container".to_owned()));
        };
        if !self.config.sandbox {
            let message = "stats: no cgroup without a sandbox".to_owned();
            return Err(error(ErrorKind::InvalidRequest, message));
        }
        cgroup::stats(&cgroup::path_of(&spec))
            .map(Response::Stats)
            .map_err(|f| error(ErrorKind::Other, format!("stats: {}: {}", f.step, f.message)))
    }

    fn start_created(&self, pid: u32) -> Result<Response, Response> {
        let held = {
            let mut held = lock(&self.held);
            match held.take() {
                Some((held_pid, h)) if held_pid == pid => h,
                other => {
                    *held = other;
                    let message = format!("no process {pid} waits to start (created and not started)");
                    return Err(error(ErrorKind::InvalidRequest, message));
                }
            }
        };
        held.release()
            .map(|()| Response::Ok)
            .map_err(|e| error(e.kind(), e.to_string()))
    }

    fn signal(&self, pid: u32, signal: i32) -> Result<Response, Response> {
        let process = self.find(pid)?;
        // Gone already: the signal is moot, and the pid may be reused.
        if stdio::ExitWatch::has_exited(&*process.exit) {
            return Ok(Response::Ok);
        }
        let raw_pid = i32::try_from(pid)
            .map_err(|_| error(ErrorKind::NoSuchProcess, format!("pid {pid} out of range")))?;
        // SAFETY: kill takes plain integers; the return value is checked below.
        if unsafe { libc::kill(raw_pid, signal) } == 0 {
            return Ok(Response::Ok);
        }
        let source = io::Error::last_os_error();
        match source.raw_os_error() {
            Some(libc::ESRCH) => Ok(Response::Ok), // exited, not reaped yet
            Some(libc::EINVAL) => Err(error(
                ErrorKind::InvalidRequest,
                format!("signal {signal} to process {pid}: {source}"),
            )),
            _ => Err(error(
                ErrorKind::Other,
                format!("signal {signal} to process {pid}: {source}"),
            )),
        }
    }

    fn resize(&self, pid: u32, size: TerminalSize) -> Result<Response, Response> {
        let process = self.find(pid)?;
        let master = process.terminal.as_ref().ok_or_else(|| {
            error(
                ErrorKind::InvalidRequest,
                format!("resize: process {pid} has no terminal"),
            )
        })?;
        stdio::resize(master.as_fd(), size)
            .map(|()| Response::Ok)
            .map_err(|e| error(ErrorKind::Other, format!("process {pid}: {e}")))
    }

    /// Answers Ok, then has a waiter thread send the exit event when the process is done.
    fn wait_process<W: Write + Send + 'static>(
        &self,
        pid: u32,
        writer: &Arc<Mutex<W>>,
    ) -> Result<(), TransportError> {
        let process = match self.find(pid) {
            Ok(process) => process,
            Err(response) => return respond(writer, response),
        };
        // The container's first process: its end is the container's, whose copied files
        // may have changed.
        let first = lock(&self.process).as_ref().is_some_and(|p| p.pid == pid);
        let files = if first { lock(&self.files).clone() } else { Vec::new() };
        // Held until Ok is written: the waiter cannot send the event before it.
        let mut conn = lock(writer);
        let waiter_writer = Arc::clone(writer);
        let waiter = std::thread::Builder::new()
            .name(format!("wait-{pid}"))
            .spawn(move || {
                let status = process.exit.wait_done();
                let changed = changed_files(&files);
                let event = Event::ProcessExited { pid, status };
                let mut conn = lock(&waiter_writer);
                for change in changed {
                    if write_frame(&mut *conn, &change.into()).is_err() {
                        return;
                    }
                }
                // A failed write means the host went away; a later connection can wait again.
                if write_frame(&mut *conn, &event.into()).is_ok() {
                    process.exit.mark_reported();
                }
            });
        let response = match waiter {
            Ok(_) => Response::Ok,
            Err(e) => error(ErrorKind::Other, format!("wait for process {pid}: {e}")),
        };
        write_frame(&mut *conn, &response.into())
    }

    fn find(&self, pid: u32) -> Result<Arc<Process>, Response> {
        let main = lock(&self.process).as_ref().filter(|p| p.pid == pid).cloned();
        let found = main.or_else(|| lock(&self.execs).iter().find(|p| p.pid == pid).cloned());
        match found {
            Some(process) => Ok(process),
            None => Err(error(
                ErrorKind::NoSuchProcess,
                format!("no process {pid} was started by this agent"),
            )),
        }
    }

    /// Serves one stdio connection accepted on `port`: reads its [`protocol::StreamHello`],
    /// then relays until the stream ends. Returns the bytes relayed.
    pub fn attach_stream<C: Connection>(&self, port: u32, mut conn: C) -> Result<u64, StreamError> {
        let expected = Stream::from_port(port).ok_or(StreamError::NotAStreamPort(port))?;
        let hello = match read_frame(&mut conn) {
            Ok(Some(Message::StreamHello(hello))) => hello,
            Ok(Some(other)) => {
                return Err(StreamError::NotAHello {
                    port,
                    got: Box::new(other),
                })
            }
            Ok(None) => return Err(StreamError::Closed { port }),
            Err(source) => return Err(StreamError::Hello { port, source }),
        };
        let (stream, pid) = (hello.stream, hello.process_id);
        if stream != expected {
            return Err(StreamError::WrongPort {
                port,
                named: stream,
                expected,
            });
        }
        let process = self
            .find(pid)
            .map_err(|_| StreamError::NoProcess { stream, pid })?;
        let not_waiting = StreamError::NotWaiting { stream, pid };
        match stream {
            Stream::Stdin => {
                let handle =
                    conn.as_fd()
                        .try_clone_to_owned()
                        .map_err(|source| StreamError::Handle {
                            stream,
                            pid,
                            source,
                        })?;
                let sink = process.attach_stdin(handle).ok_or(not_waiting)?;
                Ok(relay_input(conn, sink)?)
            }
            Stream::Stdout | Stream::Stderr => {
                let source = process.take_output(stream).ok_or(not_waiting)?;
                let name = if stream == Stream::Stdout {
                    "stdout"
                } else {
                    "stderr"
                };
                let relayed = relay_output(source, conn, &*process.exit, name);
                process.exit.output_done();
                Ok(relayed?)
            }
        }
    }
}

/// Writes the host's copies of bind-mount sources, each under GUEST_FILES_DIR only.
fn write_guest_files(files: &[GuestFile]) -> Result<(), Response> {
    let dir = Path::new(GUEST_FILES_DIR);
    for file in files {
        let path = Path::new(&file.path);
        let inside = path.parent() == Some(dir)
            && path.components().all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
        if !inside {
            let message = format!("file {}: only files directly in {GUEST_FILES_DIR} can be written", file.path);
            return Err(error(ErrorKind::InvalidRequest, message));
        }
        std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::write(path, &file.contents))
            .map_err(|e| error(ErrorKind::Other, format!("file {}: {e}", file.path)))?;
    }
    Ok(())
}

/// A [`Event::FileChanged`] for each of `files` whose contents differ from what was sent (a
/// file that cannot be read any more is left alone).
fn changed_files(files: &[GuestFile]) -> Vec<Event> {
    files
        .iter()
        .filter_map(|file| {
            let now = std::fs::read(&file.path).ok()?;
            (now != file.contents).then(|| Event::FileChanged {
                path: file.path.clone(),
                contents: (now.len() <= MAX_FILE_BACK).then_some(now),
            })
        })
        .collect()
}

fn error(kind: ErrorKind, message: String) -> Response {
    Response::Error { kind, message }
}

fn respond<W: Write>(writer: &Mutex<W>, response: Response) -> Result<(), TransportError> {
    write_frame(&mut *lock(writer), &response.into())
}

/// The two halves of the control connection as one stream, for the handshake.
struct Duplex<'a, R, W> {
    reader: &'a mut R,
    writer: &'a Mutex<W>,
}

impl<R: Read, W> Read for Duplex<'_, R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.reader.read(buf)
    }
}

impl<R, W: Write> Write for Duplex<'_, R, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        lock(self.writer).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        lock(self.writer).flush()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::net::UnixStream;
    use std::thread::JoinHandle;
    use std::time::Duration;

    use protocol::{host_handshake, ExitStatusWire, StreamHello};

    use super::*;
    use crate::reaper;

    const PATH: &str = "PATH=/usr/local/bin:/usr/bin:/bin";

    /// The host's side of one agent: a control connection, served by a thread.
    /// [`Host::connect`] runs processes unsandboxed; [`Host::connect_with`] takes a config.
    struct Host {
        agent: Arc<Agent>,
        control: UnixStream,
        session: Option<JoinHandle<Result<SessionEnd, ServerError>>>,
        events: Vec<Event>,
    }

    impl Host {
        fn connect() -> Self {
            Self::connect_with(SpawnConfig::direct())
        }

        fn connect_with(config: SpawnConfig) -> Self {
            Self::attach(Arc::new(Agent::new(config, reaper::start().unwrap(), "agent-test")))
        }

        /// Another control connection to the same agent.
        fn attach(agent: Arc<Agent>) -> Self {
            let (mut control, agent_end) = UnixStream::pair().unwrap();
            let session = {
                let agent = Arc::clone(&agent);
                let reader = agent_end.try_clone().unwrap();
                std::thread::spawn(move || agent.serve(reader, agent_end))
            };
            let info = host_handshake(&mut control, "host-test").unwrap();
            assert_eq!(info.agent_version, "agent-test");
            control
                .set_read_timeout(Some(Duration::from_secs(20)))
                .unwrap();
            Host {
                agent,
                control,
                session: Some(session),
                events: Vec::new(),
            }
        }

        /// Sends `request` and returns its response, keeping events that come first.
        fn request(&mut self, request: Request) -> Response {
            write_frame(&mut self.control, &request.into()).unwrap();
            loop {
                match read_frame(&mut self.control).unwrap().unwrap() {
                    Message::Response(response) => return response,
                    Message::Event(event) => self.events.push(event),
                    other => panic!("unexpected {other:?}"),
                }
            }
        }

        fn next_event(&mut self) -> Event {
            if !self.events.is_empty() {
                return self.events.remove(0);
            }
            match read_frame(&mut self.control).unwrap().unwrap() {
                Message::Event(event) => event,
                other => panic!("expected an event, got {other:?}"),
            }
        }

        fn start(&mut self, start: StartProcess) -> Result<u32, (ErrorKind, String)> {
            match self.request(Request::StartProcess(start)) {
                Response::ProcessStarted { pid, .. } => Ok(pid),
                Response::Error { kind, message } => Err((kind, message)),
                other => panic!("unexpected {other:?}"),
            }
        }

        /// Connects one stdio stream as the host would (through the agent's listener thread).
        fn stream(
            &self,
            stream: Stream,
            pid: u32,
        ) -> (UnixStream, JoinHandle<Result<u64, StreamError>>) {
            self.stream_on(stream.port(), stream, pid)
        }

        fn stream_on(
            &self,
            port: u32,
            stream: Stream,
            pid: u32,
        ) -> (UnixStream, JoinHandle<Result<u64, StreamError>>) {
            let (mut host, agent_end) = UnixStream::pair().unwrap();
            let hello = StreamHello {
                stream,
                process_id: pid,
            };
            write_frame(&mut host, &hello.into()).unwrap();
            let agent = Arc::clone(&self.agent);
            let relay = std::thread::spawn(move || agent.attach_stream(port, agent_end));
            (host, relay)
        }

        fn exited(&mut self, pid: u32) -> ExitStatusWire {
            match self.next_event() {
                Event::ProcessExited { pid: p, status } if p == pid => status,
                other => panic!("unexpected {other:?}"),
            }
        }

        fn close(mut self) -> SessionEnd {
            drop(self.control);
            self.session.take().unwrap().join().unwrap().unwrap()
        }
    }

    fn process(args: &[&str]) -> StartProcess {
        StartProcess::command(args, &[PATH])
    }

    /// The spec's process, to change in a test.
    fn process_mut(start: &mut StartProcess) -> &mut oci_spec::runtime::Process {
        start.spec.process_mut().as_mut().unwrap()
    }

    fn read_all(mut conn: UnixStream) -> Vec<u8> {
        let mut out = Vec::new();
        conn.read_to_end(&mut out).unwrap();
        out
    }

    /// Runs `start` without stdin: (status, stdout, stderr).
    fn run(start: StartProcess) -> (ExitStatusWire, String, String) {
        run_with(SpawnConfig::direct(), start)
    }

    fn run_with(config: SpawnConfig, start: StartProcess) -> (ExitStatusWire, String, String) {
        let mut host = Host::connect_with(config);
        let pid = host.start(start).unwrap();
        // Read the output while waiting, as the real host does: a full socket would hold the
        // relay, and with it the exit event, back.
        let reader = |(conn, _relay)| std::thread::spawn(move || read_all(conn));
        let stdout = reader(host.stream(Stream::Stdout, pid));
        let stderr = reader(host.stream(Stream::Stderr, pid));
        assert_eq!(host.request(Request::WaitProcess { pid }), Response::Ok);
        let status = host.exited(pid);
        let out = String::from_utf8(stdout.join().unwrap()).unwrap();
        let err = String::from_utf8(stderr.join().unwrap()).unwrap();
        assert_eq!(host.close(), SessionEnd::Closed);
        (status, out, err)
    }

    #[test]
    fn exec_runs_a_second_process_on_a_second_connection_while_the_first_runs() {
        let mut first = Host::connect();
        let main = first.start(process(&["sleep", "30"])).unwrap();
        // Its exit is reported once its output is written out: attach it.
        let main_out = first.stream(Stream::Stdout, main).0;
        let main_err = first.stream(Stream::Stderr, main).0;
        let mut second = Host::attach(Arc::clone(&first.agent));
        let exec = ExecProcess {
            process: Box::new(process(&["sh", "-c", "echo from-exec; exit 3"]).process().into_owned()),
            terminal: None,
            stdin: false,
        };
        let pid = match second.request(Request::ExecProcess(exec.clone())) {
            Response::ProcessStarted { pid, .. } => pid,
            other => panic!("unexpected {other:?}"),
        };
        assert_ne!(pid, main);
        let (out, _) = second.stream(Stream::Stdout, pid);
        let (err, _) = second.stream(Stream::Stderr, pid);
        assert_eq!(second.request(Request::WaitProcess { pid }), Response::Ok);
        assert_eq!(second.exited(pid), ExitStatusWire::Exited(3));
        assert_eq!(read_all(out), b"from-exec\n");
        assert_eq!(read_all(err), b"");
        assert_eq!(second.close(), SessionEnd::Closed);
        assert!(!first.agent.finished(), "an exec's end is not the container's");

        // Signals reach the container's process; once it is gone, exec is refused.
        let signal = Request::Signal { pid: main, signal: libc::SIGKILL };
        assert_eq!(first.request(signal), Response::Ok);
        assert_eq!(first.request(Request::WaitProcess { pid: main }), Response::Ok);
        assert_eq!(first.exited(main), ExitStatusWire::Signaled(libc::SIGKILL));
        assert_eq!((read_all(main_out), read_all(main_err)), (Vec::new(), Vec::new()));
        match first.request(Request::ExecProcess(exec)) {
            Response::Error { kind: ErrorKind::InvalidRequest, message } => {
                assert!(message.contains("no container is running"), "{message}")
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(first.close(), SessionEnd::Closed);
    }

    #[test]
    fn an_exec_whose_connection_goes_is_killed() {
        let mut first = Host::connect();
        let main = first.start(process(&["sleep", "30"])).unwrap();
        let _main_out = first.stream(Stream::Stdout, main).0;
        let _main_err = first.stream(Stream::Stderr, main).0;
        let mut second = Host::attach(Arc::clone(&first.agent));
        let exec = ExecProcess {
            process: Box::new(process(&["sleep", "30"]).process().into_owned()),
            terminal: None,
            stdin: false,
        };
        let pid = match second.request(Request::ExecProcess(exec)) {
            Response::ProcessStarted { pid, .. } => pid,
            other => panic!("unexpected {other:?}"),
        };
        let (out, _) = second.stream(Stream::Stdout, pid);
        let (err, _) = second.stream(Stream::Stderr, pid);
        // The stand-in dies without a word (SIGKILL): its connection just closes.
        assert_eq!(second.close(), SessionEnd::Closed);
        assert_eq!(first.request(Request::WaitProcess { pid }), Response::Ok);
        assert_eq!(first.exited(pid), ExitStatusWire::Signaled(libc::SIGKILL));
        assert_eq!((read_all(out), read_all(err)), (Vec::new(), Vec::new()));
        assert!(!first.agent.finished(), "the container's own process is not the exec's");
        assert_eq!(first.request(Request::Signal { pid: main, signal: libc::SIGKILL }), Response::Ok);
        assert_eq!(first.request(Request::WaitProcess { pid: main }), Response::Ok);
        assert_eq!(first.exited(main), ExitStatusWire::Signaled(libc::SIGKILL));
        assert_eq!(first.close(), SessionEnd::Closed);
    }

    #[test]
    fn echo_hello() {
        let (status, out, err) = run(process(&["/bin/echo", "hello"]));
        assert_eq!(status, ExitStatusWire::Exited(0));
        assert_eq!((out.as_str(), err.as_str()), ("hello\n", ""));
    }

    #[test]
    fn command_is_looked_up_in_the_requests_path() {
        let (status, out, _) = run(process(&["echo", "from", "PATH"]));
        assert_eq!(status, ExitStatusWire::Exited(0));
        assert_eq!(out, "from PATH\n");
    }

    #[test]
    fn exit_codes_and_signals() {
        let (status, _, _) = run(process(&["/bin/sh", "-c", "exit 7"]));
        assert_eq!(status, ExitStatusWire::Exited(7));
        let (status, _, _) = run(process(&["/bin/sh", "-c", "kill -9 $$"]));
        assert_eq!(status, ExitStatusWire::Signaled(9));
        assert_eq!(status.shell_code(), 137);
    }

    #[test]
    fn environment_cwd_and_stderr_come_from_the_request() {
        let mut start = process(&[
            "/bin/sh",
            "-c",
            "echo \"$GREETING\" \"$(pwd)\"; echo oops >&2",
        ]);
        let process = process_mut(&mut start);
        process.set_env(Some(vec![PATH.into(), "GREETING=hi=there".into()]));
        process.set_cwd("/tmp".into());
        let (status, out, err) = run(start);
        assert_eq!(status, ExitStatusWire::Exited(0));
        assert_eq!(out, "hi=there /tmp\n");
        assert_eq!(err, "oops\n");
    }

    #[test]
    fn the_last_bytes_before_exit_are_never_lost() {
        let script = "head -c 3000000 /dev/zero | tr '\\0' x; printf END; printf LAST >&2";
        let (status, out, err) = run(process(&["/bin/sh", "-c", script]));
        assert_eq!(status, ExitStatusWire::Exited(0));
        assert_eq!(out.len(), 3_000_003);
        assert!(out.ends_with("xEND"));
        assert_eq!(err, "LAST");
    }

    #[test]
    fn exit_event_waits_for_the_output_streams() {
        let mut host = Host::connect();
        let pid = host.start(process(&["/bin/echo", "late"])).unwrap();
        assert_eq!(host.request(Request::WaitProcess { pid }), Response::Ok);
        host.control
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let early = read_frame(&mut host.control);
        assert!(
            early.is_err(),
            "event before stdout was written out: {early:?}"
        );
        host.control
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let (stdout, _) = host.stream(Stream::Stdout, pid);
        let (stderr, _) = host.stream(Stream::Stderr, pid);
        assert_eq!(read_all(stdout), b"late\n");
        assert_eq!(host.exited(pid), ExitStatusWire::Exited(0));
        assert!(read_all(stderr).is_empty());
        // Once the session has ended on the host's close, the agent knows the status got out.
        let agent = Arc::clone(&host.agent);
        assert_eq!(host.close(), SessionEnd::Closed);
        assert!(agent.finished());
    }

    #[test]
    fn missing_and_unrunnable_commands() {
        let mut host = Host::connect();
        let (kind, message) = host.start(process(&["/no/such/command"])).unwrap_err();
        assert_eq!((kind, kind.exit_code()), (ErrorKind::NotFound, 127));
        assert!(message.starts_with("/no/such/command: "), "{message}");
        let (kind, _) = host
            .start(process(&["no-such-command-anywhere"]))
            .unwrap_err();
        assert_eq!(kind, ErrorKind::NotFound);

        let dir = std::env::temp_dir().join(format!("guest-agent-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("not-executable");
        std::fs::write(&script, "#!/bin/sh\necho no\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).unwrap();
        let (kind, _) = host
            .start(process(&[script.to_str().unwrap()]))
            .unwrap_err();
        assert_eq!((kind, kind.exit_code()), (ErrorKind::NotExecutable, 126));
        let (kind, _) = host.start(process(&[dir.to_str().unwrap()])).unwrap_err();
        assert_eq!(kind, ErrorKind::NotExecutable, "a directory");
        std::fs::remove_dir_all(&dir).unwrap();

        let mut bad_cwd = process(&["/bin/true"]);
        process_mut(&mut bad_cwd).set_cwd("/no/such/dir".into());
        let (kind, message) = host.start(bad_cwd).unwrap_err();
        assert_eq!(kind, ErrorKind::InvalidRequest);
        assert!(message.contains("/no/such/dir"), "{message}");

        let (kind, _) = host.start(process(&[])).unwrap_err();
        assert_eq!(kind, ErrorKind::InvalidRequest);
        let mut bad_env = process(&["/bin/true"]);
        process_mut(&mut bad_env).set_env(Some(vec!["NOEQUALS".into()]));
        assert_eq!(
            host.start(bad_env).unwrap_err().0,
            ErrorKind::InvalidRequest
        );
        // Host files go under GUEST_FILES_DIR only.
        for path in ["/etc/passwd", "/run/microvm-files/../x", "/run/microvm-files/a/b"] {
            let mut stray = process(&["/bin/true"]);
            stray.files.push(GuestFile { path: path.into(), contents: b"x".to_vec() });
            let (kind, message) = host.start(stray).unwrap_err();
            assert_eq!(kind, ErrorKind::InvalidRequest, "{path}");
            assert!(message.contains(path), "{message}");
        }
        // CreateProcess holds a process before exec, which only the sandboxed path can do.
        let held = host.request(Request::CreateProcess(process(&["/bin/true"])));
        assert!(
            matches!(held, Response::Error { kind: ErrorKind::InvalidRequest, .. }),
            "{held:?}"
        );
    }

    #[test]
    fn one_process_per_agent_and_unknown_pids() {
        let mut host = Host::connect();
        let pid = host.start(process(&["/bin/true"])).unwrap();
        let (kind, _) = host.start(process(&["/bin/true"])).unwrap_err();
        assert_eq!(kind, ErrorKind::InvalidRequest);
        for request in [
            Request::WaitProcess { pid: pid + 1 },
            Request::Signal {
                pid: pid + 1,
                signal: 15,
            },
            Request::CloseStdin { pid: pid + 1 },
        ] {
            assert!(matches!(
                host.request(request),
                Response::Error {
                    kind: ErrorKind::NoSuchProcess,
                    ..
                }
            ));
        }
        let resize = Request::ResizeTerminal {
            pid,
            size: TerminalSize { rows: 1, cols: 1 },
        };
        assert!(matches!(
            host.request(resize),
            Response::Error {
                kind: ErrorKind::InvalidRequest,
                ..
            }
        ));
        // Streams that do not fit are dropped.
        let (_conn, relay) = host.stream_on(Stream::Stdout.port(), Stream::Stderr, pid);
        assert!(matches!(
            relay.join().unwrap(),
            Err(StreamError::WrongPort { .. })
        ));
        let (_conn, relay) = host.stream(Stream::Stdout, pid + 1);
        assert!(matches!(
            relay.join().unwrap(),
            Err(StreamError::NoProcess { .. })
        ));
        let (_conn, relay) = host.stream(Stream::Stdin, pid);
        assert!(matches!(
            relay.join().unwrap(),
            Err(StreamError::NotWaiting { .. })
        ));
        let (stdout, first) = host.stream(Stream::Stdout, pid);
        assert!(read_all(stdout).is_empty());
        assert_eq!(first.join().unwrap().unwrap(), 0);
        let (_conn, again) = host.stream(Stream::Stdout, pid);
        assert!(matches!(
            again.join().unwrap(),
            Err(StreamError::NotWaiting { .. })
        ));
    }

    #[test]
    fn signals_are_forwarded() {
        let mut host = Host::connect();
        let pid = host.start(process(&["/bin/sleep", "60"])).unwrap();
        let (_stdout, _) = host.stream(Stream::Stdout, pid);
        let (_stderr, _) = host.stream(Stream::Stderr, pid);
        assert_eq!(host.request(Request::WaitProcess { pid }), Response::Ok);
        let signal = Request::Signal { pid, signal: 15 };
        assert_eq!(host.request(signal.clone()), Response::Ok);
        let status = host.exited(pid);
        assert_eq!(
            (status, status.shell_code()),
            (ExitStatusWire::Signaled(15), 143)
        );
        assert_eq!(host.request(signal), Response::Ok, "signal after the exit");
    }

    #[test]
    fn stdin_is_relayed_and_closed() {
        let mut host = Host::connect();
        let mut start = process(&["/bin/cat"]);
        start.stdin = true;
        let pid = host.start(start.clone()).unwrap();
        let (mut stdin, _) = host.stream(Stream::Stdin, pid);
        let (stdout, _) = host.stream(Stream::Stdout, pid);
        let (_stderr, _) = host.stream(Stream::Stderr, pid);
        assert_eq!(host.request(Request::WaitProcess { pid }), Response::Ok);
        stdin.write_all(b"piped in").unwrap();
        stdin.shutdown(std::net::Shutdown::Write).unwrap();
        assert_eq!(read_all(stdout), b"piped in");
        assert_eq!(host.exited(pid), ExitStatusWire::Exited(0));

        // CloseStdin, with the stdin stream attached and without.
        for attach in [true, false] {
            let mut host = Host::connect();
            let pid = host.start(start.clone()).unwrap();
            let _stdin = attach.then(|| host.stream(Stream::Stdin, pid));
            let (stdout, _) = host.stream(Stream::Stdout, pid);
            let (_stderr, _) = host.stream(Stream::Stderr, pid);
            assert_eq!(host.request(Request::WaitProcess { pid }), Response::Ok);
            assert_eq!(host.request(Request::CloseStdin { pid }), Response::Ok);
            assert_eq!(host.exited(pid), ExitStatusWire::Exited(0));
            assert!(read_all(stdout).is_empty());
        }
    }

    #[test]
    fn terminal_is_the_controlling_tty_and_resizes() {
        let mut host = Host::connect();
        let mut start = process(&[
            "/bin/sh",
            "-c",
            "stty size; tty; read line; stty size; echo \"got $line\"",
        ]);
        start.terminal = Some(TerminalSize { rows: 24, cols: 80 });
        start.stdin = true;
        let pid = host.start(start).unwrap();
        let (mut stdin, _) = host.stream(Stream::Stdin, pid);
        let (mut stdout, _) = host.stream(Stream::Stdout, pid);
        let (_stderr, relay) = host.stream(Stream::Stderr, pid);
        assert!(matches!(
            relay.join().unwrap(),
            Err(StreamError::NotWaiting { .. })
        ));
        assert_eq!(host.request(Request::WaitProcess { pid }), Response::Ok);
        // The first two lines, then the shell waits for input.
        let mut out = Vec::new();
        while out.iter().filter(|b| **b == b'\n').count() < 2 {
            let mut buf = [0; 256];
            let n = stdout.read(&mut buf).unwrap();
            assert_ne!(n, 0, "EOF early: {out:?}");
            out.extend_from_slice(&buf[..n]);
        }
        let size = TerminalSize {
            rows: 50,
            cols: 132,
        };
        assert_eq!(
            host.request(Request::ResizeTerminal { pid, size }),
            Response::Ok
        );
        stdin.write_all(b"typed\n").unwrap();
        assert_eq!(host.exited(pid), ExitStatusWire::Exited(0));
        out.extend(read_all(stdout));
        let out = String::from_utf8(out).unwrap();
        assert!(out.contains("\r\n"), "terminal output has CRLF: {out:?}");
        let lines: Vec<&str> = out.lines().map(str::trim_end).collect();
        assert_eq!(lines[0], "24 80", "{out:?}");
        assert!(lines[1].starts_with("/dev/pts/"), "{out:?}");
        // The terminal echoes what was typed.
        assert_eq!(lines[2..], ["typed", "50 132", "got typed"], "{out:?}");
    }

    #[test]
    fn shutdown_ends_the_session_and_junk_is_refused() {
        let mut host = Host::connect();
        let hello = Request::Hello {
            protocol_version: protocol::PROTOCOL_VERSION,
            runtime_version: "again".into(),
        };
        assert!(matches!(
            host.request(hello),
            Response::Error {
                kind: ErrorKind::InvalidRequest,
                ..
            }
        ));
        write_frame(&mut host.control, &Response::Ok.into()).unwrap();
        assert!(matches!(
            read_frame(&mut host.control).unwrap(),
            Some(Message::Response(Response::Error { .. }))
        ));
        assert_eq!(host.request(Request::Shutdown), Response::Ok);
        let session = host.session.take().unwrap();
        assert_eq!(session.join().unwrap().unwrap(), SessionEnd::Shutdown);
        assert!(!host.agent.finished());
    }

    #[test]
    fn changed_copies_are_reported_unchanged_ones_not() {
        let dir = std::env::temp_dir().join(format!("microvm-agent-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = |name: &str, contents: &[u8]| {
            let path = dir.join(name);
            std::fs::write(&path, contents).unwrap();
            GuestFile { path: path.to_string_lossy().into_owned(), contents: b"sent".to_vec() }
        };
        let same = file("same", b"sent");
        let changed = file("changed", b"changed");
        let huge = file("huge", &vec![b'x'; MAX_FILE_BACK + 1]);
        let gone = GuestFile { path: dir.join("gone").to_string_lossy().into_owned(), contents: Vec::new() };
        let events = changed_files(&[same, changed.clone(), huge.clone(), gone]);
        assert_eq!(
            events,
            [
                Event::FileChanged { path: changed.path, contents: Some(b"changed".to_vec()) },
                Event::FileChanged { path: huge.path, contents: None },
            ]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
