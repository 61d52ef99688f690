//! One vsock stream connection between a guest port and a host stream (virtio 1.2, section
//! 5.10.6.4-5.10.6.6): its state, the control packets it owes the guest, credit accounting,
//! and the guest bytes waiting for the host side. The host side is any non-blocking
//! [`HostStream`] (a Unix socket in the device, an in-memory fake in tests); the connection
//! never waits, it reports what it wants to wait for through [`Connection::interest`].

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};

use super::credit::{Credit, BUF_ALLOC};
use super::packet::{
    Header, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW, OP_SHUTDOWN, SHUTDOWN_BOTH,
    SHUTDOWN_RCV, SHUTDOWN_SEND,
};

/// The host end of a connection, non-blocking ([`super::uds::HostSocket`] in the device).
pub trait HostStream: Read + Write {
    /// Half-closes the write direction (the guest sent SHUTDOWN with SEND).
    fn shutdown_write(&self) -> std::io::Result<()>;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Host-initiated: the REQUEST is owed or sent, the guest has not answered.
    Connecting,
    Established,
    /// Finished: the owner removes it, sending the guest an RST first if `reset`.
    Closed { reset: bool },
}

/// Readiness a connection wants to hear about; neither means "do not watch the fd".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Interest {
    pub read: bool,
    pub write: bool,
}

impl Interest {
    pub const NONE: Self = Self { read: false, write: false };
    pub const READ: Self = Self { read: true, write: false };
}

pub struct Connection<S> {
    stream: S,
    guest_cid: u64,
    local_port: u32,
    peer_port: u32,
    state: State,
    credit: Credit,
    /// Guest bytes the host stream has not taken yet; never more than [`BUF_ALLOC`].
    to_host: VecDeque<u8>,
    owe_request: bool,
    owe_response: bool,
    owe_credit_update: bool,
    /// SHUTDOWN flags owed to the guest (0: none).
    owe_shutdown: u32,
    /// The host stream may have bytes (or EOF) for the guest.
    host_readable: bool,
    /// The host end hung up entirely.
    host_hup: bool,
    /// The host stream reached EOF; we told (or owe) the guest SHUTDOWN.
    host_eof: bool,
    host_write_shut: bool,
    /// SHUTDOWN flags the guest sent.
    peer_shutdown: u32,
}

impl<S: HostStream> Connection<S> {
    fn new(stream: S, guest_cid: u64, local_port: u32, peer_port: u32, state: State) -> Self {
        Self {
            stream,
            guest_cid,
            local_port,
            peer_port,
            state,
            credit: Credit::default(),
            to_host: VecDeque::new(),
            owe_request: false,
            owe_response: false,
            owe_credit_update: false,
            owe_shutdown: 0,
            host_readable: false,
            host_hup: false,
            host_eof: false,
            host_write_shut: false,
            peer_shutdown: 0,
        }
    }

    /// A host client asked for guest port `peer_port`; we will send the REQUEST from `local_port`.
    pub fn connecting(stream: S, guest_cid: u64, local_port: u32, peer_port: u32) -> Self {
        Self { owe_request: true, ..Self::new(stream, guest_cid, local_port, peer_port, State::Connecting) }
    }

