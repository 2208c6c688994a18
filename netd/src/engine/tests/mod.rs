//! The engine without root: an in-memory host and the no-op driver.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use anyhow::{Result, bail};

use super::Engine;
use crate::{
    api::{
        CniAttach, CniDetach, CniNetwork, ContainerSpec, GatewayMode, NetworkSpec, Reply, Request,
    },
    cidr::Cidr,
    driver::{HostInfo, NoopDriver},
    host::{DefaultRoutes, Host, VethPlan},
    metrics::Metrics,
    portspec::PortSpec,
    state::{Pending, State},
};

/// What the in-memory host holds: links by name (bridge or veth host side),
/// namespaces by name, and the interfaces inside each.
#[derive(Debug, Default)]
struct Kernel {
    bridges: BTreeSet<String>,
    /// host-side veth -> bridge
    veths: BTreeMap<String, String>,
    namespaces: BTreeMap<String, BTreeSet<String>>,
    /// (namespace, interface) -> its address.
    addresses: BTreeMap<(String, String), Ipv4Addr>,
    routes: Vec<Cidr>,
    /// The next call of this name fails, once.
    fail_next: Option<&'static str>,
}

#[derive(Clone, Default)]
struct FakeHost {
    kernel: Arc<Mutex<Kernel>>,
}

impl FakeHost {
    fn kernel(&self) -> std::sync::MutexGuard<'_, Kernel> {
        self.kernel.lock().unwrap()
    }

    fn check(&self, call: &'static str) -> Result<()> {
        let mut kernel = self.kernel();
        if kernel.fail_next == Some(call) {
            kernel.fail_next = None;
            bail!("{call} failed (injected)");
        }
        Ok(())
    }
}

fn ns_name(netns: &Path) -> String {
    netns.file_name().unwrap().to_string_lossy().into_owned()
}

impl Host for FakeHost {
    async fn routed_subnets(&self) -> Result<Vec<Cidr>> {
        Ok(self.kernel().routes.clone())
    }

    async fn host_info(&self, _: &State, _: &[String], _: bool) -> Result<HostInfo> {
        Ok(HostInfo::default())
    }

    async fn create_bridge(
        &self,
        name: &str,
        _: u32,
        _: Ipv4Addr,
        _: Option<u8>,
        _: Option<(Ipv6Addr, u8)>,
    ) -> Result<[u8; 6]> {
        self.check("create_bridge")?;
        self.kernel().bridges.insert(name.to_owned());
        Ok([2, 0, 0, 0, 0, 1])
    }

    async fn ensure_bridge(
        &self,
        name: &str,
        _: u32,
        _: Ipv4Addr,
        _: Option<u8>,
        _: Option<(Ipv6Addr, u8)>,
    ) -> Result<([u8; 6], bool)> {
        let remade = self.kernel().bridges.insert(name.to_owned());
        Ok(([2, 0, 0, 0, 0, 1], remade))
    }

    async fn forget_neighbour(&self, _: &str, _: IpAddr) -> Result<()> {
        Ok(())
    }

    async fn delete_link(&self, name: &str) -> Result<()> {
        let mut kernel = self.kernel();
        kernel.bridges.remove(name);
        kernel.veths.remove(name);
        Ok(())
    }

    async fn link_index(&self, name: &str) -> Result<Option<u32>> {
        let kernel = self.kernel();
        Ok((kernel.bridges.contains(name) || kernel.veths.contains_key(name)).then_some(7))
    }

    fn netns_path(&self, name: &str) -> PathBuf {
        Path::new("/fake/netns").join(name)
    }

    fn netns_exists(&self, name: &str) -> bool {
        self.kernel().namespaces.contains_key(name)
    }

    async fn create_netns(&self, name: &str) -> Result<()> {
        self.check("create_netns")?;
        self.kernel()
            .namespaces
            .insert(name.to_owned(), BTreeSet::new());
        Ok(())
    }

    fn name_current_netns(&self, name: &str) -> Result<()> {
        self.kernel()
            .namespaces
            .insert(name.to_owned(), BTreeSet::new());
        Ok(())
    }

