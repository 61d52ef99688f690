//! The shim's two faces: the `Shim` containerd starts and deletes, and the task service
//! (containerd.task.v2.Task over ttrpc) it calls for each container and exec'd process.
//!
//! One shim serves one container (the grouping is the container's id): its VM, its init
//! process (the VMM process stands in for it) and its exec'd processes (each with a stand-in).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use containerd_shim::api::{self, Status};
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskPaused, TaskResumed, TaskStart,
};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::{MessageDyn, MessageField};
use containerd_shim::protos::topics;
use containerd_shim::protos::ttrpc::{self, context::Context, Code};
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{DeleteResponse, ExitSignal, Flags, StartOpts, TtrpcContext, TtrpcResult};
use log::{error, warn};

use crate::exits::{Exit, Exits};
use crate::io::{self, ConsoleSocket, ProcessIo};
use crate::metrics;
use crate::rootfs;
use crate::runtime::{ProcessStdio, Runtime};

/// What containerd sees of a process killed by SIGKILL, the end of one whose shim is gone.
const KILLED: u32 = 128 + libc::SIGKILL as u32;

pub struct Service {
    namespace: String,
    id: String,
    exit: Arc<ExitSignal>,
}

impl containerd_shim::Shim for Service {
    type T = Tasks;

    fn new(_runtime_id: &str, args: &Flags, _config: &mut containerd_shim::Config) -> Self {
        Self { namespace: args.namespace.clone(), id: args.id.clone(), exit: Arc::default() }
    }

    fn start_shim(&mut self, opts: StartOpts) -> containerd_shim::Result<String> {
        let grouping = opts.id.clone();
        let (_pid, address) = containerd_shim::spawn(opts, &grouping, Vec::new())?;
        Ok(address)
    }

    /// containerd's clean-up after a shim that is gone (killed, crashed): the container's
    /// VM and state go, and its rootfs is unmounted. The working directory is the bundle.
    fn delete_shim(&mut self) -> containerd_shim::Result<DeleteResponse> {
        let exits = Exits::start().map_err(|e| containerd_shim::Error::Other(e.to_string()))?;
        if let Err(e) = Runtime::new(&self.namespace, exits).delete(&self.id) {
            warn!("delete {}: {e}", self.id);
        }
        if let Ok(bundle) = std::env::current_dir() {
            rootfs::unmount(&bundle);
        }
        Ok(DeleteResponse { exit_status: KILLED, exited_at: MessageField::some(timestamp(SystemTime::now())), ..Default::default() })
    }

    fn wait(&mut self) {
        self.exit.wait();
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> Tasks {
        let exits = match Exits::start() {
            Ok(exits) => exits,
            Err(e) => {
                // Without the reaper's exits no wait could end: nothing to serve.
                error!("watch exits: {e}");
                std::process::exit(1);
            }
        };
        Tasks(Arc::new(Inner {
            namespace: self.namespace.clone(),
            runtime: Runtime::new(&self.namespace, Arc::clone(&exits)),
            exits,
            publisher,
            containers: Mutex::default(),
            exited: Condvar::new(),
            shutdown: Arc::clone(&self.exit),
        }))
    }
}

#[derive(Clone)]
pub struct Tasks(Arc<Inner>);

struct Inner {
    namespace: String,
    runtime: Runtime,
    exits: Arc<Exits>,
    publisher: RemotePublisher,
    containers: Mutex<HashMap<String, Container>>,
    /// Signalled whenever a process's exit is recorded.
    exited: Condvar,
    shutdown: Arc<ExitSignal>,
}

struct Container {
    bundle: PathBuf,
    init: Process,
    execs: HashMap<String, Process>,
}

#[derive(Default)]
struct Process {
    pid: i32,
    status: Status,
    exit: Option<Exit>,
    stdio: TaskIO,
    io: ProcessIo,
    /// An exec's process, as config.json's `process`, until it starts.
    spec: Option<PathBuf>,
}

impl Process {
    fn new(stdin: &str, stdout: &str, stderr: &str, terminal: bool) -> Self {
        let stdio = TaskIO {
            stdin: stdin.to_string(),
            stdout: stdout.to_string(),
            stderr: stderr.to_string(),
            terminal,
            ..Default::default()
        };
        Self { status: Status::CREATED, stdio, ..Default::default() }
    }

