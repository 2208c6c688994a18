//! netd's nftables tables as one `nft -f` script: a pure function of the
//! declared networks, endpoints, ports and user rules, shaped as Docker
//! 29's `ip docker-bridges` and `ip6 docker-bridges` (base chains
//! dispatching through verdict maps to four chains per bridge);
//! docs/nftables-path.md lists the differences.

use std::fmt::Write as _;

use super::{DROP_COUNTERS, DropCounts, HAIRPIN_MARK, TABLE};
use crate::{
    driver::netfilter::{Declared, Family},
    rule::RuleAction,
    state::{GatewayMode, Network},
};

/// The four per-bridge chains, each reached through its verdict map.
const PER_BRIDGE: [(&str, &str); 4] = [
    ("filter-forward-in", "oifname"),
    ("filter-forward-out", "iifname"),
    ("nat-postrouting-in", "oifname"),
    ("nat-postrouting-out", "iifname"),
];

/// Both tables, replacing the ones in the kernel in one transaction
/// (each declared first so the delete always finds it).
pub fn render(decl: &Declared) -> String {
    render_counting(decl, &DropCounts::new())
}

/// As [`render`], with the drop counters starting at `counts` (what the
/// tables they replace had counted).
pub fn render_counting(decl: &Declared, counts: &DropCounts) -> String {
    Family::BOTH
        .into_iter()
        .map(|family| decl.render_nftables(family, counts))
        .collect()
}

/// nft's name of the family (`ip`, `ip6`): the table's and its address
/// matches'.
pub fn family_name(family: Family) -> &'static str {
    match family {
        Family::V4 => "ip",
        Family::V6 => "ip6",
    }
}

impl Declared {
    fn render_nftables(&self, family: Family, counts: &DropCounts) -> String {
        let mut out = String::new();
        let ip = family_name(family);
        let _ = writeln!(out, "table {ip} {TABLE} {{}}");
        let _ = writeln!(out, "delete table {ip} {TABLE}");
        // No IPv6 network, no `ip6` table: its base chains would hook every
        // IPv6 packet of the host for nothing (and a host with IPv6 off
        // may refuse them).
        if family == Family::V6 && self.networks_of(family).next().is_none() {
            return out;
        }
        let _ = writeln!(out, "table {ip} {TABLE} {{");
        for (counter, _) in DROP_COUNTERS {
            match counts.get(&(ip.to_owned(), counter.to_owned())) {
                Some((packets, bytes)) if *packets > 0 => {
                    let _ = writeln!(
                        out,
                        "\tcounter {counter} {{ packets {packets} bytes {bytes} }}"
                    );
                }
                _ => {
                    let _ = writeln!(out, "\tcounter {counter} {{ }}");
                }
            }
        }
        for (purpose, _) in PER_BRIDGE {
            let elements: Vec<String> = self
                .networks_of(family)
                .map(|n| format!("\"{}\" : jump {purpose}__{}", n.bridge, n.bridge))
                .collect();
            let _ = writeln!(out, "\tmap {purpose}-jumps {{");
            let _ = writeln!(out, "\t\ttype ifname : verdict");
            if !elements.is_empty() {
                let _ = writeln!(out, "\t\telements = {{ {} }}", elements.join(", "));
            }
            let _ = writeln!(out, "\t}}");
        }
        self.base_chains(family, &mut out);
        for net in self.networks_of(family) {
            self.bridge_chains(family, net, &mut out);
        }
        let _ = writeln!(out, "}}");
        out
    }

