//! The virtio-vsock worker thread: one level-triggered epoll over the rx and tx queue
//! notifications, the device's listener and every host socket. It only routes readiness to
//! the [`Muxer`] and then lets it run the queues; which sockets are watched for what is the
//! muxer's call, applied through [`EpollRegistry`].

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::connection::Interest;
use super::muxer::{Muxer, Readiness, Registry};
use super::uds::UdsListener;
use crate::devices::virtio::{ActiveQueue, Interrupt};
use virtio_queue::QueueT;

const TOKEN_RX: u64 = 0;
const TOKEN_TX: u64 = 1;
const TOKEN_LISTENER: u64 = 2;
const TOKEN_STOP: u64 = 3;
const MAX_EVENTS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum EventHandlerError {
    #[error("virtio-vsock: create epoll: {0}")]
    Epoll(io::Error),
    #[error("virtio-vsock: watch the {what}: {source}")]
    Watch { what: &'static str, source: io::Error },
}

/// The muxer's view of epoll: no interest means the fd is not in the set at all, so a hung-up
/// socket nobody wants to hear from does not wake the thread over and over.
pub struct EpollRegistry<'a>(pub &'a Epoll);

impl Registry for EpollRegistry<'_> {
    fn update(&mut self, fd: RawFd, token: u64, old: Interest, new: Interest) -> io::Result<()> {
        let op = match (old == Interest::NONE, new == Interest::NONE) {
            (true, true) => return Ok(()),
            (true, false) => ControlOperation::Add,
            (false, false) => ControlOperation::Modify,
            (false, true) => ControlOperation::Delete,
        };
        self.0.ctl(op, fd, EpollEvent::new(event_set(new), token))
    }
}

fn event_set(interest: Interest) -> EventSet {
    let mut set = EventSet::empty();
    set.set(EventSet::IN, interest.read);
    set.set(EventSet::OUT, interest.write);
    set
}

/// What an epoll event means for a host socket.
pub fn readiness(events: EventSet) -> Readiness {
    Readiness {
        readable: events.contains(EventSet::IN),
        writable: events.contains(EventSet::OUT),
        hung_up: events.intersects(EventSet::HANG_UP | EventSet::ERROR),
    }
}

pub struct Worker {
    mem: GuestMemoryMmap,
    rx: ActiveQueue,
    tx: ActiveQueue,
    /// Held, never used: no transport events are sent.
    _event: ActiveQueue,
    listener: UdsListener,
    interrupt: Interrupt,
    muxer: Muxer,
    epoll: Epoll,
    /// The VM has stopped: see [`super::Vsock::stopper`].
    _stop: EventFd,
}

impl Worker {
    pub fn new(
        mem: GuestMemoryMmap,
        [rx, tx, event]: [ActiveQueue; 3],
        listener: UdsListener,
        interrupt: Interrupt,
        guest_cid: u64,
        stop: EventFd,
    ) -> Result<Self, EventHandlerError> {
        let epoll = Epoll::new().map_err(EventHandlerError::Epoll)?;
        let fds = [
            ("rx queue notification", rx.kick.as_raw_fd(), TOKEN_RX),
            ("tx queue notification", tx.kick.as_raw_fd(), TOKEN_TX),
            ("listener", listener.listener().as_raw_fd(), TOKEN_LISTENER),
            ("stop event", stop.as_raw_fd(), TOKEN_STOP),
        ];
        for (what, fd, token) in fds {
            epoll
                .ctl(ControlOperation::Add, fd, EpollEvent::new(EventSet::IN, token))
                .map_err(|source| EventHandlerError::Watch { what, source })?;
        }
        let muxer = Muxer::new(guest_cid, listener.path().to_owned());
        Ok(Self { mem, rx, tx, _event: event, listener, interrupt, muxer, epoll, _stop: stop })
    }