    fn exit_status(&self) -> (u32, MessageField<Timestamp>) {
        match self.exit {
            Some(exit) => (exit.status, MessageField::some(timestamp(exit.at))),
            None => (0, MessageField::none()),
        }
    }
}

fn timestamp(at: SystemTime) -> Timestamp {
    Timestamp::from(at)
}

fn status(code: Code, message: impl Into<String>) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, message.into()))
}

fn not_found(id: &str, exec_id: &str) -> ttrpc::Error {
    match exec_id {
        "" => status(Code::NOT_FOUND, format!("container {id} not found")),
        exec => status(Code::NOT_FOUND, format!("process {exec} of container {id} not found")),
    }
}

/// The annotation containerd's CRI plugin puts on a pod's containers ("sandbox" for its
/// pause container, "container" for the others).
const CRI_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";

/// A pod's containers would each get a VM of their own, not one VM for the pod, and their
/// network namespace could not be shared across VMs: refused, naming why, until pods exist.
fn refuse_pods(bundle: &Path) -> TtrpcResult<()> {
    let config = bundle.join("config.json");
    let text = std::fs::read_to_string(&config).map_err(|e| status(Code::INVALID_ARGUMENT, format!("{}: {e}", config.display())))?;
    let spec: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| status(Code::INVALID_ARGUMENT, format!("{}: {e}", config.display())))?;
    match spec.pointer("/annotations").and_then(|a| a.get(CRI_CONTAINER_TYPE)).and_then(|t| t.as_str()) {
        None => Ok(()),
        Some(kind) => Err(status(
            Code::FAILED_PRECONDITION,
            format!("microvm does not run Kubernetes pods yet (annotation {CRI_CONTAINER_TYPE}={kind}): one VM per pod is not built; use ctr or a runtime per container"),
        )),
    }
}

/// An exec id names a file in the bundle: containerd's identifier rules, checked here too.
fn check_exec_id(exec_id: &str) -> TtrpcResult<()> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
    let first_ok = exec_id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    if first_ok && exec_id.len() <= 76 && exec_id.chars().all(allowed) {
        return Ok(());
    }
    Err(status(Code::INVALID_ARGUMENT, format!("exec id {exec_id:?}: use 1 to 76 of [A-Za-z0-9_.-], starting with a letter or digit")))
}

impl Inner {
    fn containers(&self) -> MutexGuard<'_, HashMap<String, Container>> {
        self.containers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        if let Err(e) = self.publisher.publish(Context::default(), topic, &self.namespace, event) {
            warn!("publish {topic}: {e}");
        }
    }

    /// Starts a process through `launch` with its stdio: FIFOs handed down, or a terminal
    /// received on a console socket and relayed.
    fn launch(
        &self,
        stdio: &TaskIO,
        launch: impl FnOnce(Option<&Path>, ProcessStdio) -> Result<i32, String>,
    ) -> Result<(i32, ProcessIo), String> {
        if stdio.terminal {
            let socket = ConsoleSocket::bind().map_err(|e| format!("console socket: {e}"))?;
            let pid = launch(Some(&socket.path()), ProcessStdio::default())?;
            let master = socket.receive().map_err(|e| format!("console socket: {e}"))?;
            let io = io::relay_terminal(master, &stdio.stdin, &stdio.stdout).map_err(|e| format!("terminal: {e}"))?;
            return Ok((pid, io));
        }
        let (handed, io) = io::open_plain(&stdio.stdin, &stdio.stdout, &stdio.stderr).map_err(|e| format!("stdio: {e}"))?;
        Ok((launch(None, handed)?, io))
    }

    /// Records the process's exit when the reaper sees it, and tells containerd.
    fn watch(self: &Arc<Self>, id: String, exec_id: String, pid: i32) {
        let inner = Arc::clone(self);
        let watching = std::thread::Builder::new().name("watch".into()).spawn(move || {
            let exit = inner.exits.wait(pid);
            {
                let mut containers = inner.containers();
                let Some(container) = containers.get_mut(&id) else { return };
                let process = match exec_id.as_str() {
                    "" => Some(&mut container.init),
                    exec => container.execs.get_mut(exec),
                };
                let Some(process) = process else { return };
                if process.pid != pid {
                    return;
                }
                process.exit = Some(exit);
                process.status = Status::STOPPED;
            }
            inner.exited.notify_all();
            let event = TaskExit {
                id: if exec_id.is_empty() { id.clone() } else { exec_id },
                container_id: id,
                pid: pid as u32,
                exit_status: exit.status,
                exited_at: MessageField::some(timestamp(exit.at)),
                ..Default::default()
            };
            inner.publish(topics::TASK_EXIT_EVENT_TOPIC, Box::new(event));
        });
        if let Err(e) = watching {
            error!("watch process {pid}: {e}");
        }
    }
}

