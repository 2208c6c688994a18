//! Subnets (`172.18.0.0/16`, `fd00:1::/64`) with the checks IPAM needs:
//! one type per family, so an IPv6 prefix cannot reach code written for
//! IPv4 and the reverse.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

/// A subnet as netd accepts it: the network address itself (no host bits),
/// its arithmetic done by ipnet. Saved and shown as `172.18.0.0/16`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr(Ipv4Net);

impl Cidr {
    /// A subnet; `addr` must be its network address (Docker refuses
    /// 172.18.0.5/16 too, to avoid guessing what was meant).
    pub fn new(addr: Ipv4Addr, prefix_len: u8) -> anyhow::Result<Self> {
        let net = Ipv4Net::new(addr, prefix_len)
            .map_err(|_| crate::invalid!("prefix length {prefix_len} is larger than 32"))?;
        if net.network() != addr {
            return Err(crate::invalid!(
                "{addr}/{prefix_len} is not a network address; did you mean {}/{prefix_len}?",
                net.network()
            ));
        }
        Ok(Self(net))
    }

    pub fn addr(&self) -> Ipv4Addr {
        self.0.network()
    }

    pub fn prefix_len(&self) -> u8 {
        self.0.prefix_len()
    }

    pub fn network(&self) -> Ipv4Addr {
        self.0.network()
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        self.0.broadcast()
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.0.contains(&ip)
    }

    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.0.contains(&other.0) || other.0.contains(&self.0)
    }

    /// Addresses usable by hosts (network and broadcast excluded).
    pub fn hosts(&self) -> impl Iterator<Item = Ipv4Addr> {
        self.0.hosts()
    }

    pub fn first_host(&self) -> Option<Ipv4Addr> {
        self.hosts().next()
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl FromStr for Cidr {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| crate::invalid!("{s:?} is not a subnet like 172.18.0.0/16"))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| crate::invalid!("{addr:?} in {s:?} is not an IPv4 address"))?;
        let len: u8 = len
            .parse()
            .map_err(|_| crate::invalid!("{len:?} in {s:?} is not a prefix length"))?;
        if !(8..=30).contains(&len) {
            return Err(crate::invalid!(
                "subnet {s}: prefix length must be between 8 and 30"
            ));
        }
        Cidr::new(addr, len)
    }
}

impl Cidr {
    /// An IPv4 subnet as the API gives it: its network address, a prefix
    /// of 8 to 30 bits.
    pub fn from_net(what: &str, net: IpNet) -> anyhow::Result<Self> {
        match net {
            IpNet::V4(net) => format!("{}/{}", net.addr(), net.prefix_len())
                .parse()
                .map_err(|err| crate::invalid!("{what} {net}: {err:#}")),
            IpNet::V6(_) => Err(crate::invalid!(
                "{what} {net} is an IPv6 prefix where an IPv4 prefix is expected"
            )),
        }
    }
}

/// An IPv4 address as the API gives it, where IPv4 is expected.
pub fn ipv4(what: &str, ip: IpAddr) -> anyhow::Result<Ipv4Addr> {
    match ip {
        IpAddr::V4(ip) => Ok(ip),
        IpAddr::V6(_) => Err(crate::invalid!(
            "{what} {ip} is an IPv6 address where an IPv4 address is expected"
        )),
    }
}

/// An IPv6 address as the API gives it, where IPv6 is expected.
pub fn ipv6(what: &str, ip: IpAddr) -> anyhow::Result<Ipv6Addr> {
    match ip {
        IpAddr::V6(ip) => Ok(ip),
        IpAddr::V4(_) => Err(crate::invalid!(
            "{what} {ip} is an IPv4 address where an IPv6 address is expected"
        )),
    }
}

/// The longest IPv6 prefix a network may have: 16 addresses, the gateway
/// and the subnet-router anycast address among them.
pub const MAX_IPV6_PREFIX: u8 = 124;

/// An IPv6 subnet as netd accepts it: its network address, a prefix of 8
/// to [`MAX_IPV6_PREFIX`] bits. Saved and shown as `fd00:1::/64`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr6(Ipv6Net);

