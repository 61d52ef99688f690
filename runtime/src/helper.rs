//! A helper process the runtime starts for one VM (passt, virtiofsd), killed and reaped if
//! the VM is never built. Once the VMM holds the helper's socket, the helper's life is tied to
//! that socket (it exits when the socket closes, however the VMM ends) and it is handed over:
//! no longer killed on drop, and reaped by whoever inherits it.

use std::process::Child;

pub struct Helper(Option<Child>);

impl Helper {
    pub fn new(child: Child) -> Self {
        Self(Some(child))
    }

    /// The process, until it is handed over.
    pub fn child(&mut self) -> Option<&mut Child> {
        self.0.as_mut()
    }

    pub fn handed_over(&mut self) {
        self.0 = None;
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
