//! Address management as Docker does it: subnets from the default pools
//! (172.17-31.0.0/16, then 192.168.x.0/20), skipping any that overlap a
//! network or a route already present; gateway = first address; containers
//! get the next free address. IPv6 as Docker 27: /64s from a ULA /48
//! derived from the host's ID, addresses handed out in order.

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, Ipv6Addr},
};

use anyhow::Result;
use ipnet::{IpNet, Ipv4Net};

use crate::cidr::{Cidr, Cidr6};

/// The /48 unique local prefix of a host (RFC 4193 with the host's ID as
/// the random part, as Docker 27 derives its default IPv6 pool): `fd`, then
/// 40 bits of a SHA-256 of `host_id`. Two hosts get different prefixes; one
/// host gets the same one after every restart.
pub fn ula_prefix(host_id: &str) -> Cidr6 {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(host_id.as_bytes());
    let mut octets = [0u8; 16];
    octets[0] = 0xfd;
    octets[1..6].copy_from_slice(&digest[..5]);
    Cidr6::new(Ipv6Addr::from(octets), 48).expect("a /48 network address")
}

/// The first /64 of `pool` that overlaps none of `taken`.
pub fn allocate_subnet6(pool: &Cidr6, taken: &[Cidr6]) -> Result<Cidr6> {
    pool.net()
        .subnets(64)
        .map_err(|_| crate::invalid!("the IPv6 pool {pool} is smaller than a /64"))?
        .map(|net| Cidr6::new(net.network(), 64).expect("a /64 network address"))
        .find(|candidate| !taken.iter().any(|t| t.overlaps(candidate)))
        .ok_or_else(|| crate::conflict!("the IPv6 pool {pool} is used up; pass an IPv6 --subnet"))
}

/// Refuses an IPv6 subnet that overlaps an existing network's.
pub fn check_subnet6_free(subnet: &Cidr6, named: &[(String, Cidr6)]) -> Result<()> {
    if let Some((name, other)) = named.iter().find(|(_, other)| other.overlaps(subnet)) {
        return Err(crate::conflict!(
            "subnet {subnet} overlaps network {name:?} ({other}); choose another --subnet"
        ));
    }
    Ok(())
}

/// Checks a requested IPv6 gateway or container address: in the subnet,
/// not its subnet-router anycast (first) address.
pub fn check_in_subnet6(what: &str, ip: Ipv6Addr, subnet: &Cidr6) -> Result<()> {
    if !subnet.contains(ip) || ip == subnet.network() {
        return Err(crate::invalid!(
            "{what} {ip} is not a usable address of subnet {subnet}"
        ));
    }
    Ok(())
}

/// The lowest free IPv6 address of `subnet` (its first address is the
/// subnet-router anycast address, never handed out). Only the first 2^16
/// candidates past the used ones are looked at: a network has far fewer
/// containers.
pub fn allocate_ip6(subnet: &Cidr6, used: &BTreeSet<Ipv6Addr>) -> Result<Ipv6Addr> {
    let first = u128::from(subnet.network()) + 1;
    let last = u128::from(subnet.last());
    (first..=last)
        .take(used.len() + 1)
        .map(Ipv6Addr::from)
        .find(|ip| !used.contains(ip))
        .ok_or_else(|| crate::conflict!("no free address left in {subnet}"))
}

/// Docker's default address pools, in the order Docker uses them.
pub fn default_pools() -> impl Iterator<Item = Cidr> {
    let pool = |addr, prefix_len| Cidr::new(addr, prefix_len).expect("a network address");
    let big = (17..=31u8).map(move |b| pool(Ipv4Addr::new(172, b, 0, 0), 16));
    let small = (0..16u8).map(move |i| pool(Ipv4Addr::new(192, 168, i * 16, 0), 20));
    big.chain(small)
}

/// The first default-pool subnet that overlaps neither a network nor a route.
pub fn allocate_subnet(taken: &[Cidr]) -> Result<Cidr> {
    default_pools()
        .find(|candidate| !taken.iter().any(|t| t.overlaps(candidate)))
        .ok_or_else(|| crate::conflict!("all default address pools are in use; pass --subnet"))
}

