//! The user's firewall rules (`netd rule …`), Docker's DOCKER-USER for
//! netd: evaluated in order before netd's own accept decisions, for
//! connections opened from outside toward containers (published ports and
//! routed CIDRs); the first rule that matches decides, no match leaves
//! netd's normal behaviour. Here: the rule, its checks, its text, and its
//! compilation into the eBPF datapath's trie.

use std::{collections::BTreeMap, fmt, net::Ipv4Addr};

use anyhow::Result;
use ipnet::Ipv4Net;
use netd_common::{RULE_ALLOW, RULE_DENY, RuleKey, RuleVerdict, rule_class, rule_key};
use serde::{Deserialize, Serialize};

use crate::portspec::Proto;

/// Most rules netd keeps (each is a few trie entries; see `MAX_TRIE_ENTRIES`).
pub const MAX_RULES: usize = 16384;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RuleAction {
    /// Stop here: netd's own decisions apply (a published port is reachable).
    Allow,
    /// Drop (reason `user-rule`).
    Deny,
}

/// What a rule matches; unset fields match anything.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRule {
    pub action: RuleAction,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Ipv4Net>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proto: Option<Proto>,
    /// Destination port range as the client sent it: the published host
    /// port (before DNAT), or a routed container's port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<(u16, u16)>,
    /// The destination container's network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// The interface the packet came in on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_interface: Option<String>,
}

/// A rule as netd keeps it: a stable ID, in its place in the list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleRecord {
    pub id: u32,
    #[serde(flatten)]
    pub rule: UserRule,
}

impl UserRule {
    /// Refuses what cannot be meant (the network's existence is the
    /// engine's check).
    pub fn check(&self) -> Result<()> {
        if let Some(source) = self.source
            && source.network() != source.addr()
        {
            return Err(crate::invalid!(
                "source {source} is not a network address; did you mean {}?",
                source.trunc()
            ));
        }
        if let Some((first, last)) = self.ports {
            if first == 0 || last == 0 {
                return Err(crate::invalid!(
                    "port 0 cannot be matched: ports are 1-65535"
                ));
            }
            if last < first {
                return Err(crate::invalid!(
                    "port range {first}-{last} ends before it starts"
                ));
            }
            if self.proto.is_none() {
                return Err(crate::invalid!(
                    "a port needs a protocol: add --proto tcp or --proto udp"
                ));
            }
        }
        if let Some(name) = &self.in_interface {
            crate::engine::check_interface_name(name)?;
        }
        Ok(())
    }

    /// Whether `other` matches exactly the same packets (the action aside).
    pub fn same_match(&self, other: &UserRule) -> bool {
        UserRule {
            action: other.action,
            ..self.clone()
        } == *other
    }

    /// Trie entries this rule takes.
    fn ports_count(&self) -> usize {
        self.ports
            .map_or(1, |(first, last)| usize::from(last - first) + 1)
    }
}

impl fmt::Display for UserRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.action {
            RuleAction::Allow => "allow",
            RuleAction::Deny => "deny",
        })?;
        match self.source {
            Some(source) => write!(f, " from {source}")?,
            None => f.write_str(" from any")?,
        }
        if let Some(proto) = self.proto {
            write!(f, " {proto}")?;
        }
        match self.ports {
            Some((a, b)) if a == b => write!(f, " port {a}")?,
            Some((a, b)) => write!(f, " ports {a}-{b}")?,
            None => {}
        }
        if let Some(network) = &self.network {
            write!(f, " to network {network}")?;
        }
        if let Some(iface) = &self.in_interface {
            write!(f, " in {iface}")?;
        }
        Ok(())
    }
}

/// A rule the datapath enforces now: its network exists (when it names
/// one). `order` is its place in the list (first match wins).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActiveRule {
    pub order: u32,
    pub rule: UserRule,
    /// (ID, bridge) of the network the rule names.
    pub network: Option<(u32, String)>,
}

/// Most trie entries the rules may take (a port range takes one per port).
pub const MAX_TRIE_ENTRIES: usize = netd_common::sizes::USER_RULES as usize;

