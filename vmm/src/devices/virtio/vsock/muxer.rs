//! Packet routing between the guest's queues and host Unix sockets. The muxer owns every
//! connection and every host client still in its CONNECT handshake, takes packets from the tx
//! queue, fills the rx queue, and is told about host socket readiness by token. It never
//! waits: what each socket should be watched for is handed to a [`Registry`] (epoll in the
//! device, a recorder in tests) by [`Muxer::sync`].

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;

use super::connection::{Connection, Interest, State};
use super::handshake::Handshake;
use super::packet::{self, Header, MAX_PKT_LEN, OP_REQUEST, OP_RST};
use super::uds::{self, HostSocket};

/// Connections plus host clients in their handshake, at most.
pub const MAX_CONNECTIONS: usize = 1024;
/// Resets waiting for rx buffers, at most, before tx processing pauses.
const RESET_BACKLOG: usize = 64;
/// Host ports of host-initiated connections count up from here (as in Firecracker).
const FIRST_HOST_PORT: u32 = 1 << 30;
/// Tokens below this are the event handler's own.
pub const FIRST_TOKEN: u64 = 16;

/// (host port, guest port).
type ConnKey = (u32, u32);

/// Watches fds for readiness on behalf of the muxer.
pub trait Registry {
    /// Makes the watch on `fd` (under `token`) go from `old` to `new`; [`Interest::NONE`]
    /// means not watched at all.
    fn update(&mut self, fd: RawFd, token: u64, old: Interest, new: Interest) -> io::Result<()>;
}

/// What epoll reported for a token.
#[derive(Clone, Copy, Debug, Default)]
pub struct Readiness {
    pub readable: bool,
    pub writable: bool,
    /// Hang-up or error: reading will tell which.
    pub hung_up: bool,
}

struct Entry {
    conn: Connection<HostSocket>,
    token: u64,
    queued: bool,
    watched: Interest,
}

enum Target {
    Conn(ConnKey),
    Client { stream: UnixStream, handshake: Handshake, watched: Interest },
}

pub struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    conns: HashMap<ConnKey, Entry>,
    targets: HashMap<u64, Target>,
    /// Connections with something for the guest, in turn.
    rx_order: VecDeque<ConnKey>,
    resets: VecDeque<Header>,
    /// Tokens whose watch may need changing.
    dirty: Vec<u64>,
    /// Closed streams still watched: unwatched, then dropped, at the next sync.
    retired: Vec<(u64, UnixStream, Interest)>,
    next_token: u64,
    next_host_port: u32,
    tx_stalled: bool,
    buf: Box<[u8]>,
}

impl Muxer {
    pub fn new(guest_cid: u64, uds_path: PathBuf) -> Self {
        Self {
            guest_cid,
            uds_path,
            conns: HashMap::new(),
            targets: HashMap::new(),
            rx_order: VecDeque::new(),
            resets: VecDeque::new(),
            dirty: Vec::new(),
            retired: Vec::new(),
            next_token: FIRST_TOKEN,
            next_host_port: FIRST_HOST_PORT,
            tx_stalled: false,
            buf: vec![0u8; MAX_PKT_LEN].into_boxed_slice(),
        }
    }

    /// Whether tx processing paused for want of rx buffers (too many resets owed).
    pub fn tx_stalled(&self) -> bool {
        self.tx_stalled
    }

    /// Whether tx processing can go on after a pause.
    pub fn tx_can_resume(&self) -> bool {
        self.resets.len() < RESET_BACKLOG
    }

    fn occupancy(&self) -> usize {
        self.targets.len()
    }

    fn new_token(&mut self) -> u64 {
        self.next_token += 1;
        self.next_token
    }

    /// Takes every packet the guest queued; returns whether any buffer was used.
    pub fn process_tx(&mut self, mem: &GuestMemoryMmap, queue: &mut Queue) -> bool {
        let mut used = false;
        self.tx_stalled = false;
        loop {
            if !self.tx_can_resume() {
                self.tx_stalled = true;
                break;
            }
            let Some(chain) = queue.pop_descriptor_chain(mem) else { break };
            let head = chain.head_index();
            match chain.reader(mem) {
                Ok(mut reader) => match packet::read_packet(&mut reader, self.guest_cid) {
                    Ok((header, payload)) => self.on_guest_packet(&header, &payload),
                    Err((e, header)) => {
                        tracing::warn!("virtio-vsock: dropped {e}");
                        if let Some(h) = header.filter(|h| e.wants_reset() && h.op() != OP_RST) {
                            self.resets.push_back(h.reset_reply());
                        }
                    }
                },
                Err(e) => tracing::warn!("virtio-vsock: tx chain {head} dropped: {e:?}"),
            }
            if let Err(e) = queue.add_used(mem, head, 0) {
                tracing::warn!("virtio-vsock: tx used ring: {e:?}");
            }
            used = true;
        }
        used
    }