/// Refuses a subnet that overlaps an existing network (`named` = (name, subnet)).
pub fn check_subnet_free(subnet: &Cidr, named: &[(String, Cidr)]) -> Result<()> {
    if let Some((name, other)) = named.iter().find(|(_, other)| other.overlaps(subnet)) {
        return Err(crate::conflict!(
            "subnet {subnet} overlaps network {name:?} ({other}); choose another --subnet"
        ));
    }
    Ok(())
}

/// Checks a requested gateway or container address against its subnet.
pub fn check_in_subnet(what: &str, ip: Ipv4Addr, subnet: &Cidr) -> Result<()> {
    if !subnet.contains(ip) || ip == subnet.network() || ip == subnet.broadcast() {
        return Err(crate::invalid!(
            "{what} {ip} is not a usable address of subnet {subnet}"
        ));
    }
    Ok(())
}

/// Checks `--ip-range` against its subnet as Docker 25 does (every
/// problem named, in Docker's words).
pub fn check_ip_range(range: IpNet, subnet: &Cidr) -> Result<Ipv4Net> {
    let IpNet::V4(range) = range else {
        return Err(crate::invalid!(
            "invalid ip-range {range}: parent subnet is an IPv4 block"
        ));
    };
    let mut problems = Vec::new();
    if range.prefix_len() < subnet.prefix_len() {
        problems.push(format!(
            "invalid ip-range {range}: CIDR block is bigger than its parent subnet {subnet}"
        ));
    }
    if range != range.trunc() {
        problems.push(format!(
            "invalid ip-range {range}: it should be {}",
            range.trunc()
        ));
    }
    if !subnet.contains(range.network()) && !range.contains(&subnet.network()) {
        problems.push(format!(
            "invalid ip-range {range}: parent subnet {subnet} doesn't contain ip-range"
        ));
    }
    match problems.is_empty() {
        true => Ok(range),
        false => Err(crate::invalid!("{}", problems.join("; "))),
    }
}

