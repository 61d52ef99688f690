//! Muxer tests: a mock driver ([`Ring`]) plays the guest on both queues, and a real epoll
//! reports readiness of real Unix sockets in a temporary directory.

use super::*;
use crate::devices::virtio::vsock::credit::BUF_ALLOC;
use crate::devices::virtio::vsock::event_handler::{readiness, EpollRegistry};
use crate::devices::virtio::vsock::packet::*;
use crate::devices::virtio::test_driver::Ring;
use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::time::Duration;
use vm_memory::{Address, ByteValued, Bytes, GuestAddress};
use vmm_sys_util::epoll::{Epoll, EpollEvent};
use vmm_sys_util::tempdir::TempDir;

const CID: u64 = 3;
const RX_RING: u64 = 0;
const TX_RING: u64 = 0x1_0000;
const RX_BUFS: u64 = 0x10_0000;
const TX_BUFS: u64 = 0x200_0000;
/// Room for a header and a maximum payload.
const SLOT: u64 = 0x1_1000;
/// Payload room of the rx buffers the bed gives, as Linux does (4 KiB).
const RX_ROOM: u32 = 4096;
const GUEST_BUF: u32 = 64 * 1024;
const HOST_PORT: u32 = FIRST_HOST_PORT;

struct Bed {
    mem: GuestMemoryMmap,
    rx: Ring,
    tx: Ring,
    rxq: Queue,
    txq: Queue,
    muxer: Muxer,
    epoll: Epoll,
    dir: TempDir,
}

fn guest(src_port: u32, dst_port: u32, op: u16) -> Header {
    Header::from_guest(CID, src_port, dst_port, op).with_credit(GUEST_BUF, 0)
}

fn ops(packets: &[(Header, Vec<u8>)]) -> Vec<u16> {
    packets.iter().map(|(h, _)| h.op()).collect()
}

impl Bed {
    fn new() -> Self {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x300_0000)]).unwrap();
        let (rx, tx) = (Ring::new(RX_RING), Ring::new(TX_RING));
        let (rxq, txq) = (rx.queue(), tx.queue());
        let dir = TempDir::new().unwrap();
        let muxer = Muxer::new(CID, dir.as_path().join("v.sock"));
        Self { mem, rx, tx, rxq, txq, muxer, epoll: Epoll::new().unwrap(), dir }
    }

    fn port_path(&self, port: u32) -> PathBuf {
        uds::port_path(&self.dir.as_path().join("v.sock"), port)
    }

    /// What the event handler does: run the queues, apply watches, route readiness, until quiet.
    fn pump(&mut self) {
        for _ in 0..100 {
            self.muxer.process_tx(&self.mem, &mut self.txq);
            self.muxer.process_rx(&self.mem, &mut self.rxq);
            self.muxer.sync(&mut EpollRegistry(&self.epoll));
            let mut events = [EpollEvent::default(); 16];
            let n = self.epoll.wait(0, &mut events).unwrap();
            if n == 0 {
                return;
            }
            for e in &events[..n] {
                self.muxer.on_ready(e.data(), readiness(e.event_set()));
            }
        }
    }

    /// The guest sends a packet: header and payload in two descriptors.
    fn send(&mut self, header: Header, payload: &[u8]) -> u32 {
        let header = header.with_len(payload.len() as u32);
        self.send_raw(header, payload, &[(44, false), (payload.len() as u32, false)])
    }

    /// Writes header + payload at the next tx slot and offers descriptors of the given lengths
    /// over it; returns the used length the device reported.
    fn send_raw(&mut self, header: Header, payload: &[u8], lens: &[(u32, bool)]) -> u32 {
        let at = TX_BUFS + u64::from(self.tx.next_desc()) * SLOT;
        self.mem.write_slice(header.as_slice(), GuestAddress(at)).unwrap();
        self.mem.write_slice(payload, GuestAddress(at + 44)).unwrap();
        let mut offset = at;
        let mut descs = Vec::new();
        for &(len, outside) in lens.iter().filter(|(len, _)| *len > 0) {
            descs.push((if outside { 0xffff_0000_0000 } else { offset }, len, false));
            offset += u64::from(len);
        }
        self.offer_tx(&descs)
    }

    fn offer_tx(&mut self, descs: &[(u64, u32, bool)]) -> u32 {
        self.tx.offer(&self.mem, descs);
        self.pump();
        let used = self.tx.used(&self.mem);
        assert_eq!(used.len(), 1, "the tx chain is used, whatever it held");
        used[0].1
    }

    /// Gives the device `n` rx buffers.
    fn give_rx(&mut self, n: usize) {
        for _ in 0..n {
            let at = RX_BUFS + u64::from(self.rx.next_desc()) * SLOT;
            self.rx.offer(&self.mem, &[(at, 44 + RX_ROOM, true)]);
        }
    }

    /// Packets the device put in rx buffers.
    fn recv(&mut self) -> Vec<(Header, Vec<u8>)> {
        self.pump();
        self.rx.used(&self.mem)
            .into_iter()
            .map(|(id, len)| {
                let at = GuestAddress(RX_BUFS + u64::from(id) * SLOT);
                let header: Header = self.mem.read_obj(at).unwrap();
                assert_eq!(len as usize, 44 + header.payload_len() as usize);
                let mut payload = vec![0u8; header.payload_len() as usize];
                self.mem.read_slice(&mut payload, at.unchecked_add(44)).unwrap();
                (header, payload)
            })
            .collect()
    }

    /// A guest-initiated connection from guest port 1000 to host port 52, accepted by a host
    /// listener; returns the host's end.
    fn connect_from_guest(&mut self, guest_buf: u32) -> UnixStream {
        let _ = std::fs::remove_file(self.port_path(52));
        let listener = UnixListener::bind(self.port_path(52)).unwrap();
        self.give_rx(1);
        self.send(guest(1000, 52, OP_REQUEST).with_credit(guest_buf, 0), &[]);
        let got = self.recv();
        assert_eq!(ops(&got), [OP_RESPONSE]);
        let (host, _) = listener.accept().unwrap();
        host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        host
    }
}

