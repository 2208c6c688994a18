//! The uplinks: the programs on every interface to the outside and no
//! other, XDP in the mode the setting and the link allow, and the host's
//! addresses the programs treat as local.

use std::{collections::HashSet, net::Ipv4Addr};

use anyhow::Result;
use netd_common::UplinkInfo;

use super::EbpfDriver;
use crate::{
    datapath::{XdpMode, XdpSetting},
    driver::{HostInfo, Uplink},
};

impl EbpfDriver {
    /// The uplink programs on every uplink and no other interface, and
    /// `UPLINKS` with each one's current address and MTU.
    pub(super) fn sync_uplinks(&mut self, host: &HostInfo) -> Result<()> {
        let mut errors = Vec::new();
        for (name, ifindex) in self.uplinks.clone() {
            if !host
                .uplinks
                .iter()
                .any(|u| u.name == name && u.ifindex == ifindex)
            {
                if let Err(err) = self.datapath.detach_uplink(&name) {
                    errors.push(format!("{name}: {err:#}"));
                }
                self.uplinks.remove(&name);
                self.xdp_modes.remove(&name);
            }
        }
        for uplink in &host.uplinks {
            if !self.uplinks.contains_key(&uplink.name) {
                match self.datapath.attach_uplink(&uplink.name) {
                    Ok(()) => {
                        self.uplinks.insert(uplink.name.clone(), uplink.ifindex);
                    }
                    Err(err) => {
                        errors.push(format!("{}: {err:#}", uplink.name));
                        continue;
                    }
                }
                if let Err(err) = self.attach_xdp(uplink) {
                    errors.push(format!("{} (XDP): {err:#}", uplink.name));
                }
            }
            let info = UplinkInfo {
                masquerade_ip: uplink
                    .addrs
                    .first()
                    .copied()
                    .unwrap_or(Ipv4Addr::UNSPECIFIED)
                    .octets(),
                mtu: uplink.mtu,
            };
            self.datapath.maps.config.set_uplink(uplink.ifindex, info)?;
            let addr6 = uplink.addrs6.first().copied();
            self.datapath
                .maps
                .config
                .set_uplink6(uplink.ifindex, addr6)?;
        }
        for ifindex in self.datapath.maps.config.uplinks()? {
            if !self.uplinks.values().any(|&i| i == ifindex) {
                self.datapath.maps.config.remove_uplink(ifindex)?;
            }
        }
        for ifindex in self.datapath.maps.config.uplinks6()? {
            if !self.uplinks.values().any(|&i| i == ifindex) {
                self.datapath.maps.config.set_uplink6(ifindex, None)?;
            }
        }
        let current: Vec<u32> = self.uplinks.values().copied().collect();
        if let Err(err) = self.datapath.maps.counters.free_uplink_drop_slots(&current) {
            errors.push(format!("drop counters of past uplinks: {err:#}"));
        }
        if !errors.is_empty() {
            anyhow::bail!("attaching to uplinks: {}", errors.join("; "));
        }
        Ok(())
    }

    /// The XDP program on one uplink, as the setting asks. `auto` puts it
    /// in the driver of a NIC that has native XDP, and nowhere else: on a
    /// virtual link (veth, …) the sender has built the skb already, so XDP
    /// saves nothing over `from_uplink`, and veth's native XDP turns off
    /// its peer's GSO (docs/rules-and-xdp.md has the figures); generic XDP
    /// runs after the skb is built anywhere. `auto` is never an error.
    pub(super) fn attach_xdp(&mut self, uplink: &Uplink) -> Result<()> {
        let iface = uplink.name.as_str();
        let off = |why: &str| format!("off ({why})");
        let (setting, unattached) = match (self.xdp, &uplink.kind) {
            (XdpSetting::Off, _) => (None, off("--xdp off")),
            (XdpSetting::Auto, Some(kind)) => (
                None,
                off(&format!(
                    "{kind}: the skb exists before XDP; TC drops as early"
                )),
            ),
            (setting, _) => (Some(setting), String::new()),
        };
        self.xdp_modes.insert(iface.to_owned(), unattached);
        let Some(setting) = setting else {
            return self.datapath.detach_xdp(iface);
        };
        match self.datapath.attach_xdp(iface, setting) {
            Ok(mode) => {
                tracing::debug!(iface, ?mode, "XDP attached");
                let mode = match mode {
                    XdpMode::Native => "native",
                    XdpMode::Generic => "generic",
                };
                self.xdp_modes.insert(iface.to_owned(), mode.to_owned());
                Ok(())
            }
            Err(err) if setting == XdpSetting::Auto => {
                tracing::info!(iface, err = format!("{err:#}"), "no native XDP: TC only");
                self.xdp_modes
                    .insert(iface.to_owned(), off("the driver has no native XDP"));
                Ok(())
            }
            Err(err) => Err(err),
        }
    }

    /// `LOCAL_ADDRS`: every address of the host, the gateways, 127.0.0.1.
    pub(super) fn sync_local_addrs(&mut self, host: &HostInfo) -> Result<()> {
        let wanted: HashSet<Ipv4Addr> = host.local_addrs.iter().copied().collect();
        let before = self.declared.local_addrs();
        self.declared.host_addrs = wanted;
        let after = self.declared.local_addrs();
        for ip in &after {
            self.datapath.maps.networks.insert_local_addr(*ip)?;
        }
        for ip in before.difference(&after) {
            self.datapath.maps.networks.remove_local_addr(*ip)?;
        }
        self.sync_local_addrs6(host)
    }
}