/// Refuses a list whose compiled form would not fit the datapath's trie.
pub fn check_capacity<'a>(rules: impl IntoIterator<Item = &'a UserRule>) -> Result<()> {
    let mut rules_count = 0;
    let mut entries = 0;
    for rule in rules {
        rules_count += 1;
        entries += rule.ports_count();
    }
    if rules_count > MAX_RULES {
        return Err(crate::conflict!(
            "too many rules: netd keeps at most {MAX_RULES}"
        ));
    }
    if entries > MAX_TRIE_ENTRIES {
        return Err(crate::conflict!(
            "the rules would take {entries} datapath entries (one per port of a range), more than the {MAX_TRIE_ENTRIES} there are room for"
        ));
    }
    Ok(())
}

/// The `USER_RULES` trie's content: (key data, prefix length) → the first
/// rule matching every address under it, and the classes in use.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CompiledRules {
    pub entries: BTreeMap<(RuleKey, u32), RuleVerdict>,
    pub classes: u32,
}

/// Compiles rules for the trie. Within one class and one value of its
/// fields, an address's longest stored prefix P is contained in every rule
/// prefix that contains the address, so storing at P the first rule whose
/// prefix contains P makes one longest-prefix lookup return the first
/// matching rule. `ifindex` resolves interface names; a rule naming one
/// that does not exist matches nothing and is left out.
pub fn compile(rules: &[ActiveRule], ifindex: impl Fn(&str) -> Option<u32>) -> CompiledRules {
    // (fields, prefix) -> the first rule with exactly that prefix.
    let mut exact: BTreeMap<(RuleKey, u32), RuleVerdict> = BTreeMap::new();
    let mut classes = 0u32;
    for active in rules {
        let rule = &active.rule;
        let iface = match &rule.in_interface {
            Some(name) => match ifindex(name) {
                Some(index) => index,
                None => continue,
            },
            None => 0,
        };
        let network = active.network.as_ref().map_or(0, |(id, _)| *id);
        let proto = rule.proto.map_or(0, Proto::number);
        let source = rule
            .source
            .unwrap_or_else(|| Ipv4Net::new(Ipv4Addr::UNSPECIFIED, 0).expect("/0"));
        let verdict = RuleVerdict {
            order: active.order,
            action: match rule.action {
                RuleAction::Allow => RULE_ALLOW,
                RuleAction::Deny => RULE_DENY,
            },
        };
        classes |= 1
            << rule_class(
                active.network.is_some(),
                rule.in_interface.is_some(),
                rule.proto.is_some(),
                rule.ports.is_some(),
            );
        let ports: Vec<u16> = match rule.ports {
            Some((first, last)) => (first..=last).collect(),
            None => vec![0],
        };
        for port in ports {
            let data = rule_key(
                network,
                iface,
                proto,
                port.to_be_bytes(),
                source.network().octets(),
            );
            let key = (data, u32::from(source.prefix_len()));
            exact
                .entry(key)
                .and_modify(|v| {
                    if verdict.order < v.order {
                        *v = verdict;
                    }
                })
                .or_insert(verdict);
        }
    }
    let mut entries = BTreeMap::new();
    for &(data, len) in exact.keys() {
        let mut first = exact[&(data, len)];
        for shorter in 0..len {
            let covering = (
                with_source(data, truncate(source_of(data), shorter)),
                shorter,
            );
            if let Some(v) = exact.get(&covering)
                && v.order < first.order
            {
                first = *v;
            }
        }
        entries.insert((data, netd_common::RULE_KEY_FIXED_BITS + len), first);
    }
    CompiledRules { entries, classes }
}

fn source_of(data: RuleKey) -> Ipv4Addr {
    Ipv4Addr::new(data[12], data[13], data[14], data[15])
}

fn with_source(mut data: RuleKey, addr: Ipv4Addr) -> RuleKey {
    data[12..].copy_from_slice(&addr.octets());
    data
}

