//! The resolver's sockets (inside one container's namespace, or on a
//! network's gateway for `--dns-via cgroup-hooks`) and the forwarding of
//! what it does not answer itself.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::Path,
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, Result};
use hickory_proto::op::{Message, OpCode, ResponseCode};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream, UdpSocket},
    task::JoinSet,
    time::timeout,
};

use super::{Answer, Dns, RESOLVER_ADDR, records};

/// How long one upstream gets to answer (Docker's).
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(4);
/// Upstreams tried for one query, in order (Docker's).
const MAX_UPSTREAMS: usize = 3;
/// How long a TCP client may sit idle between queries.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// TCP clients served at once per container; more wait in the backlog.
const MAX_TCP_CLIENTS: usize = 64;
/// The same for all of a network's containers, on its gateway socket.
const MAX_TCP_CLIENTS_PER_NETWORK: usize = 1024;
/// A DNS header: the least a query can be to get an answer at all.
const HEADER_LEN: usize = 12;
/// The largest UDP query read whole (a common EDNS size; a query is a few
/// dozen bytes): a longer one is cut, fails to parse and gets FORMERR. One
/// buffer per served container, so it stays small.
const MAX_UDP_QUERY: usize = 4096;

/// A UDP socket and a TCP listener on 127.0.0.11:53 inside `netns`, bound
/// from a thread that enters it (the sockets stay there).
pub fn bind_in(netns: &Path) -> Result<(UdpSocket, TcpListener)> {
    let (udp, tcp) = crate::netns::run_in(netns, || bind_pair(RESOLVER_ADDR))?;
    Ok((UdpSocket::from_std(udp)?, TcpListener::from_std(tcp)?))
}

/// A UDP socket and a TCP listener on `gateway`:53 in the daemon's
/// namespace: where the socket hooks send the queries of a network's
/// containers (`--dns-via cgroup-hooks`).
pub fn bind_on(gateway: Ipv4Addr) -> Result<(UdpSocket, TcpListener)> {
    let (udp, tcp) = bind_pair(gateway)?;
    Ok((UdpSocket::from_std(udp)?, TcpListener::from_std(tcp)?))
}

/// A non-blocking UDP socket and TCP listener on `ip`:53, in the calling
/// thread's namespace.
fn bind_pair(ip: Ipv4Addr) -> Result<(std::net::UdpSocket, std::net::TcpListener)> {
    let addr = SocketAddrV4::new(ip, 53);
    let udp = std::net::UdpSocket::bind(addr).with_context(|| format!("binding udp {addr}"))?;
    let tcp = std::net::TcpListener::bind(addr).with_context(|| format!("binding tcp {addr}"))?;
    udp.set_nonblocking(true)?;
    tcp.set_nonblocking(true)?;
    Ok((udp, tcp))
}

/// Whose queries a socket receives.
#[derive(Clone)]
pub enum Askers {
    /// One container's: the socket is in its namespace.
    Container(Arc<str>),
    /// A network's containers: the socket is on its gateway, and the source
    /// address says which one asks.
    OnNetwork(Arc<str>),
}

impl Askers {
    /// The container asking from `from`; `None` on a gateway socket for a
    /// source that is no served container on that network (the host, a
    /// neighbour outside, another runtime's container): not answered, so
    /// the socket serves nobody else and amplifies nothing.
    fn asker(&self, dns: &Dns, from: SocketAddr) -> Option<Arc<str>> {
        match (self, from) {
            (Askers::Container(name), _) => Some(name.clone()),
            (Askers::OnNetwork(network), SocketAddr::V4(from)) => {
                dns.records().asker_at(network, *from.ip()).map(Arc::from)
            }
            (Askers::OnNetwork(_), SocketAddr::V6(_)) => None,
        }
    }

    /// TCP clients served at once on the socket; more wait in the backlog.
    fn max_tcp_clients(&self) -> usize {
        match self {
            Askers::Container(_) => MAX_TCP_CLIENTS,
            Askers::OnNetwork(_) => MAX_TCP_CLIENTS_PER_NETWORK,
        }
    }
}

