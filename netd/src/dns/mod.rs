//! Name resolution for netd's own containers on user-defined networks, as
//! Docker's embedded DNS gives it: `nameserver 127.0.0.11` in the
//! container's resolv.conf (`/etc/netns/NAME/resolv.conf`, which `ip netns
//! exec` mounts), answered by this daemon.
//!
//! Each served container gets a UDP socket and a TCP listener bound to
//! 127.0.0.11:53 inside its namespace, made from a thread that enters the
//! namespace for the bind. The socket says who asks, so no address lookup
//! or per-container firewall rule is needed, and both datapaths serve it
//! the same way (the cgroup sock_addr hooks could steer 127.0.0.11 on the
//! eBPF datapath only; docs/dns.md says why this was chosen).
//!
//! Names, aliases and addresses come from the state, rebuilt after every
//! change (`sync`); other names go to the host's resolvers from the
//! daemon's namespace.

mod records;
mod server;
mod upstream;

use std::{
    collections::{BTreeSet, HashMap},
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock},
};

use tokio::{sync::Semaphore, task::JoinSet};

pub use records::{Answer, Records, has_resolver, is_host_name};
pub use upstream::Upstreams;

use crate::state::State;

/// Where containers find the resolver, as in Docker.
pub const RESOLVER_ADDR: std::net::Ipv4Addr = std::net::Ipv4Addr::new(127, 0, 0, 11);
/// Forwarded queries in flight at once, over every container (Docker's
/// limit).
const MAX_FORWARDS: usize = 1024;

/// The resolver of every container netd serves.
pub struct Dns {
    records: RwLock<Arc<Records>>,
    upstreams: Upstreams,
    /// Tasks serving each container, by name: dropping them closes the
    /// sockets (which hold the namespace).
    served: Mutex<HashMap<String, JoinSet<()>>>,
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
    pub fn new(upstreams: Upstreams, state_dir: &Path) -> Arc<Self> {
        Self::with_etc_netns(upstreams, state_dir, PathBuf::from("/etc/netns"))
    }

    fn with_etc_netns(upstreams: Upstreams, state_dir: &Path, etc_netns: PathBuf) -> Arc<Self> {
        Arc::new(Self {
            records: RwLock::new(Arc::new(Records::default())),
            upstreams,
            served: Mutex::new(HashMap::new()),
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
                Ok(tasks) => {
                    served.insert(name, tasks);
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

    fn serve(self: &Arc<Self>, name: &str) -> anyhow::Result<JoinSet<()>> {
        // A runtime's container: its namespace, and the runtime writes its
        // resolv.conf (from the CNI result's `dns`).
        let runtime_netns = self.records().netns_of(name);
        let netns = match &runtime_netns {
            Some(path) => PathBuf::from(path),
            None => crate::netns::netns_path(name),
        };
        let (udp, tcp) = server::bind_in(&netns)?;
        if runtime_netns.is_none() {
            self.write_resolv_conf(name)?;
        }
        let mut tasks = JoinSet::new();
        // Two readers of one socket: a burst of queries is answered on both
        // cores (measured: 1.85× Docker's queries/s with one, 2.3× with two).
        let udp = Arc::new(udp);
        tasks.spawn(server::serve_udp(
            self.clone(),
            name.to_owned(),
            udp.clone(),
        ));
        tasks.spawn(server::serve_udp(self.clone(), name.to_owned(), udp));
        tasks.spawn(server::serve_tcp(self.clone(), name.to_owned(), tcp));
        Ok(tasks)
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
        let dns = Dns::with_etc_netns(Upstreams::default(), Path::new("/state/a"), etc.clone());
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