    /// The guest's `request` was connected to `stream`; we owe it the RESPONSE.
    pub fn accepted(stream: S, guest_cid: u64, request: &Header) -> Self {
        let mut conn = Self::new(stream, guest_cid, request.dst_port(), request.src_port(), State::Established);
        conn.credit.peer_update(request.buf_alloc(), request.fwd_cnt());
        conn.owe_response = true;
        conn
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn stream(&self) -> &S {
        &self.stream
    }

    pub fn into_stream(self) -> S {
        self.stream
    }

    /// The RST that tells the guest this connection is gone.
    pub fn reset_header(&self) -> Header {
        Header::to_guest(self.guest_cid, self.local_port, self.peer_port, OP_RST)
    }

    /// Ends the connection; the guest hears an RST if it knows about the connection.
    pub fn kill(&mut self) {
        let guest_knows = !(self.state == State::Connecting && self.owe_request);
        self.state = State::Closed { reset: guest_knows };
    }

    /// A packet the guest sent on this connection (header already validated).
    pub fn on_guest_packet(&mut self, header: &Header, payload: &[u8]) {
        if matches!(self.state, State::Closed { .. }) {
            return;
        }
        self.credit.peer_update(header.buf_alloc(), header.fwd_cnt());
        match (self.state, header.op()) {
            (_, OP_RST) => self.state = State::Closed { reset: false },
            (State::Connecting, OP_RESPONSE) if !self.owe_request => self.established_by_guest(),
            (State::Established, OP_RW) => self.push_to_host(payload),
            (State::Established, OP_CREDIT_REQUEST) => self.owe_credit_update = true,
            (State::Established, OP_SHUTDOWN) => {
                self.peer_shutdown |= header.flags() & SHUTDOWN_BOTH;
                self.after_host_write();
            }
            (_, OP_CREDIT_UPDATE) => {}
            (state, op) => {
                tracing::warn!("virtio-vsock: op {op} in state {state:?} on port {}", self.local_port);
                self.kill();
            }
        }
    }

    /// The guest accepted our REQUEST: tell the host client which port it got, then relay.
    fn established_by_guest(&mut self) {
        let line = format!("OK {}\n", self.local_port);
        // A fresh socket's send buffer is empty, so a 16-byte line goes out whole; anything
        // else means the client is gone.
        match self.stream.write(line.as_bytes()) {
            Ok(n) if n == line.len() => {
                self.state = State::Established;
                // The client may have sent bytes already; try a read.
                self.host_readable = true;
            }
            _ => self.kill(),
        }
    }

    fn push_to_host(&mut self, payload: &[u8]) {
        if self.peer_shutdown & SHUTDOWN_SEND != 0 {
            tracing::warn!("virtio-vsock: data after SHUTDOWN(SEND) on port {}", self.local_port);
            return self.kill();
        }
        if self.to_host.len() + payload.len() > BUF_ALLOC as usize {
            tracing::warn!("virtio-vsock: guest overran its credit on port {}", self.local_port);
            return self.kill();
        }
        self.to_host.extend(payload);
        self.flush_to_host();
    }

    /// The host stream can take bytes again.
    pub fn on_host_writable(&mut self) {
        if self.state == State::Established {
            self.flush_to_host();
        }
    }

    fn flush_to_host(&mut self) {
        while !self.to_host.is_empty() {
            let (front, _) = self.to_host.as_slices();
            match self.stream.write(front) {
                Ok(0) => return self.kill(),
                Ok(n) => {
                    self.to_host.drain(..n);
                    self.credit.forwarded(n as u32);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return self.kill(),
            }
        }
        self.after_host_write();
    }

    fn after_host_write(&mut self) {
        if self.credit.update_due() {
            self.owe_credit_update = true;
        }
        if !self.to_host.is_empty() {
            return;
        }
        if self.peer_shutdown == SHUTDOWN_BOTH {
            // The guest closed; it waits for our RST (Linux: virtio_transport_close).
            self.state = State::Closed { reset: true };
        } else if self.peer_shutdown & SHUTDOWN_SEND != 0 && !self.host_write_shut {
            self.host_write_shut = true;
            if let Err(e) = self.stream.shutdown_write() {
                tracing::debug!("virtio-vsock: half-close port {}: {e}", self.local_port);
            }
        }
    }

    /// Readiness on the host stream: readable, or hung up (the read will tell EOF or error).
    pub fn on_host_readable(&mut self, hung_up: bool) {
        self.host_readable = true;
        self.host_hup |= hung_up;
    }

    fn can_send_data(&self) -> bool {
        self.state == State::Established
            && !self.host_eof
            && self.peer_shutdown & SHUTDOWN_RCV == 0
            && self.credit.peer_free() > 0
    }

    /// Whether the connection has a packet for the guest (if an rx buffer comes).
    pub fn wants_rx(&self) -> bool {
        match self.state {
            State::Closed { .. } => false,
            State::Connecting => self.owe_request,
            State::Established => {
                self.owe_response
                    || self.owe_credit_update
                    || self.owe_shutdown != 0
                    || (self.host_readable && self.can_send_data())
            }
        }
    }

    /// What to watch the host stream for.
    pub fn interest(&self) -> Interest {
        match self.state {
            State::Established => Interest {
                read: !self.host_readable && self.can_send_data(),
                write: !self.to_host.is_empty(),
            },
            _ => Interest::NONE,
        }
    }

    fn header(&mut self, op: u16) -> Header {
        self.owe_credit_update = false;
        self.credit.stamp(Header::to_guest(self.guest_cid, self.local_port, self.peer_port, op))
    }

    /// The next packet for the guest, its payload read into `buf[..n]`, `room` being the
    /// payload space of the rx buffer at hand. Control packets come before data.
    pub fn next_rx(&mut self, room: usize, buf: &mut [u8]) -> Option<(Header, usize)> {
        if self.owe_request && self.state == State::Connecting {
            self.owe_request = false;
            return Some((self.header(OP_REQUEST), 0));
        }
        if self.state != State::Established {
            return None;
        }
        if self.owe_response {
            self.owe_response = false;
            return Some((self.header(OP_RESPONSE), 0));
        }
        if self.host_readable && self.can_send_data() {
            let n = room.min(buf.len()).min(self.credit.peer_free() as usize);
            if n > 0 {
                match self.stream.read(&mut buf[..n]) {
                    Ok(0) => {
                        self.host_eof = true;
                        self.host_readable = false;
                        // A full hang-up means the host will not read either.
                        self.owe_shutdown |= SHUTDOWN_SEND | if self.host_hup { SHUTDOWN_RCV } else { 0 };
                    }
                    Ok(n) => {
                        self.credit.sent(n as u32);
                        return Some((self.header(OP_RW), n));
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => self.host_readable = false,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => {
                        self.kill();
                        return None;
                    }
                }
            }
        }
        if self.owe_shutdown != 0 {
            let flags = std::mem::take(&mut self.owe_shutdown);
            return Some((self.header(OP_SHUTDOWN).with_flags(flags), 0));
        }
        if self.owe_credit_update {
            return Some((self.header(OP_CREDIT_UPDATE), 0));
        }
        None
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
#[path = "connection_tests.rs"]
mod tests;
