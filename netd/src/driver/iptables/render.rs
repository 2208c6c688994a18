//! The rule set for netd's chains, in iptables-restore syntax: a pure
//! function of the declared networks, endpoints, ports and user rules, one
//! per address family (`iptables-restore`, `ip6tables-restore`).

use std::fmt::Write as _;

use super::{CHAINS, HAIRPIN_MARK};
use crate::{
    driver::netfilter::{Declared, Family},
    rule::RuleAction,
    state::{GatewayMode, Network},
};

/// The whole rule set of `family` for netd's chains, in iptables-restore
/// syntax. IPv6's is IPv4's with Docker 27's differences: only networks
/// with IPv6, no DNAT from link-local sources, no `127.0.0.1` twin; and
/// empty without an IPv6 network (netd then has no ip6tables chains).
pub fn render(decl: &Declared, family: Family) -> String {
    if family == Family::V6 && decl.networks_of(family).next().is_none() {
        return String::new();
    }
    decl.render_iptables(family)
}

impl Declared {
    fn render_iptables(&self, family: Family) -> String {
        let mut out = String::new();
        let nets: Vec<&Network> = self.networks_of(family).rev().collect();
        let subnet = |net: &Network| family.subnet(net).expect("networks_of");
        let v4 = family == Family::V4;
        let mut line = |s: String| {
            out.push_str(&s);
            out.push('\n');
        };

        line("*raw".into());
        line(":NETD-RAW - [0:0]".into());
        // A cluster's pods on other nodes do reach this node's pods.
        for net in nets.iter().filter(|_| v4) {
            for cidr in &net.routed_cidrs {
                line(format!("-A NETD-RAW -s {cidr} -d {} -j RETURN", net.subnet));
            }
        }
        // Docker 28: no routed access to container addresses from elsewhere.
        for (ip, net) in self.endpoints_of(family) {
            let Some(net) = self.network(net) else {
                continue;
            };
            let ip = family.host(*ip);
            if net.masquerade && !net.internal && family.gateway_mode(net) == GatewayMode::Nat {
                // Docker 28.2's trusted host interfaces: past this drop, on
                // to the per-port ACCEPTs of the published container ports.
                for iface in &net.trusted_host_interfaces {
                    line(format!("-A NETD-RAW -d {ip} -i {iface} -j RETURN"));
                }
                line(format!("-A NETD-RAW -d {ip} ! -i {} -j DROP", net.bridge));
            }
        }
        // Ports published on 127.0.0.1 are for the host alone.
        for (host_ip, port, proto, _, _) in self.ports_of(family) {
            if host_ip.is_loopback() {
                let (p, host_ip) = (proto_name(*proto), family.host(*host_ip));
                line(format!(
                    "-A NETD-RAW -d {host_ip} -p {p} -m {p} --dport {port} ! -i lo -j DROP"
                ));
            }
        }
        line("COMMIT".into());

        line("*nat".into());
        line(":NETD - [0:0]".into());
        line(":NETD-POSTROUTING - [0:0]".into());
        for net in &nets {
            // A cluster's pod range keeps the pod's address.
            for cidr in net.routed_cidrs.iter().filter(|_| v4) {
                line(format!(
                    "-A NETD-POSTROUTING -s {} -d {cidr} -j RETURN",
                    net.subnet
                ));
            }
            if net.masquerade && !net.internal {
                // The network's own IPv4 source address (Docker's
                // host_binding_ipv4 twin); IPv6 has none yet.
                let target = match net.host_ip.filter(|_| v4) {
                    Some(ip) => format!("SNAT --to-source {ip}"),
                    None => "MASQUERADE".into(),
                };
                line(format!(
                    "-A NETD-POSTROUTING -s {} ! -o {} -j {target}",
                    subnet(net),
                    net.bridge
                ));
            }
        }
        // Docker's per-port hairpin rule: a container reaching itself
        // through its own published port.
        // (Not for a routed network's ports: they have no host port.)
        for (_, _, proto, cip, cport) in self.ports_of(family).filter(|p| p.1 != 0) {
            let (p, cip) = (proto_name(*proto), family.host(*cip));
            line(format!(
                "-A NETD-POSTROUTING -s {cip} -d {cip} -p {p} -m {p} --dport {cport} -j MASQUERADE"
            ));
        }
        // What Docker's userland proxy does for hairpin and host-originated
        // connections: the backend sees its gateway as the source. Hairpin
        // packets were marked on their way in from a bridge (below), so this
        // is one rule per bridge, not one per (network, bridge) pair.
        for net in &nets {
            line(format!(
                "-A NETD-POSTROUTING -o {} -m addrtype --src-type LOCAL -m conntrack --ctstate DNAT -j MASQUERADE",
                net.bridge
            ));
            line(format!(
                "-A NETD-POSTROUTING -o {} -m mark --mark {HAIRPIN_MARK}/{HAIRPIN_MARK} -m conntrack --ctstate DNAT -j MASQUERADE",
                net.bridge
            ));
        }
        for net in &nets {
            line(format!(
                "-A NETD -i {} -j MARK --set-xmark {HAIRPIN_MARK}/{HAIRPIN_MARK}",
                net.bridge
            ));
        }
        for (host_ip, port, proto, cip, cport) in self.ports_of(family).filter(|p| p.1 != 0) {
            let p = proto_name(*proto);
            let mut dst = match host_ip.is_unspecified() {
                true => String::new(),
                false => format!("-d {} ", family.host(*host_ip)),
            };
            // As Docker 27: link-local clients are not translated.
            if !v4 {
                dst.insert_str(0, "! -s fe80::/10 ");
            }
            let to = family.socket(*cip, *cport);
            line(format!(
                "-A NETD {dst}-p {p} -m {p} --dport {port} -j DNAT --to-destination {to}"
            ));
        }
        line("COMMIT".into());

        line("*filter".into());
        for chain in CHAINS
            .iter()
            .filter(|(t, _)| *t == "filter")
            .flat_map(|(_, c)| *c)
        {
            line(format!(":{chain} - [0:0]"));
        }
        // The user's rules come first, for what enters a bridge from
        // outside (see `render_user_rules`).
        if !self.rules.is_empty() {
            for net in &nets {
                line(format!("-A NETD-FORWARD -o {} -j NETD-USER", net.bridge));
            }
            self.render_iptables_user_rules(family, &nets, &mut line);
        }
        line("-A NETD-FORWARD -j NETD-ISOLATION-STAGE-1".into());
        for net in &nets {
            let br = &net.bridge;
            line(format!(
                "-A NETD-FORWARD -o {br} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
            ));
            // New connections to published ports walk the per-port ACCEPT
            // rules, as with Docker; what they do not accept (hairpin from
            // the same bridge, the host) is accepted after them.
            line(format!("-A NETD-FORWARD -o {br} -j NETD"));
            line(format!(
                "-A NETD-FORWARD -o {br} -m conntrack --ctstate DNAT -j ACCEPT"
            ));
            // Pods of the cluster's other nodes, routed to this one (IPv4).
            for cidr in net.routed_cidrs.iter().filter(|_| v4) {
                line(format!("-A NETD-FORWARD -s {cidr} -o {br} -j ACCEPT"));
            }
            if !net.internal {
                line(format!("-A NETD-FORWARD -i {br} ! -o {br} -j ACCEPT"));
            }
            let icc = if net.icc { "ACCEPT" } else { "DROP" };
            line(format!("-A NETD-FORWARD -i {br} -o {br} -j {icc}"));
            // Docker 28's gateway modes: routed opens ICMP (and the
            // published container ports, above); nat-unprotected opens all.
            let mode = (!net.internal).then_some(family.gateway_mode(net));
            if mode == Some(GatewayMode::Routed) {
                let icmp = if v4 { "icmp" } else { "ipv6-icmp" };
                line(format!("-A NETD-FORWARD -o {br} -p {icmp} -j ACCEPT"));
            }
            // Docker sets FORWARD's policy to DROP; netd leaves policies alone.
            let last = match mode {
                Some(GatewayMode::NatUnprotected) => "ACCEPT",
                _ => "DROP",
            };
            line(format!("-A NETD-FORWARD -o {br} -j {last}"));
        }
        for net in nets.iter().filter(|n| n.internal) {
            let (br, subnet) = (&net.bridge, subnet(net));
            // IPv6's neighbour discovery to multicast addresses is bridged
            // through these rules: as Docker 27, IPv6's spare the bridge.
            let (not_out, not_in) = match v4 {
                true => (String::new(), String::new()),
                false => (format!(" ! -o {br}"), format!("! -i {br} ")),
            };
            line(format!(
                "-A NETD-ISOLATION-STAGE-1 -i {br}{not_out} ! -d {subnet} -j DROP"
            ));
            line(format!(
                "-A NETD-ISOLATION-STAGE-1 {not_in}! -s {subnet} -o {br} -j DROP"
            ));
        }
        line("-A NETD-ISOLATION-STAGE-1 -m conntrack --ctstate DNAT -j RETURN".into());
        for net in nets.iter().filter(|n| !n.internal) {
            let br = &net.bridge;
            line(format!(
                "-A NETD-ISOLATION-STAGE-1 -i {br} ! -o {br} -j NETD-ISOLATION-STAGE-2"
            ));
        }
        line("-A NETD-ISOLATION-STAGE-1 -j RETURN".into());
        for net in nets.iter().filter(|n| !n.internal) {
            line(format!(
                "-A NETD-ISOLATION-STAGE-2 -o {} -j DROP",
                net.bridge
            ));
        }
        line("-A NETD-ISOLATION-STAGE-2 -j RETURN".into());
        for (_, _, proto, cip, cport) in self.ports_of(family) {
            if let Some(net) = self.bridge_of(*cip) {
                let (p, br, cip) = (proto_name(*proto), &net.bridge, family.host(*cip));
                line(format!(
                    "-A NETD -d {cip} ! -i {br} -o {br} -p {p} -m {p} --dport {cport} -j ACCEPT"
                ));
            }
        }
        line("COMMIT".into());
        out
    }

