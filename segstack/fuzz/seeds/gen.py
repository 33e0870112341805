#!/usr/bin/env python3
"""Writes the seed corpus (valid packets with correct checksums) for each
fuzz target into seeds/<target>/. Run from segstack/fuzz; the output is
committed, and tests/wire_fuzz.rs checks that every seed parses."""
import os
import struct


def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def ip(a):
    return bytes(int(x) for x in a.split("."))


SRC, DST = ip("10.0.0.1"), ip("10.0.0.2")
MAC1, MAC2 = bytes.fromhex("525400123456"), bytes.fromhex("02000000ab01")


def eth(dst, src, et, payload):
    f = dst + src + struct.pack("!H", et) + payload
    return f + b"\0" * max(0, 60 - len(f))


def ipv4(proto, payload, opts=b"", ident=0x1c46, df=True):
    ihl = 5 + len(opts) // 4
    h = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, ihl * 4 + len(payload), ident,
                    0x4000 if df else 0, 64, proto, 0, SRC, DST) + opts
    h = h[:10] + struct.pack("!H", csum(h)) + h[12:]
    return h + payload


def pseudo(proto, n):
    return SRC + DST + struct.pack("!BBH", 0, proto, n)


def icmp(t, code, rest, data):
    m = struct.pack("!BBH", t, code, 0) + rest + data
    return m[:2] + struct.pack("!H", csum(m)) + m[4:]


def udp(sp, dp, data):
    n = 8 + len(data)
    h = struct.pack("!HHHH", sp, dp, n, 0)
    c = csum(pseudo(17, n) + h + data) or 0xFFFF
    return h[:6] + struct.pack("!H", c) + data


def tcp(sp, dp, seq, ack, flags, win, opts, data):
    doff = (20 + len(opts)) // 4
    h = struct.pack("!HHIIBBHHH", sp, dp, seq, ack, doff << 4, flags, win, 0, 0) + opts
    c = csum(pseudo(6, len(h) + len(data)) + h + data)
    return h[:16] + struct.pack("!H", c) + h[18:] + data


SYN_OPTS = bytes.fromhex("020405b4" "0402080a0000000100000000" "01030307")
TS_OPTS = bytes.fromhex("0101080a0000000500000006")
arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, MAC1, SRC, b"\0" * 6, DST)
l4 = {
    "icmp": [icmp(8, 0, struct.pack("!HH", 0x1c46, 1), bytes(range(56))),
             icmp(3, 3, b"\0" * 4, ipv4(17, udp(5353, 53, b"q"))[:28])],
    "udp": [udp(53000, 53, b"\x12\x34\x01\x00\x00\x01" + b"\0" * 6 + b"\x03abc\0\0\x01\0\x01"),
            udp(9, 7, b"")],
    "tcp": [tcp(41234, 80, 0x01020304, 0, 0x02, 64240, SYN_OPTS, b""),
            tcp(80, 41234, 7, 0x01020305, 0x12, 65160, SYN_OPTS, b""),
            tcp(41234, 80, 0x01020305, 8, 0x18, 502, TS_OPTS, b"GET / HTTP/1.1\r\n\r\n"),
            tcp(41234, 80, 1, 2, 0x11, 100, b"", b"")],
}
proto = {"icmp": 1, "udp": 17, "tcp": 6}
ips = []
for name, msgs in l4.items():
    for m in msgs:
        ips.append(ipv4(proto[name], m))
ips.append(ipv4(17, udp(1, 2, b"options"), opts=b"\x01\x01\x01\x00", df=False))
frames = [eth(b"\xff" * 6, MAC1, 0x0806, arp)] + [eth(MAC2, MAC1, 0x0800, p) for p in ips]

seeds = {
    "frame": frames,
    "ethernet": frames,
    "arp": [arp, arp[:6] + b"\0\2" + arp[8:]],
    "ipv4": ips,
    **l4,
}
for target, items in seeds.items():
    os.makedirs(os.path.join("seeds", target), exist_ok=True)
    for i, b in enumerate(items):
        with open(os.path.join("seeds", target, "seed-%02d" % i), "wb") as f:
            f.write(b)
