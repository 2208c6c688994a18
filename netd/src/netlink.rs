//! Links, addresses, routes and namespaces through rtnetlink (never `ip`).

use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr},
    os::fd::{AsFd as _, AsRawFd as _},
    path::Path,
};

use anyhow::{Context as _, Result, anyhow, bail};
use futures::TryStreamExt as _;
use rtnetlink::{
    Handle, LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder,
    packet_route::{
        AddressFamily,
        address::AddressAttribute,
        link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage},
        route::{RouteAddress, RouteAttribute},
        tc::TcHandle,
    },
};

mod ipv6;

pub use ipv6::Address6;

use crate::cidr::Cidr;
use crate::netns::setns;
pub use crate::netns::{
    NETNS_DIR, create_netns, delete_netns, name_current_netns, netns_path, sysctl_in,
};

/// Ports a Linux bridge takes (port numbers are 10 bits; 0 is reserved).
pub const BRIDGE_MAX_PORTS: usize = 1023;

/// A bridge refused another port (EXFULL).
fn bridge_full() -> anyhow::Error {
    crate::conflict!(
        "the bridge is full: a Linux bridge takes at most {BRIDGE_MAX_PORTS} ports \
         (containers); connect further containers to another network"
    )
}

/// A link as `link_details` reports it.
#[derive(Clone, Debug, Default)]
pub struct LinkDetails {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    pub bridge: bool,
    /// A port of some bridge (or bond, …).
    pub enslaved: bool,
    /// Its bridge (or bond, …), by index.
    pub master: Option<u32>,
    /// Administratively up.
    pub up: bool,
    /// The kind of a virtual link (`veth`, `vxlan`, …); none for a NIC.
    pub kind: Option<String>,
}

impl From<LinkMessage> for LinkDetails {
    fn from(link: LinkMessage) -> Self {
        let mut details = LinkDetails {
            index: link.header.index,
            up: link.header.flags.contains(LinkFlags::Up),
            ..LinkDetails::default()
        };
        for attr in link.attributes {
            match attr {
                LinkAttribute::IfName(name) => details.name = name,
                LinkAttribute::Controller(master) => {
                    details.enslaved = true;
                    details.master = Some(master);
                }
                LinkAttribute::Mtu(mtu) => details.mtu = mtu,
                LinkAttribute::LinkInfo(infos) => {
                    details.bridge = infos
                        .iter()
                        .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Bridge)));
                    details.kind = infos.iter().find_map(|i| match i {
                        LinkInfo::Kind(kind) => Some(kind.to_string()),
                        _ => None,
                    });
                }
                _ => {}
            }
        }
        details
    }
}

/// The one link a get by name or index answers; `None` when there is none.
async fn one_link(
    request: rtnetlink::LinkGetRequest,
    what: impl std::fmt::Display,
) -> Result<Option<LinkMessage>> {
    match request.execute().try_next().await {
        Ok(link) => Ok(link),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(err) => Err(err).with_context(|| format!("looking up link {what}")),
    }
}

