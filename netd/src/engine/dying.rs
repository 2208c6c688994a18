//! Veths of removed containers, deleted off the request path. Deleting a
//! veth waits for RCU twice (its unregistration, then its callbacks: ~15-25
//! ms here), which `container rm` need not: once the container's namespace
//! is gone and its endpoint is out of the datapath, nothing reaches it. The
//! kernel deletes the veth with the namespace (batched with other
//! namespaces' devices); netd waits for that in a task, and deletes the
//! veth itself if a process still holds the namespace; then the
//! container's connections are forgotten (a walk of the conntrack table,
//! ~15 ms with 28,000 entries). Until all that is done the container's
//! address is not handed to another container (one asking for it,
//! or IPAM's next pick, waits for it) and its bridge port counts as used;
//! a restart deletes what a crash left (`State::dying_links`).

use std::{
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};

use tokio::task::JoinHandle;

use super::{Engine, fault_point};
use crate::{
    driver::Leftovers,
    host::Host,
    ipam,
    state::{Container, Network},
};

/// How long the kernel gets to delete a removed namespace's veths before
/// netd deletes them itself (~10 ms is usual; a namespace a process still
/// holds keeps them).
const NAMESPACE_CLEANUP_WAIT: Duration = Duration::from_millis(100);

/// A deletion recorded, not started yet.
pub(super) struct Undeleted {
    addresses: Vec<(String, Ipv4Addr)>,
    links: Vec<String>,
    after: Vec<Leftovers>,
}

pub(super) struct Dying {
    /// (network, address) of each attachment the container had.
    addresses: Vec<(String, Ipv4Addr)>,
    links: Vec<String>,
    done: JoinHandle<()>,
}

impl<H: Host> Engine<H> {
    /// Records that `links` of `container` are to be deleted in the
    /// background (started by [`start_deletions`](Self::start_deletions)
    /// once the state says so); `after` runs meanwhile, on a thread of its
    /// own.
    pub(super) fn delete_links_in_background(
        &mut self,
        container: &Container,
        links: Vec<String>,
        after: Vec<Leftovers>,
    ) {
        if links.is_empty() {
            after.into_iter().for_each(|after| after());
            return;
        }
        self.state.dying_links.extend(links.iter().cloned());
        self.state
            .dying_addresses
            .extend(container.attachments.iter().map(|a| a.ip));
        self.undeleted.push(Undeleted {
            addresses: container
                .attachments
                .iter()
                .map(|a| (a.network.clone(), a.ip))
                .collect(),
            links,
            after,
        });
    }

    /// Starts the deletions recorded since the last call, each in a task.
    pub(super) fn start_deletions(&mut self) {
        self.reap_dying();
        for Undeleted {
            addresses,
            links,
            after,
        } in std::mem::take(&mut self.undeleted)
        {
            let host = self.host.clone();
            let task_links = links.clone();
            let done = tokio::spawn(async move {
                fault_point(super::FAULT_POINT_DELETING_VETHS);
                // Forgetting the connections (a walk of the conntrack table,
                // off the runtime's threads) need not wait for the veths: a
                // create waiting for the address waits for the longer one.
                let after =
                    tokio::task::spawn_blocking(move || after.into_iter().for_each(|a| a()));
                // The kernel deletes them with the namespace, in one batch
                // and without holding up other link changes the way a
                // delete of our own would; a namespace some process still
                // holds keeps them, so they are deleted after a while.
                let deadline = Instant::now() + NAMESPACE_CLEANUP_WAIT;
                while Instant::now() < deadline {
                    let mut left = false;
                    for link in &task_links {
                        left |= !matches!(host.link_index(link).await, Ok(None));
                    }
                    if !left {
                        break;
                    }
                    // A lookup by name is cheap (no RTNL lock on recent
                    // kernels); a create may be waiting for the address.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                for link in &task_links {
                    if let Err(err) = host.delete_link(link).await {
                        tracing::warn!(
                            link,
                            err = format!("{err:#}"),
                            "deleting a removed container's veth"
                        );
                    }
                }
                if let Err(err) = after.await {
                    tracing::warn!(
                        err = format!("{err:#}"),
                        "cleaning up after a removed container"
                    );
                }
            });
            self.dying.push(Dying {
                addresses,
                links,
                done,
            });
        }
    }

    /// Forgets deletions that finished.
    pub(super) fn reap_dying(&mut self) {
        let (done, going): (Vec<Dying>, Vec<Dying>) =
            self.dying.drain(..).partition(|d| d.done.is_finished());
        self.dying = going;
        for d in done {
            self.state.forget_dying(&d);
        }
    }

    /// Waits for the deletions holding an address of `network` (all of
    /// them with `None`).
    pub(super) async fn settle_dying(&mut self, network: Option<&str>) {
        let holds = |d: &Dying| network.is_none_or(|n| d.addresses.iter().any(|(net, _)| net == n));
        let (waited, others): (Vec<Dying>, Vec<Dying>) = self.dying.drain(..).partition(holds);
        self.dying = others;
        for mut d in waited {
            let _ = (&mut d.done).await;
            self.state.forget_dying(&d);
        }
    }

    /// At exit: the deletions under way finish, and the state says so.
    pub async fn settle(&mut self) -> anyhow::Result<()> {
        if self.dying.is_empty() {
            return Ok(());
        }
        self.settle_dying(None).await;
        self.save()
    }

    /// Addresses of `network` whose veth is still being deleted.
    pub(super) fn dying_addresses<'a>(
        &'a self,
        network: &'a str,
    ) -> impl Iterator<Item = Ipv4Addr> + 'a {
        self.dying
            .iter()
            .filter(|d| !d.done.is_finished())
            .flat_map(|d| &d.addresses)
            .filter(move |(net, _)| net == network)
            .map(|(_, ip)| *ip)
    }

    /// The veths still being deleted (`netd status`).
    pub(super) fn dying_links(&self) -> Vec<String> {
        self.dying
            .iter()
            .filter(|d| !d.done.is_finished())
            .flat_map(|d| d.links.iter().cloned())
            .collect()
    }

    /// Before an address of `net` is picked: waits for the deletions on it
    /// when the address asked for, or the one IPAM would pick (the lowest
    /// free, as Docker's: a container made again after its rm gets its
    /// address back), is still held by one, or when the bridge would be
    /// full without their ports.
    pub(super) async fn settle_dying_for(&mut self, net: &Network, ip: Option<IpAddr>) {
        let dying: Vec<Ipv4Addr> = self.dying_addresses(&net.name).collect();
        if dying.is_empty() {
            return;
        }
        let wanted = match ip {
            Some(ip) => dying.iter().any(|d| IpAddr::V4(*d) == ip),
            None => ipam::allocate_ip(
                &net.subnet,
                net.ip_range.as_ref(),
                &self.live_addresses(net),
            )
            .is_ok_and(|next| dying.contains(&next)),
        };
        let ports = self.bridge_ports(&net.name);
        let bridge_full = ports + dying.len() >= crate::netlink::BRIDGE_MAX_PORTS;
        if wanted || bridge_full {
            self.settle_dying(Some(&net.name)).await;
        }
    }
}

impl crate::state::State {
    /// A deletion finished: nothing of it is left for a restart.
    fn forget_dying(&mut self, d: &Dying) {
        self.dying_links.retain(|l| !d.links.contains(l));
        self.dying_addresses
            .retain(|ip| !d.addresses.iter().any(|(_, a)| a == ip));
    }
}
