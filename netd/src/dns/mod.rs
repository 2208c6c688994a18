//! Name resolution for netd's own containers on user-defined networks, as
//! Docker's embedded DNS gives it: `nameserver 127.0.0.11` in the
//! container's resolv.conf (`/etc/netns/NAME/resolv.conf`, which `ip netns
//! exec` mounts), answered by this daemon.
//!
//! Each served container gets a UDP socket and a TCP listener bound to
//! 127.0.0.11:53 inside its namespace, made from a thread that enters the
//! namespace for the bind. The socket says who asks, so no address lookup
//! or per-container firewall rule is needed, and every datapath serves it
//! the same way. `--dns-via cgroup-hooks` (eBPF datapath only) instead
//! steers each container's 127.0.0.11:53 with the socket hooks to one
//! socket on its network's gateway, where the source address says who asks
//! (docs/dns.md compares the two, measured).
//!
//! Names, aliases and addresses come from the state, rebuilt after every
//! change (`sync`); other names go to the host's resolvers from the
//! daemon's namespace.

#[cfg(test)]
mod ipv6_tests;
mod records;
mod server;
mod upstream;

use std::{
    collections::{BTreeSet, HashMap},
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock},
};

use tokio::{sync::Semaphore, task::JoinSet};

pub use records::{Answer, Records, has_resolver};
pub use upstream::Upstreams;

use crate::state::State;

/// Where containers find the resolver, as in Docker.
pub const RESOLVER_ADDR: std::net::Ipv4Addr = std::net::Ipv4Addr::new(127, 0, 0, 11);
/// Forwarded queries in flight at once, over every container (Docker's
/// limit).
const MAX_FORWARDS: usize = 1024;

/// How containers reach the resolver at 127.0.0.11:53 (`netd daemon
/// --dns-via`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum DnsVia {
    /// A socket pair bound inside each container's namespace.
    #[default]
    NamespaceSockets,
    /// The eBPF datapath's socket hooks steer each container's queries to
    /// one socket pair per network, on its gateway.
    CgroupHooks,
}

/// What steers a container namespace's 127.0.0.11:53 to the resolver on a
/// gateway (the eBPF datapath's `RESOLVER_STEERING` map).
/// A namespace served for several records (a CNI container on two
/// networks) is steered until each has unsteered.
pub trait Steering: Send + Sync {
    fn steer(&self, netns_cookie: u64, gateway: Ipv4Addr) -> anyhow::Result<()>;
    fn unsteer(&self, netns_cookie: u64, gateway: Ipv4Addr) -> anyhow::Result<()>;
}

/// How one container is served.
enum Served {
    /// Tasks serving its own sockets: dropping them closes the sockets
    /// (which hold the namespace).
    Sockets(#[allow(dead_code, reason = "held for its Drop")] JoinSet<()>),
    /// Its namespace steered to the resolver on `gateway`, until dropped.
    Steered {
        netns_cookie: u64,
        gateway: Ipv4Addr,
        steering: Arc<dyn Steering>,
    },
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Served::Steered {
            netns_cookie,
            gateway,
            steering,
        } = self
            && let Err(err) = steering.unsteer(*netns_cookie, *gateway)
        {
            tracing::warn!("resolver: {err:#}");
        }
    }
}

/// The resolver of every container netd serves.
pub struct Dns {
    records: RwLock<Arc<Records>>,
    upstreams: Upstreams,
    /// Each served container, by name.
    served: Mutex<HashMap<String, Served>>,
    /// `--dns-via cgroup-hooks`: the steering map.
    steering: Option<Arc<dyn Steering>>,
    /// `--dns-via cgroup-hooks`: the tasks serving each network's socket
    /// pair, by network, with the gateway they are bound to.
    gateways: Mutex<HashMap<String, (Ipv4Addr, JoinSet<()>)>>,
    /// Set by `stop`: nothing is served any more (the daemon is exiting).
    stopped: std::sync::atomic::AtomicBool,
    forwards: Arc<Semaphore>,
    /// `/etc/netns`, where `ip netns exec` finds per-namespace files.
    etc_netns: PathBuf,
    /// Written into each resolv.conf, so a restart knows its own files from
    /// other daemons'.
    owner: String,
}

impl Dns {
    /// A resolver serving through sockets in each namespace, or (with
    /// `steering`) through the socket hooks.
    pub fn new(
        upstreams: Upstreams,
        state_dir: &Path,
        steering: Option<Arc<dyn Steering>>,
    ) -> Arc<Self> {
        Self::with_etc_netns(upstreams, state_dir, PathBuf::from("/etc/netns"), steering)
    }

