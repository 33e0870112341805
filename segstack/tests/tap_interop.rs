//! segstack against the Linux kernel over TAP, inside a namespace each test
//! creates and removes: the kernel's `ping`, 64 MiB downloads and uploads
//! through std `TcpStream`s in the namespace, 128 concurrent kernel
//! connections, a segstack client of a kernel server, and kernel peers that
//! reset or half-close.
//!
//! Needs root and iproute2; without them each test prints "skipped: ..." and
//! passes.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddrV4, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hicamp::Piece;
use nicdma::tap::TapPort;
use segstack::iface::{IfaceError, SocketHandle};
use segstack::tcp::State;
use segstack::Payload;

const OUR_MAC: [u8; 6] = [0x02, 0, 0, 0x78, 0, 2];

type Lab = common::Lab<TapPort>;

fn lab(k: u8) -> Lab {
    let tap = TapPort::open("").expect("open a TAP device");
    Lab::new(tap, [10, 78, k], OUR_MAC, |t| t, |_| {})
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| {
            (i as u32)
                .wrapping_mul(2_654_435_761)
                .rotate_left(u32::from(seed) % 31) as u8
        })
        .collect()
}

#[test]
fn kernel_pings_segstack() {
    if common::skip() {
        return;
    }
    let mut lab = lab(1);
    let mut ping = lab
        .ns
        .command("ping")
        .args(["-c", "5", "-i", "0.2", "-W", "2", &lab.our_ip.to_string()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn ping");
    let mut status = None;
    lab.run(|_, _, _| {
        status = ping.try_wait().unwrap();
        status.is_none()
    });
    let mut out = String::new();
    ping.stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(status.unwrap().success(), "ping failed: {out}");
    assert!(out.contains("5 received"), "{out}");
    assert!(lab.iface.stats().echo_replies >= 5);
}

/// Serves one download of `data` on `port`: sends it as segment snapshots.
fn serve_download(lab: &mut Lab, port: u16, data: &[u8]) {
    let mem = lab.iface.memory().clone();
    let object = Payload::from_bytes(&mem, data).unwrap();
    let lst = lab.iface.tcp_listen(port).unwrap();
    let mut conn: Option<SocketHandle> = None;
    let mut left = object.clone();
    let mut closed = false;
    let done = Arc::new(AtomicBool::new(false));
    let (kernel_ip, our_ip) = (lab.kernel_ip, lab.our_ip);
    let _ = kernel_ip;
    let n = data.len();
    let flag = Arc::clone(&done);
    let client = lab.kernel(move || {
        let mut s = TcpStream::connect(SocketAddrV4::new(our_ip, port)).expect("connect");
        let mut got = Vec::with_capacity(n);
        s.read_to_end(&mut got).expect("read");
        flag.store(true, Ordering::SeqCst);
        got
    });
    lab.run(|i, _, _| {
        if conn.is_none() {
            conn = i.tcp_accept(lst).unwrap();
        }
        if let Some(c) = conn {
            i.send_some(c, &mut left).expect("send");
            if left.is_empty() && !closed {
                eprintln!("download: {:?}", i.tcp(c).unwrap().stats());
                i.close(c).unwrap();
                closed = true;
            }
        }
        !done.load(Ordering::SeqCst)
    });
    eprintln!("download took {:?}", lab.t0.elapsed());
    let got = client.join().unwrap();
    assert_eq!(got.len(), data.len());
    assert!(got == data, "downloaded bytes differ");
    let s = lab.iface.stats();
    assert_eq!(s.tx_payload_copied, 0, "{s:?}");
    lab.iface.close(lst).unwrap();
}

#[test]
fn kernel_downloads_and_uploads_64_mib() {
    if common::skip() {
        return;
    }
    let mut lab = lab(2);
    let data = pattern(64 << 20, 3);
    serve_download(&mut lab, 7000, &data);

    // Upload: the kernel sends 64 MiB and half-closes; segstack keeps the
    // payload snapshots, splices them into one segment (sharing lines) and
    // answers with its BLAKE3 digest.
    let up = pattern(64 << 20, 9);
    let mem = lab.iface.memory().clone();
    let want = mem.segment(&up).unwrap().digest();
    let lst = lab.iface.tcp_listen(7001).unwrap();
    let before = *lab.iface.nic().counters();
    let our_ip = lab.our_ip;
    let client = lab.kernel(move || {
        let mut s = TcpStream::connect(SocketAddrV4::new(our_ip, 7001)).expect("connect");
        s.write_all(&up).expect("write");
        s.shutdown(Shutdown::Write).unwrap();
        let mut d = Vec::new();
        s.read_to_end(&mut d).expect("read digest");
        d
    });
    let mut conn = None;
    let mut parts: Vec<Payload> = Vec::new();
    let mut answered = false;
    lab.run(|i, _, _| {
        if conn.is_none() {
            conn = i.tcp_accept(lst).unwrap();
        }
        let Some(c) = conn else { return true };
        if answered {
            return !client.is_finished();
        }
        loop {
            match i.recv(c, usize::MAX) {
                Ok(chunks) if chunks.is_empty() => {
                    if !answered {
                        let pieces: Vec<Piece<'_>> = parts.iter().map(Piece::Range).collect();
                        let (seg, _) = mem.splice(&pieces).unwrap();
                        i.send_slice(c, &seg.digest()).unwrap();
                        i.close(c).unwrap();
                        answered = true;
                    }
                    break;
                }
                Ok(chunks) => parts.extend(chunks),
                Err(IfaceError::WouldBlock) => break,
                Err(e) => panic!("{e}"),
            }
        }
        true
    });
    let d = client.join().unwrap();
    assert_eq!(d, want, "upload digest differs");
    let total: usize = parts.iter().map(Payload::len).sum();
    assert_eq!(total, 64 << 20);
    // The kernel handed the upload over as GSO super-frames (TSO offered
    // with TUNSETOFFLOAD), each taken whole: one RX segment per frame, not
    // one per MSS.
    let after = lab.iface.nic().counters();
    let (frames, bytes) = (
        after.rx_frames - before.rx_frames,
        after.rx_bytes - before.rx_bytes,
    );
    assert!(
        bytes / frames.max(1) > 16 << 10,
        "{frames} frames for {bytes} bytes: no GSO frames from the kernel?"
    );
    assert_eq!(after.payload_bytes_copied, 0);
}

#[test]
fn many_concurrent_kernel_connections() {
    if common::skip() {
        return;
    }
    let mut lab = lab(3);
    let lst = lab.iface.tcp_listen(80).unwrap();
    let our_ip = lab.our_ip;
    const N: usize = 128;
    let client = lab.kernel(move || {
        let mut conns: Vec<TcpStream> = (0..N)
            .map(|_| TcpStream::connect(SocketAddrV4::new(our_ip, 80)).expect("connect"))
            .collect();
        for (k, s) in conns.iter_mut().enumerate() {
            s.write_all(format!("hello {k:04}\n").as_bytes()).unwrap();
        }
        let mut ok = 0;
        for (k, s) in conns.iter_mut().enumerate() {
            let mut buf = [0u8; 11];
            s.read_exact(&mut buf).unwrap();
            if buf == *format!("hello {k:04}\n").as_bytes() {
                ok += 1;
            }
        }
        ok
    });
    let mut servers = Vec::new();
    lab.run(|i, _, _| {
        while let Some(s) = i.tcp_accept(lst).unwrap() {
            servers.push(s);
        }
        for &s in &servers {
            if let Ok(chunks) = i.recv(s, usize::MAX) {
                for p in chunks {
                    i.send(s, p).unwrap();
                }
            }
        }
        !client.is_finished()
    });
    assert_eq!(client.join().unwrap(), N);
    assert_eq!(servers.len(), N);
}

#[test]
fn segstack_client_of_a_kernel_server() {
    if common::skip() {
        return;
    }
    let mut lab = lab(4);
    let kernel_ip = lab.kernel_ip;
    let (tx, rx) = std::sync::mpsc::channel();
    let data = pattern(4 << 20, 5);
    let expect = data.clone();
    let server = lab.kernel(move || {
        let l = TcpListener::bind(SocketAddrV4::new(kernel_ip, 9000)).expect("bind");
        tx.send(()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        // Echo it back, then close.
        s.write_all(&got).unwrap();
        got == expect
    });
    rx.recv().unwrap();
    let now = lab.now();
    let c = lab
        .iface
        .tcp_connect(SocketAddrV4::new(kernel_ip, 9000), now)
        .unwrap();
    let mem = lab.iface.memory().clone();
    let mut left = Payload::from_bytes(&mem, &data).unwrap();
    let mut back = Vec::new();
    let mut shut = false;
    let mut eof = false;
    lab.run(|i, _, _| {
        i.send_some(c, &mut left).expect("send");
        // Shut down once everything is queued and the connection is up (a
        // 4 MiB send buffer queues it all before the handshake is over).
        if left.is_empty() && !shut && i.tcp(c).unwrap().state() != State::SynSent {
            i.shutdown(c).unwrap();
            shut = true;
        }
        let mut buf = vec![0u8; 65536];
        loop {
            match i.recv_slice(c, &mut buf) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => back.extend_from_slice(&buf[..n]),
                Err(IfaceError::WouldBlock) => break,
                Err(e) => panic!("{e}"),
            }
        }
        !eof
    });
    assert!(server.join().unwrap(), "the kernel received other bytes");
    assert!(back == data, "echo differs");
    lab.iface.close(c).unwrap();
}

#[test]
fn kernel_peer_that_resets_or_half_closes() {
    if common::skip() {
        return;
    }
    let mut lab = lab(5);
    let lst = lab.iface.tcp_listen(81).unwrap();
    let our_ip = lab.our_ip;
    let client = lab.kernel(move || {
        // 1: half-close after the request; the reply still arrives.
        let mut s = TcpStream::connect(SocketAddrV4::new(our_ip, 81)).unwrap();
        s.write_all(b"half").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        // 2: an abortive close (SO_LINGER 0 sends RST).
        let mut r = TcpStream::connect(SocketAddrV4::new(our_ip, 81)).unwrap();
        linger_zero(&r);
        r.write_all(b"reset").unwrap();
        std::thread::sleep(Duration::from_millis(100));
        drop(r);
        got
    });
    let mut servers: Vec<SocketHandle> = Vec::new();
    let mut closed_events = 0;
    let mut replied = Vec::new();
    lab.run(|i, ev, _| {
        while let Some(s) = i.tcp_accept(lst).unwrap() {
            servers.push(s);
        }
        for e in ev {
            if e.closed {
                closed_events += 1;
            }
        }
        for &s in &servers {
            if matches!(i.recv(s, usize::MAX), Ok(c) if c.is_empty()) && !replied.contains(&s) {
                i.send_slice(s, b"bye").unwrap();
                i.close(s).unwrap();
                replied.push(s);
            }
        }
        !(client.is_finished() && closed_events >= 1)
    });
    assert_eq!(client.join().unwrap(), b"bye");
    assert!(closed_events >= 1, "the reset was not reported");
}

/// SO_LINGER with a zero timeout: close() then sends RST (std's
/// `set_linger` is unstable).
fn linger_zero(s: &TcpStream) {
    use std::os::fd::AsRawFd;
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: the fd is a live socket owned by `s`; the option value points
    // to a `linger` of the size passed.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "SO_LINGER");
}