/// The lowest free address (the gateway and every address in `used`
/// taken), from `range` when the network has one.
pub fn allocate_ip(
    subnet: &Cidr,
    range: Option<&Ipv4Net>,
    used: &BTreeSet<Ipv4Addr>,
) -> Result<Ipv4Addr> {
    let first = range.map_or(subnet.network(), |r| r.network().max(subnet.network()));
    let last = range.map_or(subnet.broadcast(), |r| {
        r.broadcast().min(subnet.broadcast())
    });
    (u32::from(first)..=u32::from(last))
        .map(Ipv4Addr::from)
        .filter(|ip| *ip != subnet.network() && *ip != subnet.broadcast())
        .find(|ip| !used.contains(ip))
        .ok_or_else(|| match range {
            Some(range) => crate::conflict!("no free address left in ip-range {range}"),
            None => crate::conflict!("no free address left in {subnet}"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_skip_what_is_taken() {
        assert_eq!(allocate_subnet(&[]).unwrap().to_string(), "172.17.0.0/16");
        let taken: Vec<Cidr> = vec![
            "172.17.0.0/16".parse().unwrap(),
            "172.18.3.0/24".parse().unwrap(),
        ];
        assert_eq!(
            allocate_subnet(&taken).unwrap().to_string(),
            "172.19.0.0/16"
        );
        let all_172: Vec<Cidr> = vec!["172.16.0.0/12".parse().unwrap()];
        assert_eq!(
            allocate_subnet(&all_172).unwrap().to_string(),
            "192.168.0.0/20"
        );
        assert_eq!(default_pools().count(), 31);
    }

    #[test]
    fn addresses() {
        let net: Cidr = "10.1.0.0/29".parse().unwrap();
        let mut used = BTreeSet::from([Ipv4Addr::new(10, 1, 0, 1)]);
        assert_eq!(
            allocate_ip(&net, None, &used).unwrap(),
            Ipv4Addr::new(10, 1, 0, 2)
        );
        used.extend((2..=6).map(|i| Ipv4Addr::new(10, 1, 0, i)));
        let err = allocate_ip(&net, None, &used).unwrap_err().to_string();
        assert_eq!(err, "no free address left in 10.1.0.0/29");
        assert!(check_in_subnet("gateway", Ipv4Addr::new(10, 1, 0, 7), &net).is_err());
        assert!(check_in_subnet("gateway", Ipv4Addr::new(10, 2, 0, 1), &net).is_err());
        assert!(check_in_subnet("gateway", Ipv4Addr::new(10, 1, 0, 6), &net).is_ok());
        let named = vec![("web".to_string(), "10.1.0.0/24".parse().unwrap())];
        let err = check_subnet_free(&"10.1.0.0/16".parse().unwrap(), &named)
            .unwrap_err()
            .to_string();
        assert!(err.contains("overlaps network \"web\""), "{err}");
    }

    #[test]
    fn ipv6_pools_and_addresses() {
        let pool = ula_prefix("host-a");
        assert_eq!(pool.prefix_len(), 48);
        assert_eq!(pool.network().octets()[0], 0xfd);
        assert_eq!(pool, ula_prefix("host-a"));
        assert_ne!(pool, ula_prefix("host-b"));
        let first = allocate_subnet6(&pool, &[]).unwrap();
        assert_eq!(first.network(), pool.network());
        assert_eq!(first.prefix_len(), 64);
        let second = allocate_subnet6(&pool, &[first]).unwrap();
        assert_eq!(
            u128::from(second.network()) - u128::from(first.network()),
            1 << 64
        );
        let small: Cidr6 = "fd00::/120".parse().unwrap();
        let err = allocate_subnet6(&small, &[]).unwrap_err().to_string();
        assert!(err.contains("smaller than a /64"), "{err}");

        let net: Cidr6 = "fd00:1::/124".parse().unwrap();
        let mut used = BTreeSet::from(["fd00:1::1".parse().unwrap()]);
        assert_eq!(allocate_ip6(&net, &used).unwrap().to_string(), "fd00:1::2");
        used.extend((2..=15u16).map(|i| Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, i)));
        let err = allocate_ip6(&net, &used).unwrap_err().to_string();
        assert_eq!(err, "no free address left in fd00:1::/124");
        assert!(check_in_subnet6("--ip6", "fd00:1::".parse().unwrap(), &net).is_err());
        assert!(check_in_subnet6("--ip6", "fd00:2::1".parse().unwrap(), &net).is_err());
        assert!(check_in_subnet6("--ip6", "fd00:1::f".parse().unwrap(), &net).is_ok());
        let named = vec![("web".to_string(), "fd00:1::/64".parse().unwrap())];
        let err = check_subnet6_free(&"fd00::/16".parse().unwrap(), &named)
            .unwrap_err()
            .to_string();
        assert!(err.contains("overlaps network \"web\""), "{err}");
    }

    #[test]
    fn ip_ranges() {
        let subnet: Cidr = "10.1.0.0/16".parse().unwrap();
        let range = check_ip_range("10.1.5.0/24".parse().unwrap(), &subnet).unwrap();
        let used = BTreeSet::from([Ipv4Addr::new(10, 1, 0, 1)]);
        // The range's first address is an ordinary host of the subnet.
        assert_eq!(
            allocate_ip(&subnet, Some(&range), &used).unwrap(),
            Ipv4Addr::new(10, 1, 5, 0)
        );
        // A range ending on the subnet's broadcast address leaves it out.
        let tail = check_ip_range("10.1.255.252/30".parse().unwrap(), &subnet).unwrap();
        let used: BTreeSet<Ipv4Addr> = (252..=254).map(|i| Ipv4Addr::new(10, 1, 255, i)).collect();
        let err = allocate_ip(&subnet, Some(&tail), &used)
            .unwrap_err()
            .to_string();
        assert_eq!(err, "no free address left in ip-range 10.1.255.252/30");
        let err = |range: &str| {
            check_ip_range(range.parse().unwrap(), &subnet)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err("10.2.0.0/24"),
            "invalid ip-range 10.2.0.0/24: parent subnet 10.1.0.0/16 doesn't contain ip-range"
        );
        assert_eq!(
            err("10.1.5.7/24"),
            "invalid ip-range 10.1.5.7/24: it should be 10.1.5.0/24"
        );
        assert_eq!(
            err("10.0.0.0/8"),
            "invalid ip-range 10.0.0.0/8: CIDR block is bigger than its parent subnet 10.1.0.0/16"
        );
        assert_eq!(
            err("fd00::/64"),
            "invalid ip-range fd00::/64: parent subnet is an IPv4 block"
        );
    }
}