    fn base_chains(&self, family: Family, out: &mut String) {
        let mut chain = |name: &str, hook: Option<(&str, &str, &str)>, rules: Vec<String>| {
            let _ = writeln!(out, "\tchain {name} {{");
            if let Some((kind, hook, priority)) = hook {
                let _ = writeln!(
                    out,
                    "\t\ttype {kind} hook {hook} priority {priority}; policy accept;"
                );
            }
            for rule in rules {
                let _ = writeln!(out, "\t\t{rule}");
            }
            let _ = writeln!(out, "\t}}");
        };
        let bridges = self.bridge_set(family, None);
        let has_networks = self.networks_of(family).next().is_some();
        let mut forward = Vec::new();
        // The user's rules first, for what enters a bridge from outside
        // (netd's DOCKER-USER; Docker 29 has none).
        if !self.rules.is_empty() && has_networks {
            forward.push(format!("oifname {bridges} jump user-rules"));
        }
        forward.push("oifname vmap @filter-forward-in-jumps".into());
        forward.push("iifname vmap @filter-forward-out-jumps".into());
        // Numbers, not nft's names for them (filter, dstnat, srcnat, raw):
        // nft 1.0.6 takes the names in some hooks only.
        chain("filter-FORWARD", Some(("filter", "forward", "0")), forward);
        let to_local = "fib daddr type local counter jump nat-prerouting-and-output".to_owned();
        chain(
            "nat-PREROUTING",
            Some(("nat", "prerouting", "-100")),
            vec![to_local.clone()],
        );
        // IPv6 has no route_localnet: `::1` DNAT'd to a container would be
        // lost, so it is left alone (refused, not hung), as Docker 27's
        // ip6tables rule leaves it.
        let from_host = match family {
            Family::V4 => to_local,
            Family::V6 => format!("ip6 daddr != ::1 {to_local}"),
        };
        chain(
            "nat-OUTPUT",
            Some(("nat", "output", "-100")),
            vec![from_host],
        );
        chain(
            "nat-POSTROUTING",
            Some(("nat", "postrouting", "100")),
            vec![
                "iifname vmap @nat-postrouting-out-jumps".into(),
                "oifname vmap @nat-postrouting-in-jumps".into(),
            ],
        );
        chain("nat-prerouting-and-output", None, self.dnat_rules(family));
        chain(
            "raw-PREROUTING",
            Some(("filter", "prerouting", "-300")),
            self.raw_rules(family),
        );
        if !self.rules.is_empty() && has_networks {
            chain("user-rules", None, self.user_rules(family, &bridges));
        }
    }

    /// `{ "br1", "br2" }` of every bridge of `family` but `except`'s
    /// (`None`: all).
    fn bridge_set(&self, family: Family, except: Option<&str>) -> String {
        let names: Vec<String> = self
            .networks_of(family)
            .filter(|n| Some(n.bridge.as_str()) != except)
            .map(|n| format!("\"{}\"", n.bridge))
            .collect();
        format!("{{ {} }}", names.join(", "))
    }

    /// Published ports (DNAT), and the mark that makes hairpin connections
    /// from a bridge show the backend network's gateway as their source.
    fn dnat_rules(&self, family: Family) -> Vec<String> {
        let ip = family_name(family);
        let mut rules = Vec::new();
        for net in self.networks_of(family) {
            rules.push(format!(
                "iifname \"{}\" meta mark set meta mark | {HAIRPIN_MARK}",
                net.bridge
            ));
        }
        // A routed network's ports have no host port: no DNAT.
        for (host_ip, port, proto, cip, cport) in self.ports_of(family).filter(|p| p.1 != 0) {
            let mut dst = match host_ip.is_unspecified() {
                true => String::new(),
                false => format!("{ip} daddr {host_ip} "),
            };
            // As Docker 29: link-local clients are not translated.
            if family == Family::V6 {
                dst.insert_str(0, "ip6 saddr != fe80::/10 ");
            }
            rules.push(format!(
                "{dst}{} dport {port} counter dnat to {} comment \"DNAT\"",
                proto_name(*proto),
                family.socket(*cip, *cport)
            ));
        }
        rules
    }

