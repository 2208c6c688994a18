//! IPv4 subnets (`172.18.0.0/16`) with the checks IPAM needs.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr},
    str::FromStr,
};

use ipnet::{IpNet, Ipv4Net};
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
    /// A subnet as the API gives it: IPv4 (netd's networks are IPv4-only
    /// for now), its network address, a prefix of 8 to 30 bits.
    pub fn from_net(what: &str, net: IpNet) -> anyhow::Result<Self> {
        match net {
            IpNet::V4(net) => format!("{}/{}", net.addr(), net.prefix_len())
                .parse()
                .map_err(|err| crate::invalid!("{what} {net}: {err:#}")),
            IpNet::V6(_) => Err(crate::invalid!(
                "{what} {net} is an IPv6 prefix: netd networks are IPv4-only for now"
            )),
        }
    }
}

/// An IPv4 address as the API gives it (netd is IPv4-only for now).
pub fn ipv4(what: &str, ip: IpAddr) -> anyhow::Result<Ipv4Addr> {
    match ip {
        IpAddr::V4(ip) => Ok(ip),
        IpAddr::V6(_) => Err(crate::invalid!(
            "{what} {ip} is an IPv6 address: netd networks are IPv4-only for now"
        )),
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
}
