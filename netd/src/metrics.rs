//! Prometheus metrics (`netd daemon --metrics ADDR`, `GET /metrics`): the
//! datapath's counters and map fill levels read at scrape time, and the
//! daemon's own request latencies, GC runs and repairs.

use std::sync::Arc;

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

use crate::driver::DatapathMetrics;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabel {
    class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InterfaceReasonLabel {
    interface: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MapLabel {
    map: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConntrackLabel {
    protocol: String,
    direction: String,
}

fn request_histogram() -> Histogram {
    // 10 µs .. ~5 s
    Histogram::new(exponential_buckets(0.000_01, 3.0, 13))
}

/// What the daemon records as it runs; shared by its tasks.
pub struct Metrics {
    requests: Family<KindLabel, Histogram, fn() -> Histogram>,
    /// The datapath's time to install one container's published ports.
    publish: Histogram,
    gc_runs: Counter,
    gc_removed: Counter,
    repairs: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: Family::new_with_constructor(request_histogram),
            publish: request_histogram(),
            gc_runs: Counter::default(),
            gc_removed: Counter::default(),
            repairs: Counter::default(),
        }
    }
}

impl Metrics {
    pub fn shared() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn request(&self, kind: &str, seconds: f64) {
        self.requests
            .get_or_create(&KindLabel {
                kind: kind.to_owned(),
            })
            .observe(seconds);
    }

    /// A container's ports went into the datapath in `seconds`.
    pub fn published(&self, seconds: f64) {
        self.publish.observe(seconds);
    }

    pub fn gc_run(&self, removed: usize) {
        self.gc_runs.inc();
        self.gc_removed.inc_by(removed as u64);
    }

    pub fn repaired(&self, count: usize) {
        self.repairs.inc_by(count as u64);
    }

    /// The text exposition of everything, with the datapath's figures of
    /// this moment.
    pub fn render(&self, datapath: &DatapathMetrics, published_ports: usize) -> String {
        let mut registry = Registry::with_prefix("netd");
        registry.register(
            "request_duration_seconds",
            "Time to serve a request on the CLI socket, by kind",
            self.requests.clone(),
        );
        registry.register(
            "datapath_publish_seconds",
            "Time the datapath took to install one new container's published ports",
            self.publish.clone(),
        );
        registry.register(
            "conntrack_gc_runs",
            "Conntrack garbage-collection passes",
            self.gc_runs.clone(),
        );
        registry.register(
            "conntrack_gc_removed_entries",
            "Conntrack entries the GC removed",
            self.gc_removed.clone(),
        );
        registry.register(
            "repairs",
            "Differences between the state and the kernel that were repaired",
            self.repairs.clone(),
        );
        let published = Gauge::<i64>::default();
        published.set(published_ports as i64);
        registry.register("published_ports", "Published host ports", published);

        let packets = Family::<ClassLabel, Counter>::default();
        let bytes = Family::<ClassLabel, Counter>::default();
        for (class, p, b) in &datapath.traffic {
            let label = ClassLabel {
                class: (*class).to_owned(),
            };
            packets.get_or_create(&label).inc_by(*p);
            bytes.get_or_create(&label).inc_by(*b);
        }
        registry.register("traffic_packets", "Packets the datapath passed", packets);
        registry.register("traffic_bytes", "Bytes the datapath passed", bytes);
        let drops = Family::<ReasonLabel, Counter>::default();
        for (reason, n) in &datapath.drops {
            drops
                .get_or_create(&ReasonLabel {
                    reason: (*reason).to_owned(),
                })
                .inc_by(*n);
        }
        registry.register(
            "dropped_packets",
            "Packets the datapath dropped, by reason",
            drops,
        );
        let by_interface = Family::<InterfaceReasonLabel, Counter>::default();
        for (interface, reason, n) in &datapath.drops_by_interface {
            by_interface
                .get_or_create(&InterfaceReasonLabel {
                    interface: interface.clone(),
                    reason: (*reason).to_owned(),
                })
                .inc_by(*n);
        }
        registry.register(
            "dropped_packets_by_interface",
            "Packets the datapath dropped, by the interface they came in on and reason",
            by_interface,
        );
        let entries = Family::<MapLabel, Gauge<i64>>::default();
        let capacity = Family::<MapLabel, Gauge<i64>>::default();
        for fill in &datapath.tables {
            let label = MapLabel {
                map: fill.name.clone(),
            };
            entries.get_or_create(&label).set(fill.entries as i64);
            capacity.get_or_create(&label).set(i64::from(fill.capacity));
        }
        registry.register(
            "map_entries",
            "Entries in use in a datapath table (a BPF map; nf_conntrack on iptables)",
            entries,
        );
        let evicted = Family::<MapLabel, Counter>::default();
        for fill in &datapath.tables {
            if let Some(n) = fill.evicted {
                let label = MapLabel {
                    map: fill.name.clone(),
                };
                evicted.get_or_create(&label).inc_by(n);
            }
        }
        registry.register(
            "map_evicted_entries",
            "Entries a full datapath table evicted to make room (conntrack: unreplied or \
             closing connections, as the kernel's early_drop)",
            evicted,
        );
        registry.register(
            "map_capacity",
            "Entries a datapath table can hold (a BPF map; nf_conntrack on iptables)",
            capacity,
        );
        let conntrack = Family::<ConntrackLabel, Gauge<i64>>::default();
        for (protocol, direction, n) in &datapath.conntrack {
            conntrack
                .get_or_create(&ConntrackLabel {
                    protocol: protocol.clone(),
                    direction: (*direction).to_owned(),
                })
                .set(*n as i64);
        }
        registry.register(
            "conntrack_entries",
            "Tracked connection entries (two per connection), by protocol and direction",
            conntrack,
        );
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &registry);
        out
    }
}
