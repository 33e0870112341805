# Test peers of examples/tests/shim_local.rs (real processes, run with or without the shim).
# A server prints its port (chosen by the kernel) on its first line of stdout.
import hashlib
import os
import select
import selectors
import socket
import sys


def listen(fam="4", port=0):
    # On 127.0.0.1 (`4`), on ::1 (`6`) or on a dual-stack [::] (`dual`).
    s = socket.socket(socket.AF_INET if fam == "4" else socket.AF_INET6)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if fam == "dual":
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(({"4": "127.0.0.1", "6": "::1", "dual": "::"}[fam], int(port)))
    s.listen(128)
    print(s.getsockname()[1], flush=True)
    return s


def sink(fam="4", port=0):
    # Receives one connection until EOF; replies "<bytes> <sha256>".
    s = listen(fam, port)
    c, _ = s.accept()
    h = hashlib.sha256()
    n = 0
    buf = bytearray(1 << 20)
    try:
        while True:
            k = c.recv_into(buf)
            if k == 0:
                break
            h.update(memoryview(buf)[:k])
            n += k
    except ConnectionResetError:
        print("reset after", n, flush=True)
        return
    print("eof after", n, flush=True)
    try:
        c.sendall(("%d %s" % (n, h.hexdigest())).encode())
        c.close()
    except OSError as e:
        print("reply failed:", e, flush=True)


def source(port, total, host="127.0.0.1"):
    # Sends `total` pseudo-random bytes to HOST (IPv4 or IPv6), shuts down, prints the sink's
    # reply and its own digest.
    c = socket.create_connection((host, int(port)))
    total = int(total)
    block = os.urandom(1 << 20) * 2
    h = hashlib.sha256()
    sent = 0
    i = 0
    while sent < total:
        off = (i * 4099) % (1 << 20)
        piece = block[off : off + min(total - sent, 1 << 19)]
        c.sendall(piece)
        h.update(piece)
        sent += len(piece)
        i += 1
    c.shutdown(socket.SHUT_WR)
    r = b""
    while True:
        d = c.recv(4096)
        if not d:
            break
        r += d
    print(r.decode())
    print("%d %s" % (sent, h.hexdigest()))


def echo(nconn):
    # Echoes on every connection (epoll, mixed with the kernel listening socket) until `nconn`
    # connections have closed; prints the byte count.
    s = listen()
    s.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(s, selectors.EVENT_READ)
    done = 0
    total = 0
    while done < nconn:
        for key, _ in sel.select():
            if key.fileobj is s:
                try:
                    c, _ = s.accept()
                except BlockingIOError:
                    continue
                c.setblocking(False)
                sel.register(c, selectors.EVENT_READ)
                continue
            c = key.fileobj
            try:
                d = c.recv(65536)
            except BlockingIOError:
                continue
            if not d:
                sel.unregister(c)
                c.close()
                done += 1
                continue
            total += len(d)
            c.setblocking(True)
            c.sendall(d)
            c.setblocking(False)
    print("echoed", total, flush=True)


def pingpong(port, nconn, rounds):
    # `nconn` connections; each round sends a message of a varying size on each, then waits
    # with poll() for every echo and checks it byte for byte.
    conns = [socket.create_connection(("127.0.0.1", port)) for _ in range(nconn)]
    sent = 0
    for r in range(rounds):
        want = {}
        for i, c in enumerate(conns):
            size = 1 + (r * 7919 + i * 104729) % 3000
            msg = bytes(((r + i + k) * 31) & 255 for k in range(size))
            c.sendall(msg)
            sent += size
            want[c.fileno()] = [c, msg, b""]
        p = select.poll()
        for fd in want:
            p.register(fd, select.POLLIN)
        while want:
            for fd, ev in p.poll(10000):
                c, msg, got = want[fd]
                d = c.recv(65536)
                if not d:
                    raise SystemExit("EOF on connection %d" % fd)
                got += d
                if len(got) >= len(msg):
                    if got != msg:
                        raise SystemExit("echo differs on %d in round %d" % (fd, r))
                    del want[fd]
                    p.unregister(fd)
                else:
                    want[fd][2] = got
    for c in conns:
        c.close()
    print("ok", sent, flush=True)


def forkserver(n):
    import socketserver

    class H(socketserver.StreamRequestHandler):
        def handle(self):
            for line in self.rfile:
                self.wfile.write(line.upper())
                self.wfile.flush()

    srv = socketserver.ForkingTCPServer(("127.0.0.1", 0), H)
    print(srv.server_address[1], flush=True)
    for _ in range(n):
        srv.handle_request()
    srv.server_close()
    print("served", n, flush=True)


def lines(port, nconn, nlines):
    for k in range(nconn):
        c = socket.create_connection(("127.0.0.1", port))
        f = c.makefile("rwb")
        for i in range(nlines):
            f.write(b"line %d of connection %d\n" % (i, k))
            f.flush()
            r = f.readline()
            if r != (b"LINE %d OF CONNECTION %d\n" % (i, k)):
                raise SystemExit("bad reply %r" % r)
        f.close()
        c.close()
    print("ok", nconn * nlines, flush=True)


def execpp(port):
    # One round trip on a first connection, then exec a new image that ping-pongs on a second.
    c = socket.create_connection(("127.0.0.1", port))
    c.sendall(b"before exec")
    got = b""
    while len(got) < 11:
        got += c.recv(100)
    assert got == b"before exec", got
    sys.stdout.flush()
    os.execvp("python3", ["python3", __file__, "pingpong", str(port), "1", "5"])


def forkclose():
    # Accepts one connection, forks; the parent closes its copy at once, the child answers,
    # closes its copy (no shutdown) and lives on for 5 s: the connection ends at that close.
    s = listen()
    c, _ = s.accept()
    pid = os.fork()
    if pid == 0:
        d = c.recv(100)
        c.sendall(d.upper())
        c.close()
        import time

        time.sleep(5)
        os._exit(0)
    c.close()
    os.waitpid(pid, 0)
    print("done", flush=True)


def eofwait(port):
    # Non-blocking, through epoll: one exchange, then waits (at most 3 s) for EOF.
    import time

    c = socket.create_connection(("127.0.0.1", port))
    c.sendall(b"hello")
    c.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(c, selectors.EVENT_READ)
    got = b""
    t0 = time.time()
    while time.time() - t0 < 3:
        for _ in sel.select(0.5):
            try:
                d = c.recv(100)
            except BlockingIOError:
                continue
            if not d:
                print("eof", got.decode(), "%.1f" % (time.time() - t0), flush=True)
                return
            got += d
    print("no eof", got.decode(), flush=True)


if __name__ == "__main__":
    m = sys.argv[1]
    a = [int(x) for x in sys.argv[2:]] if m not in ("sink", "source") else sys.argv[2:]
    {
        "sink": lambda: sink(*a),
        "source": lambda: source(*a),
        "echo": lambda: echo(*a),
        "pingpong": lambda: pingpong(*a),
        "forkserver": lambda: forkserver(*a),
        "lines": lambda: lines(*a),
        "execpp": lambda: execpp(*a),
        "forkclose": lambda: forkclose(),
        "eofwait": lambda: eofwait(*a),
    }[m]()
