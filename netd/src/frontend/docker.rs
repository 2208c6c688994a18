//! The Docker front-end: libnetwork's remote network-driver protocol, served
//! on a unix socket dockerd discovers (`/run/docker/plugins/NAME.sock`, the
//! driver is then `docker network create -d NAME`). Each call is translated
//! into engine calls: a Docker network is a netd network, a Docker endpoint
//! a netd endpoint record. Docker's IPAM chooses subnets and addresses.
//!
//! dockerd sends every call as `POST /Method` with a JSON body and no
//! content type, and shows the `Err` of a non-200 reply to its user.

use std::{collections::BTreeMap, net::Ipv4Addr, path::Path, sync::Arc, time::Instant};

use anyhow::{Context as _, Result, anyhow};
use axum::{
    Router,
    body::Bytes,
    extract::{Path as UrlPath, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::post,
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::Value;
use tokio::sync::Mutex;
use tracing::Instrument as _;

use crate::{
    api::NetworkSpec,
    engine::{EndpointSpec, Engine},
    host::Host,
    metrics::Metrics,
    portspec::{PortSpec, Proto},
    state::Sandbox,
};

pub const DEFAULT_SOCKET: &str = "/run/docker/plugins/netd.sock";

/// The Docker options netd's networks take, as Docker's bridge driver
/// names them (`docker network create -o KEY=VALUE`).
pub const OPTION_ICC: &str = "com.docker.network.bridge.enable_icc";
pub const OPTION_MASQUERADE: &str = "com.docker.network.bridge.enable_ip_masquerade";
pub const OPTION_BINDING_IP: &str = "com.docker.network.bridge.host_binding_ipv4";
pub const OPTION_MTU: &str = "com.docker.network.driver.mtu";
pub const OPTION_BRIDGE_NAME: &str = "com.docker.network.bridge.name";

struct Plugin<H: Host> {
    engine: Arc<Mutex<Engine<H>>>,
    metrics: Arc<Metrics>,
}

/// Serves the plugin socket at `path` until the task is dropped.
pub fn serve<H: Host + 'static>(
    path: &Path,
    engine: Arc<Mutex<Engine<H>>>,
    metrics: Arc<Metrics>,
) -> Result<tokio::task::JoinHandle<()>> {
    let dir = path
        .parent()
        .ok_or_else(|| anyhow!("plugin socket path has no directory"))?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    match std::fs::remove_file(path) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            return Err(err).with_context(|| format!("removing the old {}", path.display()));
        }
        _ => {}
    }
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("binding the Docker plugin socket {}", path.display()))?;
    let app = Router::new()
        .route("/{method}", post(call::<H>))
        .with_state(Arc::new(Plugin { engine, metrics }));
    tracing::info!(socket = %path.display(), "serving the Docker network plugin");
    Ok(tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app).await {
            tracing::error!(%err, "Docker plugin server");
        }
    }))
}

/// Docker's error reply.
#[derive(Serialize)]
struct PluginError {
    #[serde(rename = "Err")]
    err: String,
}