    fn with_etc_netns(
        upstreams: Upstreams,
        state_dir: &Path,
        etc_netns: PathBuf,
        steering: Option<Arc<dyn Steering>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            records: RwLock::new(Arc::new(Records::default())),
            upstreams,
            served: Mutex::new(HashMap::new()),
            steering,
            gateways: Mutex::new(HashMap::new()),
            stopped: std::sync::atomic::AtomicBool::new(false),
            forwards: Arc::new(Semaphore::new(MAX_FORWARDS)),
            etc_netns,
            owner: format!("# netd resolver (state {})", state_dir.display()),
        })
    }

    fn records(&self) -> Arc<Records> {
        self.records.read().expect("records lock").clone()
    }

    /// Follows the state: new records, resolvers started for containers
    /// that need one and stopped for those gone. Returns what failed, one
    /// line each (the container works, without names).
    pub fn sync(self: &Arc<Self>, state: &State) -> Vec<String> {
        self.update(state);
        self.serve_missing()
    }

    /// The records of `state`, and the resolvers of containers gone
    /// stopped; quick (no socket is made).
    pub fn update(&self, state: &State) {
        let records = Arc::new(Records::from_state(state));
        let before = std::mem::replace(
            &mut *self.records.write().expect("records lock"),
            records.clone(),
        );
        let mut served = self.served.lock().expect("served lock");
        // Served or only about to be (at start, the resolvers are made in
        // the background): their files go either way.
        let gone: BTreeSet<String> = served
            .keys()
            .map(String::as_str)
            .chain(before.askers())
            .filter(|name| !records.serves(name))
            .map(str::to_owned)
            .collect();
        for name in gone {
            served.remove(&name); // aborts its tasks, closing its sockets
            self.remove_resolv_conf(&name);
        }
        // Steered to a gateway it no longer has (a network left, or
        // another first): served again by the next `serve_missing`.
        served.retain(|name, how| match how {
            Served::Steered { gateway, .. } => {
                records.gateway_of(name).map(|(_, ip)| ip) == Some(gateway)
            }
            Served::Sockets(_) => true,
        });
        let wanted: HashMap<&str, Ipv4Addr> = records
            .askers()
            .filter_map(|name| records.gateway_of(name))
            .map(|(network, ip)| (network.as_str(), *ip))
            .collect();
        self.gateways
            .lock()
            .expect("gateways lock")
            .retain(|network, (ip, _)| wanted.get(network.as_str()) == Some(ip));
    }

    /// Starts the resolvers the records ask for and nobody serves yet (a
    /// socket pair each, ~0.2 ms: at start, for every container, this
    /// runs after the daemon answers). Each is checked against the records
    /// of the moment, under the lock a removal takes.
    pub fn serve_missing(self: &Arc<Self>) -> Vec<String> {
        let wanted: Vec<String> = self.records().askers().map(str::to_owned).collect();
        let mut problems = Vec::new();
        for name in wanted {
            let mut served = self.served.lock().expect("served lock");
            if self.stopped.load(std::sync::atomic::Ordering::SeqCst) {
                break;
            }
            if served.contains_key(&name) || !self.records().serves(&name) {
                continue;
            }
            match self.serve(&name) {
                Ok(how) => {
                    served.insert(name, how);
                }
                Err(err) => problems.push(format!("container {name}: no resolver: {err:#}")),
            }
        }
        problems
    }

    /// Removes the resolv.conf files this daemon wrote for containers it
    /// no longer has (a crash or kill -9 left them).
    pub fn remove_stale_files(&self, state: &State) {
        let Ok(entries) = std::fs::read_dir(&self.etc_netns) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !state.containers.contains_key(&name) {
                self.remove_resolv_conf(&name); // only if this daemon's
            }
        }
    }

    /// How many containers are served.
    pub fn served(&self) -> usize {
        self.served.lock().expect("served lock").len()
    }

    /// Stops serving container `name` before it goes: its sockets hold its
    /// namespace. A failed rm serves it again at the next `sync`.
    pub fn forget(&self, name: &str) {
        self.served.lock().expect("served lock").remove(name);
        if self.records().serves(name) {
            self.remove_resolv_conf(name);
        }
    }

    /// Stops serving every container (at exit).
    pub fn stop(&self, remove_files: bool) {
        let mut served = self.served.lock().expect("served lock");
        self.stopped
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.gateways.lock().expect("gateways lock").clear();
        let names: BTreeSet<String> = served
            .drain()
            .map(|(name, _)| name)
            .chain(self.records().askers().map(str::to_owned))
            .collect();
        if remove_files {
            for name in names {
                self.remove_resolv_conf(&name);
            }
        }
    }

    fn serve(self: &Arc<Self>, name: &str) -> anyhow::Result<Served> {
        let records = self.records();
        // A runtime's container: its namespace, and the runtime writes its
        // resolv.conf (from the CNI result's `dns`).
        let runtime_netns = records.netns_of(name);
        let netns = match &runtime_netns {
            Some(path) => PathBuf::from(path),
            None => crate::netns::netns_path(name),
        };
        // Steered when it has a gateway to be steered to (not on isolated
        // networks only, whose bridges have no address): sockets otherwise.
        let how = match (&self.steering, records.gateway_of(name)) {
            (Some(steering), Some((network, gateway))) => {
                self.listen_on(network, *gateway)?;
                let netns_cookie = crate::netns::netns_cookie_of(&netns)?;
                steering.steer(netns_cookie, *gateway)?;
                Served::Steered {
                    netns_cookie,
                    gateway: *gateway,
                    steering: steering.clone(),
                }
            }
            _ => Served::Sockets(self.serve_in(name, &netns)?),
        };
        if runtime_netns.is_none() {
            self.write_resolv_conf(name)?;
        }
        Ok(how)
    }

    /// Sockets inside container `name`'s namespace, and their tasks.
    fn serve_in(self: &Arc<Self>, name: &str, netns: &Path) -> anyhow::Result<JoinSet<()>> {
        let (udp, tcp) = server::bind_in(netns)?;
        Ok(self.spawn_serving(server::Askers::Container(name.into()), udp, tcp))
    }

    /// The socket pair on `network`'s gateway, made unless it is there.
    fn listen_on(self: &Arc<Self>, network: &str, gateway: Ipv4Addr) -> anyhow::Result<()> {
        let mut gateways = self.gateways.lock().expect("gateways lock");
        if gateways.get(network).is_some_and(|(ip, _)| *ip == gateway) {
            return Ok(());
        }
        gateways.remove(network); // its sockets closed before the new bind
        let (udp, tcp) = server::bind_on(gateway)?;
        let tasks = self.spawn_serving(server::Askers::OnNetwork(network.into()), udp, tcp);
        gateways.insert(network.to_owned(), (gateway, tasks));
        Ok(())
    }

    fn spawn_serving(
        self: &Arc<Self>,
        askers: server::Askers,
        udp: tokio::net::UdpSocket,
        tcp: tokio::net::TcpListener,
    ) -> JoinSet<()> {
        let mut tasks = JoinSet::new();
        // Two readers of one socket: a burst of queries is answered on both
        // cores (measured: 1.85× Docker's queries/s with one, 2.3× with two).
        let udp = Arc::new(udp);
        tasks.spawn(server::serve_udp(self.clone(), askers.clone(), udp.clone()));
        tasks.spawn(server::serve_udp(self.clone(), askers.clone(), udp));
        tasks.spawn(server::serve_tcp(self.clone(), askers, tcp));
        tasks
    }

    fn write_resolv_conf(&self, name: &str) -> anyhow::Result<()> {
        use anyhow::Context as _;
        let dir = self.etc_netns.join(name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut text = format!("{}\nnameserver {RESOLVER_ADDR}\n", self.owner);
        if !self.upstreams.search.is_empty() {
            text += &format!("search {}\n", self.upstreams.search.join(" "));
        }
        text += "options ndots:0\n";
        let path = dir.join("resolv.conf");
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
    }

    /// Removes container `name`'s resolv.conf if this daemon wrote it.
    fn remove_resolv_conf(&self, name: &str) {
        let dir = self.etc_netns.join(name);
        let ours = std::fs::read_to_string(dir.join("resolv.conf"))
            .is_ok_and(|text| text.lines().next() == Some(self.owner.as_str()));
        if !ours {
            return;
        }
        let _ = std::fs::remove_file(dir.join("resolv.conf"));
        // Only if empty: the user may keep other files there.
        let _ = std::fs::remove_dir(dir);
    }

    /// The upstream resolvers forwarded queries go to.
    pub fn upstreams(&self) -> &[SocketAddr] {
        &self.upstreams.servers
    }
}