impl Tasks {
    fn with_process<T>(
        &self,
        id: &str,
        exec_id: &str,
        f: impl FnOnce(&mut Container, &mut Process) -> TtrpcResult<T>,
    ) -> TtrpcResult<T> {
        let mut containers = self.0.containers();
        let container = containers.get_mut(id).ok_or_else(|| not_found(id, exec_id))?;
        let mut process = match exec_id {
            "" => std::mem::take(&mut container.init),
            exec => container.execs.remove(exec).ok_or_else(|| not_found(id, exec_id))?,
        };
        let result = f(container, &mut process);
        match exec_id {
            "" => container.init = process,
            exec => {
                container.execs.insert(exec.to_string(), process);
            }
        }
        result
    }
}

impl containerd_shim::Task for Tasks {
    fn create(&self, _ctx: &TtrpcContext, req: api::CreateTaskRequest) -> TtrpcResult<api::CreateTaskResponse> {
        let inner = &self.0;
        if inner.containers().contains_key(&req.id) {
            return Err(status(Code::ALREADY_EXISTS, format!("container {} already exists", req.id)));
        }
        let bundle = PathBuf::from(&req.bundle);
        refuse_pods(&bundle)?;
        let mounted = rootfs::mount(&bundle, &req.rootfs).map_err(|e| status(Code::INTERNAL, e))?;
        let mut init = Process::new(&req.stdin, &req.stdout, &req.stderr, req.terminal);
        let launched =
            inner.launch(&init.stdio, |console, stdio| inner.runtime.create(&req.id, &bundle, console, stdio));
        let (pid, io) = match launched {
            Ok(launched) => launched,
            Err(e) => {
                if mounted {
                    rootfs::unmount(&bundle);
                }
                return Err(status(Code::INTERNAL, e));
            }
        };
        init.pid = pid;
        init.io = io;
        let event = TaskCreate {
            container_id: req.id.clone(),
            bundle: req.bundle.clone(),
            rootfs: req.rootfs.clone(),
            io: MessageField::some(init.stdio.clone()),
            checkpoint: req.checkpoint.clone(),
            pid: pid as u32,
            ..Default::default()
        };
        inner.containers().insert(req.id.clone(), Container { bundle, init, execs: HashMap::new() });
        // The VMM process may end before Start (its VM can fail): watched from now on.
        inner.watch(req.id.clone(), String::new(), pid);
        inner.publish(topics::TASK_CREATE_EVENT_TOPIC, Box::new(event));
        Ok(api::CreateTaskResponse { pid: pid as u32, ..Default::default() })
    }

    fn start(&self, _ctx: &TtrpcContext, req: api::StartRequest) -> TtrpcResult<api::StartResponse> {
        let inner = &self.0;
        if req.exec_id.is_empty() {
            let pid = self.with_process(&req.id, "", |_, init| match init.status {
                Status::CREATED => Ok(init.pid),
                _ => Err(status(Code::FAILED_PRECONDITION, format!("container {} is not created", req.id))),
            })?;
            inner.runtime.start(&req.id).map_err(|e| status(Code::INTERNAL, e))?;
            self.with_process(&req.id, "", |_, init| {
                if init.exit.is_none() {
                    init.status = Status::RUNNING;
                }
                Ok(())
            })?;
            inner.publish(topics::TASK_START_EVENT_TOPIC, Box::new(TaskStart { container_id: req.id.clone(), pid: pid as u32, ..Default::default() }));
            return Ok(api::StartResponse { pid: pid as u32, ..Default::default() });
        }
        let (spec, stdio) = self.with_process(&req.id, &req.exec_id, |_, exec| {
            let spec = exec.spec.take().ok_or_else(|| status(Code::FAILED_PRECONDITION, format!("process {} was started already", req.exec_id)))?;
            Ok((spec, exec.stdio.clone()))
        })?;
        let launched = inner.launch(&stdio, |console, handed| inner.runtime.exec(&req.id, &spec, console, handed));
        let _ = std::fs::remove_file(&spec);
        let (pid, io) = launched.map_err(|e| status(Code::INTERNAL, e))?;
        self.with_process(&req.id, &req.exec_id, |_, exec| {
            exec.pid = pid;
            exec.io = io;
            exec.status = Status::RUNNING;
            Ok(())
        })?;
        inner.watch(req.id.clone(), req.exec_id.clone(), pid);
        let event = TaskExecStarted { container_id: req.id.clone(), exec_id: req.exec_id.clone(), pid: pid as u32, ..Default::default() };
        inner.publish(topics::TASK_EXEC_STARTED_EVENT_TOPIC, Box::new(event));
        Ok(api::StartResponse { pid: pid as u32, ..Default::default() })
    }

