//! The source ports NAT may choose (`--nat-ports`), kept out of the host's
//! own choice: the part of the range Linux could pick for the host's
//! connections (`ip_local_port_range`) is added to `ip_local_reserved_ports`,
//! so a host connection made later never lands on a translated tuple
//! (docs/datapath.md, "NAT clashes").

use std::{fmt, str::FromStr};

use anyhow::{Context as _, Result};

const PORT_RANGE: &str = "/proc/sys/net/ipv4/ip_local_port_range";
const RESERVED_PORTS: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";

/// An inclusive range of ports, 1024 and up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NatPorts {
    pub min: u16,
    pub max: u16,
}

impl Default for NatPorts {
    fn default() -> Self {
        Self {
            min: netd_common::NAT_PORT_MIN,
            max: netd_common::NAT_PORT_MAX,
        }
    }
}

impl FromStr for NatPorts {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (min, max) = text
            .split_once('-')
            .ok_or_else(|| format!("{text:?}: expected MIN-MAX, e.g. 1024-32767"))?;
        let port = |p: &str| {
            p.trim()
                .parse::<u16>()
                .map_err(|_| format!("{p:?} is not a port (1024-65535)"))
        };
        let (min, max) = (port(min)?, port(max)?);
        if min < 1024 || min > max {
            return Err(format!(
                "{text:?}: the range must start at 1024 or above and not end before it starts"
            ));
        }
        Ok(Self { min, max })
    }
}

impl fmt::Display for NatPorts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.min, self.max)
    }
}

impl NatPorts {
    /// The part of the range the host could pick for its own connections.
    fn overlap_with_ephemeral(&self) -> Result<Option<(u16, u16)>> {
        let text =
            std::fs::read_to_string(PORT_RANGE).with_context(|| format!("reading {PORT_RANGE}"))?;
        let mut bounds = text.split_whitespace().map(str::parse::<u16>);
        let (Some(Ok(low)), Some(Ok(high))) = (bounds.next(), bounds.next()) else {
            anyhow::bail!("{PORT_RANGE}: unexpected {text:?}");
        };
        let (start, end) = (low.max(self.min), high.min(self.max));
        Ok((start <= end).then_some((start, end)))
    }

    /// Reserves the overlap with the host's ephemeral range. Returns it when
    /// there was one (to log).
    pub fn reserve(&self) -> Result<Option<(u16, u16)>> {
        let Some(overlap) = self.overlap_with_ephemeral()? else {
            return Ok(None);
        };
        let mut reserved = PortSet::read()?;
        if reserved.covers(overlap) {
            return Ok(None);
        }
        reserved.set(overlap, true);
        reserved.write()?;
        Ok(Some(overlap))
    }

    /// Gives back what [`reserve`](Self::reserve) took (`netd down`).
    pub fn release(&self) -> Result<()> {
        let Some(overlap) = self.overlap_with_ephemeral()? else {
            return Ok(());
        };
        let mut reserved = PortSet::read()?;
        if !reserved.any(overlap) {
            return Ok(());
        }
        reserved.set(overlap, false);
        reserved.write()
    }
}

/// `ip_local_reserved_ports`: "a-b,c,…".
struct PortSet(Vec<bool>);

impl PortSet {
    fn read() -> Result<Self> {
        let text = std::fs::read_to_string(RESERVED_PORTS)
            .with_context(|| format!("reading {RESERVED_PORTS}"))?;
        Self::parse(&text).with_context(|| format!("{RESERVED_PORTS}: unexpected {text:?}"))
    }

    fn parse(text: &str) -> Result<Self> {
        let mut ports = vec![false; 65536];
        for item in text.trim().split(',').filter(|i| !i.is_empty()) {
            let (a, b) = item.split_once('-').unwrap_or((item, item));
            let (a, b): (usize, usize) = (a.trim().parse()?, b.trim().parse()?);
            anyhow::ensure!(a <= b && b < ports.len(), "bad range {item:?}");
            ports[a..=b].fill(true);
        }
        Ok(Self(ports))
    }

    fn render(&self) -> String {
        let mut ranges = Vec::new();
        let mut port = 0;
        while port < self.0.len() {
            if !self.0[port] {
                port += 1;
                continue;
            }
            let start = port;
            while port + 1 < self.0.len() && self.0[port + 1] {
                port += 1;
            }
            ranges.push(match start == port {
                true => start.to_string(),
                false => format!("{start}-{port}"),
            });
            port += 1;
        }
        ranges.join(",")
    }

    fn write(&self) -> Result<()> {
        std::fs::write(RESERVED_PORTS, self.render())
            .with_context(|| format!("writing {RESERVED_PORTS}"))
    }

    fn covers(&self, (a, b): (u16, u16)) -> bool {
        self.0[usize::from(a)..=usize::from(b)].iter().all(|&p| p)
    }

    fn any(&self, (a, b): (u16, u16)) -> bool {
        self.0[usize::from(a)..=usize::from(b)].iter().any(|&p| p)
    }

    fn set(&mut self, (a, b): (u16, u16), on: bool) {
        self.0[usize::from(a)..=usize::from(b)].fill(on);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_refuse_what_nat_cannot_use() {
        assert_eq!(
            "1024-32767".parse(),
            Ok(NatPorts {
                min: 1024,
                max: 32767
            })
        );
        assert_eq!(
            "40000-40000".parse(),
            Ok(NatPorts {
                min: 40000,
                max: 40000
            })
        );
        for bad in ["80-90", "5000", "3000-2000", "1024-70000", "a-b"] {
            assert!(bad.parse::<NatPorts>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_reserved_list_round_trips_and_merges() {
        let mut set = PortSet::parse("8080,40000-40010\n").unwrap();
        assert!(set.covers((40002, 40005)) && !set.covers((40005, 40011)));
        set.set((40011, 40020), true);
        assert_eq!(set.render(), "8080,40000-40020");
        set.set((40000, 40020), false);
        assert_eq!(set.render(), "8080");
        assert_eq!(PortSet::parse("").unwrap().render(), "");
    }
}