#[test]
fn guest_connects_to_a_host_listener_and_bytes_flow_both_ways() {
    let mut bed = Bed::new();
    let listener = UnixListener::bind(bed.port_path(52)).unwrap();
    bed.give_rx(4);
    bed.send(guest(1000, 52, OP_REQUEST), &[]);
    let got = bed.recv();
    assert_eq!(ops(&got), [OP_RESPONSE]);
    let h = got[0].0;
    assert_eq!((h.src_cid(), h.dst_cid(), h.src_port(), h.dst_port()), (HOST_CID, CID, 52, 1000));
    assert_eq!((h.kind(), h.buf_alloc(), h.fwd_cnt()), (TYPE_STREAM, BUF_ALLOC, 0));

    let (mut host, _) = listener.accept().unwrap();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    bed.send(guest(1000, 52, OP_RW), b"hello");
    let mut got = [0u8; 5];
    host.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello");

    host.write_all(b"world").unwrap();
    let got = bed.recv();
    assert_eq!(ops(&got), [OP_RW]);
    assert_eq!((got[0].1.as_slice(), got[0].0.fwd_cnt()), (&b"world"[..], 5), "fwd_cnt counts what the host took");
}

#[test]
fn guest_connect_without_a_listener_is_reset() {
    let mut bed = Bed::new();
    bed.give_rx(1);
    bed.send(guest(1000, 53, OP_REQUEST), &[]);
    let got = bed.recv();
    assert_eq!(ops(&got), [OP_RST]);
    assert_eq!((got[0].0.src_port(), got[0].0.dst_port()), (53, 1000));
}

#[test]
fn host_client_connect_line_reaches_the_guest_and_ok_comes_back() {
    let mut bed = Bed::new();
    let (mut client, end) = UnixStream::pair().unwrap();
    client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    bed.muxer.add_host_client(end);
    client.write_all(b"CONNECT 52\nearly bytes").unwrap();
    bed.give_rx(4);
    let got = bed.recv();
    assert_eq!(ops(&got), [OP_REQUEST]);
    assert_eq!((got[0].0.src_port(), got[0].0.dst_port(), got[0].0.buf_alloc()), (HOST_PORT, 52, BUF_ALLOC));

    bed.send(guest(52, HOST_PORT, OP_RESPONSE), &[]);
    let mut ok = [0u8; 14];
    client.read_exact(&mut ok).unwrap();
    assert_eq!(&ok, format!("OK {HOST_PORT}\n").as_bytes());
    let got = bed.recv();
    assert_eq!(ops(&got), [OP_RW]);
    assert_eq!(got[0].1, b"early bytes", "bytes after the CONNECT line are the stream's");

    bed.send(guest(52, HOST_PORT, OP_RW), b"from guest");
    let mut back = [0u8; 10];
    client.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"from guest");
}

