//! Where forwarded queries go: the daemon's `--dns-upstream` servers, else
//! the host's resolvers (systemd-resolved's upstream list when
//! /etc/resolv.conf names only its stub, 127.0.0.53).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

const HOST_RESOLV_CONF: &str = "/etc/resolv.conf";
const RESOLVED_UPSTREAMS: &str = "/run/systemd/resolve/resolv.conf";
const RESOLVED_STUB: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 53));

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Upstreams {
    pub servers: Vec<SocketAddr>,
    /// The host's search domains, copied into containers' resolv.conf.
    pub search: Vec<String>,
}

impl Upstreams {
    /// `configured` if given, else the host's.
    pub fn discover(configured: &[SocketAddr]) -> Self {
        let host = std::fs::read_to_string(HOST_RESOLV_CONF)
            .map(|text| parse(&text))
            .unwrap_or_default();
        if !configured.is_empty() {
            return Self {
                servers: configured.to_vec(),
                search: host.search,
            };
        }
        let only_stub =
            !host.servers.is_empty() && host.servers.iter().all(|s| s.ip() == RESOLVED_STUB);
        if only_stub && let Ok(text) = std::fs::read_to_string(RESOLVED_UPSTREAMS) {
            let resolved = parse(&text);
            if !resolved.servers.is_empty() {
                return Self {
                    servers: resolved.servers,
                    search: host.search,
                };
            }
        }
        host
    }
}

/// The nameservers (port 53) and search domains of a resolv.conf.
fn parse(text: &str) -> Upstreams {
    let mut upstreams = Upstreams::default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => {
                // A zone index (fe80::1%eth0) is not an address here.
                if let Some(Ok(ip)) = words.next().map(str::parse::<IpAddr>) {
                    upstreams.servers.push(SocketAddr::new(ip, 53));
                }
            }
            Some("search" | "domain") => {
                upstreams.search = words.map(str::to_owned).collect();
            }
            _ => {}
        }
    }
    upstreams
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_is_read_as_the_c_library_reads_it() {
        let up = parse(
            "# comment\nnameserver 192.0.2.53\nnameserver fe80::1%eth0\n\
             nameserver 2001:db8::53\nsearch corp.example lab.example\noptions edns0\n",
        );
        assert_eq!(
            up.servers,
            [
                "192.0.2.53:53".parse().unwrap(),
                "[2001:db8::53]:53".parse().unwrap()
            ]
        );
        assert_eq!(up.search, ["corp.example", "lab.example"]);
    }
}