    fn exec(&self, _ctx: &TtrpcContext, req: api::ExecProcessRequest) -> TtrpcResult<api::Empty> {
        let inner = &self.0;
        check_exec_id(&req.exec_id)?;
        {
            let mut containers = inner.containers();
            let container = containers.get_mut(&req.id).ok_or_else(|| not_found(&req.id, ""))?;
            if container.execs.contains_key(&req.exec_id) {
                return Err(status(Code::ALREADY_EXISTS, format!("process {} already exists", req.exec_id)));
            }
            // containerd sends the process as JSON (specs.Process), which `microvm exec
            // --process` takes as it is.
            let spec = container.bundle.join(format!("exec-{}.json", req.exec_id));
            let json = req.spec.as_ref().map(|any| any.value.as_slice()).unwrap_or_default();
            std::fs::write(&spec, json).map_err(|e| status(Code::INTERNAL, format!("{}: {e}", spec.display())))?;
            let mut process = Process::new(&req.stdin, &req.stdout, &req.stderr, req.terminal);
            process.spec = Some(spec);
            container.execs.insert(req.exec_id.clone(), process);
        }
        let event = TaskExecAdded { container_id: req.id.clone(), exec_id: req.exec_id.clone(), ..Default::default() };
        inner.publish(topics::TASK_EXEC_ADDED_EVENT_TOPIC, Box::new(event));
        Ok(api::Empty::new())
    }

    fn state(&self, _ctx: &TtrpcContext, req: api::StateRequest) -> TtrpcResult<api::StateResponse> {
        self.with_process(&req.id, &req.exec_id, |container, process| {
            let (exit_status, exited_at) = process.exit_status();
            Ok(api::StateResponse {
                id: if req.exec_id.is_empty() { req.id.clone() } else { req.exec_id.clone() },
                bundle: container.bundle.to_string_lossy().into_owned(),
                pid: process.pid as u32,
                status: process.status.into(),
                stdin: process.stdio.stdin.clone(),
                stdout: process.stdio.stdout.clone(),
                stderr: process.stdio.stderr.clone(),
                terminal: process.stdio.terminal,
                exit_status,
                exited_at,
                exec_id: req.exec_id.clone(),
                ..Default::default()
            })
        })
    }

    fn wait(&self, _ctx: &TtrpcContext, req: api::WaitRequest) -> TtrpcResult<api::WaitResponse> {
        let inner = &self.0;
        let mut containers = inner.containers();
        loop {
            let container = containers.get(&req.id).ok_or_else(|| not_found(&req.id, &req.exec_id))?;
            let process = match req.exec_id.as_str() {
                "" => Some(&container.init),
                exec => container.execs.get(exec),
            };
            let process = process.ok_or_else(|| not_found(&req.id, &req.exec_id))?;
            if process.exit.is_some() {
                let (exit_status, exited_at) = process.exit_status();
                return Ok(api::WaitResponse { exit_status, exited_at, ..Default::default() });
            }
            containers = inner.exited.wait(containers).unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        let inner = &self.0;
        let pid = self.with_process(&req.id, &req.exec_id, |_, process| match process.exit {
            Some(_) => Err(status(Code::NOT_FOUND, "process already finished")),
            None => Ok(process.pid),
        })?;
        if req.exec_id.is_empty() {
            inner.runtime.kill(&req.id, req.signal, req.all).map_err(|e| status(Code::INTERNAL, e))?;
        } else {
            let signal = nix::sys::signal::Signal::try_from(req.signal as i32)
                .map_err(|_| status(Code::INVALID_ARGUMENT, format!("signal {}", req.signal)))?;
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)
                .map_err(|e| status(Code::INTERNAL, format!("kill {pid}: {e}")))?;
        }
        Ok(api::Empty::new())
    }