    /// NETD-USER: connections opened toward a bridge from anywhere but a
    /// netd bridge (the host's own and containers' traffic is not the
    /// rules' business, as on the eBPF datapath), matched on the original
    /// destination port (the published one, before DNAT), first match wins.
    /// A rule naming an IPv4 source has no place in IPv6's set (it never
    /// matches an IPv6 client, as on the eBPF datapath).
    fn render_iptables_user_rules(
        &self,
        family: Family,
        nets: &[&Network],
        line: &mut impl FnMut(String),
    ) {
        line("-A NETD-USER -m conntrack ! --ctstate NEW -j RETURN".into());
        for net in nets {
            line(format!("-A NETD-USER -i {} -j RETURN", net.bridge));
        }
        let rules = self
            .rules
            .iter()
            .filter(|r| family == Family::V4 || r.rule.source.is_none());
        for active in rules {
            let rule = &active.rule;
            let mut spec = String::new();
            if let Some(source) = rule.source {
                let _ = write!(spec, " -s {source}");
            }
            if let Some(iface) = &rule.in_interface {
                let _ = write!(spec, " -i {iface}");
            }
            if let Some((_, bridge)) = &active.network {
                let _ = write!(spec, " -o {bridge}");
            }
            if let Some(proto) = rule.proto {
                let _ = write!(spec, " -p {proto}");
            }
            if let Some((first, last)) = rule.ports {
                let _ = write!(spec, " -m conntrack --ctorigdstport {first}:{last}");
            }
            let target = match rule.action {
                RuleAction::Allow => "RETURN",
                RuleAction::Deny => "DROP",
            };
            line(format!("-A NETD-USER{spec} -j {target}"));
        }
    }
}

fn proto_name(proto: u8) -> &'static str {
    if proto == 17 { "udp" } else { "tcp" }
}
