//! Connection tests against an in-memory host stream.

use super::*;
use crate::devices::virtio::vsock::credit::CREDIT_UPDATE_THRESHOLD;
use std::cell::Cell;

/// An in-memory host stream: `input` is what the host sends, `output` what it received,
/// `room` how much more it takes before it would block.
#[derive(Default)]
struct Fake {
    input: VecDeque<u8>,
    eof: bool,
    output: Vec<u8>,
    room: usize,
    shut: Cell<bool>,
}

impl Read for Fake {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.input.is_empty() {
            return if self.eof { Ok(0) } else { Err(ErrorKind::WouldBlock.into()) };
        }
        self.input.read(buf)
    }
}

impl Write for Fake {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.room);
        if n == 0 {
            return Err(ErrorKind::WouldBlock.into());
        }
        self.room -= n;
        self.output.extend_from_slice(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl HostStream for Fake {
    fn shutdown_write(&self) -> std::io::Result<()> {
        self.shut.set(true);
        Ok(())
    }
}

const CID: u64 = 3;

fn guest(op: u16, buf_alloc: u32, fwd_cnt: u32) -> Header {
    Header::from_guest(CID, 1000, 52, op).with_credit(buf_alloc, fwd_cnt)
}

fn established(room: usize, peer_buf: u32) -> Connection<Fake> {
    let mut c = Connection::accepted(Fake { room, ..Fake::default() }, CID, &guest(OP_REQUEST, peer_buf, 0));
    let (h, _) = c.next_rx(0, &mut []).unwrap();
    assert_eq!((h.op(), h.src_port(), h.dst_port(), h.buf_alloc()), (OP_RESPONSE, 52, 1000, BUF_ALLOC));
    c
}

#[test]
fn host_initiated_handshake_then_data_within_credit() {
    let mut c = Connection::connecting(Fake { room: 64, ..Fake::default() }, CID, 1 << 30, 52);
    assert!(c.wants_rx());
    let (h, n) = c.next_rx(4096, &mut [0; 4096]).unwrap();
    assert_eq!((h.op(), h.src_port(), h.dst_port(), h.dst_cid(), n), (OP_REQUEST, 1 << 30, 52, CID, 0));
    assert!(!c.wants_rx() && c.interest() == Interest::NONE);
    c.stream.input.extend(b"0123456789");
    c.on_guest_packet(&Header::from_guest(CID, 52, 1 << 30, OP_RESPONSE).with_credit(4, 0), &[]);
    assert_eq!(c.state(), State::Established);
    assert_eq!(c.stream.output, format!("OK {}\n", 1 << 30).as_bytes());
    let mut buf = [0u8; 4096];
    let (h, n) = c.next_rx(4096, &mut buf).unwrap();
    assert_eq!((h.op(), n, &buf[..n]), (OP_RW, 4, &b"0123"[..]), "capped by the guest's credit");
    assert!(!c.wants_rx() && !c.interest().read, "no credit: do not read the host");
    c.on_guest_packet(&Header::from_guest(CID, 52, 1 << 30, OP_CREDIT_UPDATE).with_credit(4, 4), &[]);
    assert!(c.wants_rx(), "credit is back and the host may have more");
    let (_, n) = c.next_rx(3, &mut buf).unwrap();
    assert_eq!((n, &buf[..n]), (3, &b"456"[..]), "capped by the rx buffer");
}

#[test]
fn guest_reset_or_kill_before_the_request_needs_no_reset() {
    let mut c = Connection::connecting(Fake::default(), CID, 1 << 30, 52);
    c.kill();
    assert_eq!(c.state(), State::Closed { reset: false });
    let mut c = Connection::connecting(Fake::default(), CID, 1 << 30, 52);
    c.next_rx(0, &mut []).unwrap();
    c.on_guest_packet(&Header::from_guest(CID, 52, 1 << 30, OP_RST), &[]);
    assert_eq!(c.state(), State::Closed { reset: false }, "nobody listens on the guest port");
    assert_eq!(c.stream.output, b"", "no OK line");
}

#[test]
fn guest_bytes_wait_for_a_slow_host_up_to_our_buffer() {
    let mut c = established(10, 1 << 20);
    c.on_guest_packet(&guest(OP_RW, 1 << 20, 0), &[7u8; 30]);
    assert_eq!((c.stream.output.len(), c.to_host.len()), (10, 20));
    assert_eq!(c.interest(), Interest { read: true, write: true });
    c.stream.room = 100;
    c.on_host_writable();
    assert_eq!((c.stream.output.len(), c.to_host.len()), (30, 0));
    assert!(!c.interest().write);
    c.stream.room = 0;
    c.on_guest_packet(&guest(OP_RW, 1 << 20, 0), &vec![1u8; BUF_ALLOC as usize]);
    assert_eq!(c.state(), State::Established, "exactly our buffer is fine");
    c.on_guest_packet(&guest(OP_RW, 1 << 20, 0), &[1u8]);
    assert_eq!(c.state(), State::Closed { reset: true }, "overran the credit we gave");
}

#[test]
fn credit_updates_on_request_and_after_consuming_enough() {
    let mut c = established(usize::MAX, 1 << 20);
    c.on_guest_packet(&guest(OP_CREDIT_REQUEST, 1 << 20, 0), &[]);
    let (h, _) = c.next_rx(0, &mut []).unwrap();
    assert_eq!((h.op(), h.fwd_cnt()), (OP_CREDIT_UPDATE, 0));
    c.on_guest_packet(&guest(OP_RW, 1 << 20, 0), &vec![0u8; CREDIT_UPDATE_THRESHOLD as usize]);
    assert!(c.wants_rx());
    let (h, _) = c.next_rx(0, &mut []).unwrap();
    assert_eq!((h.op(), h.fwd_cnt()), (OP_CREDIT_UPDATE, CREDIT_UPDATE_THRESHOLD));
    assert!(!c.wants_rx());
}

#[test]
fn guest_shutdown_half_closes_then_full_close_resets_after_flush() {
    let mut c = established(4, 1 << 20);
    c.on_guest_packet(&guest(OP_RW, 1 << 20, 0), b"abcdef");
    c.on_guest_packet(&guest(OP_SHUTDOWN, 1 << 20, 0).with_flags(SHUTDOWN_SEND), &[]);
    assert!(!c.stream.shut.get(), "bytes still pending");
    c.stream.room = 10;
    c.on_host_writable();
    assert!(c.stream.shut.get());
    assert_eq!(c.stream.output, b"abcdef");
    c.on_guest_packet(&guest(OP_SHUTDOWN, 1 << 20, 0).with_flags(SHUTDOWN_BOTH), &[]);
    assert_eq!(c.state(), State::Closed { reset: true });
}

#[test]
fn host_eof_becomes_shutdown() {
    let mut c = established(0, 1 << 20);
    c.stream.eof = true;
    c.on_host_readable(false);
    let (h, _) = c.next_rx(100, &mut [0; 100]).unwrap();
    assert_eq!((h.op(), h.flags()), (OP_SHUTDOWN, SHUTDOWN_SEND));
    assert!(!c.wants_rx() && !c.interest().read);
    let mut c = established(0, 1 << 20);
    c.stream.eof = true;
    c.on_host_readable(true);
    let (h, _) = c.next_rx(100, &mut [0; 100]).unwrap();
    assert_eq!(h.flags(), SHUTDOWN_BOTH, "the host hung up entirely");
}

#[test]
fn protocol_errors_reset() {
    let mut c = established(0, 1 << 20);
    c.on_guest_packet(&guest(OP_REQUEST, 1 << 20, 0), &[]);
    assert_eq!(c.state(), State::Closed { reset: true });
    let mut c = Connection::connecting(Fake::default(), CID, 1 << 30, 52);
    c.next_rx(0, &mut []).unwrap();
    c.on_guest_packet(&Header::from_guest(CID, 52, 1 << 30, OP_RW), b"x");
    assert_eq!(c.state(), State::Closed { reset: true });
}
