//! The typed client of the daemon's socket, shared by the CLI, the tests
//! and the bench: one method per request, each decoding its own reply type.

use std::{
    io::{BufRead as _, BufReader, Lines, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result};

use crate::error::ErrorKind;

use crate::api::{
    Attachment, CniAttach, CniAttachment, CniCollected, CniDetach, CniNetwork, CniReady,
    ConntrackRow, Container, ContainerSpec, Disconnected, MonitorEvent, Network, NetworkDetails,
    NetworkSpec, Removed, RepairReport, Reply, Request, Response, RuleAdd, RuleEntry, Status,
    Stopped,
};

/// The reply's data if it is of `$variant`: any other reply type is the
/// daemon answering another request than the one sent.
macro_rules! expect_reply {
    ($reply:expr, $variant:ident, boxed) => {
        expect_reply!($reply, $variant).map(|data| *data)
    };
    ($reply:expr, $variant:ident) => {
        match $reply {
            Reply::$variant(data) => Ok(data),
            other => Err(anyhow::anyhow!(
                "the daemon answered with a {} reply where {} was expected",
                other.type_name(),
                stringify!($variant)
            )),
        }
    };
}

#[derive(Clone, Debug)]
pub struct Client {
    socket: PathBuf,
    timeout: Option<Duration>,
}

impl Client {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            timeout: None,
        }
    }

    /// Gives up on a reply after `timeout` (default: waits as long as the
    /// daemon works).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn connect(&self) -> Result<UnixStream> {
        // Unavailable, with the I/O error kept in the chain (the CNI plugin
        // tells "not reachable" from "refused" by it).
        let stream = UnixStream::connect(&self.socket).map_err(|err| {
            anyhow::Error::new(err).context(crate::error::Error::new(
                ErrorKind::Unavailable,
                format!(
                    "connecting to the daemon at {} (is `netd daemon` running? NETD_SOCKET / --socket)",
                    self.socket.display()
                ),
            ))
        })?;
        stream.set_read_timeout(self.timeout)?;
        Ok(stream)
    }

    /// Sends one request and decodes its reply (tagged with its type); a
    /// refusal is an error carrying the daemon's kind and message.
    pub fn call(&self, request: &Request) -> Result<Reply> {
        let mut stream = self.connect()?;
        let mut line = serde_json::to_vec(request)?;
        line.push(b'\n');
        stream.write_all(&line)?;
        let mut reply = String::new();
        BufReader::new(stream).read_line(&mut reply)?;
        if reply.is_empty() {
            // The daemon went away mid-request (killed, restarting): for the
            // caller as for a refused connection, try again.
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "the daemon closed the connection without a reply",
            )
            .into());
        }
        let response: Response<Reply> = serde_json::from_str(&reply)
            .with_context(|| format!("malformed reply from the daemon: {}", reply.trim_end()))?;
        decode(response)
    }

    pub fn network_create(&self, spec: NetworkSpec) -> Result<Network> {
        expect_reply!(self.call(&Request::NetworkCreate(spec))?, Network)
    }

    pub fn network_ls(&self) -> Result<Vec<Network>> {
        expect_reply!(self.call(&Request::NetworkLs)?, Networks)
    }

    pub fn network_inspect(&self, name: &str) -> Result<NetworkDetails> {
        expect_reply!(
            self.call(&Request::NetworkInspect {
                name: name.to_owned(),
            })?,
            NetworkDetails
        )
    }

    pub fn network_rm(&self, name: &str) -> Result<Removed> {
        expect_reply!(
            self.call(&Request::NetworkRm {
                name: name.to_owned(),
            })?,
            Removed
        )
    }

    pub fn network_connect(
        &self,
        network: &str,
        container: &str,
        (ip, ip6): (Option<std::net::IpAddr>, Option<std::net::IpAddr>),
        aliases: Vec<String>,
        gw_priority: i32,
    ) -> Result<Attachment> {
        expect_reply!(
            self.call(&Request::NetworkConnect {
                network: network.to_owned(),
                container: container.to_owned(),
                ip,
                ip6,
                aliases,
                gw_priority,
            })?,
            Attachment
        )
    }

    pub fn network_disconnect(&self, network: &str, container: &str) -> Result<Disconnected> {
        expect_reply!(
            self.call(&Request::NetworkDisconnect {
                network: network.to_owned(),
                container: container.to_owned(),
            })?,
            Disconnected
        )
    }

    pub fn container_create(&self, spec: ContainerSpec) -> Result<Container> {
        expect_reply!(self.call(&Request::ContainerCreate(spec))?, Container)
    }

    pub fn container_rm(&self, name: &str) -> Result<Removed> {
        expect_reply!(
            self.call(&Request::ContainerRm {
                name: name.to_owned(),
            })?,
            Removed
        )
    }

    pub fn container_ls(&self) -> Result<Vec<Container>> {
        expect_reply!(self.call(&Request::ContainerLs)?, Containers)
    }

    pub fn container_inspect(&self, name: &str) -> Result<Container> {
        expect_reply!(
            self.call(&Request::ContainerInspect {
                name: name.to_owned(),
            })?,
            Container
        )
    }

    pub fn status(&self) -> Result<Status> {
        expect_reply!(self.call(&Request::Status)?, Status, boxed)
    }

    pub fn repair(&self) -> Result<RepairReport> {
        expect_reply!(self.call(&Request::Repair)?, Repair)
    }

    pub fn conntrack(&self) -> Result<Vec<ConntrackRow>> {
        expect_reply!(self.call(&Request::ConntrackLs)?, Conntrack)
    }

    pub fn down(&self) -> Result<Stopped> {
        expect_reply!(self.call(&Request::Down)?, Stopped)
    }

    pub fn cni_add(&self, attach: CniAttach) -> Result<CniAttachment> {
        expect_reply!(self.call(&Request::CniAdd(attach))?, CniAttachment, boxed)
    }

    pub fn cni_check(&self, attach: CniAttach) -> Result<CniAttachment> {
        expect_reply!(self.call(&Request::CniCheck(attach))?, CniAttachment, boxed)
    }

    pub fn cni_del(&self, detach: CniDetach) -> Result<Removed> {
        expect_reply!(self.call(&Request::CniDel(detach))?, Removed)
    }

    pub fn cni_gc(&self, network: &str, valid: Vec<CniDetach>) -> Result<CniCollected> {
        expect_reply!(
            self.call(&Request::CniGc {
                network: network.to_owned(),
                valid,
            })?,
            CniCollected
        )
    }

    pub fn cni_status(&self, network: CniNetwork) -> Result<CniReady> {
        expect_reply!(self.call(&Request::CniStatus(network))?, CniReady)
    }

    /// Drop events as they happen; returns once the daemon confirmed the
    /// stream is live (its hello line), so nothing sent after is missed.
    pub fn rule_add(&self, add: RuleAdd) -> Result<RuleEntry> {
        expect_reply!(self.call(&Request::RuleAdd(add))?, Rule)
    }

    pub fn rule_rm(&self, id: u32) -> Result<RuleEntry> {
        expect_reply!(self.call(&Request::RuleRm { id })?, Rule)
    }

    pub fn rule_load(&self, rules: Vec<crate::rule::UserRule>) -> Result<Vec<RuleEntry>> {
        expect_reply!(self.call(&Request::RuleLoad { rules })?, Rules)
    }

    pub fn rule_ls(&self) -> Result<Vec<RuleEntry>> {
        expect_reply!(self.call(&Request::RuleLs)?, Rules)
    }

    pub fn monitor(&self) -> Result<Monitor> {
        let mut stream = self.connect()?;
        let mut line = serde_json::to_vec(&Request::Monitor)?;
        line.push(b'\n');
        stream.write_all(&line)?;
        let mut lines = BufReader::new(stream).lines();
        let hello = lines
            .next()
            .context("the daemon closed the monitor connection")??;
        let hello: Response<String> =
            serde_json::from_str(&hello).context("malformed monitor hello")?;
        decode(hello)?;
        Ok(Monitor { lines })
    }
}

fn decode<T>(response: Response<T>) -> Result<T> {
    if !response.ok {
        let message = response.error.unwrap_or_else(|| "request failed".into());
        let kind = response.kind.unwrap_or(ErrorKind::Internal);
        let mut refusal = crate::error::Error::new(kind, message);
        refusal.cni_code = response.code;
        return Err(refusal.into());
    }
    response.data.context("the daemon's reply has no data")
}

/// A live `netd monitor` stream.
pub struct Monitor {
    lines: Lines<BufReader<UnixStream>>,
}

impl Iterator for Monitor {
    type Item = Result<MonitorEvent>;

    fn next(&mut self) -> Option<Self::Item> {
        let line = self.lines.next()?;
        Some(line.map_err(Into::into).and_then(|line| {
            serde_json::from_str(&line).with_context(|| format!("malformed monitor event: {line}"))
        }))
    }
}