fn truncate(addr: Ipv4Addr, len: u32) -> Ipv4Addr {
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    Ipv4Addr::from(u32::from(addr) & mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(action: RuleAction, source: &str, port: Option<u16>) -> UserRule {
        UserRule {
            action,
            source: Some(source.parse().unwrap()),
            proto: port.map(|_| Proto::Tcp),
            ports: port.map(|p| (p, p)),
            network: None,
            in_interface: None,
        }
    }

    /// What the datapath would decide: per class, the longest prefix
    /// holding the packet's source; the lowest order across classes.
    fn lookup(compiled: &CompiledRules, src: &str, port: u16) -> Option<RuleVerdict> {
        let src: Ipv4Addr = src.parse().unwrap();
        let mut best: Option<RuleVerdict> = None;
        for (proto, port) in [(0, 0), (6, 0), (6, port)] {
            let found = (0..=32u32).rev().find_map(|len| {
                let data = rule_key(0, 0, proto, port.to_be_bytes(), truncate(src, len).octets());
                compiled
                    .entries
                    .get(&(data, netd_common::RULE_KEY_FIXED_BITS + len))
            });
            if let Some(v) = found
                && best.is_none_or(|b| v.order < b.order)
            {
                best = Some(*v);
            }
        }
        best
    }

    /// The order of the first rule matching, by walking the list: the
    /// reference the trie must agree with.
    fn linear(rules: &[ActiveRule], src: &str, port: u16) -> Option<u32> {
        let src: Ipv4Addr = src.parse().unwrap();
        rules
            .iter()
            .find(|r| {
                r.rule.source.is_none_or(|s| s.contains(&src))
                    && r.rule.ports.is_none_or(|(a, b)| (a..=b).contains(&port))
            })
            .map(|r| r.order)
    }

    #[test]
    fn first_match_wins_across_prefixes_and_classes() {
        use RuleAction::*;
        let list = [
            rule(Allow, "203.0.113.0/24", Some(5432)),
            rule(Deny, "0.0.0.0/0", Some(5432)),
            rule(Deny, "198.51.100.7/32", None),
            rule(Allow, "198.51.100.0/24", None),
            rule(Deny, "10.0.0.0/8", Some(80)),
            rule(Allow, "10.1.0.0/16", Some(80)),
        ];
        let active: Vec<ActiveRule> = list
            .iter()
            .enumerate()
            .map(|(i, r)| ActiveRule {
                order: i as u32,
                rule: r.clone(),
                network: None,
            })
            .collect();
        let compiled = compile(&active, |_| None);
        for (src, port) in [
            ("203.0.113.5", 5432),
            ("203.0.114.5", 5432),
            ("198.51.100.7", 5432),
            ("198.51.100.7", 22),
            ("198.51.100.8", 22),
            ("10.1.2.3", 80),
            ("10.2.2.3", 80),
            ("192.0.2.1", 22),
        ] {
            assert_eq!(
                lookup(&compiled, src, port).map(|v| v.order),
                linear(&active, src, port),
                "{src}:{port}"
            );
        }
        // The allow for 10.1.0.0/16 comes after the deny of 10.0.0.0/8.
        assert_eq!(lookup(&compiled, "10.1.2.3", 80).unwrap().action, RULE_DENY);
    }

    #[test]
    fn bad_rules_are_refused() {
        let mut r = rule(RuleAction::Deny, "10.0.0.0/8", Some(80));
        r.ports = Some((0, 0));
        assert!(r.check().unwrap_err().to_string().contains("port 0"));
        r.ports = Some((90, 80));
        assert!(r.check().unwrap_err().to_string().contains("ends before"));
        r.ports = Some((80, 80));
        r.proto = None;
        assert!(
            r.check()
                .unwrap_err()
                .to_string()
                .contains("needs a protocol")
        );
        r.proto = Some(Proto::Tcp);
        r.source = Some("10.0.0.1/8".parse().unwrap());
        assert!(
            r.check()
                .unwrap_err()
                .to_string()
                .contains("did you mean 10.0.0.0/8")
        );
        r.source = None;
        r.in_interface = Some("a/b".into());
        assert!(r.check().is_err());
        r.in_interface = Some("eth0".into());
        r.check().unwrap();
        assert_eq!(r.to_string(), "deny from any tcp port 80 in eth0");
    }
}