    fn delete(&self, _ctx: &TtrpcContext, req: api::DeleteRequest) -> TtrpcResult<api::DeleteResponse> {
        let inner = &self.0;
        if !req.exec_id.is_empty() {
            let mut containers = inner.containers();
            let container = containers.get_mut(&req.id).ok_or_else(|| not_found(&req.id, ""))?;
            let exec = container.execs.get(&req.exec_id).ok_or_else(|| not_found(&req.id, &req.exec_id))?;
            if exec.pid != 0 && exec.exit.is_none() {
                return Err(status(Code::FAILED_PRECONDITION, format!("process {} is running", req.exec_id)));
            }
            let exec = container.execs.remove(&req.exec_id).unwrap_or_default();
            if let Some(spec) = &exec.spec {
                let _ = std::fs::remove_file(spec);
            }
            let (exit_status, exited_at) = exec.exit_status();
            return Ok(api::DeleteResponse { pid: exec.pid as u32, exit_status, exited_at, ..Default::default() });
        }
        let bundle = {
            let containers = inner.containers();
            containers.get(&req.id).ok_or_else(|| not_found(&req.id, ""))?.bundle.clone()
        };
        // --force: a container that was created and never started still has its VM.
        inner.runtime.delete(&req.id).map_err(|e| status(Code::INTERNAL, e))?;
        rootfs::unmount(&bundle);
        let container = inner.containers().remove(&req.id);
        inner.exited.notify_all();
        let Some(container) = container else { return Err(not_found(&req.id, "")) };
        let init = container.init;
        let (exit_status, exited_at) = match init.exit {
            Some(_) => init.exit_status(),
            None => (KILLED, MessageField::some(timestamp(SystemTime::now()))),
        };
        let event = TaskDelete {
            container_id: req.id.clone(),
            id: req.id.clone(),
            pid: init.pid as u32,
            exit_status,
            exited_at: exited_at.clone(),
            ..Default::default()
        };
        inner.publish(topics::TASK_DELETE_EVENT_TOPIC, Box::new(event));
        Ok(api::DeleteResponse { pid: init.pid as u32, exit_status, exited_at, ..Default::default() })
    }

    /// The host processes that stand in for the container's: the VMM process and the
    /// stand-ins of exec'd processes (the container's own are in the guest).
    fn pids(&self, _ctx: &TtrpcContext, req: api::PidsRequest) -> TtrpcResult<api::PidsResponse> {
        let containers = self.0.containers();
        let container = containers.get(&req.id).ok_or_else(|| not_found(&req.id, ""))?;
        let live = |p: &Process| p.pid != 0 && p.exit.is_none();
        let processes = std::iter::once(&container.init)
            .chain(container.execs.values())
            .filter(|p| live(p))
            .map(|p| containerd_shim::protos::types::task::ProcessInfo { pid: p.pid as u32, ..Default::default() })
            .collect();
        Ok(api::PidsResponse { processes, ..Default::default() })
    }

    fn pause(&self, _ctx: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        self.0.runtime.pause(&req.id).map_err(|e| status(Code::INTERNAL, e))?;
        self.with_process(&req.id, "", |_, init| {
            init.status = Status::PAUSED;
            Ok(())
        })?;
        self.0.publish(topics::TASK_PAUSED_EVENT_TOPIC, Box::new(TaskPaused { container_id: req.id, ..Default::default() }));
        Ok(api::Empty::new())
    }

    fn resume(&self, _ctx: &TtrpcContext, req: api::ResumeRequest) -> TtrpcResult<api::Empty> {
        self.0.runtime.resume(&req.id).map_err(|e| status(Code::INTERNAL, e))?;
        self.with_process(&req.id, "", |_, init| {
            init.status = Status::RUNNING;
            Ok(())
        })?;
        self.0.publish(topics::TASK_RESUMED_EVENT_TOPIC, Box::new(TaskResumed { container_id: req.id, ..Default::default() }));
        Ok(api::Empty::new())
    }