    fn on_guest_packet(&mut self, header: &Header, payload: &[u8]) {
        let key = (header.dst_port(), header.src_port());
        if let Some(entry) = self.conns.get_mut(&key) {
            entry.conn.on_guest_packet(header, payload);
            return self.touch(key);
        }
        match header.op() {
            OP_REQUEST => self.guest_connect(header),
            OP_RST => {}
            op => {
                tracing::debug!("virtio-vsock: op {op} for unknown connection {key:?}");
                self.resets.push_back(header.reset_reply());
            }
        }
    }

    /// The guest connects to host port P: `<uds_path>_<P>`.
    fn guest_connect(&mut self, request: &Header) {
        if self.occupancy() >= MAX_CONNECTIONS {
            tracing::warn!("virtio-vsock: {MAX_CONNECTIONS} connections open, refusing another");
            return self.resets.push_back(request.reset_reply());
        }
        let path = uds::port_path(&self.uds_path, request.dst_port());
        match uds::connect_nonblocking(&path) {
            Ok(stream) => {
                let key = (request.dst_port(), request.src_port());
                let token = self.new_token();
                let conn = Connection::accepted(HostSocket::new(stream), self.guest_cid, request);
                self.conns.insert(key, Entry { conn, token, queued: false, watched: Interest::NONE });
                self.targets.insert(token, Target::Conn(key));
                self.touch(key);
            }
            Err(e) => {
                tracing::debug!("virtio-vsock: guest connect to {}: {e}", path.display());
                self.resets.push_back(request.reset_reply());
            }
        }
    }

    /// A host client connected to the device's socket; it will send its CONNECT line.
    pub fn add_host_client(&mut self, stream: UnixStream) {
        if self.occupancy() >= MAX_CONNECTIONS {
            tracing::warn!("virtio-vsock: {MAX_CONNECTIONS} connections open, closing a new host client");
            return;
        }
        if let Err(e) = stream.set_nonblocking(true) {
            tracing::warn!("virtio-vsock: host client: {e}");
            return;
        }
        let token = self.new_token();
        let client = Target::Client { stream, handshake: Handshake::default(), watched: Interest::NONE };
        self.targets.insert(token, client);
        self.dirty.push(token);
    }

    /// Readiness of a host socket.
    pub fn on_ready(&mut self, token: u64, ready: Readiness) {
        match self.targets.get_mut(&token) {
            Some(Target::Client { stream, handshake, .. }) => match handshake.read_from(stream) {
                Ok(None) => {}
                Ok(Some(port)) => self.client_connects(token, port),
                Err(e) => {
                    tracing::warn!("virtio-vsock: host client: {e}");
                    if let Some(Target::Client { stream, watched, .. }) = self.targets.remove(&token) {
                        self.retired.push((token, stream, watched));
                    }
                }
            },
            Some(Target::Conn(key)) => {
                let key = *key;
                if let Some(entry) = self.conns.get_mut(&key) {
                    if ready.readable || ready.hung_up {
                        entry.conn.on_host_readable(ready.hung_up);
                    }
                    if ready.writable || ready.hung_up {
                        entry.conn.on_host_writable();
                    }
                    self.touch(key);
                }
            }
            None => {}
        }
    }

    /// The client's CONNECT line named guest `port`: it becomes a connection from a fresh
    /// host port, keeping its token.
    fn client_connects(&mut self, token: u64, port: u32) {
        let Some(Target::Client { stream, watched, .. }) = self.targets.remove(&token) else { return };
        let Some(local) = self.free_host_port(port) else {
            tracing::warn!("virtio-vsock: no free host port for guest port {port}");
            return self.retired.push((token, stream, watched));
        };
        let conn = Connection::connecting(HostSocket::new(stream), self.guest_cid, local, port);
        self.conns.insert((local, port), Entry { conn, token, queued: false, watched });
        self.targets.insert(token, Target::Conn((local, port)));
        self.touch((local, port));
    }

    fn free_host_port(&mut self, peer_port: u32) -> Option<u32> {
        // At most MAX_CONNECTIONS keys are taken, so this ends within that many steps.
        for _ in 0..=MAX_CONNECTIONS {
            let port = self.next_host_port;
            self.next_host_port = port.checked_add(1).filter(|p| *p != u32::MAX).unwrap_or(FIRST_HOST_PORT);
            if !self.conns.contains_key(&(port, peer_port)) {
                return Some(port);
            }
        }
        None
    }