    /// Serves the device until the VM stops (or epoll fails, which it does not short of a
    /// bug); returning drops the listener and every host connection.
    pub fn run(mut self) {
        if let Err(error) = crate::seccomp::install(crate::seccomp::ThreadKind::Device) {
            tracing::error!("virtio-vsock: {error}; the device stops");
            return;
        }
        let mut events = vec![EpollEvent::default(); MAX_EVENTS];
        // The driver may have queued packets before we started watching.
        self.service(true);
        loop {
            let n = match self.epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::error!("virtio-vsock: epoll wait: {e}; the device stops");
                    return;
                }
            };
            let mut tx_kicked = false;
            for event in &events[..n] {
                match event.data() {
                    // The eventfds are blocking, but epoll said they are readable.
                    TOKEN_RX => drop(self.rx.kick.read()),
                    TOKEN_TX => {
                        let _ = self.tx.kick.read();
                        tx_kicked = true;
                    }
                    TOKEN_LISTENER => self.accept(),
                    TOKEN_STOP => return,
                    token => self.muxer.on_ready(token, readiness(event.event_set())),
                }
            }
            self.service(tx_kicked);
        }
    }

    fn accept(&mut self) {
        loop {
            match self.listener.listener().accept() {
                Ok((stream, _)) => self.muxer.add_host_client(stream),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::warn!("virtio-vsock: accept on {}: {e}", self.listener.path().display());
                    return;
                }
            }
        }
    }

    /// Runs the queues until nothing more can move, then interrupts the guest if needed.
    fn service(&mut self, tx_kicked: bool) {
        let (mut rx_used, mut tx_used) = (false, false);
        let mut run_tx = tx_kicked || self.muxer.tx_stalled();
        loop {
            if run_tx {
                tx_used |= self.muxer.process_tx(&self.mem, &mut self.tx.queue);
            }
            rx_used |= self.muxer.process_rx(&self.mem, &mut self.rx.queue);
            let closed = self.muxer.sync(&mut EpollRegistry(&self.epoll));
            // Resets drained by rx let a paused tx go on; each round consumes guest buffers,
            // so this ends.
            run_tx = self.muxer.tx_stalled() && self.muxer.tx_can_resume();
            if !run_tx && !closed {
                break;
            }
        }
        let mut notify = false;
        for (used, queue) in [(rx_used, &mut self.rx.queue), (tx_used, &mut self.tx.queue)] {
            notify |= used && queue.needs_notification(&self.mem).unwrap_or(true);
        }
        if notify {
            if let Err(e) = self.interrupt.signal_used() {
                tracing::warn!("virtio-vsock: interrupt: {e}");
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use crate::devices::virtio::vsock::packet::{Header, OP_REQUEST, OP_RESPONSE, OP_RW};
    use crate::devices::virtio::test_driver::Ring;
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixStream;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;
    use std::time::Duration;
    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::eventfd::EventFd;
    use vmm_sys_util::tempdir::TempDir;

    #[test]
    fn worker_relays_a_host_connection_through_the_queues() {
        let dir = TempDir::new().unwrap();
        let path = dir.as_path().join("v.sock");
        let listener = UdsListener::bind(&path).unwrap();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 22)]).unwrap();
        let [mut rx, mut tx, event] = [0, 0x1_0000, 0x2_0000].map(Ring::new);
        // Blocking, as the transport makes them.
        let kicks = [(); 3].map(|_| EventFd::new(0).unwrap());
        let queues = [&rx, &tx, &event].map(|r| r.queue());
        let active = queues.into_iter().zip(&kicks).map(|(queue, k)| ActiveQueue { queue, kick: k.try_clone().unwrap() });
        let active: [ActiveQueue; 3] = active.collect::<Vec<_>>().try_into().ok().unwrap();
        let (status, irq) = (Arc::new(AtomicU32::new(0)), Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
        let stop = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let interrupt = Interrupt::new(status.clone(), irq.clone());
        let worker = Worker::new(mem.clone(), active, listener, interrupt, 3, stop.try_clone().unwrap()).unwrap();
        let thread = std::thread::Builder::new().name("virtio-vsock".into()).spawn(move || worker.run()).unwrap();

        let mut client = UnixStream::connect(&path).unwrap();
        client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        client.write_all(b"CONNECT 52\n").unwrap();
        rx.offer(&mem, &[(0x10_0000, 44 + 4096, true)]);
        kicks[0].write(1).unwrap();
        assert_eq!(rx.wait_used(&mem), [(0, 44)]);
        let request: Header = mem.read_obj(GuestAddress(0x10_0000)).unwrap();
        assert_eq!((request.op(), request.dst_port(), request.dst_cid()), (OP_REQUEST, 52, 3));
        assert!(irq.read().unwrap() > 0 && status.load(Ordering::SeqCst) & 1 == 1, "the guest was interrupted");

        let response = Header::from_guest(3, 52, request.src_port(), OP_RESPONSE).with_credit(4096, 0);
        mem.write_obj(response, GuestAddress(0x20_0000)).unwrap();
        tx.offer(&mem, &[(0x20_0000, 44, false)]);
        kicks[1].write(1).unwrap();
        let mut line = String::new();
        BufReader::new(&client).read_line(&mut line).unwrap();
        assert_eq!(line, format!("OK {}\n", request.src_port()));
        assert_eq!(tx.wait_used(&mem), [(0, 0)]);

        client.write_all(b"ping").unwrap();
        rx.offer(&mem, &[(0x11_0000, 44 + 4096, true)]);
        kicks[0].write(1).unwrap();
        assert_eq!(rx.wait_used(&mem), [(1, 48)]);
        let data: Header = mem.read_obj(GuestAddress(0x11_0000)).unwrap();
        let mut payload = [0u8; 4];
        mem.read_slice(&mut payload, GuestAddress(0x11_0000 + 44)).unwrap();
        assert_eq!((data.op(), &payload), (OP_RW, b"ping"));

        // The VM stops: the worker ends, the open connection reads end-of-file and the socket
        // is gone, so nobody on the host waits for a guest that cannot answer.
        stop.write(1).unwrap();
        thread.join().unwrap();
        let mut rest = Vec::new();
        std::io::Read::read_to_end(&mut client, &mut rest).unwrap();
        assert!(rest.is_empty(), "nothing after the stop: {rest:?}");
        assert!(!path.exists(), "the listener's socket is removed");
    }
}
