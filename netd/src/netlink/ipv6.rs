//! The IPv6 side of the host's rtnetlink: addresses without duplicate
//! address detection, global addresses, the IPv6 default route.

use std::net::{IpAddr, Ipv6Addr};

use anyhow::{Context as _, Result};
use futures::TryStreamExt as _;
use rtnetlink::{RouteMessageBuilder, packet_route::address::AddressAttribute};

use super::Netlink;

impl Netlink {
    /// An IPv6 address without duplicate address detection: usable at
    /// once (netd hands out each address once, as Docker does).
    pub async fn add_address6(&self, index: u32, ip: Ipv6Addr, prefix_len: u8) -> Result<()> {
        let mut request = self.handle.address().add(index, IpAddr::V6(ip), prefix_len);
        request.message_mut().attributes.push(
            rtnetlink::packet_route::address::AddressAttribute::Flags(
                rtnetlink::packet_route::address::AddressFlags::Nodad,
            ),
        );
        request
            .execute()
            .await
            .with_context(|| format!("adding {ip}/{prefix_len} to link {index}"))
    }

    /// The link's global IPv6 addresses (not its link-local one).
    pub async fn addresses6(&self, index: u32) -> Result<Vec<Ipv6Addr>> {
        Ok(self
            .link_addresses(index)
            .await?
            .into_iter()
            .filter_map(|ip| match ip {
                IpAddr::V6(ip) if !ip.is_unicast_link_local() => Some(ip),
                _ => None,
            })
            .collect())
    }

    /// Every global IPv6 address of the namespace with its link and its
    /// fitness as a masquerade source (link-local ones are each link's own
    /// business).
    pub async fn all_addresses6(&self) -> Result<Vec<Address6>> {
        use rtnetlink::packet_route::address::AddressHeaderFlags as F;
        let mut stream = self.handle.address().get().execute();
        let mut out = Vec::new();
        while let Some(msg) = stream.try_next().await.context("listing addresses")? {
            let flags = msg.header.flags;
            for attr in &msg.attributes {
                if let AddressAttribute::Address(IpAddr::V6(ip)) = attr
                    && !ip.is_unicast_link_local()
                    && !ip.is_loopback()
                {
                    // Not tentative or deprecated; global before ULA (RFC
                    // 6724's scope rules for a global destination); public
                    // before temporary, unlike its rule 7: a masquerade
                    // address serves no privacy and should stay put
                    // (`Secondary` is IFA_F_TEMPORARY).
                    let rank = match flags.contains(F::Tentative) || flags.contains(F::Deprecated) {
                        true => Address6::NO_SOURCE,
                        false => {
                            2 * u8::from(ip.is_unique_local())
                                + u8::from(flags.contains(F::Secondary))
                        }
                    };
                    out.push(Address6 {
                        index: msg.header.index,
                        addr: *ip,
                        rank,
                    });
                }
            }
        }
        Ok(out)
    }

    /// The IPv6 default route via `gateway` (replacing the one there is).
    pub async fn replace_default_route6(&self, gateway: Ipv6Addr) -> Result<()> {
        let route = RouteMessageBuilder::<Ipv6Addr>::new()
            .gateway(gateway)
            .build();
        self.handle
            .route()
            .add(route)
            .replace()
            .execute()
            .await
            .with_context(|| format!("setting the IPv6 default route via {gateway}"))
    }
}

/// A global IPv6 address of one of the host's links.
#[derive(Clone, Copy, Debug)]
pub struct Address6 {
    pub index: u32,
    pub addr: Ipv6Addr,
    /// Lower is a better source for new connections; [`Self::NO_SOURCE`]:
    /// none (tentative or deprecated).
    pub rank: u8,
}

impl Address6 {
    pub const NO_SOURCE: u8 = u8::MAX;
}
