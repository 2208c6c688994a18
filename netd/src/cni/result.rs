//! CNI results, shaped for the version the runtime asked for: 0.3.x and
//! 0.4.0 carry `ips[].version`; 1.1.0 adds the interfaces' `mtu`.

use serde::Serialize;

use crate::api::CniAttachment;

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AddResult {
    pub cni_version: String,
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Dns,
}

#[derive(Debug, Serialize)]
pub struct Interface {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct IpConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<&'static str>,
    pub address: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Index into `interfaces`: the container's interface (containerd's
    /// CRI takes the pod IP from the address whose interface is in the
    /// sandbox).
    pub interface: usize,
}

#[derive(Debug, Serialize)]
pub struct Route {
    pub dst: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gw: Option<String>,
}

#[derive(Debug, Default, Serialize)]
pub struct Dns {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionResult {
    pub cni_version: &'static str,
    pub supported_versions: &'static [&'static str],
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorResult {
    pub cni_version: String,
    pub code: u32,
    pub msg: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl AddResult {
    pub fn new(version: &str, att: &CniAttachment) -> Self {
        let pre_1_0 = version.starts_with("0.");
        let with_mtu = version == "1.1.0";
        Self {
            cni_version: version.to_owned(),
            interfaces: vec![
                Interface {
                    name: att.bridge.clone(),
                    mac: None,
                    mtu: with_mtu.then_some(att.mtu),
                    sandbox: None,
                },
                Interface {
                    name: att.host_veth.clone(),
                    mac: None,
                    mtu: with_mtu.then_some(att.mtu),
                    sandbox: None,
                },
                Interface {
                    name: att.ifname.clone(),
                    mac: Some(att.mac.clone()),
                    mtu: with_mtu.then_some(att.mtu),
                    sandbox: Some(att.netns.clone()),
                },
            ],
            ips: std::iter::once(IpConfig {
                version: pre_1_0.then_some("4"),
                address: format!("{}/{}", att.ip, att.prefix_len),
                gateway: att.gateway.map(|g| g.to_string()),
                interface: 2,
            })
            .chain(att.ipv6.map(|v6| IpConfig {
                version: pre_1_0.then_some("6"),
                address: format!("{}/{}", v6.ip, v6.prefix_len),
                gateway: v6.gateway.map(|g| g.to_string()),
                interface: 2,
            }))
            .collect(),
            routes: att
                .gateway
                .map(|gw| Route {
                    dst: "0.0.0.0/0".into(),
                    gw: Some(gw.to_string()),
                })
                .into_iter()
                .chain(att.ipv6.and_then(|v6| v6.gateway).map(|gw| Route {
                    dst: "::/0".into(),
                    gw: Some(gw.to_string()),
                }))
                .collect(),
            // Podman puts these nameservers first in the container's
            // resolv.conf (containerd uses the pod's own DNS settings).
            dns: Dns {
                nameservers: att.nameserver.iter().map(|ns| ns.to_string()).collect(),
                options: match att.nameserver {
                    Some(_) => vec!["ndots:0".into()],
                    None => Vec::new(),
                },
            },
        }
    }
}