    fn close_io(&self, _ctx: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<api::Empty> {
        self.with_process(&req.id, &req.exec_id, |_, process| {
            if req.stdin {
                process.io.close_stdin();
            }
            Ok(api::Empty::new())
        })
    }

    fn resize_pty(&self, _ctx: &TtrpcContext, req: api::ResizePtyRequest) -> TtrpcResult<api::Empty> {
        let rows = u16::try_from(req.height).unwrap_or(u16::MAX);
        let cols = u16::try_from(req.width).unwrap_or(u16::MAX);
        self.with_process(&req.id, &req.exec_id, |_, process| {
            process.io.resize(rows, cols).map_err(|e| status(Code::INTERNAL, format!("resize: {e}")))?;
            Ok(api::Empty::new())
        })
    }

    /// containerd sends `linux.resources` as JSON (specs.LinuxResources), which `microvm
    /// update --resources` takes as it is.
    fn update(&self, _ctx: &TtrpcContext, req: api::UpdateTaskRequest) -> TtrpcResult<api::Empty> {
        let bundle = {
            let containers = self.0.containers();
            containers.get(&req.id).ok_or_else(|| not_found(&req.id, ""))?.bundle.clone()
        };
        let file = bundle.join("update-resources.json");
        let json = req.resources.as_ref().map(|any| any.value.as_slice()).unwrap_or(b"{}");
        std::fs::write(&file, json).map_err(|e| status(Code::INTERNAL, format!("{}: {e}", file.display())))?;
        let updated = self.0.runtime.update(&req.id, &file);
        let _ = std::fs::remove_file(&file);
        updated.map_err(|e| status(Code::INTERNAL, e))?;
        Ok(api::Empty::new())
    }

    /// The container's cgroup is in the guest: `microvm events --stats` asks the agent for
    /// its counters (see metrics.rs).
    fn stats(&self, _ctx: &TtrpcContext, req: api::StatsRequest) -> TtrpcResult<api::StatsResponse> {
        if !self.0.containers().contains_key(&req.id) {
            return Err(not_found(&req.id, ""));
        }
        let event = self.0.runtime.stats(&req.id).map_err(|e| status(Code::INTERNAL, e))?;
        let any = metrics::to_any(&metrics::from_stats_event(&event)).map_err(|e| status(Code::INTERNAL, e))?;
        Ok(api::StatsResponse { stats: MessageField::some(any), ..Default::default() })
    }

    fn connect(&self, _ctx: &TtrpcContext, req: api::ConnectRequest) -> TtrpcResult<api::ConnectResponse> {
        let task_pid = self.0.containers().get(&req.id).map_or(0, |c| c.init.pid as u32);
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
    }

    /// containerd asks after the last Delete; the shim ends once it serves no container.
    fn shutdown(&self, _ctx: &TtrpcContext, _req: api::ShutdownRequest) -> TtrpcResult<api::Empty> {
        if self.0.containers().is_empty() {
            self.0.shutdown.signal();
        }
        Ok(api::Empty::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_container_is_refused_and_a_plain_one_is_not() {
        let dir = std::env::temp_dir().join(format!("shim-pods-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch");
        std::fs::write(dir.join("config.json"), r#"{"ociVersion":"1.0.2","annotations":{"io.kubernetes.cri.container-type":"sandbox"}}"#).expect("write");
        let refused = refuse_pods(&dir).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(refused.contains("container-type=sandbox"), "{refused}");
        std::fs::write(dir.join("config.json"), r#"{"ociVersion":"1.0.2","annotations":{"a":"b"}}"#).expect("write");
        assert!(refuse_pods(&dir).is_ok());
        std::fs::write(dir.join("config.json"), "{").expect("write");
        assert!(refuse_pods(&dir).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn exec_ids_cannot_leave_the_bundle() {
        assert!(check_exec_id("e1").is_ok());
        assert!(check_exec_id("exec-2.b_c").is_ok());
        for bad in ["", "../x", "a/b", ".hidden", "-x", &"a".repeat(77)] {
            assert!(check_exec_id(bad).is_err(), "{bad:?}");
        }
    }
}
