//! Bounded traffic probes and echo servers inside namespaces.
//!
//! Every probe has a timeout and every server thread stops when its guard is
//! dropped, so no test can hang or leave traffic running.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use crate::Netns;

pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
const SERVER_POLL: Duration = Duration::from_millis(50);
/// Upper bound for one bulk transfer in tests.
pub const BULK_TIMEOUT: Duration = Duration::from_secs(20);

/// `count` ICMP echo requests from `ns` to `dst`; true if any reply came back.
pub fn ping(ns: &Netns, dst: &str, count: u32) -> Result<bool> {
    Ok(ping_status(ns, dst, count)? == 0)
}

/// ping's exit status: 0 a reply came back, 1 none did, 2 it could not
/// send (e.g. the network is unreachable).
pub fn ping_status(ns: &Netns, dst: &str, count: u32) -> Result<i32> {
    let out = ns
        .command("ping")
        .args([
            "-n",
            "-q",
            "-c",
            &count.to_string(),
            "-i",
            "0.2",
            "-W",
            "1",
            dst,
        ])
        .output()
        .context("running ping (package iputils-ping)")?;
    out.status.code().context("ping was killed by a signal")
}

/// An echo server (TCP or UDP) bound inside a namespace. It answers every
/// request with `reply_prefix` followed by the request, so a probe can tell
/// which server answered; `{peer}` in the prefix becomes the client address
/// the server saw (to check NAT).
pub struct EchoServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EchoServer {
    pub fn tcp(ns: &Netns, addr: SocketAddr, reply_prefix: &str) -> Result<Self> {
        let listener = ns.enter(|| TcpListener::bind(addr))??;
        listener.set_nonblocking(true)?;
        let prefix = reply_prefix.as_bytes().to_vec();
        Ok(Self::run(move |stop| {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, peer)) => {
                        let _ = serve_tcp(&mut conn, &with_peer(&prefix, peer));
                    }
                    Err(_) => thread::sleep(SERVER_POLL),
                }
            }
        }))
    }

    /// A TCP server that reads each connection to EOF and answers with the
    /// number of bytes it received (for bulk transfers).
    pub fn tcp_sink(ns: &Netns, addr: SocketAddr) -> Result<Self> {
        let listener = ns.enter(|| TcpListener::bind(addr))??;
        listener.set_nonblocking(true)?;
        Ok(Self::run(move |stop| {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        let _ = conn.set_nonblocking(false);
                        let _ = conn.set_read_timeout(Some(BULK_TIMEOUT));
                        let mut sink = Vec::new();
                        if conn.read_to_end(&mut sink).is_ok() {
                            let _ = conn.write_all(sink.len().to_string().as_bytes());
                        }
                    }
                    Err(_) => thread::sleep(SERVER_POLL),
                }
            }
        }))
    }

    /// A TCP server that echoes everything back on each connection until the
    /// client closes it (for long-lived connections).
    pub fn tcp_stream_echo(ns: &Netns, addr: SocketAddr) -> Result<Self> {
        let listener = ns.enter(|| TcpListener::bind(addr))??;
        listener.set_nonblocking(true)?;
        Ok(Self::run(move |stop| {
            let mut workers = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        let stop = stop.clone();
                        workers.push(thread::spawn(move || {
                            let _ = conn.set_nonblocking(false);
                            let _ = conn.set_read_timeout(Some(SERVER_POLL));
                            let mut buf = [0u8; 2048];
                            while !stop.load(Ordering::Relaxed) {
                                match conn.read(&mut buf) {
                                    Ok(0) => break,
                                    Ok(n) => {
                                        if conn.write_all(&buf[..n]).is_err() {
                                            break;
                                        }
                                    }
                                    Err(e)
                                        if e.kind() == std::io::ErrorKind::WouldBlock
                                            || e.kind() == std::io::ErrorKind::TimedOut => {}
                                    Err(_) => break,
                                }
                            }
                        }));
                    }
                    Err(_) => thread::sleep(SERVER_POLL),
                }
            }
            for worker in workers {
                let _ = worker.join();
            }
        }))
    }

    pub fn udp(ns: &Netns, addr: SocketAddr, reply_prefix: &str) -> Result<Self> {
        let socket = ns.enter(|| UdpSocket::bind(addr))??;
        socket.set_read_timeout(Some(SERVER_POLL))?;
        let prefix = reply_prefix.as_bytes().to_vec();
        Ok(Self::run(move |stop| {
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, peer)) = socket.recv_from(&mut buf) {
                    let mut reply = with_peer(&prefix, peer);
                    reply.extend_from_slice(&buf[..n]);
                    let _ = socket.send_to(&reply, peer);
                }
            }
        }))
    }

    fn run(serve: impl FnOnce(Arc<AtomicBool>) + Send + 'static) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        Self {
            stop,
            thread: Some(thread::spawn(move || serve(flag))),
        }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn with_peer(prefix: &[u8], peer: SocketAddr) -> Vec<u8> {
    String::from_utf8_lossy(prefix)
        .replace("{peer}", &peer.ip().to_string())
        .into_bytes()
}