impl Cidr6 {
    pub fn new(addr: Ipv6Addr, prefix_len: u8) -> anyhow::Result<Self> {
        let net = Ipv6Net::new(addr, prefix_len)
            .map_err(|_| crate::invalid!("prefix length {prefix_len} is larger than 128"))?;
        if !(8..=MAX_IPV6_PREFIX).contains(&prefix_len) {
            return Err(crate::invalid!(
                "IPv6 subnet {net} is too small or too large: its prefix length must be \
                 between 8 and {MAX_IPV6_PREFIX}"
            ));
        }
        if net.network() != addr {
            return Err(crate::invalid!(
                "{addr}/{prefix_len} is not a network address; did you mean {}/{prefix_len}?",
                net.network()
            ));
        }
        // Link-local, multicast, and ::/8 (unspecified, loopback,
        // IPv4-mapped): containers cannot be numbered from them.
        for (special, what) in [
            ("fe80::/10", "link-local"),
            ("ff00::/8", "multicast"),
            ("::/8", "reserved"),
        ] {
            let special: Ipv6Net = special.parse().expect("a prefix");
            if special.contains(&net) || net.contains(&special) {
                return Err(crate::invalid!(
                    "IPv6 subnet {net} is {what} ({special}): use a unique local (fd00::/8) \
                     or a global prefix"
                ));
            }
        }
        Ok(Self(net))
    }

    /// An IPv6 subnet as the API gives it.
    pub fn from_net(what: &str, net: IpNet) -> anyhow::Result<Self> {
        match net {
            IpNet::V6(net) => Cidr6::new(net.addr(), net.prefix_len())
                .map_err(|err| crate::invalid!("{what} {net}: {err:#}")),
            IpNet::V4(_) => Err(crate::invalid!(
                "{what} {net} is an IPv4 prefix where an IPv6 prefix is expected"
            )),
        }
    }

    pub fn network(&self) -> Ipv6Addr {
        self.0.network()
    }

    pub fn last(&self) -> Ipv6Addr {
        self.0.broadcast()
    }

    pub fn prefix_len(&self) -> u8 {
        self.0.prefix_len()
    }

    pub fn contains(&self, ip: Ipv6Addr) -> bool {
        self.0.contains(&ip)
    }

    pub fn overlaps(&self, other: &Cidr6) -> bool {
        self.0.contains(&other.0) || other.0.contains(&self.0)
    }

    pub fn net(&self) -> Ipv6Net {
        self.0
    }
}

impl fmt::Display for Cidr6 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl FromStr for Cidr6 {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        let net: Ipv6Net = s
            .parse()
            .map_err(|_| crate::invalid!("{s:?} is not an IPv6 subnet like fd00:1::/64"))?;
        Cidr6::new(net.addr(), net.prefix_len())
    }
}

impl TryFrom<String> for Cidr6 {
    type Error = anyhow::Error;
    fn try_from(s: String) -> anyhow::Result<Self> {
        s.parse()
    }
}

impl From<Cidr6> for String {
    fn from(c: Cidr6) -> String {
        c.to_string()
    }
}

impl TryFrom<String> for Cidr {
    type Error = anyhow::Error;
    fn try_from(s: String) -> anyhow::Result<Self> {
        s.parse()
    }
}

impl From<Cidr> for String {
    fn from(c: Cidr) -> String {
        c.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_checks_and_overlaps() {
        let a: Cidr = "172.18.0.0/16".parse().unwrap();
        assert_eq!(a.first_host(), Some("172.18.0.1".parse().unwrap()));
        assert_eq!(a.broadcast(), "172.18.255.255".parse::<Ipv4Addr>().unwrap());
        assert!(a.overlaps(&"172.18.5.0/24".parse().unwrap()));
        assert!(!a.overlaps(&"172.19.0.0/16".parse().unwrap()));
        for bad in [
            "172.18.0.0",
            "172.18.0.5/16",
            "300.1.1.1/8",
            "10.0.0.0/33",
            "10.0.0.0/31",
            "x/8",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        let err = "172.18.0.5/16".parse::<Cidr>().unwrap_err().to_string();
        assert!(err.contains("did you mean 172.18.0.0/16"), "{err}");
    }

    #[test]
    fn ipv6_subnets() {
        let a: Cidr6 = "fd00:1::/64".parse().unwrap();
        assert!(a.contains("fd00:1::5".parse().unwrap()));
        assert!(a.overlaps(&"fd00::/16".parse().unwrap()));
        assert!(!a.overlaps(&"fd00:2::/64".parse().unwrap()));
        for bad in [
            "fe80::/64",
            "ff02::/16",
            "::/64",
            "::ffff:0:0/96",
            "fd00:1::5/64",
            "fd00::/126",
            "fd00::/4",
            "10.0.0.0/8",
            "x/64",
        ] {
            assert!(bad.parse::<Cidr6>().is_err(), "{bad}");
        }
        let err = Cidr6::from_net("--subnet", "fd00::/125".parse().unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("too small"), "{err}");
        let err = Cidr6::from_net("--subnet", "10.0.0.0/8".parse().unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("IPv4 prefix where an IPv6 prefix"), "{err}");
    }
}