    /// Docker 28's drops before routing: direct access to a nat network's
    /// containers (its trusted interfaces excepted), and remote access to
    /// ports published on 127.0.0.1.
    fn raw_rules(&self, family: Family) -> Vec<String> {
        let ip = family_name(family);
        let mut rules = Vec::new();
        // A cluster's pods on other nodes do reach this node's pods (IPv4).
        for net in self.networks_of(family).filter(|_| family == Family::V4) {
            for cidr in &net.routed_cidrs {
                rules.push(format!("ip saddr {cidr} ip daddr {} return", net.subnet));
            }
        }
        for (addr, net) in self.endpoints_of(family) {
            let Some(net) = self.network(net) else {
                continue;
            };
            if net.masquerade && !net.internal && family.gateway_mode(net) == GatewayMode::Nat {
                let allowed: Vec<String> = std::iter::once(&net.bridge)
                    .chain(&net.trusted_host_interfaces)
                    .map(|i| format!("\"{i}\""))
                    .collect();
                rules.push(format!(
                    "{ip} daddr {addr} iifname != {{ {} }} counter name \"drops-direct-access\" drop comment \"DROP DIRECT ACCESS\"",
                    allowed.join(", ")
                ));
            }
        }
        for (host_ip, port, proto, _, _) in self.ports_of(family) {
            if host_ip.is_loopback() {
                rules.push(format!(
                    "iifname != \"lo\" {ip} daddr {host_ip} {} dport {port} counter name \"drops-remote-loopback\" drop comment \"DROP REMOTE LOOPBACK\"",
                    proto_name(*proto)
                ));
            }
        }
        rules
    }

    fn bridge_chains(&self, family: Family, net: &Network, out: &mut String) {
        let ip = family_name(family);
        let br = &net.bridge;
        let mode = (!net.internal).then_some(family.gateway_mode(net));
        let established = "ct state established,related counter accept".to_owned();

        let mut forward_in = vec![established.clone()];
        if net.internal {
            forward_in.push(format!(
                "iifname != \"{br}\" counter name \"drops-internal-ingress\" drop comment \"INTERNAL NETWORK INGRESS\""
            ));
        } else {
            if mode == Some(GatewayMode::Routed) {
                let icmp = match family {
                    Family::V4 => "ip protocol icmp",
                    Family::V6 => "meta l4proto ipv6-icmp",
                };
                forward_in.push(format!("{icmp} counter accept comment \"ICMP\""));
            }
            // Networks stay apart (Docker 28's isolation stages; Docker 29
            // dropped them): connections opened from another bridge, not
            // to a published port.
            if self.networks_of(family).nth(1).is_some() {
                forward_in.push(format!(
                    "iifname {} ct status & dnat == 0 counter name \"drops-isolation\" drop comment \"ISOLATION\"",
                    self.bridge_set(family, Some(br))
                ));
            }
            for cidr in net.routed_cidrs.iter().filter(|_| family == Family::V4) {
                forward_in.push(format!("ip saddr {cidr} counter accept"));
            }
            // Published container ports, then what DNAT leads here from the
            // host's own bridges (hairpin), as on netd's iptables path.
            if mode != Some(GatewayMode::NatUnprotected) {
                for (_, _, proto, cip, cport) in self.ports_of(family) {
                    if self.endpoints.get(cip) == Some(&net.name) {
                        forward_in.push(format!(
                            "{ip} daddr {cip} {} dport {cport} counter accept",
                            proto_name(*proto)
                        ));
                    }
                }
            }
            forward_in.push("ct status dnat counter accept".into());
        }
        let icc = match net.icc {
            true => "counter accept",
            false => "counter name \"drops-icc\" drop",
        };
        forward_in.push(format!("iifname \"{br}\" {icc} comment \"ICC\""));
        forward_in.push(match mode {
            Some(GatewayMode::NatUnprotected) => "counter accept comment \"UNPROTECTED\"".into(),
            _ => "counter name \"drops-unpublished-port\" drop comment \"UNPUBLISHED PORT DROP\""
                .into(),
        });

        let mut forward_out = vec![established];
        forward_out.push(match net.internal {
            true => format!("oifname != \"{br}\" counter name \"drops-internal-egress\" drop comment \"INTERNAL NETWORK EGRESS\""),
            false => "counter accept comment \"OUTGOING\"".into(),
        });

        let mut postrouting_in = vec![
            // The host reaching a published port sees the gateway, as with
            // Docker's proxy; the host reaching a container directly keeps
            // its address.
            "fib saddr type local ct status dnat counter masquerade comment \"MASQUERADE FROM HOST\""
                .to_owned(),
            format!(
                "meta mark & {HAIRPIN_MARK} == {HAIRPIN_MARK} ct status dnat counter masquerade comment \"HAIRPIN\""
            ),
        ];
        for (_, port, proto, cip, cport) in self.ports_of(family) {
            if *port != 0 && self.endpoints.get(cip) == Some(&net.name) {
                postrouting_in.push(format!(
                    "{ip} saddr {cip} {ip} daddr {cip} {} dport {cport} counter masquerade comment \"MASQ TO OWN PORT\"",
                    proto_name(*proto)
                ));
            }
        }

        let mut postrouting_out = Vec::new();
        for cidr in net.routed_cidrs.iter().filter(|_| family == Family::V4) {
            postrouting_out.push(format!("ip daddr {cidr} return"));
        }
        if net.masquerade && !net.internal {
            // The network's own source address is IPv4's (IPv6 has none yet).
            let host_ip = net.host_ip.filter(|_| family == Family::V4);
            let (target, comment) = match host_ip {
                Some(ip) => (format!("snat to {ip}"), "SNAT"),
                None => ("masquerade".to_owned(), "MASQUERADE"),
            };
            postrouting_out.push(format!(
                "oifname != \"{br}\" {ip} saddr {} counter {target} comment \"{comment}\"",
                family.subnet(net).expect("networks_of")
            ));
        }

        for ((purpose, _), rules) in
            PER_BRIDGE
                .iter()
                .zip([forward_in, forward_out, postrouting_in, postrouting_out])
        {
            let _ = writeln!(out, "\tchain {purpose}__{br} {{");
            for rule in rules {
                let _ = writeln!(out, "\t\t{rule}");
            }
            let _ = writeln!(out, "\t}}");
        }
    }

