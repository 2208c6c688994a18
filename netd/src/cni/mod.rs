//! netd's CNI plugin (`netd-cni`): thin. It reads the runtime's request
//! (environment and stdin), forwards it to the daemon over its socket, and
//! writes the result shaped for the CNI version asked for, or a CNI error
//! (code, message) on stdout. The daemon does the work (`engine/cni.rs`).

pub mod config;
pub mod queue;
pub mod result;

use std::{io::Read as _, process::ExitCode, time::Duration};

use serde::Serialize;

use crate::{
    api::{CniAttach, CniDetach},
    client::Client,
};
use config::{NetConf, SUPPORTED_VERSIONS};
use result::{AddResult, ErrorResult, VersionResult};

/// CNI's error codes (SPEC.md, "Error"); 100 and up are netd's.
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENVIRONMENT: u32 = 4;
    pub const IO: u32 = 5;
    pub const DECODING: u32 = 6;
    pub const INVALID_NETWORK_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const PLUGIN_NOT_AVAILABLE: u32 = 50;
    /// The daemon refused the request (its message says why).
    pub const REFUSED: u32 = 100;
}

/// How long a request may take in the daemon (an ADD waits for the
/// engine's lock behind other requests).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A failed request: the CNI error to print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub code: u32,
    pub msg: String,
}

impl Failure {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
        }
    }

    /// A daemon's refusal keeps its code; not reaching the daemon is
    /// `unreachable`'s code.
    fn from_daemon(err: &anyhow::Error, unreachable: u32) -> Self {
        if is_unreachable(err) {
            return Self::new(unreachable, format!("netd is not reachable: {err:#}"));
        }
        match crate::error::refusal_of(err) {
            Some(refusal) => Self::new(refusal.cni_code(), format!("{err:#}")),
            None => Self::new(code::REFUSED, format!("{err:#}")),
        }
    }
}

/// Whether the daemon is not there (no socket, nobody listening) or went
/// away before answering, as opposed to a request it refused. Either way
/// it did not finish the request: ADD may be retried, DEL is queued (a DEL
/// done twice is still done).
fn is_unreachable(err: &anyhow::Error) -> bool {
    use std::io::ErrorKind;
    err.chain().any(|cause| {
        cause.downcast_ref::<std::io::Error>().is_some_and(|io| {
            matches!(
                io.kind(),
                ErrorKind::NotFound
                    | ErrorKind::ConnectionRefused
                    | ErrorKind::ConnectionReset
                    | ErrorKind::BrokenPipe
            )
        })
    })
}

/// The request's environment.
#[derive(Debug, Default)]
pub struct Env {
    pub command: String,
    pub container_id: Option<String>,
    pub netns: Option<String>,
    pub ifname: Option<String>,
    /// `CNI_ARGS`: `K=V;K2=V2`.
    pub args: Vec<(String, String)>,
}

