//! The Docker front-end: libnetwork's remote network-driver protocol, served
//! on a unix socket dockerd discovers (`/run/docker/plugins/NAME.sock`, the
//! driver is then `docker network create -d NAME`). Each call is translated
//! into engine calls: a Docker network is a netd network, a Docker endpoint
//! a netd endpoint record. Docker's IPAM chooses subnets and addresses.
//!
//! dockerd sends every call as `POST /Method` with a JSON body and no
//! content type, and shows the `Err` of a non-200 reply to its user.

use std::{path::Path, sync::Arc, time::Instant};

use anyhow::{Context as _, Result, anyhow};
use axum::{
    Router,
    body::Bytes,
    extract::{Path as UrlPath, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::post,
};
use serde::{Serialize, de::DeserializeOwned};
use tokio::sync::Mutex;
use tracing::Instrument as _;

mod protocol;

use protocol::{
    CreateEndpoint, CreateNetwork, CreatedInterface, EndpointRef, ExternalConnectivity,
    InterfaceName, Join, Joined, NetworkRef, OperInfo, PluginReply, address_of, address6_of,
};
pub use protocol::{
    OPTION_BINDING_IP, OPTION_BRIDGE_NAME, OPTION_ICC, OPTION_MASQUERADE, OPTION_MTU,
};

use crate::{
    engine::{EndpointSpec, Engine},
    host::Host,
    metrics::Metrics,
    state::Sandbox,
};

pub const DEFAULT_SOCKET: &str = "/run/docker/plugins/netd.sock";

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

fn empty() -> PluginReply {
    PluginReply::Empty {}
}

/// One call: Some(reply), None for a method netd does not implement (404).
async fn dispatch<H: Host>(
    plugin: &Plugin<H>,
    method: &str,
    body: &[u8],
) -> Result<Option<PluginReply>> {
    let reply = match method {
        "Plugin.Activate" => PluginReply::Activate {
            implements: ["NetworkDriver"],
        },
        "NetworkDriver.GetCapabilities" => PluginReply::Capabilities {
            scope: "local",
            connectivity_scope: "local",
        },
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
            let ip = address_of(&interface.address)
                .with_context(|| format!("endpoint address {:?}", interface.address))?;
            let ip6 = match interface.address_ipv6.as_str() {
                "" => None,
                cidr => {
                    Some(address6_of(cidr).with_context(|| format!("endpoint address {cidr:?}"))?)
                }
            };
            let mac = match interface.mac_address.as_str() {
                "" => None,
                mac => Some(crate::engine::parse_mac(mac)?),
            };
            let created = engine
                .endpoint_create(EndpointSpec {
                    name,
                    network,
                    ip,
                    ip6,
                    mac,
                    sandbox: Sandbox::Docker {
                        endpoint_id: request.endpoint_id.clone(),
                        sandbox_key: None,
                    },
                })
                .await?;
            // Only what Docker left empty may be filled in.
            PluginReply::CreatedEndpoint {
                interface: mac.is_none().then(|| CreatedInterface {
                    mac_address: crate::engine::format_mac(created.mac),
                }),
            }
        }
        "NetworkDriver.EndpointOperInfo" => {
            let request: EndpointRef = parse(method, body)?;
            let engine = plugin.engine.lock().await;
            let endpoint = engine.endpoint(&endpoint_name(&request.endpoint_id))?;
            PluginReply::OperInfo {
                value: OperInfo {
                    netd: endpoint.name.clone(),
                    ports: endpoint.ports.clone(),
                },
            }
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
            PluginReply::Joined(Joined {
                interface_name: InterfaceName {
                    src_name: joined.peer,
                    dst_prefix: "eth",
                },
                gateway: joined.gateway,
                gateway_ipv6: joined.gateway6,
                disable_gateway_service: joined.gateway.is_none(),
            })
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
