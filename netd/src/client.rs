//! The typed client of the daemon's socket, shared by the CLI, the tests
//! and the bench: one method per request, each decoding its own reply type.

use std::{
    io::{BufRead as _, BufReader, Lines, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result};
use serde::de::DeserializeOwned;

use crate::api::{
    Attachment, CniAttach, CniAttachment, CniCollected, CniDetach, CniNetwork, CniReady,
    ConntrackRow, Container, ContainerCreated, ContainerSpec, Disconnected, MonitorEvent, Network,
    NetworkDetails, NetworkSpec, Refusal, Removed, RepairReport, Request, Response, RuleAdd,
    RuleEntry, Status, Stopped,
};

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
        let stream = UnixStream::connect(&self.socket).with_context(|| {
            format!(
                "connecting to the daemon at {} (is `netd daemon` running? NETD_SOCKET / --socket)",
                self.socket.display()
            )
        })?;
        stream.set_read_timeout(self.timeout)?;
        Ok(stream)
    }

    /// Sends one request and decodes its reply as `T`; a refusal is an error
    /// carrying the daemon's message.
    pub fn call<T: DeserializeOwned>(&self, request: &Request) -> Result<T> {
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
        let response: Response<T> = serde_json::from_str(&reply)
            .with_context(|| format!("malformed reply from the daemon: {}", reply.trim_end()))?;
        decode(response)
    }

    pub fn network_create(&self, spec: NetworkSpec) -> Result<Network> {
        self.call(&Request::NetworkCreate(spec))
    }

    pub fn network_ls(&self) -> Result<Vec<Network>> {
        self.call(&Request::NetworkLs)
    }

    pub fn network_inspect(&self, name: &str) -> Result<NetworkDetails> {
        self.call(&Request::NetworkInspect {
            name: name.to_owned(),
        })
    }

    pub fn network_rm(&self, name: &str) -> Result<Removed> {
        self.call(&Request::NetworkRm {
            name: name.to_owned(),
        })
    }

    pub fn network_connect(
        &self,
        network: &str,
        container: &str,
        ip: Option<String>,
    ) -> Result<Attachment> {
        self.call(&Request::NetworkConnect {
            network: network.to_owned(),
            container: container.to_owned(),
            ip,
        })
    }

    pub fn network_disconnect(&self, network: &str, container: &str) -> Result<Disconnected> {
        self.call(&Request::NetworkDisconnect {
            network: network.to_owned(),
            container: container.to_owned(),
        })
    }

    pub fn container_create(&self, spec: ContainerSpec) -> Result<ContainerCreated> {
        self.call(&Request::ContainerCreate(spec))
    }

    pub fn container_rm(&self, name: &str) -> Result<Removed> {
        self.call(&Request::ContainerRm {
            name: name.to_owned(),
        })
    }

    pub fn container_ls(&self) -> Result<Vec<Container>> {
        self.call(&Request::ContainerLs)
    }

    pub fn container_inspect(&self, name: &str) -> Result<Container> {
        self.call(&Request::ContainerInspect {
            name: name.to_owned(),
        })
    }

    pub fn status(&self) -> Result<Status> {
        self.call(&Request::Status)
    }

    pub fn repair(&self) -> Result<RepairReport> {
        self.call(&Request::Repair)
    }

    pub fn conntrack(&self) -> Result<Vec<ConntrackRow>> {
        self.call(&Request::ConntrackLs)
    }

    pub fn down(&self) -> Result<Stopped> {
        self.call(&Request::Down)
    }

    pub fn cni_add(&self, attach: CniAttach) -> Result<CniAttachment> {
        self.call(&Request::CniAdd(attach))
    }

    pub fn cni_check(&self, attach: CniAttach) -> Result<CniAttachment> {
        self.call(&Request::CniCheck(attach))
    }

    pub fn cni_del(&self, detach: CniDetach) -> Result<Removed> {
        self.call(&Request::CniDel(detach))
    }

    pub fn cni_gc(&self, network: &str, valid: Vec<CniDetach>) -> Result<CniCollected> {
        self.call(&Request::CniGc {
            network: network.to_owned(),
            valid,
        })
    }

    pub fn cni_status(&self, network: CniNetwork) -> Result<CniReady> {
        self.call(&Request::CniStatus(network))
    }

    /// Drop events as they happen; returns once the daemon confirmed the
    /// stream is live (its hello line), so nothing sent after is missed.
    pub fn rule_add(&self, add: RuleAdd) -> Result<RuleEntry> {
        self.call(&Request::RuleAdd(add))
    }

    pub fn rule_rm(&self, id: u32) -> Result<RuleEntry> {
        self.call(&Request::RuleRm { id })
    }

    pub fn rule_load(&self, rules: Vec<crate::rule::UserRule>) -> Result<Vec<RuleEntry>> {
        self.call(&Request::RuleLoad { rules })
    }

    pub fn rule_ls(&self) -> Result<Vec<RuleEntry>> {
        self.call(&Request::RuleLs)
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
        return Err(match response.code {
            Some(code) => Refusal::error(code, message),
            None => anyhow::anyhow!(message),
        });
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
