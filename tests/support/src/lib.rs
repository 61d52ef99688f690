//! Helpers shared by microvm's end-to-end tests and benchmarks: a builder that runs the real
//! `microvm` binary and kills it if a test gives up on it, and tiny hand-assembled guests.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub mod tiny;

/// What a finished `microvm` run produced.
#[derive(Debug)]
pub struct Outcome {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    /// The run's stderr lines that are not log lines (microvm's own messages).
    pub fn error_lines(&self) -> Vec<&str> {
        self.stderr.lines().filter(|l| !l.trim().is_empty()).collect()
    }
}

/// Runs `microvm` with arguments; the child is killed if still running when dropped.
pub struct Microvm {
    cmd: Command,
    timeout: Duration,
}

impl Microvm {
    pub fn new(binary: impl AsRef<Path>) -> Self {
        let mut cmd = Command::new(binary.as_ref());
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        Self { cmd, timeout: Duration::from_secs(120) }
    }

    pub fn arg(mut self, a: impl AsRef<std::ffi::OsStr>) -> Self {
        self.cmd.arg(a);
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: AsRef<std::ffi::OsStr>>(mut self, a: I) -> Self {
        self.cmd.args(a);
        self
    }

    pub fn env(mut self, key: &str, value: impl AsRef<std::ffi::OsStr>) -> Self {
        self.cmd.env(key, value);
        self
    }

    /// Removes every `MICROVM_*` variable the caller (tests/run.sh) passed down.
    pub fn without_microvm_env(mut self) -> Self {
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("MICROVM_") {
                self.cmd.env_remove(key);
            }
        }
        self
    }

    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// Runs to completion, or panics (after killing the child) when the timeout passes.
    pub fn run(mut self) -> Outcome {
        let child = self.cmd.spawn().expect("spawn microvm");
        let mut guard = ChildGuard(Some(child));
        let deadline = Instant::now() + self.timeout;
        let child = guard.0.as_mut().expect("child");
        let mut out_pipe = child.stdout.take().expect("stdout");
        let mut err_pipe = child.stderr.take().expect("stderr");
        let out = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out_pipe.read_to_string(&mut s);
            s
        });
        let err = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err_pipe.read_to_string(&mut s);
            s
        });
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait microvm") {
                break status;
            }
            if Instant::now() > deadline {
                let report = thread_report(child.id());
                drop(guard);
                panic!("microvm did not finish within {:?}; its threads, and its children's, were at:\n{report}", self.timeout);
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        guard.0 = None;
        Outcome {
            code: status.code(),
            stdout: out.join().expect("stdout reader"),
            stderr: err.join().expect("stderr reader"),
        }
    }
}

/// Kills a process still running when a time limit passes, so that a hung child fails its
/// test, with a line saying so, instead of holding the whole suite until the bed's watchdog
/// stops it. A microvm process gets SIGUSR2 first, and [`GUEST_STATE_WAIT`] to write the
/// guest's state to its stderr. Dropping the guard (after waiting for the child) disarms it.
pub struct KillAfter {
    disarm: Option<std::sync::mpsc::Sender<()>>,
    timer: Option<std::thread::JoinHandle<()>>,
}

impl KillAfter {
    pub fn new(pid: u32, limit: Duration, what: &str) -> Self {
        let (disarm, armed) = std::sync::mpsc::channel::<()>();
        let what = what.to_owned();
        let timer = std::thread::spawn(move || {
            if armed.recv_timeout(limit) == Err(std::sync::mpsc::RecvTimeoutError::Timeout) {
                eprintln!(
                    "test-support: {what} (pid {pid}) still running after {limit:?}: killed; its threads, and its children's, were at:\n{}",
                    thread_report(pid)
                );
                let pid = i32::try_from(pid).expect("pid fits in pid_t");
                if is_microvm(pid) {
                    // SAFETY: as for SIGKILL below. microvm writes the guest's state (vCPU
                    // registers, console tail) to its stderr, which the test captures.
                    unsafe { libc::kill(pid, libc::SIGUSR2) };
                    std::thread::sleep(GUEST_STATE_WAIT);
                }
                // SAFETY: kill takes plain integers; the pid is our unreaped child, so it
                // cannot have been reused.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        });
        Self { disarm: Some(disarm), timer: Some(timer) }
    }
}

impl Drop for KillAfter {
    fn drop(&mut self) {
        drop(self.disarm.take());
        if let Some(t) = self.timer.take() {
            let _ = t.join();
        }
    }
}

/// How long a hung microvm gets to write its guest-state report (SIGUSR2) before SIGKILL.
const GUEST_STATE_WAIT: Duration = Duration::from_secs(2);

/// Whether process `pid` runs the microvm binary.
fn is_microvm(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim_end() == "microvm")
}

/// Each thread of `pid` and of its descendants: name, wait channel, kernel stack (readable
/// as root), so that a hung run says where it hung.
pub fn thread_report(pid: u32) -> String {
    let mut pids = vec![pid];
    let mut i = 0;
    while i < pids.len() {
        pids.extend(children_of(pids[i]));
        i += 1;
    }
    let read = |path: String| std::fs::read_to_string(path).unwrap_or_default();
    let mut out = String::new();
    for p in pids {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else { continue };
        out += &format!("pid {p}: {}\n", read(format!("/proc/{p}/cmdline")).replace('\0', " "));
        for task in tasks.flatten() {
            let t = task.path().display().to_string();
            out += &format!(
                "  {} {} {}\n",
                read(format!("{t}/comm")).trim(),
                read(format!("{t}/wchan")).trim(),
                read(format!("{t}/stack")).trim().replace('\n', " < ")
            );
        }
    }
    out
}

/// Every process id in /proc.
fn all_pids() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok()).collect()
}