async fn call<H: Host + 'static>(
    State(plugin): State<Arc<Plugin<H>>>,
    UrlPath(method): UrlPath<String>,
    body: Bytes,
) -> Response {
    let kind = format!("docker_{}", method.replace('.', "_").to_lowercase());
    let span = tracing::info_span!("request", kind = %kind);
    let started = Instant::now();
    tracing::debug!(parent: &span, body = %String::from_utf8_lossy(&body), "Docker call");
    let result = dispatch(&plugin, &method, &body)
        .instrument(span.clone())
        .await;
    let elapsed = started.elapsed();
    plugin.metrics.request(&kind, elapsed.as_secs_f64());
    let _entered = span.enter();
    let micros = elapsed.as_micros() as u64;
    match result {
        Ok(Some(reply)) => {
            tracing::info!(micros, "done");
            reply_with(StatusCode::OK, &reply)
        }
        Ok(None) => StatusCode::NOT_FOUND.into_response(),
        Err(err) => {
            let kind = crate::error::kind_of(&err);
            let status = StatusCode::from_u16(kind.http_status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let err = format!("{err:#}");
            tracing::info!(micros, %err, kind = kind.label(), "refused");
            reply_with(status, &PluginError { err })
        }
    }
}

/// A JSON reply in the plugin protocol's content type.
fn reply_with<T: Serialize>(status: StatusCode, body: &T) -> Response {
    let body = serde_json::to_vec(body).unwrap_or_default();
    let content_type = "application/vnd.docker.plugins.v1+json";
    (
        status,
        [(axum::http::header::CONTENT_TYPE, content_type)],
        body,
    )
        .into_response()
}

fn parse<T: DeserializeOwned>(method: &str, body: &[u8]) -> Result<T> {
    serde_json::from_slice(body).map_err(|err| crate::invalid!("malformed {method} request: {err}"))
}

fn empty() -> Value {
    Value::Object(Default::default())
}

/// One call: Some(reply), None for a method netd does not implement (404).
async fn dispatch<H: Host>(plugin: &Plugin<H>, method: &str, body: &[u8]) -> Result<Option<Value>> {
    let reply = match method {
        "Plugin.Activate" => serde_json::json!({"Implements": ["NetworkDriver"]}),
        "NetworkDriver.GetCapabilities" => {
            serde_json::json!({"Scope": "local", "ConnectivityScope": "local"})
        }
        "NetworkDriver.CreateNetwork" => {
            let request: CreateNetwork = parse(method, body)?;
            let spec = request.network_spec()?;
            let mut engine = plugin.engine.lock().await;
            // Docker retries a call it thinks failed: the same network twice is one.
            if engine.docker_network(&request.network_id).is_err() {
                engine.network_create(spec).await?;
            }
            empty()
        }
        "NetworkDriver.DeleteNetwork" => {
            let request: NetworkRef = parse(method, body)?;
            let mut engine = plugin.engine.lock().await;
            // Already gone (deleted before, or netd's state lost): done.
            if let Ok(net) = engine.docker_network(&request.network_id) {
                let name = net.name.clone();
                engine.network_rm(&name).await?;
            }
            empty()
        }
        "NetworkDriver.CreateEndpoint" => {
            let request: CreateEndpoint = parse(method, body)?;
            let mut engine = plugin.engine.lock().await;
            let network = engine.docker_network(&request.network_id)?.name.clone();
            let name = endpoint_name(&request.endpoint_id);
            let interface = request.interface.unwrap_or_default();
            if !interface.address_ipv6.is_empty() {
                return Err(crate::invalid!(
                    "netd networks are IPv4-only: no IPv6 address for an endpoint"
                ));
            }
            let ip = address_of(&interface.address)
                .with_context(|| format!("endpoint address {:?}", interface.address))?;
            let mac = match interface.mac_address.as_str() {
                "" => None,
                mac => Some(crate::engine::parse_mac(mac)?),
            };
            let created = engine
                .endpoint_create(EndpointSpec {
                    name,
                    network,
                    ip,
                    mac,
                    sandbox: Sandbox::Docker {
                        endpoint_id: request.endpoint_id.clone(),
                        sandbox_key: None,
                    },
                })
                .await?;
            // Only what Docker left empty may be filled in.
            if mac.is_none() {
                let mac = crate::engine::format_mac(created.mac);
                serde_json::json!({"Interface": {"MacAddress": mac}})
            } else {
                empty()
            }
        }
        "NetworkDriver.EndpointOperInfo" => {
            let request: EndpointRef = parse(method, body)?;
            let engine = plugin.engine.lock().await;
            let endpoint = engine.endpoint(&endpoint_name(&request.endpoint_id))?;
            serde_json::json!({"Value": {"netd": endpoint.name, "ports": endpoint.ports}})
        }
        "NetworkDriver.DeleteEndpoint" => {
            let request: EndpointRef = parse(method, body)?;
            let name = endpoint_name(&request.endpoint_id);
            let mut engine = plugin.engine.lock().await;
            if engine.endpoint(&name).is_ok() {
                engine.container_rm(&name).await?;
            }
            empty()
        }
        "NetworkDriver.Join" => {
            let request: Join = parse(method, body)?;
            let mut engine = plugin.engine.lock().await;
            let joined =
                engine.endpoint_join(&endpoint_name(&request.endpoint_id), &request.sandbox_key)?;
            let mut reply = serde_json::json!({
                "InterfaceName": {"SrcName": joined.peer, "DstPrefix": "eth"},
            });
            match joined.gateway {
                Some(gateway) => reply["Gateway"] = Value::String(gateway.to_string()),
                // Internal: no default route, and not Docker's gateway bridge either.
                None => reply["DisableGatewayService"] = Value::Bool(true),
            }
            reply
        }
        "NetworkDriver.Leave" => {
            let request: EndpointRef = parse(method, body)?;
            // Docker moves the interface back; DeleteEndpoint removes it.
            plugin
                .engine
                .lock()
                .await
                .endpoint(&endpoint_name(&request.endpoint_id))?;
            empty()
        }
        "NetworkDriver.ProgramExternalConnectivity" => {
            let request: ExternalConnectivity = parse(method, body)?;
            let specs = request.port_specs()?;
            let mut engine = plugin.engine.lock().await;
            engine.endpoint_publish(&endpoint_name(&request.endpoint_id), &specs)?;
            empty()
        }
        "NetworkDriver.RevokeExternalConnectivity" => {
            let request: EndpointRef = parse(method, body)?;
            let name = endpoint_name(&request.endpoint_id);
            let mut engine = plugin.engine.lock().await;
            if engine.endpoint(&name).is_ok() {
                engine.endpoint_unpublish(&name)?;
            }
            empty()
        }
        // Global scope and node discovery only: nothing for a local driver.
        "NetworkDriver.AllocateNetwork"
        | "NetworkDriver.FreeNetwork"
        | "NetworkDriver.DiscoverNew"
        | "NetworkDriver.DiscoverDelete" => empty(),
        _ => return Ok(None),
    };
    Ok(Some(reply))
}

/// The netd name of a Docker network (its short ID, as `docker network ls`
/// shows it).
pub fn network_name(network_id: &str) -> String {
    format!("docker-{}", short(network_id))
}

/// The netd record of a Docker endpoint.
pub fn endpoint_name(endpoint_id: &str) -> String {
    format!("docker-ep-{}", short(endpoint_id))
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// The address of `172.18.0.2/16` (or a bare address).
fn address_of(cidr: &str) -> Result<Ipv4Addr> {
    let address = cidr.split('/').next().unwrap_or_default();
    address
        .parse()
        .map_err(|_| crate::invalid!("{cidr:?} is not an IPv4 address"))
}

/// strconv.ParseBool, which Docker's bridge driver uses for its options.
fn parse_bool(key: &str, value: &Value) -> Result<bool> {
    match value {
        Value::Bool(b) => Ok(*b),
        Value::String(s) => match s.as_str() {
            "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
            "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
            _ => Err(crate::invalid!(
                "-o {key}={s}: not a boolean (true or false)"
            )),
        },
        other => Err(crate::invalid!("-o {key}: not a boolean: {other}")),
    }
}

fn option_string(key: &str, value: &Value) -> Result<String> {
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        other => Err(crate::invalid!("-o {key}: expected a string, got {other}")),
    }
}

#[derive(Deserialize)]
struct NetworkRef {
    #[serde(rename = "NetworkID")]
    network_id: String,
}

#[derive(Deserialize)]
struct EndpointRef {
    #[serde(rename = "EndpointID")]
    endpoint_id: String,
}

#[derive(Deserialize)]
struct IpamData {
    #[serde(rename = "Pool")]
    pool: String,
    #[serde(rename = "Gateway", default)]
    gateway: String,
}

#[derive(Deserialize)]
struct CreateNetwork {
    #[serde(rename = "NetworkID")]
    network_id: String,
    #[serde(rename = "Options", default)]
    options: BTreeMap<String, Value>,
    #[serde(rename = "IPv4Data", default)]
    ipv4_data: Option<Vec<IpamData>>,
    #[serde(rename = "IPv6Data", default)]
    ipv6_data: Option<Vec<IpamData>>,
}

impl CreateNetwork {
    /// Docker's request as a netd network: Docker's subnet and gateway, the
    /// bridge driver's options; anything else refused by name.
    fn network_spec(&self) -> Result<NetworkSpec> {
        let mut spec = NetworkSpec::named(network_name(&self.network_id));
        spec.docker_id = Some(self.network_id.clone());
        if self.ipv6_data.as_ref().is_some_and(|d| !d.is_empty()) {
            return Err(crate::invalid!(
                "netd networks are IPv4-only: drop --ipv6 and IPv6 subnets"
            ));
        }
        for (key, value) in &self.options {
            match key.as_str() {
                "com.docker.network.generic" => {}
                "com.docker.network.internal" => spec.internal = parse_bool(key, value)?,
                "com.docker.network.enable_ipv6" if parse_bool(key, value)? => {
                    return Err(crate::invalid!("netd networks are IPv4-only: drop --ipv6"));
                }
                // Docker's own bookkeeping, not options of the driver.
                _ => {}
            }
        }
        let generic = match self.options.get("com.docker.network.generic") {
            Some(Value::Object(map)) => map.clone(),
            Some(Value::Null) | None => Default::default(),
            Some(other) => return Err(crate::invalid!("malformed network options: {other}")),
        };
        for (key, value) in &generic {
            match key.as_str() {
                OPTION_ICC => spec.icc = parse_bool(key, value)?,
                OPTION_MASQUERADE => spec.masquerade = parse_bool(key, value)?,
                OPTION_BINDING_IP => {
                    let ip = option_string(key, value)?;
                    let ip = ip
                        .parse()
                        .map_err(|_| crate::invalid!("-o {key}={ip}: not an IP address"))?;
                    spec.binding_ip = Some(ip);
                }
                OPTION_BRIDGE_NAME => spec.bridge = Some(option_string(key, value)?),
                OPTION_MTU => {
                    let mtu = option_string(key, value)?;
                    spec.mtu = Some(
                        mtu.parse()
                            .map_err(|_| crate::invalid!("-o {key}={mtu}: not a number"))?,
                    );
                }
                _ => {
                    return Err(crate::invalid!(
                        "unknown option -o {key}: netd takes {OPTION_ICC}, {OPTION_MASQUERADE}, \
                     {OPTION_BINDING_IP}, {OPTION_MTU} and {OPTION_BRIDGE_NAME}"
                    ));
                }
            }
        }
        let pools = self.ipv4_data.as_deref().unwrap_or_default();
        let [pool] = pools else {
            return Err(crate::invalid!(
                "netd takes one IPv4 subnet per network, Docker gave {}",
                pools.len()
            ));
        };
        let subnet = pool
            .pool
            .parse()
            .map_err(|_| crate::invalid!("Docker's pool {:?} is not a subnet", pool.pool))?;
        spec.subnet = Some(subnet);
        if !pool.gateway.is_empty() {
            spec.gateway = Some(address_of(&pool.gateway)?.into());
        }
        Ok(spec)
    }
}

#[derive(Default, Deserialize)]
struct EndpointInterface {
    #[serde(rename = "Address", default)]
    address: String,
    #[serde(rename = "AddressIPv6", default)]
    address_ipv6: String,
    #[serde(rename = "MacAddress", default)]
    mac_address: String,
}

#[derive(Deserialize)]
struct CreateEndpoint {
    #[serde(rename = "NetworkID")]
    network_id: String,
    #[serde(rename = "EndpointID")]
    endpoint_id: String,
    #[serde(rename = "Interface", default)]
    interface: Option<EndpointInterface>,
}

#[derive(Deserialize)]
struct Join {
    #[serde(rename = "EndpointID")]
    endpoint_id: String,
    #[serde(rename = "SandboxKey")]
    sandbox_key: String,
}

/// One `-p` of `docker run`, as libnetwork passes it.
#[derive(Deserialize)]
struct PortBinding {
    #[serde(rename = "Proto")]
    proto: u8,
    #[serde(rename = "Port")]
    port: u16,
    #[serde(rename = "HostIP", default)]
    host_ip: String,
    #[serde(rename = "HostPort", default)]
    host_port: u16,
    #[serde(rename = "HostPortEnd", default)]
    host_port_end: u16,
}

#[derive(Deserialize)]
struct ExternalConnectivity {
    #[serde(rename = "EndpointID")]
    endpoint_id: String,
    #[serde(rename = "Options", default)]
    options: BTreeMap<String, Value>,
}

impl ExternalConnectivity {
    fn port_specs(&self) -> Result<Vec<PortSpec>> {
        let bindings: Vec<PortBinding> = match self.options.get("com.docker.network.portmap") {
            Some(Value::Null) | None => Vec::new(),
            Some(map) => serde_json::from_value(map.clone()).context("malformed port map")?,
        };
        bindings
            .iter()
            .map(|b| {
                let proto = match b.proto {
                    6 => Proto::Tcp,
                    17 => Proto::Udp,
                    132 => {
                        return Err(crate::invalid!(
                            "-p {}/sctp: netd publishes tcp and udp ports",
                            b.port
                        ));
                    }
                    other => {
                        return Err(crate::invalid!(
                            "-p {}: unknown protocol number {other}",
                            b.port
                        ));
                    }
                };
                let host_ip = match b.host_ip.as_str() {
                    "" => Ipv4Addr::UNSPECIFIED,
                    ip => ip.parse().map_err(|_| {
                        crate::invalid!(
                            "-p {ip}:…:{}: netd publishes on IPv4 addresses only",
                            b.port
                        )
                    })?,
                };
                if b.port == 0 {
                    return Err(crate::invalid!("-p with container port 0"));
                }
                let host_ports = match b.host_port {
                    0 => None,
                    start => Some((start, b.host_port_end.max(start))),
                };
                Ok(PortSpec {
                    host_ip,
                    host_ports,
                    container_ports: (b.port, b.port),
                    proto,
                })
            })
            .collect()
    }
}