/// Whether `name` can be a container's name on the resolver: dot-separated
/// labels of letters, digits, '-' and '_'.
pub fn is_host_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A resolv.conf as a daemon with `state_dir` writes it.
    fn file(etc: &Path, name: &str, owner: &str) -> PathBuf {
        let dir = etc.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("resolv.conf");
        std::fs::write(&path, format!("{owner}\nnameserver 127.0.0.11\n")).unwrap();
        path
    }

    #[test]
    fn files_go_with_their_containers_served_or_not_yet() {
        let etc = std::env::temp_dir().join(format!("netd-dns-files-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&etc);
        let dns = Dns::with_etc_netns(
            Upstreams::default(),
            Path::new("/state/a"),
            etc.clone(),
            None,
        );
        let state = records::tests::state();
        // A previous run's files, nothing served yet (as right after a
        // restart, before the background has made the sockets).
        let web = file(&etc, "web", &dns.owner);
        let db = file(&etc, "db", &dns.owner);
        let worker = file(&etc, "worker", &dns.owner);
        let other_daemons = file(&etc, "elsewhere", "# netd resolver (state /state/b)");
        let users = file(&etc, "mine", "nameserver 192.0.2.1");
        dns.update(&state);
        dns.remove_stale_files(&state);
        assert!(web.exists() && db.exists() && worker.exists());
        assert!(
            other_daemons.exists() && users.exists(),
            "not this daemon's"
        );
        // web removed from the state: its file goes though it was never served.
        let mut without_web = state.clone();
        without_web.containers.remove("web");
        dns.update(&without_web);
        assert!(!web.exists());
        // rm of a container not served yet.
        dns.forget("db");
        assert!(!db.exists());
        // down: every file of this daemon's containers, served or not.
        dns.stop(true);
        assert!(!worker.exists());
        assert!(other_daemons.exists() && users.exists());
        std::fs::remove_dir_all(&etc).unwrap();
    }
}
