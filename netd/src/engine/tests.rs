//! The engine without root: an in-memory host and the no-op driver.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use anyhow::{Result, bail};

use super::Engine;
use crate::{
    api::{CniAttach, CniDetach, CniNetwork, ContainerSpec, NetworkSpec, Reply, Request},
    cidr::Cidr,
    driver::{HostInfo, NoopDriver},
    host::{Host, VethPlan},
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

    async fn create_bridge(&self, name: &str, _: u32, _: Ipv4Addr, _: u8) -> Result<[u8; 6]> {
        self.check("create_bridge")?;
        self.kernel().bridges.insert(name.to_owned());
        Ok([2, 0, 0, 0, 0, 1])
    }

    async fn ensure_bridge(
        &self,
        name: &str,
        _: u32,
        _: Ipv4Addr,
        _: u8,
    ) -> Result<([u8; 6], bool)> {
        let remade = self.kernel().bridges.insert(name.to_owned());
        Ok(([2, 0, 0, 0, 0, 1], remade))
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

    async fn finish_veth(&self, _: &Path, _: &str, _: Option<Ipv4Addr>) -> Result<()> {
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

    async fn set_default_route(&self, _: &Path, _: Ipv4Addr) -> Result<()> {
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
        publish: publish
            .iter()
            .map(|p| PortSpec::parse(p).unwrap())
            .collect(),
    }
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

#[tokio::test]
async fn networks_get_docker_pools_in_order_skipping_routed_ones() {
    let f = Fixture::new("pools");
    f.host
        .kernel()
        .routes
        .push("172.18.0.0/16".parse().unwrap());
    let mut engine = f.engine().await;
    // The default network took 172.17.0.0/16; 172.18/16 is routed elsewhere.
    assert_eq!(
        engine.state().networks["bridge"].subnet.to_string(),
        "172.17.0.0/16"
    );
    let web = engine
        .network_create(NetworkSpec::named("web"))
        .await
        .unwrap();
    assert_eq!(web.subnet.to_string(), "172.19.0.0/16");
    assert_eq!(web.gateway, ip("172.19.0.1"));
    let err = engine
        .network_create(NetworkSpec {
            subnet: Some("172.19.128.0/17".parse().unwrap()),
            ..NetworkSpec::named("db")
        })
        .await
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("overlaps"),
        "unexpected error: {err:#}"
    );
    assert!(!engine.state().networks.contains_key("db"));
    assert!(f.driver.record.lock().unwrap().networks.contains("web"));
}

#[tokio::test]
async fn addresses_are_unique_across_restarts() {
    let f = Fixture::new("addresses");
    let mut first = Vec::new();
    {
        let mut engine = f.engine().await;
        for name in ["a", "b"] {
            let c = engine
                .container_create(&container(name, "bridge", &[]))
                .await
                .unwrap();
            first.push(c.attachments[0].ip);
        }
    }
    assert_eq!(first, [ip("172.17.0.2"), ip("172.17.0.3")]);
    // A new daemon on the saved state: the next container gets a new address.
    let mut engine = f.engine().await;
    let c = engine
        .container_create(&container("c", "bridge", &[]))
        .await
        .unwrap();
    assert_eq!(c.attachments[0].ip, ip("172.17.0.4"));
    // An explicit address already taken is refused.
    let err = engine
        .container_create(&ContainerSpec {
            ip: Some("172.17.0.3".parse().unwrap()),
            ..container("d", "bridge", &[])
        })
        .await
        .unwrap_err();
    assert_eq!(
        format!("{err:#}"),
        "address 172.17.0.3 is already in use on network \"bridge\""
    );
}

#[tokio::test]
async fn a_taken_host_port_is_refused_and_changes_nothing() {
    let f = Fixture::new("ports");
    let mut engine = f.engine().await;
    engine
        .container_create(&container("web", "bridge", &["8080:80", "53:53/udp"]))
        .await
        .unwrap();
    let before = f.saved();
    for publish in ["8080:80", "127.0.0.1:8080:80", "8079-8081:80-82"] {
        let err = engine
            .container_create(&container("other", "bridge", &[publish]))
            .await
            .unwrap_err();
        assert!(
            format!("{err:#}").starts_with("host port ")
                && format!("{err:#}").contains(":8080/tcp is already published (by 172.17.0.2:80)"),
            "{publish}: {err:#}"
        );
        assert_eq!(f.saved(), before, "{publish} changed the state");
        assert!(!f.host.kernel().namespaces.contains_key("other"));
    }
    // Another protocol, or another host address than a specific one, is free.
    engine
        .container_create(&container("dns", "bridge", &["8080:80/udp"]))
        .await
        .unwrap();
    // Ephemeral host ports never collide.
    let a = engine
        .container_create(&container("e1", "bridge", &["80"]))
        .await
        .unwrap();
    let b = engine
        .container_create(&container("e2", "bridge", &["80"]))
        .await
        .unwrap();
    assert_eq!(a.ports[0].host_port, 49153);
    assert_eq!(b.ports[0].host_port, 49154);
    assert_eq!(f.driver.record.lock().unwrap().ports.len(), 5);
}

/// A failure at any step of a create leaves nothing behind: no state
/// entry, no namespace, no veth, no endpoint, no port.
#[tokio::test]
async fn a_failed_create_is_rolled_back_at_every_step() {
    for (place, step) in [
        ("host", "create_netns"),
        ("host", "create_veth"),
        ("driver", "add_endpoint"),
        ("host", "finish_veth"),
        ("driver", "publish"),
    ] {
        let f = Fixture::new(&format!("rollback-{step}"));
        let mut engine = f.engine().await;
        let before = f.saved();
        match place {
            "host" => f.host.kernel().fail_next = Some(step),
            _ => f.driver.record.lock().unwrap().fail_next = Some(step),
        }
        let err = engine
            .container_create(&container("web", "bridge", &["8080:80"]))
            .await
            .unwrap_err();
        assert_eq!(format!("{err:#}"), format!("{step} failed (injected)"));
        assert_eq!(f.saved(), before, "{step}: state changed");
        {
            let kernel = f.host.kernel();
            assert!(kernel.namespaces.is_empty(), "{step}: {kernel:?}");
            assert!(kernel.veths.is_empty(), "{step}: {kernel:?}");
            let record = f.driver.record.lock().unwrap();
            assert!(record.endpoints.is_empty(), "{step}: {record:?}");
            assert!(record.ports.is_empty(), "{step}: {record:?}");
        }
        // The name, address and port are free again.
        let c = engine
            .container_create(&container("web", "bridge", &["8080:80"]))
            .await
            .unwrap();
        assert_eq!(c.attachments[0].ip, ip("172.17.0.2"));
    }
}

#[tokio::test]
async fn a_failed_network_create_is_rolled_back() {
    let f = Fixture::new("net-rollback");
    let mut engine = f.engine().await;
    for (place, step) in [("host", "create_bridge"), ("driver", "add_network")] {
        match place {
            "host" => f.host.kernel().fail_next = Some(step),
            _ => f.driver.record.lock().unwrap().fail_next = Some(step),
        }
        let err = engine
            .network_create(NetworkSpec::named("web"))
            .await
            .unwrap_err();
        assert_eq!(format!("{err:#}"), format!("{step} failed (injected)"));
        assert!(!f.saved().networks.contains_key("web"));
        assert_eq!(f.host.kernel().bridges.len(), 1, "only the default bridge");
        assert!(!f.driver.record.lock().unwrap().networks.contains("web"));
    }
}

#[tokio::test]
async fn state_round_trips_and_an_interrupted_create_is_rolled_back_at_start() {
    let f = Fixture::new("restart");
    {
        let mut engine = f.engine().await;
        engine
            .network_create(NetworkSpec {
                internal: true,
                icc: false,
                mtu: Some(1400),
                ..NetworkSpec::named("db")
            })
            .await
            .unwrap();
        engine
            .container_create(&container("web", "bridge", &["8080:80"]))
            .await
            .unwrap();
    }
    let saved = f.saved();
    // What a crash after the intent record leaves: a container marked
    // creating, its veth planned and made, its namespace made.
    let mut crashed = saved.clone();
    let mut half = crashed.containers["web"].clone();
    half.name = "half".into();
    half.pending = Some(Pending::Creating);
    half.pending_links = vec!["vethdead".into()];
    half.attachments.clear();
    half.ports.clear();
    crashed.containers.insert("half".into(), half);
    crashed.save(&f.dir).unwrap();
    f.host
        .kernel()
        .namespaces
        .insert("half".into(), BTreeSet::new());
    f.host
        .kernel()
        .veths
        .insert("vethdead".into(), "netd0".into());

    let mut engine = f.engine().await;
    assert_eq!(
        f.saved(),
        saved,
        "the state after the roll-back is the one before"
    );
    assert!(!f.host.kernel().namespaces.contains_key("half"));
    assert!(!f.host.kernel().veths.contains_key("vethdead"));
    let Reply::Status(status) = engine.handle(Request::Status).await.unwrap() else {
        panic!("status is not a status reply");
    };
    assert_eq!(
        status.repairs,
        ["container half: an interrupted create was rolled back"]
    );
    assert_eq!((status.networks, status.containers), (2, 1));
    assert_eq!(status.published_ports, 1);
}

#[tokio::test]
async fn a_vanished_namespace_frees_its_address_and_ports_on_repair() {
    let f = Fixture::new("vanished");
    let mut engine = f.engine().await;
    engine
        .container_create(&container("web", "bridge", &["8080:80"]))
        .await
        .unwrap();
    f.host.kernel().namespaces.remove("web");
    let repairs = engine.reconcile().await.unwrap();
    assert_eq!(
        repairs,
        [
            "container web: its namespace is gone; removed (addresses [172.17.0.2] and ports [0.0.0.0:8080/tcp] freed)"
        ]
    );
    assert!(f.driver.record.lock().unwrap().ports.is_empty());
    let c = engine
        .container_create(&container("web2", "bridge", &["8080:80"]))
        .await
        .unwrap();
    assert_eq!(c.attachments[0].ip, ip("172.17.0.2"));
}

#[tokio::test]
async fn bad_requests_change_nothing() {
    let f = Fixture::new("bad");
    let mut engine = f.engine().await;
    let before = f.saved();
    let cases: Vec<(Request, &str)> = vec![
        (
            Request::NetworkCreate(NetworkSpec::named("bad name")),
            "invalid network name \"bad name\"",
        ),
        (
            Request::NetworkCreate(NetworkSpec::named("host")),
            "\"host\" is a reserved network mode",
        ),
        (
            Request::NetworkCreate(NetworkSpec {
                subnet: Some("10.1.2.3/16".parse().unwrap()),
                ..NetworkSpec::named("x")
            }),
            "10.1.2.3/16 is not a network address; did you mean 10.1.0.0/16?",
        ),
        (
            Request::NetworkCreate(NetworkSpec {
                mtu: Some(100),
                ..NetworkSpec::named("x")
            }),
            "--mtu 100 is outside 576..65535",
        ),
        (
            Request::ContainerCreate(container("c", "nope", &[])),
            "no network named \"nope\"",
        ),
        (
            // As a client could send it, past the CLI's parsing.
            Request::ContainerCreate(ContainerSpec {
                publish: vec![PortSpec {
                    host_ports: Some((0, 0)),
                    ..PortSpec::parse("80").unwrap()
                }],
                ..container("c", "bridge", &[])
            }),
            "port range 0-0 is not in 1-65535 or ends before it starts",
        ),
        (
            Request::ContainerCreate(container("c", "host", &["80:80"])),
            "--network host takes neither -p nor --ip",
        ),
        (
            Request::NetworkRm {
                name: "bridge".into(),
            },
            "",
        ),
    ];
    engine
        .container_create(&container("user", "bridge", &[]))
        .await
        .unwrap();
    let before_with_user = f.saved();
    for (request, expected) in cases {
        let err = engine.handle(request.clone()).await.unwrap_err();
        let err = format!("{err:#}");
        let expected = if expected.is_empty() {
            "network \"bridge\" has containers attached (user); remove them first"
        } else {
            expected
        };
        assert!(err.contains(expected), "{request:?}: {err}");
        assert_eq!(f.saved(), before_with_user, "{request:?} changed the state");
    }
    assert_ne!(before, before_with_user);
}

/// A runtime's endpoint (Docker): netd makes the veth and registers it;
/// the runtime's sandbox is never netd's to check or remove, so a restart
/// keeps the endpoint and its ports.
#[tokio::test]
async fn runtime_endpoints_publish_and_survive_a_restart() {
    use crate::{engine::EndpointSpec, portspec::PortSpec, state::Sandbox};
    let f = Fixture::new("endpoint");
    {
        let mut engine = f.engine().await;
        engine
            .network_create(NetworkSpec {
                subnet: Some("10.80.0.0/24".parse().unwrap()),
                binding_ip: Some("198.51.100.1".parse().unwrap()),
                docker_id: Some("d0c".into()),
                ..NetworkSpec::named("docker-d0c")
            })
            .await
            .unwrap();
        let interface = engine
            .endpoint_create(EndpointSpec {
                name: "docker-ep-e1".into(),
                network: "docker-d0c".into(),
                ip: ip("10.80.0.2"),
                mac: None,
                sandbox: Sandbox::Docker {
                    endpoint_id: "e1".into(),
                    sandbox_key: None,
                },
            })
            .await
            .unwrap();
        assert_eq!(interface.mac, [0x02, 0x42, 10, 80, 0, 2]);
        assert_eq!(interface.gateway, Some(ip("10.80.0.1")));
        assert!(interface.peer.starts_with("tmp"), "{interface:?}");
        // The address Docker's IPAM gave is taken now.
        let err = engine
            .endpoint_create(EndpointSpec {
                name: "docker-ep-e2".into(),
                network: "docker-d0c".into(),
                ip: ip("10.80.0.2"),
                mac: None,
                sandbox: Sandbox::Docker {
                    endpoint_id: "e2".into(),
                    sandbox_key: None,
                },
            })
            .await
            .unwrap_err();
        assert!(format!("{err:#}").contains("already in use"), "{err:#}");
        // `-p 8000-8010:80`: one port of the range, on the binding address.
        let spec = PortSpec::parse("8000-8010:80").unwrap();
        let ports = engine.endpoint_publish("docker-ep-e1", &[spec]).unwrap();
        assert_eq!(ports.len(), 1);
        assert_eq!(
            (ports[0].host_ip, ports[0].host_port),
            (ip("198.51.100.1"), 8000)
        );
        // A live namespace (the test's own).
        engine
            .endpoint_join("docker-ep-e1", "/proc/self/ns/net")
            .unwrap();
    }
    // A new daemon: the endpoint (no netns of netd's) is kept, ports included.
    let mut engine = f.engine().await;
    assert_eq!(engine.state().containers["docker-ep-e1"].ports.len(), 1);
    assert_eq!(f.driver.record.lock().unwrap().ports.len(), 1);
    engine.endpoint_unpublish("docker-ep-e1").unwrap();
    assert!(f.driver.record.lock().unwrap().ports.is_empty());
    engine.container_rm("docker-ep-e1").await.unwrap();
    assert!(f.host.kernel().veths.is_empty());
    assert!(f.driver.record.lock().unwrap().endpoints.is_empty());
}

/// An endpoint whose sandbox is gone (dockerd restarted and never deleted
/// it) releases its address and ports when the next endpoint comes.
#[tokio::test]
async fn endpoints_of_vanished_sandboxes_are_pruned() {
    use crate::{engine::EndpointSpec, state::Sandbox};
    let f = Fixture::new("stale");
    let mut engine = f.engine().await;
    let endpoint = |name: &str| EndpointSpec {
        name: name.into(),
        network: "bridge".into(),
        ip: ip("172.17.0.2"),
        mac: None,
        sandbox: Sandbox::Docker {
            endpoint_id: name.into(),
            sandbox_key: None,
        },
    };
    engine.endpoint_create(endpoint("old")).await.unwrap();
    // Not a namespace (any more): a plain file.
    let gone = f.dir.join("gone-sandbox");
    std::fs::create_dir_all(&f.dir).unwrap();
    std::fs::write(&gone, "").unwrap();
    engine.endpoint_join("old", gone.to_str().unwrap()).unwrap();
    engine.endpoint_create(endpoint("new")).await.unwrap();
    assert!(!engine.state().containers.contains_key("old"));
    assert_eq!(f.host.kernel().veths.len(), 1);
}

fn cni_attach(id: &str, netns: &str, network: CniNetwork, publish: &[&str]) -> CniAttach {
    CniAttach {
        network,
        container_id: id.into(),
        ifname: "eth0".into(),
        netns: format!("/fake/netns/{netns}"),
        ip: None,
        ports: publish
            .iter()
            .map(|p| PortSpec::parse(p).unwrap())
            .collect(),
        expect_ip: None,
    }
}

/// A conflist that gives the node's pod CIDR: the network is made on
/// first use, then must keep that subnet.
fn pod_network(subnet: &str) -> CniNetwork {
    CniNetwork {
        network: "pods".into(),
        create: Some(NetworkSpec {
            subnet: Some(subnet.parse().unwrap()),
            routed_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
            ..NetworkSpec::named("pods")
        }),
    }
}

#[tokio::test]
async fn cni_attachments_add_check_del_gc_and_roll_back() {
    let f = Fixture::new("cni");
    for ns in ["p1", "p2", "p3"] {
        f.host.create_netns(ns).await.unwrap();
    }
    let mut engine = f.engine().await;
    let a = engine
        .cni_add(&cni_attach(
            "ctr-a",
            "p1",
            pod_network("10.244.1.0/24"),
            &["8080:80"],
        ))
        .await
        .unwrap();
    assert_eq!(
        (a.ip, a.prefix_len, a.gateway),
        (ip("10.244.1.2"), 24, Some(ip("10.244.1.1")))
    );
    assert_eq!(
        engine.state().networks["pods"].routed_cidrs[0].to_string(),
        "10.244.0.0/16"
    );
    // The same ADD again answers the same; CHECK finds it as made.
    let again = engine
        .cni_add(&cni_attach(
            "ctr-a",
            "p1",
            pod_network("10.244.1.0/24"),
            &["8080:80"],
        ))
        .await
        .unwrap();
    assert_eq!(again, a);
    engine
        .cni_check(&cni_attach(
            "ctr-a",
            "p1",
            pod_network("10.244.1.0/24"),
            &[],
        ))
        .await
        .unwrap();

    // Another subnet for the same network: refused with CNI code 7.
    let err = engine
        .cni_add(&cni_attach(
            "ctr-b",
            "p2",
            pod_network("10.244.9.0/24"),
            &[],
        ))
        .await
        .unwrap_err();
    assert_eq!(
        crate::error::refusal_of(&err).and_then(|r| r.cni_code),
        Some(7),
        "{err:#}"
    );

    // A failure half-way leaves nothing: no record, no veth, port free.
    let saved = f.saved();
    f.host.kernel().fail_next = Some("create_veth");
    engine
        .cni_add(&cni_attach(
            "ctr-b",
            "p2",
            pod_network("10.244.1.0/24"),
            &["9090:80"],
        ))
        .await
        .unwrap_err();
    assert_eq!(f.saved(), saved);
    assert_eq!(f.host.kernel().veths.len(), 1);

    engine
        .cni_add(&cni_attach(
            "ctr-b",
            "p2",
            pod_network("10.244.1.0/24"),
            &[],
        ))
        .await
        .unwrap();
    engine
        .cni_add(&cni_attach(
            "ctr-c",
            "p3",
            pod_network("10.244.1.0/24"),
            &[],
        ))
        .await
        .unwrap();
    // GC keeps what the runtime lists; DEL is done when nothing is there.
    let keep = |id: &str| CniDetach {
        network: "pods".into(),
        container_id: id.into(),
        ifname: "eth0".into(),
    };
    let removed = engine.cni_gc("pods", &[keep("ctr-a")]).await.unwrap();
    assert_eq!(removed.len(), 2, "{removed:?}");
    engine.cni_del(&keep("ctr-a")).await.unwrap();
    engine.cni_del(&keep("ctr-a")).await.unwrap();
    assert!(engine.state().containers.is_empty());
    assert!(f.host.kernel().veths.is_empty());
    assert!(engine.state().published().next().is_none());
    let err = engine
        .cni_check(&cni_attach(
            "ctr-a",
            "p1",
            pod_network("10.244.1.0/24"),
            &[],
        ))
        .await
        .unwrap_err();
    assert_eq!(
        crate::error::refusal_of(&err).and_then(|r| r.cni_code),
        Some(3),
        "{err:#}"
    );
}

fn deny_port(source: &str, port: u16) -> crate::api::RuleAdd {
    crate::api::RuleAdd {
        rule: crate::rule::UserRule {
            action: crate::rule::RuleAction::Deny,
            source: Some(source.parse().unwrap()),
            proto: Some(crate::portspec::Proto::Tcp),
            ports: Some((port, port)),
            network: None,
            in_interface: None,
        },
        position: None,
    }
}

#[tokio::test]
async fn user_rules_keep_their_order_persist_and_refuse_bad_ones() {
    let f = Fixture::new("rules");
    let mut engine = f.engine().await;
    let first = engine.rule_add(deny_port("10.0.0.0/8", 5432)).unwrap();
    let mut allow = deny_port("10.1.0.0/16", 5432);
    allow.rule.action = crate::rule::RuleAction::Allow;
    allow.position = Some(1);
    let second = engine.rule_add(allow).unwrap();
    assert_eq!((second.position, first.position), (1, 1));
    let listed: Vec<(u32, u32)> = engine
        .rule_ls()
        .iter()
        .map(|r| (r.position, r.id))
        .collect();
    assert_eq!(listed, [(1, second.id), (2, first.id)]);
    let enforced = f.driver.record.lock().unwrap().rules.clone();
    assert_eq!(enforced.len(), 2);
    assert_eq!(enforced[0].rule.action, crate::rule::RuleAction::Allow);

    // Refused, each with its own message, nothing changed.
    let saved = f.saved();
    let refusals = [
        (
            deny_port("10.0.0.0/8", 5432),
            "already matches exactly this traffic",
        ),
        (deny_port("10.0.0.1/8", 80), "did you mean 10.0.0.0/8"),
        (deny_port("10.0.0.0/8", 0), "port 0"),
        (
            crate::api::RuleAdd {
                position: Some(9),
                ..deny_port("10.9.0.0/16", 80)
            },
            "position 9 is outside the list (1 to 3)",
        ),
    ];
    for (add, expected) in refusals {
        let err = engine.rule_add(add).unwrap_err().to_string();
        assert!(err.contains(expected), "{err}");
    }
    let mut unknown = deny_port("10.9.0.0/16", 80);
    unknown.rule.network = Some("nope".into());
    let err = format!("{:#}", engine.rule_add(unknown).unwrap_err());
    assert!(err.contains("no network named \"nope\""), "{err}");
    assert_eq!(
        engine.rule_rm(999).unwrap_err().to_string(),
        "no rule with ID 999 (see `netd rule ls`)"
    );
    // The driver refusing leaves state and driver as they were.
    f.driver.record.lock().unwrap().fail_next = Some("set_rules");
    assert!(engine.rule_add(deny_port("10.9.0.0/16", 80)).is_err());
    assert_eq!(f.saved(), saved);
    assert_eq!(f.driver.record.lock().unwrap().rules, enforced);

    // A rule naming a network applies while the network exists.
    engine
        .network_create(NetworkSpec::named("db"))
        .await
        .unwrap();
    let mut scoped = deny_port("0.0.0.0/0", 5432);
    scoped.rule.network = Some("db".into());
    let scoped = engine.rule_add(scoped).unwrap();
    assert_eq!(f.driver.record.lock().unwrap().rules.len(), 3);
    engine.network_rm("db").await.unwrap();
    assert_eq!(f.driver.record.lock().unwrap().rules.len(), 2);
    assert!(!engine.rule_ls()[2].active);
    engine.rule_rm(scoped.id).unwrap();
    drop(engine);

    // A restart puts the same rules in force, in the same order.
    f.driver.record.lock().unwrap().rules.clear();
    let engine = f.engine().await;
    assert_eq!(f.driver.record.lock().unwrap().rules, enforced);
    assert_eq!(engine.status().unwrap().user_rules.len(), 2);
}