#[test]
fn host_client_refused_by_the_guest_or_sending_garbage_is_closed() {
    let mut bed = Bed::new();
    let (mut refused, end) = UnixStream::pair().unwrap();
    bed.muxer.add_host_client(end);
    refused.write_all(b"CONNECT 9999\n").unwrap();
    let (mut garbage, end) = UnixStream::pair().unwrap();
    bed.muxer.add_host_client(end);
    garbage.write_all(b"GET / HTTP/1.0\r\n").unwrap();
    bed.give_rx(4);
    let got = bed.recv();
    assert_eq!(ops(&got), [OP_REQUEST], "only the well-formed client reaches the guest");
    bed.send(guest(9999, HOST_PORT, OP_RST), &[]);
    bed.pump();
    for client in [&mut refused, &mut garbage] {
        client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(client.read(&mut buf).unwrap(), 0, "closed without an OK");
    }
    assert_eq!(bed.muxer.occupancy(), 0);
}

#[test]
fn host_bytes_stay_within_the_guest_credit() {
    let mut bed = Bed::new();
    let mut host = bed.connect_from_guest(10);
    host.write_all(&[9u8; 25]).unwrap();
    bed.give_rx(8);
    let got = bed.recv();
    assert_eq!(got.iter().map(|(_, p)| p.len()).sum::<usize>(), 10, "{:?}", ops(&got));
    bed.send(guest(1000, 52, OP_CREDIT_UPDATE).with_credit(10, 10), &[]);
    let got = bed.recv();
    assert_eq!(got.iter().map(|(_, p)| p.len()).sum::<usize>(), 10);
    bed.send(guest(1000, 52, OP_CREDIT_UPDATE).with_credit(1000, 20), &[]);
    let got = bed.recv();
    assert_eq!(got.iter().map(|(_, p)| p.len()).sum::<usize>(), 5);
}

#[test]
fn host_data_larger_than_a_buffer_is_split_and_waits_for_buffers() {
    let mut bed = Bed::new();
    let mut host = bed.connect_from_guest(GUEST_BUF);
    host.write_all(&[1u8; 3 * RX_ROOM as usize]).unwrap();
    bed.give_rx(2);
    let got = bed.recv();
    assert_eq!(got.iter().map(|(_, p)| p.len()).collect::<Vec<_>>(), [RX_ROOM as usize; 2]);
    bed.give_rx(2);
    let got = bed.recv();
    assert_eq!(got.iter().map(|(_, p)| p.len()).collect::<Vec<_>>(), [RX_ROOM as usize]);
}

#[test]
fn shutdowns_and_resets_close_host_sockets() {
    let mut bed = Bed::new();
    let mut host = bed.connect_from_guest(GUEST_BUF);
    host.shutdown(std::net::Shutdown::Write).unwrap();
    bed.give_rx(4);
    let got = bed.recv();
    assert_eq!(ops(&got), [OP_SHUTDOWN]);
    assert_eq!(got[0].0.flags(), SHUTDOWN_SEND, "the host may still read");
    bed.send(guest(1000, 52, OP_RW), b"late reply");
    let mut reply = [0u8; 10];
    host.read_exact(&mut reply).unwrap();
    bed.send(guest(1000, 52, OP_SHUTDOWN).with_flags(SHUTDOWN_BOTH), &[]);
    let got = bed.recv();
    assert_eq!(ops(&got), [OP_RST], "a full shutdown is answered with a reset");
    assert_eq!(host.read(&mut reply).unwrap(), 0, "and the host socket is closed");
    assert_eq!(bed.muxer.occupancy(), 0);

    let mut host = bed.connect_from_guest(GUEST_BUF);
    bed.send(guest(1000, 52, OP_RST), &[]);
    assert_eq!(host.read(&mut reply).unwrap(), 0);
    assert_eq!(bed.recv().len(), 0, "no reply to a reset");
}