pub async fn serve_udp(dns: Arc<Dns>, askers: Askers, socket: Arc<UdpSocket>) {
    let mut pending = JoinSet::new();
    let mut buf = vec![0u8; MAX_UDP_QUERY];
    loop {
        let Ok((len, from)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        while pending.try_join_next().is_some() {}
        let Some(asker) = askers.asker(&dns, from) else {
            continue;
        };
        // Answered here when it is netd's to answer; a forward, which may
        // take seconds, gets a task of its own.
        match dns.answer_locally(&asker, &buf[..len], true) {
            Local::Reply(Some(reply)) => {
                let _ = socket.send_to(&reply, from).await;
            }
            Local::Reply(None) => {}
            Local::Forward(message) => {
                let query = buf[..len].to_vec();
                let (dns, socket) = (dns.clone(), socket.clone());
                pending.spawn(async move {
                    if let Some(reply) = dns.forward_or_fail(&message, &query, true).await {
                        let _ = socket.send_to(&reply, from).await;
                    }
                });
            }
        }
    }
}

pub async fn serve_tcp(dns: Arc<Dns>, askers: Askers, listener: TcpListener) {
    let mut clients = JoinSet::new();
    loop {
        let Ok((stream, from)) = listener.accept().await else {
            continue;
        };
        while clients.try_join_next().is_some() {}
        if clients.len() >= askers.max_tcp_clients() {
            continue; // dropped: the client retries
        }
        let Some(asker) = askers.asker(&dns, from) else {
            continue; // closed unanswered
        };
        clients.spawn(serve_tcp_client(dns.clone(), asker, stream));
    }
}

/// Queries on one TCP connection, each a two-byte length and a message.
async fn serve_tcp_client(dns: Arc<Dns>, asker: Arc<str>, mut stream: TcpStream) {
    loop {
        let Ok(Ok(len)) = timeout(TCP_IDLE, stream.read_u16()).await else {
            return;
        };
        let mut query = vec![0u8; usize::from(len)];
        if timeout(TCP_IDLE, stream.read_exact(&mut query))
            .await
            .is_err()
        {
            return;
        }
        let Some(reply) = dns.reply(&asker, &query, false).await else {
            return;
        };
        let Ok(len) = u16::try_from(reply.len()) else {
            return;
        };
        if stream.write_u16(len).await.is_err() || stream.write_all(&reply).await.is_err() {
            return;
        }
    }
}

/// What the resolver does with a query without waiting for anyone.
enum Local {
    /// These bytes, or nothing at all (not even an ID to answer to).
    Reply(Option<Vec<u8>>),
    /// Not netd's to answer: to the upstreams.
    Forward(Message),
}

impl Dns {
    /// The answer to one query from `asker`, as bytes; `None`: nothing to
    /// send.
    async fn reply(&self, asker: &str, query: &[u8], udp: bool) -> Option<Vec<u8>> {
        match self.answer_locally(asker, query, udp) {
            Local::Reply(reply) => reply,
            Local::Forward(message) => self.forward_or_fail(&message, query, udp).await,
        }
    }

    fn answer_locally(&self, asker: &str, query: &[u8], udp: bool) -> Local {
        let message = match Message::from_vec(query) {
            Ok(message) => message,
            Err(_) if query.len() >= HEADER_LEN => {
                let id = u16::from_be_bytes([query[0], query[1]]);
                let error = Message::error_msg(id, OpCode::Query, ResponseCode::FormErr);
                return Local::Reply(error.to_vec().ok());
            }
            Err(_) => return Local::Reply(None),
        };
        match self.records().answer(asker, &message, udp) {
            Answer::Reply(reply) => Local::Reply(reply.to_vec().ok()),
            Answer::Forward => Local::Forward(message),
        }
    }

    /// The upstreams' answer, or SERVFAIL when none gave one.
    async fn forward_or_fail(&self, message: &Message, query: &[u8], udp: bool) -> Option<Vec<u8>> {
        match self.forward(query, udp).await {
            Some(reply) => Some(reply),
            None => records::error(message, ResponseCode::ServFail)
                .to_vec()
                .ok(),
        }
    }

    /// The first usable answer of the upstreams to `query` (its bytes as
    /// the asker sent them, so the ID is the asker's).
    async fn forward(&self, query: &[u8], udp: bool) -> Option<Vec<u8>> {
        let _permit = self.forwards.clone().try_acquire_owned().ok()?;
        for &upstream in self.upstreams().iter().take(MAX_UPSTREAMS) {
            let reply = match udp {
                true => timeout(UPSTREAM_TIMEOUT, ask_udp(upstream, query)).await,
                false => timeout(UPSTREAM_TIMEOUT, ask_tcp(upstream, query)).await,
            };
            let reply = match reply {
                Ok(Ok(reply)) => reply,
                Ok(Err(err)) => {
                    tracing::debug!(%upstream, %err, "forwarding a query");
                    continue;
                }
                Err(_) => {
                    tracing::debug!(%upstream, "forwarding a query: no answer in time");
                    continue;
                }
            };
            if reply.len() < HEADER_LEN || reply[..2] != query[..2] {
                continue;
            }
            // As Docker: a failure or refusal may be one server's; the next
            // one is asked. What does not parse is not passed on.
            match Message::from_vec(&reply).map(|m| m.response_code()) {
                Ok(ResponseCode::ServFail | ResponseCode::Refused) | Err(_) => continue,
                Ok(_) => return Some(reply),
            }
        }
        None
    }
}

async fn ask_udp(upstream: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let local: SocketAddr = match upstream {
        SocketAddr::V4(_) => "0.0.0.0:0".parse().expect("an address"),
        SocketAddr::V6(_) => "[::]:0".parse().expect("an address"),
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(upstream).await?;
    socket.send(query).await?;
    let mut buf = vec![0u8; 65535];
    let len = socket.recv(&mut buf).await?;
    buf.truncate(len);
    Ok(buf)
}

async fn ask_tcp(upstream: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(upstream).await?;
    let len = u16::try_from(query.len()).map_err(std::io::Error::other)?;
    stream.write_u16(len).await?;
    stream.write_all(query).await?;
    let len = stream.read_u16().await?;
    let mut reply = vec![0u8; usize::from(len)];
    stream.read_exact(&mut reply).await?;
    Ok(reply)
}