    fn delete_netns(&self, name: &str) -> Result<()> {
        self.kernel().namespaces.remove(name);
        Ok(())
    }

    async fn create_veth(&self, plan: &VethPlan<'_>) -> Result<u32> {
        self.check("create_veth")?;
        let mut kernel = self.kernel();
        let ns = ns_name(plan.netns);
        let Some(inside) = kernel.namespaces.get_mut(&ns) else {
            bail!("no namespace {ns}");
        };
        inside.insert(plan.ifname.to_owned());
        kernel
            .addresses
            .insert((ns, plan.ifname.to_owned()), plan.address);
        kernel
            .veths
            .insert(plan.host_veth.to_owned(), plan.bridge.to_owned());
        Ok(9)
    }

    async fn create_runtime_veth(
        &self,
        bridge: &str,
        host_veth: &str,
        _: u32,
        _: [u8; 6],
    ) -> Result<u32> {
        self.check("create_runtime_veth")?;
        self.kernel()
            .veths
            .insert(host_veth.to_owned(), bridge.to_owned());
        Ok(9)
    }

    async fn finish_veth(&self, _: &Path, _: &str, _: DefaultRoutes) -> Result<()> {
        self.check("finish_veth")
    }

    async fn reattach_veth(&self, host_veth: &str, bridge: &str) -> Result<Option<u32>> {
        let mut kernel = self.kernel();
        Ok(kernel
            .veths
            .get_mut(host_veth)
            .map(|b| *b = bridge.to_owned())
            .map(|()| 9))
    }

    /// The fake namespaces by their fake paths; any other path (a Docker
    /// sandbox key in a test) as the real host sees it.
    fn is_live_netns(&self, path: &Path) -> bool {
        if path.starts_with(self.netns_path("")) {
            return self.kernel().namespaces.contains_key(&ns_name(path));
        }
        nix::sys::statfs::statfs(path)
            .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
    }

    async fn container_addresses(
        &self,
        netns: &Path,
        ifname: &str,
    ) -> Result<Option<Vec<Ipv4Addr>>> {
        let kernel = self.kernel();
        let ns = ns_name(netns);
        Ok(kernel
            .namespaces
            .get(&ns)
            .filter(|inside| inside.contains(ifname))
            .map(|_| {
                kernel
                    .addresses
                    .get(&(ns.clone(), ifname.to_owned()))
                    .into_iter()
                    .copied()
                    .collect()
            }))
    }

    async fn delete_container_link(&self, netns: &Path, ifname: &str) -> Result<()> {
        if let Some(inside) = self.kernel().namespaces.get_mut(&ns_name(netns)) {
            inside.remove(ifname);
        }
        Ok(())
    }

    async fn set_default_route(&self, _: &Path, _: DefaultRoutes) -> Result<()> {
        Ok(())
    }
}

struct Fixture {
    dir: PathBuf,
    host: FakeHost,
    driver: NoopDriver,
}

impl Fixture {
    fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("netd-engine-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Self {
            dir,
            host: FakeHost::default(),
            driver: NoopDriver::default(),
        }
    }

    /// An engine over the saved state, started as the daemon starts it.
    async fn engine(&self) -> Engine<FakeHost> {
        let state = State::load(&self.dir).unwrap();
        let mut engine = Engine::new(
            state,
            self.dir.clone(),
            self.host.clone(),
            Box::new(self.driver.clone()),
            Metrics::shared(),
            Vec::new(),
            HostInfo::default(),
        );
        engine.start().await.unwrap();
        engine
    }

    fn saved(&self) -> State {
        State::load(&self.dir).unwrap()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn container(name: &str, network: &str, publish: &[&str]) -> ContainerSpec {
    ContainerSpec {
        name: name.into(),
        network: network.into(),
        ip: None,
        ip6: None,
        publish: publish
            .iter()
            .map(|p| PortSpec::parse(p).unwrap())
            .collect(),
        aliases: Vec::new(),
        gw_priority: 0,
    }
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

mod ipv6;
mod lifecycle;
mod runtimes;
