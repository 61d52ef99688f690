#!/usr/bin/env python3
"""Writes the seed inputs in fuzz/seeds/<target>/ (committed; run again after changing a
target's input format). Each seed is a well-formed input that reaches the target's main path:
the fuzzer starts from them instead of rediscovering the formats."""

import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def put(target, name, data):
    d = os.path.join(HERE, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# --- virtio_blk_chain: 4 config bytes, then the 64 KiB guest memory image ------------------
# Layout (see the target): descriptor table 0x0, avail ring 0x1000, used ring 0x2000.
F_NEXT, F_WRITE = 1, 2


def blk(kind, sector, data_len, data_writable, extra=b"", sectors=8, ro=0, qlog=4):
    mem = bytearray(0x5000)
    hdr, data, status = 0x3000, 0x3100, 0x4f00
    struct.pack_into("<IIQ", mem, hdr, kind, 0, sector)
    mem[data:data + len(extra)] = extra
    descs = [(hdr, 16, 0)]
    if data_len:
        descs.append((data, data_len, F_WRITE if data_writable else 0))
    descs.append((status, 1, F_WRITE))
    for i, (addr, ln, flags) in enumerate(descs):
        nxt = i + 1 if i + 1 < len(descs) else 0
        if i + 1 < len(descs):
            flags |= F_NEXT
        struct.pack_into("<QIHH", mem, 16 * i, addr, ln, flags, nxt)
    struct.pack_into("<HHH", mem, 0x1000, 0, 1, 0)  # avail: flags, idx=1, ring[0]=head 0
    return bytes([qlog, sectors, ro, 0]) + bytes(mem)


put("virtio_blk_chain", "read", blk(0, 1, 1024, True))
put("virtio_blk_chain", "write", blk(1, 2, 512, False, extra=b"\x5a" * 512))
put("virtio_blk_chain", "write_read_only", blk(1, 0, 512, False, ro=1))
put("virtio_blk_chain", "flush", blk(4, 0, 0, False))
put("virtio_blk_chain", "get_id", blk(8, 0, 20, True))
put("virtio_blk_chain", "unsupported", blk(99, 0, 0, False))

# --- virtio_vsock_tx: a script of operations (see the target for each one's bytes) ---------
CID, HOST = 3, 2
OP_REQUEST, OP_RESPONSE, OP_RST, OP_SHUTDOWN, OP_RW, OP_CREDIT_UPDATE, OP_CREDIT_REQUEST = range(1, 8)
FIRST_HOST_PORT = 1 << 30


def vhdr(src_port, dst_port, op, length=0, flags=0, buf_alloc=65536, fwd_cnt=0):
    return struct.pack("<QQIIIHHIII", CID, HOST, src_port, dst_port, length, 1, op, flags, buf_alloc, fwd_cnt)


def send(header, payload=b"", fix=0, pieces=1):
    # op 0..3; header; flags; payload_len (2 bytes BE, % 8149); payload; pieces (1 byte, 1..=4);
    # then per piece: a cut length if not the last one, and a kind byte (2: in guest memory).
    out = bytes([0]) + header + bytes([fix]) + struct.pack(">H", len(payload)) + payload
    out += bytes([pieces - 1])
    total = 44 + len(payload)
    if pieces == 2:
        out += struct.pack(">H" if total > 255 else ">B", 44) + bytes([2]) + bytes([2])
    else:
        out += bytes([2])
    return out


def give_rx(n):
    return bytes([4, n - 1]) + bytes([1] * n)  # n buffers of full size


def host_write(data):
    return bytes([6, 0]) + struct.pack(">H", len(data)) + data


def host_shutdown():
    return bytes([6, 1])


def host_client(port):
    return bytes([7, port, 1])


guest_connect = (
    give_rx(4)
    + send(vhdr(1000, 52, OP_REQUEST))
    + host_write(b"hello from the host")
    + give_rx(4)
    + send(vhdr(1000, 52, OP_RW, length=5), b"world", fix=0, pieces=2)
    + send(vhdr(1000, 52, OP_CREDIT_REQUEST))
    + host_shutdown()
    + give_rx(2)
    + send(vhdr(1000, 52, OP_SHUTDOWN, flags=3))
)
put("virtio_vsock_tx", "guest_connect_rw_shutdown", guest_connect)
host_connect = (
    give_rx(4)
    + host_client(52)
    + send(vhdr(52, FIRST_HOST_PORT, OP_RESPONSE))
    + send(vhdr(52, FIRST_HOST_PORT, OP_RW, length=3), b"abc")
    + send(vhdr(52, FIRST_HOST_PORT, OP_CREDIT_UPDATE, buf_alloc=4096, fwd_cnt=3))
    + send(vhdr(52, FIRST_HOST_PORT, OP_RST))
)
put("virtio_vsock_tx", "host_connect_rw_rst", host_connect)
put("virtio_vsock_tx", "unknown_connection_and_refused", give_rx(8) + send(vhdr(7, 9, OP_RW, length=2), b"hi")
    + send(vhdr(1000, 53, OP_REQUEST)) + send(vhdr(1000, 52, 99)))

# --- virtio_mmio_regs: device shape, then (op, value LE u32[, offset LE u16]) ----------------
def guided(k, value=0):
    op = next(o for o in range(0x80, 0x100) if o % 12 == k)
    return bytes([op]) + struct.pack("<I", value)


def raw(write, offset, size_code, value):
    op = (size_code << 1) | (1 if write else 0)
    return bytes([op]) + struct.pack("<I", value) + struct.pack("<H", offset)


shape = bytes([1, 4, 3]) + struct.pack("<Q", 0) + bytes([0])  # 2 queues of 16 and 8, no extras
negotiate = (
    guided(0, 3) + guided(3, 0) + guided(4, 0) + guided(3, 1) + guided(4, 1) + guided(1)
    + guided(5, 0) + guided(6, 3) + guided(7, 0x1000) + guided(8, 0x2000) + guided(9, 0x3000) + guided(10, 1)
    + guided(2)
)
put("virtio_mmio_regs", "negotiate_and_activate", shape + negotiate + raw(False, 0x70, 2, 0) + raw(True, 0x70, 2, 0))
put("virtio_mmio_regs", "identity_and_config_reads",
    shape + raw(False, 0, 2, 0) + raw(False, 8, 2, 0) + raw(False, 0x100, 0, 0) + raw(False, 0x104, 3, 0)
    + raw(True, 0x100, 1, 0xbeef) + raw(False, 0x34, 2, 0) + raw(True, 0x30, 2, 7) + raw(False, 0x34, 2, 0))
put("virtio_mmio_regs", "bad_features_then_reset",
    shape + guided(0, 3) + guided(3, 0) + guided(4, 0xffff_ffff) + guided(1) + guided(0, 0))

# --- agent_frame_decoder: mode byte, then frames ---------------------------------------------
def frame(kind, payload):
    return b"MVMP" + struct.pack("<HHI", 1, kind, len(payload)) + payload


frames = [
    frame(1, b'{"Hello":{"protocol_version":1,"runtime_version":"0.1.0"}}'),
    frame(2, b'{"HelloAck":{"agent_version":"0.1.0","protocol_version":1}}'),
    frame(1, b'{"StartProcess":{"spec":{"ociVersion":"1.0.2","process":{"user":{"uid":0,"gid":0},'
             b'"args":["/bin/sh","-c","echo hi"],"env":["PATH=/bin"],"cwd":"/"}},'
             b'"terminal":{"rows":24,"cols":80},"stdin":true,"init":false}}'),
    frame(2, b'{"ProcessStarted":{"pid":7,"setup_micros":1234}}'),
    frame(1, b'{"Signal":{"pid":7,"signal":15}}'),
    frame(1, b'{"ResizeTerminal":{"pid":7,"size":{"rows":50,"cols":132}}}'),
    frame(1, b'{"WaitProcess":{"pid":7}}'),
    frame(1, b'{"CloseStdin":{"pid":7}}'),
    frame(3, b'{"ProcessExited":{"pid":7,"status":{"Exited":0}}}'),
    frame(3, b'{"ProcessExited":{"pid":7,"status":{"Signaled":9}}}'),
    frame(2, b'{"Error":{"kind":"NotFound","message":"no such file"}}'),
    frame(4, b'{"stream":"Stdout","process_id":7}'),
    frame(2, b'"Ok"'),
    frame(1, b'"Shutdown"'),
]
put("agent_frame_decoder", "all_messages_whole", bytes([3]) + b"".join(frames))
put("agent_frame_decoder", "all_messages_bytewise", bytes([0]) + b"".join(frames))
put("agent_frame_decoder", "hello_then_bad_version", bytes([2]) + frames[0] + b"MVMP\x02\x00\x01\x00\x00\x00\x00\x00")

# --- vsock_connect_handshake: schedule byte, then what the client sends -----------------------
put("vsock_connect_handshake", "connect", b"\x5b" + b"CONNECT 52\n")
put("vsock_connect_handshake", "connect_crlf_then_data", b"\x00" + b"CONNECT 1024\r\nhello guest")
put("vsock_connect_handshake", "connect_max_port", b"\xff" + b"CONNECT 4294967294\n")
put("vsock_connect_handshake", "no_newline", b"\x11" + b"CONNECT 5")

# --- kernel_loader: the kernel file ----------------------------------------------------------
def elf(pvh_entry=None, paddr=0x100000, code=b"\xf4" * 16):
    # ELF64 header, program headers (PT_LOAD [+ PT_NOTE]), then the code and the note.
    phnum = 2 if pvh_entry is not None else 1
    phoff = 64
    data_off = phoff + 56 * phnum
    note = b""
    if pvh_entry is not None:
        name = b"Xen\x00"
        desc = struct.pack("<Q", pvh_entry)
        note = struct.pack("<III", len(name), len(desc), 18) + name + desc  # XEN_ELFNOTE_PHYS32_ENTRY
    code_off = data_off
    note_off = code_off + len(code)
    eh = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    eh += struct.pack("<HHIQQQIHHHHHH", 2, 0x3E, 1, paddr, phoff, 0, 0, 64, 56, phnum, 64, 0, 0)
    ph = struct.pack("<IIQQQQQQ", 1, 5, code_off, paddr, paddr, len(code), len(code), 0x1000)
    if pvh_entry is not None:
        ph += struct.pack("<IIQQQQQQ", 4, 4, note_off, 0, 0, len(note), len(note), 4)
    return eh + ph + code + note


def bzimage(setup_sects=1, payload=b"\xf4" * 512):
    setup = bytearray(512 * (setup_sects + 1))
    struct.pack_into("<B", setup, 0x1F1, setup_sects)
    struct.pack_into("<H", setup, 0x1FE, 0xAA55)  # boot_flag
    struct.pack_into("<I", setup, 0x202, 0x53726448)  # "HdrS"
    struct.pack_into("<H", setup, 0x206, 0x020F)  # version 2.15
    struct.pack_into("<B", setup, 0x211, 1)  # loadflags: LOADED_HIGH
    struct.pack_into("<I", setup, 0x214, 0x100000)  # code32_start
    return bytes(setup) + payload


put("kernel_loader", "elf_vmlinux", elf())
put("kernel_loader", "elf_pvh", elf(pvh_entry=0x100000))
put("kernel_loader", "bzimage", bzimage())