impl Env {
    pub fn from_process() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        Self {
            command: var("CNI_COMMAND").unwrap_or_default(),
            container_id: var("CNI_CONTAINERID"),
            netns: var("CNI_NETNS"),
            ifname: var("CNI_IFNAME"),
            args: var("CNI_ARGS")
                .map(|a| {
                    a.split(';')
                        .filter_map(|kv| kv.split_once('='))
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    fn require(&self, name: &str, value: &Option<String>) -> Result<String, Failure> {
        value.clone().ok_or_else(|| {
            Failure::new(
                code::INVALID_ENVIRONMENT,
                format!("{name} is not set (CNI_COMMAND={} needs it)", self.command),
            )
        })
    }

    fn arg(&self, key: &str) -> Option<&str> {
        self.args
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// What the plugin prints on success.
#[derive(Debug)]
pub enum Output {
    Json(String),
    Nothing,
}

/// The plugin's entry point: reads the process's request, prints the
/// answer, exits 0 or 1.
pub fn main() -> ExitCode {
    let env = Env::from_process();
    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin);
    let outcome = match read {
        Ok(_) => run(&env, &stdin),
        Err(err) => Err(Failure::new(code::IO, format!("reading stdin: {err}"))),
    };
    match outcome {
        Ok(Output::Json(json)) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Ok(Output::Nothing) => ExitCode::SUCCESS,
        Err(failure) => {
            let version = serde_json::from_slice::<NetConf>(&stdin)
                .ok()
                .map(|c| c.cni_version)
                .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
                .unwrap_or_else(|| "1.1.0".into());
            // libcni reads errors from stdout.
            println!(
                "{}",
                json(&ErrorResult {
                    cni_version: version,
                    code: failure.code,
                    msg: failure.msg,
                    details: String::new(),
                })
            );
            ExitCode::FAILURE
        }
    }
}

fn json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// One request: `env` and the configuration `stdin`.
pub fn run(env: &Env, stdin: &[u8]) -> Result<Output, Failure> {
    if env.command == "VERSION" {
        return Ok(Output::Json(json(&VersionResult {
            cni_version: "1.1.0",
            supported_versions: SUPPORTED_VERSIONS,
        })));
    }
    if env.command.is_empty() {
        return Err(Failure::new(
            code::INVALID_ENVIRONMENT,
            "CNI_COMMAND is not set",
        ));
    }
    if !matches!(
        env.command.as_str(),
        "ADD" | "DEL" | "CHECK" | "GC" | "STATUS"
    ) {
        return Err(Failure::new(
            code::INVALID_ENVIRONMENT,
            format!(
                "CNI_COMMAND {:?} is not one of ADD, DEL, CHECK, GC, STATUS, VERSION",
                env.command
            ),
        ));
    }
    let conf = NetConf::parse(stdin)?;
    let needs = |min: &str| -> Result<(), Failure> {
        if version_tuple(&conf.cni_version) < version_tuple(min) {
            return Err(Failure::new(
                code::INCOMPATIBLE_VERSION,
                format!(
                    "{} needs CNI version {min} or later; the configuration says {}",
                    env.command, conf.cni_version
                ),
            ));
        }
        Ok(())
    };
    let client = Client::new(conf.socket()).with_timeout(REQUEST_TIMEOUT);
    match env.command.as_str() {
        "ADD" => {
            let attach = attach_request(env, &conf)?;
            let att = client
                .cni_add(attach)
                .map_err(|err| Failure::from_daemon(&err, code::TRY_AGAIN_LATER))?;
            Ok(Output::Json(json(&AddResult::new(&conf.cni_version, &att))))
        }
        "CHECK" => {
            needs("0.4.0")?;
            let attach = attach_request(env, &conf)?;
            client
                .cni_check(attach)
                .map_err(|err| Failure::from_daemon(&err, code::TRY_AGAIN_LATER))?;
            Ok(Output::Nothing)
        }
        "DEL" => {
            let detach = CniDetach {
                network: conf.network_name(),
                container_id: env.require("CNI_CONTAINERID", &env.container_id)?,
                ifname: env.require("CNI_IFNAME", &env.ifname)?,
            };
            match client.cni_del(detach.clone()) {
                Ok(_) => Ok(Output::Nothing),
                // The container is going away whatever netd says: the DEL
                // waits on disk for the daemon, and succeeds now.
                Err(err) if is_unreachable(&err) => {
                    queue::push(&conf.socket(), &detach).map_err(|err| {
                        Failure::new(code::IO, format!("queueing the DEL for netd: {err:#}"))
                    })?;
                    Ok(Output::Nothing)
                }
                Err(err) => Err(Failure::from_daemon(&err, code::TRY_AGAIN_LATER)),
            }
        }
        "GC" => {
            needs("1.1.0")?;
            let valid = conf
                .valid_attachments
                .as_ref()
                .ok_or_else(|| {
                    Failure::new(
                        code::INVALID_NETWORK_CONFIG,
                        "GC needs cni.dev/valid-attachments",
                    )
                })?
                .iter()
                .map(|a| CniDetach {
                    network: conf.network_name(),
                    container_id: a.container_id.clone(),
                    ifname: a.ifname.clone(),
                })
                .collect();
            client
                .cni_gc(&conf.network_name(), valid)
                .map_err(|err| Failure::from_daemon(&err, code::TRY_AGAIN_LATER))?;
            Ok(Output::Nothing)
        }
        "STATUS" => {
            needs("1.1.0")?;
            // Whatever stops ADD (no daemon, no such network) is "not
            // available": STATUS has no other codes for it.
            client.cni_status(conf.network()?).map_err(|err| {
                let failure = Failure::from_daemon(&err, code::PLUGIN_NOT_AVAILABLE);
                Failure::new(code::PLUGIN_NOT_AVAILABLE, failure.msg)
            })?;
            Ok(Output::Nothing)
        }
        _ => unreachable!("checked above"),
    }
}

fn attach_request(env: &Env, conf: &NetConf) -> Result<CniAttach, Failure> {
    let (requested, ip6) = conf.requested_ips()?;
    let ip = match env.arg("IP") {
        Some(ip) => Some(ip.parse().map_err(|_| {
            Failure::new(
                code::INVALID_ENVIRONMENT,
                format!("CNI_ARGS IP={ip:?} is not an IP address"),
            )
        })?),
        None => requested,
    };
    Ok(CniAttach {
        network: conf.network()?,
        container_id: env.require("CNI_CONTAINERID", &env.container_id)?,
        ifname: env.require("CNI_IFNAME", &env.ifname)?,
        netns: env.require("CNI_NETNS", &env.netns)?,
        ip,
        ip6,
        ports: conf.ports()?,
        expect_ip: conf.prev_ip(),
        names: env
            .arg("K8S_POD_NAME")
            .map(str::to_owned)
            .into_iter()
            .chain(conf.aliases())
            .collect(),
    })
}

fn version_tuple(version: &str) -> (u32, u32, u32) {
    let mut parts = version.split('.').map(|p| p.parse().unwrap_or(0));
    (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    )
}