fn serve_tcp(conn: &mut TcpStream, prefix: &[u8]) -> std::io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(PROBE_TIMEOUT))?;
    let mut buf = [0u8; 2048];
    let n = conn.read(&mut buf)?;
    conn.write_all(prefix)?;
    conn.write_all(&buf[..n])
}

/// One TCP request from inside `ns`: connect, send, read the reply until EOF
/// or timeout. Err when the connection is refused or times out.
pub fn tcp_request(ns: &Netns, dst: SocketAddr, payload: &[u8]) -> Result<Vec<u8>> {
    let mut conn = ns
        .enter(|| TcpStream::connect_timeout(&dst, PROBE_TIMEOUT))?
        .with_context(|| format!("TCP connect from {} to {dst}", ns.name()))?;
    conn.set_read_timeout(Some(PROBE_TIMEOUT))?;
    conn.write_all(payload)?;
    conn.shutdown(std::net::Shutdown::Write)?;
    let mut reply = Vec::new();
    conn.read_to_end(&mut reply)
        .with_context(|| format!("reading the reply from {dst} (connected)"))?;
    Ok(reply)
}

/// Sends `size` bytes over one TCP connection to a [`EchoServer::tcp_sink`]
/// and returns how many bytes the server says it received.
pub fn tcp_upload(ns: &Netns, dst: SocketAddr, size: usize) -> Result<usize> {
    let mut conn = ns
        .enter(|| TcpStream::connect_timeout(&dst, PROBE_TIMEOUT))?
        .with_context(|| format!("TCP connect from {} to {dst}", ns.name()))?;
    conn.set_write_timeout(Some(BULK_TIMEOUT))?;
    conn.set_read_timeout(Some(BULK_TIMEOUT))?;
    conn.write_all(&vec![0x5a; size])?;
    conn.shutdown(std::net::Shutdown::Write)?;
    let mut reply = String::new();
    conn.read_to_string(&mut reply)?;
    Ok(reply.trim().parse()?)
}

/// Opens a TCP connection from inside `ns` (for long-lived exchanges).
pub fn tcp_connect(ns: &Netns, dst: SocketAddr) -> Result<TcpStream> {
    let conn = ns
        .enter(|| TcpStream::connect_timeout(&dst, PROBE_TIMEOUT))?
        .with_context(|| format!("TCP connect from {} to {dst}", ns.name()))?;
    conn.set_read_timeout(Some(PROBE_TIMEOUT))?;
    Ok(conn)
}

/// Sends `message` on an open connection and expects it echoed back.
pub fn echo_roundtrip(conn: &mut TcpStream, message: &[u8]) -> Result<()> {
    conn.write_all(message)?;
    let mut reply = vec![0u8; message.len()];
    conn.read_exact(&mut reply)?;
    if reply != message {
        bail!("echo mismatch: sent {message:?}, got {reply:?}");
    }
    Ok(())
}

/// One UDP datagram from inside `ns` and the reply to it, if one comes.
pub fn udp_request(ns: &Netns, dst: SocketAddr, payload: &[u8]) -> Result<Vec<u8>> {
    let any = match dst {
        SocketAddr::V4(_) => "0.0.0.0:0",
        SocketAddr::V6(_) => "[::]:0",
    };
    let socket = ns.enter(|| UdpSocket::bind(any))??;
    socket.set_read_timeout(Some(PROBE_TIMEOUT))?;
    socket.send_to(payload, dst)?;
    let mut buf = [0u8; 2048];
    match socket.recv_from(&mut buf) {
        Ok((n, _)) => Ok(buf[..n].to_vec()),
        Err(err) => bail!("no UDP reply from {dst} to {}: {err}", ns.name()),
    }
}

/// Sends one raw Ethernet frame out of `ifname` inside `ns` (AF_PACKET), to
/// put malformed packets on a real wire.
pub fn send_raw_frame(ns: &Netns, ifname: &str, frame: &[u8]) -> Result<()> {
    ns.enter(|| -> Result<()> {
        let ifname_c = std::ffi::CString::new(ifname)?;
        // SAFETY: plain libc calls with checked return values; the socket is closed below.
        unsafe {
            let ifindex = libc::if_nametoindex(ifname_c.as_ptr());
            if ifindex == 0 {
                bail!("no interface {ifname}: {}", std::io::Error::last_os_error());
            }
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            if fd < 0 {
                bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
            }
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_ifindex = ifindex as i32;
            addr.sll_halen = 6;
            addr.sll_addr[..6].copy_from_slice(&frame[..6]);
            let sent = libc::sendto(
                fd,
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            if sent < 0 {
                bail!("sending raw frame on {ifname}: {err}");
            }
        }
        Ok(())
    })?
}

/// Retries `probe` until it returns true (the daemon applies host changes
/// from rtnetlink events, asynchronously); fails after 10 s.
pub fn eventually(what: &str, mut probe: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !probe() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within 10 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