    /// After anything happened to a connection: remove it if closed (owing the guest an RST
    /// if it knew of it), queue it if it has something for the guest, re-check its watch.
    fn touch(&mut self, key: ConnKey) {
        let Some(entry) = self.conns.get_mut(&key) else { return };
        if let State::Closed { reset } = entry.conn.state() {
            if let Some(entry) = self.conns.remove(&key) {
                self.targets.remove(&entry.token);
                if reset {
                    self.resets.push_back(entry.conn.reset_header());
                }
                self.retired.push((entry.token, entry.conn.into_stream().into_inner(), entry.watched));
            }
            return;
        }
        if !entry.queued && entry.conn.wants_rx() {
            entry.queued = true;
            self.rx_order.push_back(key);
        }
        self.dirty.push(entry.token);
    }

    /// Fills rx buffers while there is something for the guest; returns whether any buffer
    /// was used.
    pub fn process_rx(&mut self, mem: &GuestMemoryMmap, queue: &mut Queue) -> bool {
        let mut used = false;
        while !self.resets.is_empty() || !self.rx_order.is_empty() {
            let Some(chain) = queue.pop_descriptor_chain(mem) else { break };
            let head = chain.head_index();
            let mut len = 0;
            match chain.writer(mem) {
                Ok(mut writer) => match packet::payload_room(&writer) {
                    Some(room) => {
                        let Some((header, n)) = self.next_packet(room) else {
                            // Nothing after all: the buffer stays the guest's.
                            queue.go_to_previous_position();
                            break;
                        };
                        match packet::write_packet(&mut writer, header, &self.buf[..n]) {
                            Ok(written) => len = written,
                            Err(e) => tracing::warn!("virtio-vsock: {e}"),
                        }
                    }
                    None => tracing::warn!("virtio-vsock: rx buffer {head} is smaller than a header"),
                },
                Err(e) => tracing::warn!("virtio-vsock: rx chain {head} dropped: {e:?}"),
            }
            if let Err(e) = queue.add_used(mem, head, len) {
                tracing::warn!("virtio-vsock: rx used ring: {e:?}");
            }
            used = true;
        }
        used
    }

    /// The next packet for the guest, its payload in `self.buf[..n]`: owed resets first, then
    /// one round over the queued connections.
    fn next_packet(&mut self, room: usize) -> Option<(Header, usize)> {
        if let Some(reset) = self.resets.pop_front() {
            return Some((reset, 0));
        }
        for _ in 0..self.rx_order.len() {
            let key = self.rx_order.pop_front()?;
            let Some(entry) = self.conns.get_mut(&key) else { continue };
            entry.queued = false;
            let packet = entry.conn.next_rx(room, &mut self.buf);
            // Requeues it at the back if it has more, or turns its loss into a reset.
            self.touch(key);
            if packet.is_some() {
                return packet;
            }
        }
        self.resets.pop_front().map(|reset| (reset, 0))
    }

    /// Brings the registry up to date with what each socket should be watched for; returns
    /// whether that closed a connection (an RST may now be owed).
    pub fn sync(&mut self, registry: &mut impl Registry) -> bool {
        let mut closed = false;
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.sort_unstable();
        dirty.dedup();
        for token in dirty {
            match self.targets.get_mut(&token) {
                Some(Target::Client { stream, watched, .. }) if *watched != Interest::READ => {
                    match registry.update(stream.as_raw_fd(), token, *watched, Interest::READ) {
                        Ok(()) => *watched = Interest::READ,
                        Err(e) => tracing::warn!("virtio-vsock: watch host client: {e}"),
                    }
                }
                Some(Target::Conn(key)) => {
                    let key = *key;
                    let Some(entry) = self.conns.get_mut(&key) else { continue };
                    let want = entry.conn.interest();
                    if want == entry.watched {
                        continue;
                    }
                    match registry.update(entry.conn.stream().as_raw_fd(), token, entry.watched, want) {
                        Ok(()) => entry.watched = want,
                        Err(e) => {
                            tracing::warn!("virtio-vsock: watch connection {key:?}: {e}");
                            entry.conn.kill();
                            self.touch(key);
                            closed = true;
                        }
                    }
                }
                _ => {}
            }
        }
        for (token, stream, watched) in self.retired.drain(..) {
            if watched != Interest::NONE {
                if let Err(e) = registry.update(stream.as_raw_fd(), token, watched, Interest::NONE) {
                    tracing::debug!("virtio-vsock: unwatch closed socket: {e}");
                }
            }
        }
        closed
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
#[path = "muxer_tests.rs"]
mod tests;
