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

    /// Every global IPv6 address of the namespace with its link's index,
    /// in the kernel's order (link-local ones are each link's own
    /// business; tentative and deprecated ones source nothing new).
    pub async fn all_addresses6(&self) -> Result<Vec<(u32, Ipv6Addr)>> {
        use rtnetlink::packet_route::address::AddressHeaderFlags;
        let mut stream = self.handle.address().get().execute();
        let mut out = Vec::new();
        while let Some(msg) = stream.try_next().await.context("listing addresses")? {
            let unusable = msg.header.flags.contains(AddressHeaderFlags::Tentative)
                || msg.header.flags.contains(AddressHeaderFlags::Deprecated);
            for attr in &msg.attributes {
                if let AddressAttribute::Address(IpAddr::V6(ip)) = attr
                    && !ip.is_unicast_link_local()
                    && !ip.is_loopback()
                    && !unusable
                {
                    out.push((msg.header.index, *ip));
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
