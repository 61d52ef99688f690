//! A failed step of the container's setup, as reported to the agent: what was being done and
//! why it failed, in one line.

use std::fmt::Display;
use std::io;

use nix::errno::Errno;

use super::channel::FromContainer;

#[derive(Debug)]
pub struct Failure {
    pub step: String,
    pub message: String,
    pub errno: Option<i32>,
    /// Blame the request (a cwd that does not exist, say) rather than the guest.
    pub invalid_request: bool,
    /// `execve` of the command failed.
    pub exec: bool,
}

impl Failure {
    /// A step that failed for a reason other than a system call.
    pub fn new(step: impl Into<String>, message: impl Display) -> Self {
        Failure {
            step: step.into(),
            message: message.to_string(),
            errno: None,
            invalid_request: false,
            exec: false,
        }
    }

    pub fn errno(step: impl Into<String>, errno: Errno) -> Self {
        Failure {
            errno: Some(errno as i32),
            ..Failure::new(step, errno.desc())
        }
    }

    pub fn invalid(self) -> Self {
        Failure {
            invalid_request: true,
            ..self
        }
    }

    pub fn into_message(self) -> FromContainer {
        FromContainer::Failed {
            step: self.step,
            message: self.message,
            errno: self.errno,
            exec: self.exec,
            invalid_request: self.invalid_request,
        }
    }
}

/// `result.at(|| "mount proc on /proc")?`: names the step of a failed call.
pub trait At<T> {
    fn at<S: Into<String>>(self, step: impl FnOnce() -> S) -> Result<T, Failure>;
}

impl<T> At<T> for Result<T, Errno> {
    fn at<S: Into<String>>(self, step: impl FnOnce() -> S) -> Result<T, Failure> {
        self.map_err(|errno| Failure::errno(step(), errno))
    }
}

impl<T> At<T> for Result<T, io::Error> {
    fn at<S: Into<String>>(self, step: impl FnOnce() -> S) -> Result<T, Failure> {
        self.map_err(|error| match error.raw_os_error() {
            Some(raw) => Failure::errno(step(), Errno::from_raw(raw)),
            None => Failure::new(step(), error),
        })
    }
}