#[test]
fn guest_overrunning_its_credit_is_reset() {
    let mut bed = Bed::new();
    let mut host = bed.connect_from_guest(GUEST_BUF);
    let chunk = vec![5u8; MAX_PKT_LEN];
    let mut sent = 0;
    // The host never reads: the socket buffer fills, then our BUF_ALLOC, then the guest has
    // gone past the credit it was given.
    while sent < 64 * MAX_PKT_LEN && !ops(&bed.recv()).contains(&OP_RST) {
        bed.give_rx(1);
        bed.send(guest(1000, 52, OP_RW), &chunk);
        sent += MAX_PKT_LEN;
    }
    assert!(sent < 64 * MAX_PKT_LEN, "no reset after {sent} bytes");
    let mut received = Vec::new();
    host.read_to_end(&mut received).unwrap();
    assert!(received.len() < sent);
}

#[test]
fn hostile_packets_are_dropped_and_the_device_goes_on() {
    let mut bed = Bed::new();
    let h = guest(1000, 52, OP_RW);
    // len larger than the chain holds.
    assert_eq!(bed.send_raw(h.with_len(100), &[0; 10], &[(44, false), (10, false)]), 0);
    // len over the maximum packet size, with a chain that big.
    let big = (MAX_PKT_LEN + 1) as u32;
    assert_eq!(bed.send_raw(h.with_len(big), &vec![0; MAX_PKT_LEN + 1], &[(44 + big, false)]), 0);
    // A header cut short, and a chain reaching outside guest memory.
    bed.send_raw(h, &[], &[(20, false)]);
    bed.send_raw(h.with_len(8), &[], &[(44, false), (8, true)]);
    // A zero-length descriptor, a writable-only chain, and an rx-style buffer on tx.
    bed.offer_tx(&[(TX_BUFS, 0, false)]);
    bed.offer_tx(&[(TX_BUFS, 4096, true)]);
    // Wrong CIDs are dropped silently.
    bed.send(Header::from_guest(CID + 1, 1000, 52, OP_REQUEST), &[]);
    bed.send(Header::to_guest(CID, 1000, 52, OP_REQUEST), &[]);
    // Unknown op and type, and data for no connection, are answered with resets.
    bed.send(guest(1000, 52, 99), &[]);
    bed.send(guest(1001, 52, OP_RW).with_kind(2), &[]);
    bed.send(guest(1002, 52, OP_RW), b"nobody");
    bed.send(guest(1003, 52, OP_RST), &[]);
    bed.give_rx(8);
    let got = bed.recv();
    assert_eq!(ops(&got), [OP_RST; 3]);
    assert_eq!(got.iter().map(|(h, _)| h.dst_port()).collect::<Vec<_>>(), [1000, 1001, 1002]);
    assert_eq!(bed.muxer.occupancy(), 0);
    // And it still works.
    let mut host = bed.connect_from_guest(GUEST_BUF);
    bed.send(guest(1000, 52, OP_RW), b"ok");
    let mut got = [0u8; 2];
    host.read_exact(&mut got).unwrap();
}

#[test]
fn rx_buffers_too_small_or_outside_memory_come_back_empty() {
    let mut bed = Bed::new();
    bed.send(guest(1000, 53, OP_REQUEST), &[]);
    bed.rx.offer(&bed.mem, &[(RX_BUFS, 43, true)]);
    bed.rx.offer(&bed.mem, &[(0xffff_0000_0000, 4096, true)]);
    bed.rx.offer(&bed.mem, &[(RX_BUFS + SLOT, 44, false)]);
    bed.pump();
    let used = bed.rx.used(&bed.mem);
    assert_eq!(used.iter().map(|u| u.1).collect::<Vec<_>>(), [0, 0, 0]);
    bed.give_rx(1);
    assert_eq!(ops(&bed.recv()), [OP_RST], "the reset still goes out");
}

#[test]
fn connection_ports_are_fresh_per_host_client() {
    let mut bed = Bed::new();
    let mut clients = Vec::new();
    for _ in 0..3 {
        let (mut client, end) = UnixStream::pair().unwrap();
        bed.muxer.add_host_client(end);
        client.write_all(b"CONNECT 52\n").unwrap();
        clients.push(client);
    }
    bed.give_rx(4);
    let got = bed.recv();
    let mut ports: Vec<_> = got.iter().map(|(h, _)| h.src_port()).collect();
    ports.sort_unstable();
    assert_eq!(ports, [HOST_PORT, HOST_PORT + 1, HOST_PORT + 2]);
}