/// Process ids whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    all_pids()
        .into_iter()
        .filter(|p| {
            // The parent is the 2nd field after the parenthesised command name.
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.to_owned()))
                .and_then(|rest| rest.split(' ').nth(1).and_then(|f| f.parse::<u32>().ok()))
                == Some(pid)
        })
        .collect()
}

/// Kills and reaps the child if the test stops caring about it.
struct ChildGuard(Option<Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A fresh scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("microvm-test-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&p).expect("create temp dir");
        Self(p)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `cmd` with stdin and stdout on a new pseudo-terminal of `rows` x `cols` (stderr
/// piped), as a user's terminal would be; returns its exit code and all the terminal showed.
pub fn run_in_pty(mut cmd: Command, rows: u16, cols: u16) -> (Option<i32>, String) {
    use std::os::fd::{FromRawFd, OwnedFd};
    let (mut master, mut slave) = (-1, -1);
    let size = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: openpty writes two new descriptors into `master` and `slave`; the name and
    // termios pointers may be null, and `size` outlives the call. The result is checked.
    let rc = unsafe { libc::openpty(&mut master, &mut slave, std::ptr::null_mut(), std::ptr::null(), &size) };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just created by openpty and are owned by nothing else.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    cmd.stdin(Stdio::from(slave.try_clone().expect("dup pty")))
        .stdout(Stdio::from(slave))
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn under a pty");
    // The Command still holds our copies of the slave: drop them, or the master never sees
    // the terminal close.
    drop(cmd);
    let mut master = std::fs::File::from(master);
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        // Reading the master ends with EIO once every slave descriptor is closed.
        let _ = master.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    });
    let status = {
        let _limit = KillAfter::new(child.id(), Duration::from_secs(300), "a command under a pty");
        child.wait().expect("wait")
    };
    (status.code(), reader.join().expect("pty reader"))
}

/// GET `url_path` from `addr` over plain HTTP/1.0: the body, or None when nothing answered
/// (the network tests poll a published port with it while the container boots).
pub fn http_get(addr: &str, url_path: &str) -> Option<String> {
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(stream, "GET {url_path} HTTP/1.0\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned())
}

/// A path the test runner (tests/run.sh) passes in the environment variable `var`; a test
/// without it fails, naming the variable, rather than being skipped.
pub fn input(var: &str) -> PathBuf {
    let path = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("{var} is not set: run the guest tests through tests/run.sh"));
    assert!(path.exists(), "{var}={} does not exist", path.display());
    path
}

/// Process ids of running processes whose command line contains `needle`.
pub fn processes_matching(needle: &str) -> Vec<u32> {
    processes_whose("cmdline", needle)
}

/// Processes whose environment holds `needle` (children that inherited a test's variables,
/// such as the passt a `microvm run` starts).
pub fn processes_with_env(needle: &str) -> Vec<u32> {
    processes_whose("environ", needle)
}

/// Processes whose /proc/PID/`file` holds `needle`.
fn processes_whose(file: &str, needle: &str) -> Vec<u32> {
    all_pids()
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/{file}"))
                .map(|c| String::from_utf8_lossy(&c).contains(needle))
                .unwrap_or(false)
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    #[test]
    fn thread_report_names_the_children() {
        let mut child = std::process::Command::new("sh").args(["-c", "sleep 30; :"]).spawn().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let report = loop {
            let r = super::thread_report(child.id());
            if r.contains("sleep 30 ") || std::time::Instant::now() > deadline {
                break r;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(report.contains(&format!("pid {}: sh -c", child.id())), "{report}");
        assert!(report.contains("sleep 30 "), "{report}");
    }
}
