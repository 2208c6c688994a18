//! Docker's `-p` syntax: `[HOST_IP:][HOST_PORT[-END]:]CONTAINER_PORT[-END][/tcp|/udp]`.

use std::{fmt, net::Ipv4Addr};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// A parsed `-p` value. `host_ports` None = pick free host ports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortSpec {
    pub host_ip: Ipv4Addr,
    pub host_ports: Option<(u16, u16)>,
    pub container_ports: (u16, u16),
    pub proto: Proto,
    /// A host address was given, `0.0.0.0` included: IPv4 only. Without
    /// one, a network with IPv6 publishes on both families (Docker 27).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ipv4_only: bool,
}

impl PortSpec {
    pub fn parse(spec: &str) -> Result<Self> {
        let hint = "expected [HOST_IP:][HOST_PORT[-END]:]CONTAINER_PORT[-END][/tcp|/udp], e.g. 8080:80 or 127.0.0.1:53:53/udp";
        let (rest, proto) = match spec.rsplit_once('/') {
            Some((rest, "tcp")) => (rest, Proto::Tcp),
            Some((rest, "udp")) => (rest, Proto::Udp),
            Some((_, other)) => {
                return Err(crate::invalid!(
                    "-p {spec}: unknown protocol {other:?} (tcp or udp)"
                ));
            }
            None => (spec, Proto::Tcp),
        };
        if let Some(bracketed) = rest.strip_prefix('[') {
            let ip = bracketed.split(']').next().unwrap_or_default();
            return Err(match ip.parse::<std::net::Ipv6Addr>() {
                Ok(_) => crate::invalid!(
                    "-p {spec}: a port cannot name an IPv6 host address such as [{ip}] yet; \
                     without a host address (-p 8080:80) it is published on both families \
                     of a network with IPv6"
                ),
                Err(_) => crate::invalid!("-p {spec}: [{ip}] is not an IPv6 address"),
            });
        }
        let parts: Vec<&str> = rest.split(':').collect();
        let (host_ip, host_ports, container) = match parts.as_slice() {
            [c] => (None, None, *c),
            [h, c] => (None, Some(*h), *c),
            [ip, h, c] => (Some(*ip), (!h.is_empty()).then_some(*h), *c),
            _ => return Err(crate::invalid!("-p {spec}: {hint}")),
        };
        let host_ip = match host_ip {
            Some(ip) => ip
                .parse()
                .map_err(|_| crate::invalid!("-p {spec}: {ip:?} is not an IPv4 address"))?,
            None => Ipv4Addr::UNSPECIFIED,
        };
        let container_ports =
            port_range(container).with_context(|| format!("-p {spec}: {hint}"))?;
        let host_ports = match host_ports {
            Some(h) => Some(port_range(h).with_context(|| format!("-p {spec}: {hint}"))?),
            None => None,
        };
        let parsed = Self {
            host_ip,
            host_ports,
            container_ports,
            proto,
            ipv4_only: parts.len() == 3,
        };
        parsed.check().with_context(|| format!("-p {spec}"))?;
        Ok(parsed)
    }

    /// Whether the spec makes sense, however it was made (parsed here, or
    /// sent typed over the socket): ports 1-65535, ranges in order, host
    /// and container ranges of one size (or one container port for any one
    /// port of a host range, as Docker's).
    pub fn check(&self) -> Result<()> {
        let ranges = [Some(self.container_ports), self.host_ports];
        for (start, end) in ranges.into_iter().flatten() {
            if start == 0 || end < start {
                return Err(crate::invalid!(
                    "port range {start}-{end} is not in 1-65535 or ends before it starts"
                ));
            }
        }
        if let Some((start, end)) = self.host_ports {
            let (cs, ce) = self.container_ports;
            if end - start != ce - cs && cs != ce {
                return Err(crate::invalid!(
                    "host range {start}-{end} and container range {cs}-{ce} differ in size"
                ));
            }
        }
        Ok(())
    }
}

fn port_range(s: &str) -> Result<(u16, u16)> {
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let a: u16 = a
        .parse()
        .map_err(|_| crate::invalid!("{a:?} is not a port"))?;
    let b: u16 = b
        .parse()
        .map_err(|_| crate::invalid!("{b:?} is not a port"))?;
    if a == 0 || b < a {
        return Err(crate::invalid!("bad port range {s}"));
    }
    Ok((a, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_address_given_even_0_0_0_0_means_ipv4_only() {
        assert!(!PortSpec::parse("8080:80").unwrap().ipv4_only);
        assert!(!PortSpec::parse("80").unwrap().ipv4_only);
        assert!(PortSpec::parse("0.0.0.0:8080:80").unwrap().ipv4_only);
        assert!(PortSpec::parse("127.0.0.1::80").unwrap().ipv4_only);
    }

    #[test]
    fn docker_syntax() {
        let p = PortSpec::parse("8080:80").unwrap();
        assert_eq!(
            (p.host_ip, p.host_ports, p.container_ports, p.proto),
            (
                Ipv4Addr::UNSPECIFIED,
                Some((8080, 8080)),
                (80, 80),
                Proto::Tcp
            )
        );
        let p = PortSpec::parse("127.0.0.1:5353:53/udp").unwrap();
        assert_eq!(
            (p.host_ip, p.host_ports, p.proto),
            ("127.0.0.1".parse().unwrap(), Some((5353, 5353)), Proto::Udp)
        );
        let p = PortSpec::parse("80").unwrap();
        assert_eq!(p.host_ports, None);
        let p = PortSpec::parse("10.0.0.1::80").unwrap();
        assert_eq!((p.host_ports, p.container_ports), (None, (80, 80)));
        let p = PortSpec::parse("9000-9002:7000-7002/tcp").unwrap();
        assert_eq!(
            (p.host_ports, p.container_ports),
            (Some((9000, 9002)), (7000, 7002))
        );
        // Docker's "any one port of the host range" for one container port.
        let p = PortSpec::parse("9000-9010:80").unwrap();
        assert_eq!(
            (p.host_ports, p.container_ports),
            (Some((9000, 9010)), (80, 80))
        );
        for bad in [
            "",
            "abc",
            "80/sctp",
            "1:2:3:4",
            "9000-9002:80-81",
            "0:80",
            "70000:80",
            "x.y:80:80",
            "90-80:90-80",
        ] {
            assert!(PortSpec::parse(bad).is_err(), "{bad}");
        }
        let err = PortSpec::parse("[::1]:8080:80").unwrap_err().to_string();
        assert!(err.contains("cannot name an IPv6 host address"), "{err}");
        let err = PortSpec::parse("[x]:8080:80").unwrap_err().to_string();
        assert!(err.contains("[x] is not an IPv6 address"), "{err}");
    }
}
