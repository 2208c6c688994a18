//! A driver that enforces nothing and remembers what it was told: the
//! engine's unit tests run on it without root. It can be told to fail one
//! kind of call, to test the engine's rollback.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
};

use anyhow::{Result, bail};

use super::{ConntrackRow, FirewallDriver};
use crate::{
    api::DatapathStatus,
    state::{Attachment, Network, PublishedPort},
};

/// What a [`NoopDriver`] holds; shared so a test can look after handing
/// the driver to an engine.
#[derive(Debug, Default)]
pub struct NoopRecord {
    pub networks: BTreeSet<String>,
    /// Endpoints by host-side veth.
    pub endpoints: BTreeMap<String, Attachment>,
    pub ports: Vec<PublishedPort>,
    /// The user rules in force, in order.
    pub rules: Vec<crate::rule::ActiveRule>,
    /// The next call of this kind fails (`add_network`, `add_endpoint`,
    /// `publish`, `set_rules`), once.
    pub fail_next: Option<&'static str>,
}

#[derive(Clone, Default)]
pub struct NoopDriver {
    pub record: Arc<Mutex<NoopRecord>>,
}

impl NoopDriver {
    fn check(&self, call: &'static str) -> Result<()> {
        let mut record = self.record.lock().expect("not poisoned");
        if record.fail_next == Some(call) {
            record.fail_next = None;
            bail!("{call} failed (injected)");
        }
        Ok(())
    }

    fn record(&self) -> std::sync::MutexGuard<'_, NoopRecord> {
        self.record.lock().expect("not poisoned")
    }
}

impl super::Observability for NoopDriver {
    fn metrics(&self) -> Result<super::DatapathMetrics> {
        Ok(super::DatapathMetrics::default())
    }
}

impl FirewallDriver for NoopDriver {
    fn name(&self) -> &'static str {
        "noop"
    }

    fn set_rules(&mut self, rules: &[crate::rule::ActiveRule]) -> Result<()> {
        self.check("set_rules")?;
        self.record().rules = rules.to_vec();
        Ok(())
    }

    fn add_network(&mut self, net: &Network, _bridge_mac: [u8; 6]) -> Result<()> {
        self.check("add_network")?;
        self.record().networks.insert(net.name.clone());
        Ok(())
    }

    fn remove_network(&mut self, net: &Network) -> Result<()> {
        self.record().networks.remove(&net.name);
        Ok(())
    }

    fn add_endpoint(
        &mut self,
        _net: &Network,
        att: &Attachment,
        _host_ifindex: u32,
        _mac: [u8; 6],
    ) -> Result<()> {
        self.check("add_endpoint")?;
        self.record()
            .endpoints
            .insert(att.host_veth.clone(), att.clone());
        Ok(())
    }

    fn remove_endpoint(&mut self, att: &Attachment) -> Result<()> {
        self.record().endpoints.remove(&att.host_veth);
        Ok(())
    }

    fn publish(&mut self, ports: &[PublishedPort]) -> Result<()> {
        self.check("publish")?;
        let mut record = self.record();
        for port in ports {
            if !record.ports.contains(port) {
                record.ports.push(port.clone());
            }
        }
        Ok(())
    }

    fn unpublish(&mut self, ports: &[PublishedPort]) -> Result<()> {
        self.record().ports.retain(|p| !ports.contains(p));
        Ok(())
    }

    fn conntrack(&self) -> Result<Vec<ConntrackRow>> {
        Ok(Vec::new())
    }

    fn gc(&mut self) -> Result<usize> {
        Ok(0)
    }

    fn status(&self) -> Result<DatapathStatus> {
        Ok(DatapathStatus::Noop {})
    }
}
