//! DNS in the test topology: a stub upstream resolver (inside a test
//! namespace, never the machine's) and a client that asks from inside a
//! namespace over UDP or TCP.

use std::{
    collections::HashMap,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use hickory_proto::{
    op::{Message, MessageType, Query, ResponseCode},
    rr::{Name, RData, Record, RecordType, rdata::A},
};

use crate::topology::Netns;

/// A resolver (UDP and TCP) answering A queries for the names it was
/// given (AAAA for them: empty), NXDOMAIN for the rest; remembers every
/// name asked.
pub struct StubResolver {
    asked: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

type Names = Arc<HashMap<String, Ipv4Addr>>;

impl StubResolver {
    pub fn start(netns: &Netns, addr: SocketAddr, names: &[(&str, Ipv4Addr)]) -> Result<Self> {
        let (udp, tcp) = netns
            .enter(|| -> Result<_> { Ok((UdpSocket::bind(addr)?, TcpListener::bind(addr)?)) })??;
        udp.set_read_timeout(Some(Duration::from_millis(100)))?;
        tcp.set_nonblocking(true)?;
        let names: Names = Arc::new(
            names
                .iter()
                .map(|(n, ip)| (n.trim_end_matches('.').to_ascii_lowercase(), *ip))
                .collect(),
        );
        let asked = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let udp_thread = {
            let (names, log, stop) = (names.clone(), asked.clone(), stop.clone());
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((len, from)) = udp.recv_from(&mut buf) else {
                        continue;
                    };
                    if let Some(reply) = answer(&names, &log, &buf[..len]) {
                        let _ = udp.send_to(&reply, from);
                    }
                }
            })
        };
        let tcp_thread = {
            let (log, stop) = (asked.clone(), stop.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let Ok((mut stream, _)) = tcp.accept() else {
                        thread::sleep(Duration::from_millis(20));
                        continue;
                    };
                    let _ = stream.set_nonblocking(false);
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                    let mut len = [0u8; 2];
                    if stream.read_exact(&mut len).is_err() {
                        continue;
                    }
                    let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
                    if stream.read_exact(&mut query).is_err() {
                        continue;
                    }
                    if let Some(reply) = answer(&names, &log, &query) {
                        let len = u16::try_from(reply.len()).unwrap_or(0).to_be_bytes();
                        let _ = stream.write_all(&len);
                        let _ = stream.write_all(&reply);
                    }
                }
            })
        };
        Ok(Self {
            asked,
            stop,
            threads: vec![udp_thread, tcp_thread],
        })
    }

    /// How many queries asked for `name` so far.
    pub fn asked(&self, name: &str) -> usize {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        self.asked
            .lock()
            .unwrap()
            .iter()
            .filter(|n| **n == name)
            .count()
    }
}

impl Drop for StubResolver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// The stub's answer to one query.
fn answer(names: &Names, log: &Mutex<Vec<String>>, query: &[u8]) -> Option<Vec<u8>> {
    let query = Message::from_vec(query).ok()?;
    let q = query.queries().first()?;
    let name = q
        .name()
        .to_ascii()
        .trim_end_matches('.')
        .to_ascii_lowercase();
    log.lock().unwrap().push(name.clone());
    let mut reply = Message::new();
    reply
        .set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_recursion_available(true)
        .add_query(q.clone());
    match (names.get(&name), q.query_type()) {
        (Some(ip), RecordType::A) => {
            reply.add_answer(Record::from_rdata(q.name().clone(), 60, RData::A(A(*ip))));
        }
        (Some(_), _) => {}
        (None, _) => {
            reply.set_response_code(ResponseCode::NXDomain);
        }
    }
    reply.to_vec().ok()
}

/// One query from inside `netns` to `server`; the answer, or an error if
/// none came within two seconds.
pub fn ask(
    netns: &Netns,
    server: SocketAddr,
    name: &str,
    kind: RecordType,
    tcp: bool,
) -> Result<Message> {
    let mut query = Message::new();
    query
        .set_id(0x4e7d)
        .set_recursion_desired(true)
        .add_query(Query::query(Name::from_ascii(name)?, kind));
    let reply = ask_raw(netns, server, &query.to_vec()?, tcp)?;
    Message::from_vec(&reply).context("parsing the answer")
}

/// Sends `bytes` as a query (over TCP with its length first) and returns
/// the answer's bytes.
pub fn ask_raw(netns: &Netns, server: SocketAddr, bytes: &[u8], tcp: bool) -> Result<Vec<u8>> {
    let timeout = Duration::from_secs(2);
    netns.enter(|| -> Result<Vec<u8>> {
        if tcp {
            let mut stream = TcpStream::connect_timeout(&server, timeout)?;
            stream.set_read_timeout(Some(timeout))?;
            let len = u16::try_from(bytes.len())?;
            stream.write_all(&len.to_be_bytes())?;
            stream.write_all(bytes)?;
            let mut len = [0u8; 2];
            stream.read_exact(&mut len)?;
            let mut reply = vec![0u8; usize::from(u16::from_be_bytes(len))];
            stream.read_exact(&mut reply)?;
            Ok(reply)
        } else {
            let socket = UdpSocket::bind("0.0.0.0:0")?;
            socket.set_read_timeout(Some(timeout))?;
            socket.connect(server)?;
            socket.send(bytes)?;
            let mut buf = vec![0u8; 65535];
            let len = socket.recv(&mut buf).context("no answer")?;
            buf.truncate(len);
            Ok(buf)
        }
    })?
}

/// The addresses in an answer's A records.
pub fn addresses(reply: &Message) -> Vec<Ipv4Addr> {
    reply
        .answers()
        .iter()
        .filter_map(|r| match r.data() {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

/// The local addresses of the UDP sockets bound to port 53 in `netns`
/// (`ss`), sorted: which way the resolver is served.
pub fn udp_port_53_sockets(netns: &Netns) -> Result<Vec<String>> {
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            netns.name(),
            "ss",
            "-Hlnu",
            "sport",
            "=",
            ":53",
        ])
        .output()?;
    if !out.status.success() {
        bail!("ss in {}: {}", netns.name(), out.status);
    }
    let mut bound: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().nth(3).map(str::to_owned))
        .collect();
    bound.sort();
    Ok(bound)
}

/// `getent hosts NAME` in the namespace as `ip netns exec` runs it (with
/// its /etc/netns/NAME/resolv.conf): the first line, or an error with the
/// exit code (2: not found).
pub fn getent_hosts(netns: &Netns, name: &str) -> Result<String> {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", netns.name(), "getent", "hosts", name])
        .output()?;
    if !out.status.success() {
        bail!("getent hosts {name} in {}: {}", netns.name(), out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" "))
}
