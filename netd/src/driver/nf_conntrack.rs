//! The kernel's conntrack table, as the netfilter datapaths (iptables,
//! nftables) use it: listed and flushed with `conntrack` (package
//! conntrack), its fill read from /proc.

use std::{collections::BTreeMap, net::IpAddr, net::SocketAddr, process::Command};

use anyhow::{Context as _, Result};

use super::{ConntrackRow, DatapathMetrics, TableFill};
use crate::{
    api::{FlowDirection, IpProto, NatKind},
    state::PublishedPort,
};

/// Every entry of both families, one row per connection (original
/// direction).
pub fn rows() -> Result<Vec<ConntrackRow>> {
    let mut rows = Vec::new();
    // `conntrack -L` lists one family, IPv4 unless told.
    for family in ["ipv4", "ipv6"] {
        let out = Command::new("conntrack")
            .args(["-L", "-f", family])
            .output()
            .context("running conntrack (package conntrack)")?;
        rows.extend(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(parse_conntrack_line),
        );
    }
    Ok(rows)
}

/// Forgets the connections of a container address that went (conntrack
/// takes the family from the address).
pub fn forget_address(ip: IpAddr) {
    let ip = ip.to_string();
    for key in ["-s", "-d", "--reply-src"] {
        flush(&[key, &ip]);
    }
}

/// Forgets the connections through `ports` (the ones their backends answer).
pub fn forget_backends(ports: &[PublishedPort]) {
    let backends: std::collections::BTreeSet<String> = ports
        .iter()
        .flat_map(|p| {
            let ip6 = p.container_ip6.map(|ip| ip.to_string());
            std::iter::once(p.container_ip.to_string()).chain(ip6)
        })
        .collect();
    for ip in &backends {
        flush(&["--reply-src", ip]);
    }
}

/// Forgets conntrack entries (the kernel's) matching `args`.
fn flush(args: &[&str]) {
    // Exit status 1 means nothing matched.
    let _ = Command::new("conntrack").arg("-D").args(args).output();
}

/// The kernel's conntrack table: its fill, and its entries by protocol and
/// direction (the kernel keeps one entry per connection).
pub fn metrics() -> Result<DatapathMetrics> {
    let read = |name: &str| -> Option<u64> {
        std::fs::read_to_string(format!("/proc/sys/net/netfilter/{name}"))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    let tables = match (read("nf_conntrack_count"), read("nf_conntrack_max")) {
        (Some(entries), Some(capacity)) => vec![TableFill {
            name: "nf_conntrack".to_owned(),
            entries: entries as usize,
            capacity: capacity as u32,
            evicted: None,
        }],
        _ => Vec::new(),
    };
    let mut conntrack: BTreeMap<(String, String), u64> = BTreeMap::new();
    for row in rows().unwrap_or_default() {
        let key = (row.proto.to_string(), row.direction.label().to_owned());
        *conntrack.entry(key).or_default() += 1;
    }
    Ok(DatapathMetrics {
        tables,
        conntrack: conntrack.into_iter().map(|((p, d), n)| (p, d, n)).collect(),
        ..Default::default()
    })
}

/// One line of `conntrack -L`: original tuple, then reply tuple.
fn parse_conntrack_line(line: &str) -> Option<ConntrackRow> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let proto = words.get(1)?.parse().ok().map(IpProto::from_number)?;
    let expires: i64 = words.get(2)?.parse().ok()?;
    let field = |key: &str, nth: usize| {
        words
            .iter()
            .filter_map(|w| w.strip_prefix(key))
            .nth(nth)
            .unwrap_or("0")
    };
    let tuple = |nth: usize| -> Option<(SocketAddr, SocketAddr)> {
        // ICMP and ICMPv6 (58) echo: the identifier stands for both ports.
        let (sport, dport) = if proto == IpProto::Icmp || words[1] == "58" {
            (field("id=", nth), field("id=", nth))
        } else {
            (field("sport=", nth), field("dport=", nth))
        };
        let addr =
            |ip: &str, port: &str| Some(SocketAddr::new(ip.parse().ok()?, port.parse().ok()?));
        Some((
            addr(field("src=", nth), sport)?,
            addr(field("dst=", nth), dport)?,
        ))
    };
    let (src, dst) = tuple(0)?;
    let (reply_src, reply_dst) = tuple(1)?;
    Some(ConntrackRow {
        proto,
        src,
        dst,
        translated_src: reply_dst,
        translated_dst: reply_src,
        direction: FlowDirection::Original,
        nat: NatKind::of(reply_dst != src, reply_src != dst),
        expires_in_s: expires,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_conntrack_lines() {
        let line = "tcp      6 431999 ESTABLISHED src=198.51.100.2 dst=198.51.100.1 sport=41248 dport=8080 src=172.17.0.2 dst=198.51.100.2 sport=80 dport=41248 [ASSURED] mark=0 use=1";
        let row = parse_conntrack_line(line).unwrap();
        assert_eq!(row.proto, IpProto::Tcp);
        assert_eq!(
            (row.src.to_string(), row.dst.to_string()),
            ("198.51.100.2:41248".into(), "198.51.100.1:8080".into())
        );
        assert_eq!(row.translated_dst.to_string(), "172.17.0.2:80");
        assert_eq!(row.nat, NatKind::Dnat);
        assert_eq!(row.expires_in_s, 431999);
    }
}