    /// Connections opened toward a bridge from anywhere but a netd bridge
    /// (the host's own and containers' traffic is not the rules' business,
    /// as on the other datapaths), matched on the original destination port
    /// (the published one, before DNAT); first match wins.
    /// A rule naming an IPv4 source has no place in the `ip6` table (it
    /// never matches an IPv6 client, as on the eBPF datapath).
    fn user_rules(&self, family: Family, bridges: &str) -> Vec<String> {
        let mut rules = vec![
            "ct state != new return".to_owned(),
            format!("iifname {bridges} return"),
        ];
        let in_family =
            |r: &&crate::rule::ActiveRule| family == Family::V4 || r.rule.source.is_none();
        for active in self.rules.iter().filter(in_family) {
            let rule = &active.rule;
            let mut spec = String::new();
            if let Some(source) = rule.source {
                let _ = write!(spec, "ip saddr {source} ");
            }
            if let Some(iface) = &rule.in_interface {
                let _ = write!(spec, "iifname \"{iface}\" ");
            }
            if let Some((_, bridge)) = &active.network {
                let _ = write!(spec, "oifname \"{bridge}\" ");
            }
            if let Some(proto) = rule.proto {
                let _ = write!(spec, "meta l4proto {proto} ");
            }
            if let Some((first, last)) = rule.ports {
                let range = match first == last {
                    true => first.to_string(),
                    false => format!("{first}-{last}"),
                };
                let _ = write!(spec, "ct original proto-dst {range} ");
            }
            let verdict = match rule.action {
                RuleAction::Allow => "counter return",
                RuleAction::Deny => "counter name \"drops-user-rule\" drop",
            };
            rules.push(format!(
                "{spec}{verdict} comment \"USER RULE {}\"",
                active.order
            ));
        }
        rules
    }
}

fn proto_name(proto: u8) -> &'static str {
    if proto == 17 { "udp" } else { "tcp" }
}