/// An rtnetlink connection bound to one network namespace.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// A connection in the calling thread's namespace (needs a tokio runtime).
    pub fn connect() -> Result<Self> {
        let (connection, handle, _) = rtnetlink::new_connection().context("opening rtnetlink")?;
        tokio::spawn(connection);
        Ok(Self { handle })
    }

    /// A connection inside the namespace at `path`: the socket is opened on
    /// a thread that entered it, and stays bound to it.
    pub fn connect_in(path: &Path) -> Result<Self> {
        let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let runtime = tokio::runtime::Handle::current();
        let (connection, handle, _) = std::thread::scope(|s| {
            s.spawn(|| {
                // The socket registers with the runtime's reactor.
                let _runtime = runtime.enter();
                setns(file.as_fd())?;
                rtnetlink::new_connection().context("opening rtnetlink")
            })
            .join()
            .map_err(|_| anyhow!("netlink thread panicked"))?
        })?;
        tokio::spawn(connection);
        Ok(Self { handle })
    }

    pub async fn link_index(&self, name: &str) -> Result<Option<u32>> {
        let request = self.handle.link().get().match_name(name.to_owned());
        Ok(one_link(request, name).await?.map(|l| l.header.index))
    }

    pub async fn require_index(&self, name: &str) -> Result<u32> {
        self.link_index(name)
            .await?
            .ok_or_else(|| anyhow!("no interface named {name}"))
    }

    /// The attributes of link `index`.
    async fn link_attributes(&self, index: u32) -> Result<Vec<LinkAttribute>> {
        let mut links = self.handle.link().get().match_index(index).execute();
        let link = links
            .try_next()
            .await?
            .ok_or_else(|| anyhow!("no link {index}"))?;
        Ok(link.attributes)
    }

    pub async fn link_name(&self, index: u32) -> Result<String> {
        self.link_attributes(index)
            .await?
            .into_iter()
            .find_map(|a| match a {
                LinkAttribute::IfName(name) => Some(name),
                _ => None,
            })
            .ok_or_else(|| anyhow!("link {index} has no name"))
    }

    /// Deletes the clsact qdisc of link `index` when no filter is left in
    /// it (netd added it for its own filters; someone else's stay).
    pub async fn remove_clsact_if_unused(&self, index: u32) -> Result<()> {
        let index = index as i32;
        let mut tc = self.handle.traffic_filter(index);
        for parent in [tc.get().ingress(), tc.get().egress()] {
            let filters: Vec<_> = match parent.execute().try_collect().await {
                Ok(filters) => filters,
                // No clsact (or no link): nothing to remove.
                Err(rtnetlink::Error::NetlinkError(e))
                    if [-libc::EINVAL, -libc::ENOENT, -libc::ENODEV].contains(&e.raw_code()) =>
                {
                    return Ok(());
                }
                Err(err) => return Err(err).context("listing tc filters"),
            };
            if !filters.is_empty() {
                return Ok(());
            }
        }
        let mut del = self.handle.qdisc().del(index);
        let header = &mut del.message_mut().header;
        header.parent = TcHandle::from(0xffff_fff1); // TC_H_CLSACT
        header.handle = TcHandle::from(0xffff_0000);
        match del.execute().await {
            Err(rtnetlink::Error::NetlinkError(e))
                if [-libc::EINVAL, -libc::ENOENT, -libc::ENODEV].contains(&e.raw_code()) =>
            {
                Ok(())
            }
            other => other.context("deleting the clsact qdisc"),
        }
    }

    pub async fn link_mac(&self, index: u32) -> Result<[u8; 6]> {
        for attr in self.link_attributes(index).await? {
            if let LinkAttribute::Address(mac) = attr {
                return mac
                    .try_into()
                    .map_err(|_| anyhow!("link {index} has no Ethernet address"));
            }
        }
        bail!("link {index} has no address")
    }

    /// A bridge with MAC `mac` (set, so it stays: a bridge whose MAC the
    /// kernel chose takes its lowest port's as ports come and go).
    pub async fn create_bridge(&self, name: &str, mtu: u32, mac: [u8; 6]) -> Result<u32> {
        self.handle
            .link()
            .add(
                LinkBridge::new(name)
                    .mtu(mtu)
                    .address(mac.to_vec())
                    .up()
                    .build(),
            )
            .execute()
            .await
            .with_context(|| format!("creating bridge {name}"))?;
        self.require_index(name).await
    }

    /// A veth pair whose other end is made directly inside the namespace
    /// open as `netns` (named `peer`, with `peer_mac`), this end up on
    /// `bridge`; returns this end's index. Made in place, the peer is never
    /// moved: moving a link between namespaces waits for an RCU grace
    /// period (~30 ms here), the largest part of a container create.
    pub async fn create_veth_into(
        &self,
        name: &str,
        mtu: u32,
        bridge: u32,
        netns: &File,
        peer: &str,
        peer_mac: [u8; 6],
    ) -> Result<u32> {
        use rtnetlink::{
            LinkMessageBuilder,
            packet_route::link::{InfoData, InfoVeth},
        };
        let peer_msg = LinkMessageBuilder::<LinkUnspec>::new()
            .name(peer.to_owned())
            .mtu(mtu)
            .address(peer_mac.to_vec())
            .setns_by_fd(netns.as_raw_fd())
            .build();
        let message = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(name.to_owned())
            .mtu(mtu)
            .controller(bridge)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
            .build();
        match self.handle.link().add(message).execute().await {
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EXFULL => {
                return Err(bridge_full());
            }
            other => {
                other.with_context(|| format!("creating veth {name} into a namespace as {peer}"))?
            }
        }
        self.require_index(name).await
    }

    /// A veth pair in this namespace; returns both indexes.
    pub async fn create_veth(&self, name: &str, peer: &str, mtu: u32) -> Result<(u32, u32)> {
        self.handle
            .link()
            .add(LinkVeth::new(name, peer).mtu(mtu).build())
            .execute()
            .await
            .with_context(|| format!("creating veth {name}/{peer}"))?;
        Ok((
            self.require_index(name).await?,
            self.require_index(peer).await?,
        ))
    }

    pub async fn set_up(&self, index: u32) -> Result<()> {
        self.set(
            LinkUnspec::new_with_index(index).up().build(),
            "bringing up",
        )
        .await
    }

    pub async fn set_master(&self, index: u32, master: u32) -> Result<()> {
        let message = LinkUnspec::new_with_index(index).controller(master).build();
        match self.handle.link().set(message).execute().await {
            // The bridge's port numbers are 10 bits, 0 reserved.
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EXFULL => {
                Err(bridge_full())
            }
            other => other.with_context(|| format!("enslaving link {index}")),
        }
    }

    /// A permanent neighbour (ARP) entry: `ip` is at `mac` on link `index`
    /// (replacing any entry for `ip`). The kernel's neighbour table has one
    /// limit for every namespace together (`gc_thresh3`, 1,024 by default),
    /// which dynamic entries for ~1,000 containers exhaust; permanent
    /// entries do not count against it.
    pub async fn set_permanent_neighbour(
        &self,
        index: u32,
        ip: impl Into<IpAddr>,
        mac: [u8; 6],
    ) -> Result<()> {
        let ip = ip.into();
        self.handle
            .neighbours()
            .add(index, ip)
            .link_layer_address(&mac)
            .replace()
            .execute()
            .await
            .with_context(|| format!("adding the neighbour entry {ip} on link {index}"))
    }

    /// Removes the neighbour entry for `ip` on link `index`, if any.
    pub async fn delete_neighbour(&self, index: u32, ip: impl Into<IpAddr>) -> Result<()> {
        use rtnetlink::packet_route::neighbour::{
            NeighbourAddress, NeighbourAttribute, NeighbourMessage,
        };
        let ip = ip.into();
        let mut message = NeighbourMessage::default();
        message.header.ifindex = index;
        let (family, address) = match ip {
            IpAddr::V4(ip) => (AddressFamily::Inet, NeighbourAddress::Inet(ip)),
            IpAddr::V6(ip) => (AddressFamily::Inet6, NeighbourAddress::Inet6(ip)),
        };
        message.header.family = family;
        message
            .attributes
            .push(NeighbourAttribute::Destination(address));
        match self.handle.neighbours().del(message).execute().await {
            Err(rtnetlink::Error::NetlinkError(e))
                if e.raw_code() == -libc::ENOENT || e.raw_code() == -libc::ENODEV =>
            {
                Ok(())
            }
            other => {
                other.with_context(|| format!("deleting the neighbour entry {ip} on link {index}"))
            }
        }
    }

    /// Hairpin mode on a bridge port: a frame may leave through the port it
    /// came in on (a container reaching itself through a published port).
    pub async fn set_hairpin(&self, index: u32) -> Result<()> {
        let message = rtnetlink::LinkBridgePort::new(index).hairpin(true).build();
        self.handle
            .link()
            .set_port(message)
            .execute()
            .await
            .with_context(|| format!("hairpin mode on link {index}"))
    }

    pub async fn set_mac(&self, index: u32, mac: [u8; 6]) -> Result<()> {
        self.set(
            LinkUnspec::new_with_index(index)
                .address(mac.to_vec())
                .build(),
            "setting the MAC of",
        )
        .await
    }

    async fn set(
        &self,
        message: rtnetlink::packet_route::link::LinkMessage,
        what: &str,
    ) -> Result<()> {
        let index = message.header.index;
        self.handle
            .link()
            .set(message)
            .execute()
            .await
            .with_context(|| format!("{what} link {index}"))
    }

    /// Deletes a link; done already if it is gone (ENODEV), as when its
    /// namespace or its veth peer went first.
    pub async fn delete_link(&self, index: u32) -> Result<()> {
        match self.handle.link().del(index).execute().await {
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(()),
            other => other.with_context(|| format!("deleting link {index}")),
        }
    }

    /// Deletes the link named `name` if there is one.
    pub async fn delete_link_named(&self, name: &str) -> Result<()> {
        match self.link_index(name).await? {
            Some(index) => self.delete_link(index).await,
            None => Ok(()),
        }
    }

    pub async fn add_address(&self, index: u32, ip: Ipv4Addr, prefix_len: u8) -> Result<()> {
        self.handle
            .address()
            .add(index, IpAddr::V4(ip), prefix_len)
            .execute()
            .await
            .with_context(|| format!("adding {ip}/{prefix_len} to link {index}"))
    }

    pub async fn addresses(&self, index: u32) -> Result<Vec<Ipv4Addr>> {
        Ok(self
            .link_addresses(index)
            .await?
            .into_iter()
            .filter_map(|ip| match ip {
                IpAddr::V4(ip) => Some(ip),
                IpAddr::V6(_) => None,
            })
            .collect())
    }

    /// Every address of link `index`, both families, sorted.
    async fn link_addresses(&self, index: u32) -> Result<Vec<IpAddr>> {
        let mut stream = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        let mut out = Vec::new();
        while let Some(msg) = stream.try_next().await? {
            for attr in msg.attributes {
                if let AddressAttribute::Address(ip) = attr {
                    out.push(ip);
                }
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// Every IPv4 address of the namespace as (link index, address), in the
    /// kernel's order (a link's primary address before its secondaries).
    pub async fn all_addresses(&self) -> Result<Vec<(u32, Ipv4Addr)>> {
        let mut stream = self.handle.address().get().execute();
        let mut out = Vec::new();
        while let Some(msg) = stream.try_next().await.context("listing addresses")? {
            // IFA_LOCAL is the address itself; IFA_ADDRESS is the peer's on
            // point-to-point links (and the same as IFA_LOCAL elsewhere).
            let (mut local, mut address) = (None, None);
            for attr in msg.attributes {
                match attr {
                    AddressAttribute::Local(IpAddr::V4(ip)) => local = Some(ip),
                    AddressAttribute::Address(IpAddr::V4(ip)) => address = Some(ip),
                    _ => {}
                }
            }
            if let Some(ip) = local.or(address) {
                out.push((msg.header.index, ip));
            }
        }
        Ok(out)
    }

    /// Every link with what deciding "is it an uplink" needs. With
    /// thousands of veths prefer [`Self::bridge_ports`] or one link by
    /// index: the kernel looks up each veth's peer namespace ID by walking
    /// every ID this namespace knows, so a full dump grows with the square
    /// of the container count (120 ms at 2,000 containers).
    pub async fn link_details(&self) -> Result<Vec<LinkDetails>> {
        let mut links = self.handle.link().get().execute();
        let mut out = Vec::new();
        while let Some(link) = links.try_next().await.context("listing links")? {
            out.push(LinkDetails::from(link));
        }
        Ok(out)
    }

    /// Link `index`'s details; `None` when there is no such link.
    pub async fn link_details_of(&self, index: u32) -> Result<Option<LinkDetails>> {
        let request = self.handle.link().get().match_index(index);
        Ok(one_link(request, index).await?.map(LinkDetails::from))
    }

    /// Link `name`'s details; `None` when there is no such link.
    pub async fn link_details_named(&self, name: &str) -> Result<Option<LinkDetails>> {
        let request = self.handle.link().get().match_name(name.to_owned());
        Ok(one_link(request, name).await?.map(LinkDetails::from))
    }

    /// Every bridge port (index, name, bridge, up), from the bridge
    /// family's dump: it leaves out the peer namespace IDs that make a full
    /// link dump slow with thousands of veths (15 ms for 2,000 ports).
    pub async fn bridge_ports(&self) -> Result<Vec<LinkDetails>> {
        let mut links = self
            .handle
            .link()
            .get()
            .set_filter_mask(AddressFamily::Bridge, Vec::new())
            .execute();
        let mut out = Vec::new();
        while let Some(link) = links.try_next().await.context("listing bridge ports")? {
            out.push(LinkDetails::from(link));
        }
        Ok(out)
    }

    pub async fn add_default_route(&self, gateway: Ipv4Addr) -> Result<()> {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(gateway)
            .build();
        self.handle
            .route()
            .add(route)
            .execute()
            .await
            .with_context(|| format!("adding default route via {gateway}"))
    }

    /// The default route via `gateway`, replacing the one there is.
    pub async fn replace_default_route(&self, gateway: Ipv4Addr) -> Result<()> {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(gateway)
            .build();
        self.handle
            .route()
            .add(route)
            .replace()
            .execute()
            .await
            .with_context(|| format!("setting the default route via {gateway}"))
    }

    /// IPv4 routes of the main table: (destination, output interface).
    pub async fn routes(&self) -> Result<Vec<(Cidr, Option<u32>)>> {
        let mut stream = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        let mut out = Vec::new();
        while let Some(route) = stream.try_next().await? {
            if route.header.table != 254 {
                continue;
            }
            let mut dst = Ipv4Addr::UNSPECIFIED;
            let mut oif = None;
            for attr in &route.attributes {
                match attr {
                    RouteAttribute::Destination(RouteAddress::Inet(ip)) => dst = *ip,
                    RouteAttribute::Oif(index) => oif = Some(*index),
                    _ => {}
                }
            }
            if let Ok(cidr) = Cidr::new(dst, route.header.destination_prefix_length) {
                out.push((cidr, oif));
            }
        }
        Ok(out)
    }
}

/// How often the kernel's IPv4 neighbour table was full (`table_fulls`,
/// summed over CPUs): a neighbour that could not be resolved, in any
/// namespace. One table serves every namespace and its limit
/// (`gc_thresh3`) counts only dynamic entries; netd's are permanent, but
/// containers talking to each other and to the outside add dynamic ones.
pub fn neighbour_table_overflows() -> Option<u64> {
    let stats = std::fs::read_to_string("/proc/net/stat/arp_cache").ok()?;
    let mut lines = stats.lines();
    let column = lines
        .next()?
        .split_whitespace()
        .position(|c| c == "table_fulls")?;
    lines
        .map(|l| u64::from_str_radix(l.split_whitespace().nth(column)?, 16).ok())
        .sum()
}
