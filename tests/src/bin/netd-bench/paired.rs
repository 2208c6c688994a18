//! Paired A/B: two targets measured in short slices that alternate within
//! the same seconds (the order flipped every pair), one ratio per pair, and
//! the median of those ratios with a bootstrap 95 % interval. The machine's
//! drift over minutes (±20 % here) moves both halves of a pair alike and
//! cancels in its ratio; what is left is the noise floor, measured too (a
//! target against itself). A sanity check flags the run as unreliable when
//! a known ordering breaks: the direct veth pair must not be slower than
//! plain routing through a host.

use std::time::Duration;

use anyhow::{Context as _, Result};

use super::{Side, Target, flood, tcp_crr, tcp_rr, udp_rr};

/// What a slice measures, in which direction.
#[derive(Clone, Copy, Debug)]
pub enum Workload {
    TcpCrr,
    TcpRr,
    UdpRr,
    /// TCP_CRR while the side's flood runs (failures count as no rate).
    TcpCrrUnderFlood,
}

impl Workload {
    fn label(self) -> &'static str {
        match self {
            Self::TcpCrr => "TCP_CRR",
            Self::TcpRr => "TCP_RR",
            Self::UdpRr => "UDP_RR",
            Self::TcpCrrUnderFlood => "TCP_CRR under flood",
        }
    }

    /// Operations per second over `slice`.
    fn run(self, side: &Side, slice: Duration) -> Result<f64> {
        match self {
            Self::TcpCrr => tcp_crr(side, slice).map(|(rate, _)| rate),
            Self::TcpRr => tcp_rr(side, slice).map(|(rate, _, _)| rate),
            Self::UdpRr => udp_rr(side, slice),
            Self::TcpCrrUnderFlood => flood::crr_under_flood(side, slice).map(|(rate, _)| rate),
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub enum Direction {
    /// Outside client → published port.
    Dnat,
    /// Container → outside server (masquerade).
    Snat,
}

impl Direction {
    fn label(self) -> &'static str {
        match self {
            Self::Dnat => "dnat",
            Self::Snat => "snat",
        }
    }

    fn side(self, target: &Target) -> &Side {
        match self {
            Self::Dnat => &target.dnat,
            Self::Snat => &target.snat,
        }
    }
}

/// One comparison to make: `a` over `b`.
pub struct Comparison<'a> {
    pub what: String,
    pub a: &'a Target,
    pub b: &'a Target,
    pub workload: Workload,
    pub direction: Direction,
}

/// The outcome of one comparison.
#[derive(Clone)]
pub struct PairedRatio {
    pub what: String,
    pub workload: Workload,
    pub direction: Direction,
    pub median: f64,
    pub low: f64,
    pub high: f64,
    pub ratios: Vec<f64>,
}

impl PairedRatio {
    /// Whether the interval lies wholly on one side of 1.0.
    pub fn decisive(&self) -> bool {
        self.low > 1.0 || self.high < 1.0
    }
}

/// A ratio as results.json has it (keys in alphabetical order).
impl serde::Serialize for PairedRatio {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(serde::Serialize)]
        struct Json<'a> {
            ci95: [f64; 2],
            direction: &'a str,
            interval_excludes_1: bool,
            median_ratio: f64,
            pair_ratios: &'a [f64],
            what: &'a str,
            workload: &'a str,
        }
        Json {
            ci95: [self.low, self.high],
            direction: self.direction.label(),
            interval_excludes_1: self.decisive(),
            median_ratio: self.median,
            pair_ratios: &self.ratios,
            what: &self.what,
            workload: self.workload.label(),
        }
        .serialize(serializer)
    }
}

/// The paired comparisons of one run, as results.json has them.
#[derive(serde::Serialize)]
pub struct Paired {
    pub comparisons: Vec<PairedRatio>,
    pub noise_floor: Option<PairedRatio>,
    pub sanity_direct_over_plain: Option<PairedRatio>,
    pub unreliable: bool,
}

/// `pairs` pairs of `slice`-long runs, alternating a and b (b first in
/// every other pair), after one unmeasured slice of each to warm caches.
pub fn compare(c: &Comparison<'_>, pairs: usize, slice: Duration) -> Result<PairedRatio> {
    let (side_a, side_b) = (c.direction.side(c.a), c.direction.side(c.b));
    let context = || format!("{} {} {}", c.what, c.workload.label(), c.direction.label());
    let ratios = pair_ratios(
        |d| c.workload.run(side_a, d),
        |d| c.workload.run(side_b, d),
        pairs,
        slice,
    )
    .with_context(context)?;
    Ok(PairedRatio::new(
        c.what.clone(),
        c.workload,
        c.direction,
        ratios,
    ))
}

/// The a/b ratio of each pair of `slice`-long runs (the order flipped
/// every other pair), after one unmeasured half slice of each.
pub fn pair_ratios(
    a: impl Fn(Duration) -> Result<f64>,
    b: impl Fn(Duration) -> Result<f64>,
    pairs: usize,
    slice: Duration,
) -> Result<Vec<f64>> {
    a(slice / 2)?;
    b(slice / 2)?;
    let mut ratios = Vec::with_capacity(pairs);
    for pair in 0..pairs {
        let (ra, rb) = if pair % 2 == 0 {
            let ra = a(slice)?;
            (ra, b(slice)?)
        } else {
            let rb = b(slice)?;
            (a(slice)?, rb)
        };
        ratios.push(ra / rb);
    }
    Ok(ratios)
}

impl PairedRatio {
    pub fn new(what: String, workload: Workload, direction: Direction, ratios: Vec<f64>) -> Self {
        let (median, low, high) = median_with_interval(&ratios);
        Self {
            what,
            workload,
            direction,
            median,
            low,
            high,
            ratios,
        }
    }
}

/// The median of `values` and its bootstrap 95 % interval.
pub fn median_with_interval(values: &[f64]) -> (f64, f64, f64) {
    let (low, high) = bootstrap_interval(values, 2000);
    (median(values), low, high)
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The 2.5th and 97.5th percentiles of the median over `rounds` resamples
/// (with replacement) of `values`.
fn bootstrap_interval(values: &[f64], rounds: usize) -> (f64, f64) {
    if values.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    // xorshift64*: reproducible, and statistics need no secrecy.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let mut medians: Vec<f64> = (0..rounds)
        .map(|_| {
            let sample: Vec<f64> = (0..values.len())
                .map(|_| values[(next() % values.len() as u64) as usize])
                .collect();
            median(&sample)
        })
        .collect();
    medians.sort_by(f64::total_cmp);
    let at = |p: f64| medians[((rounds - 1) as f64 * p).round() as usize];
    (at(0.025), at(0.975))
}

/// The markdown table of `results`.
pub fn table(results: &[PairedRatio]) -> String {
    let mut md = String::from(
        "| comparison | workload | direction | ratio | 95 % interval | pairs |\n|---|---|---|---|---|---|\n",
    );
    for r in results {
        md.push_str(&format!(
            "| {} | {} | {} | {:.2}×{} | [{:.2}, {:.2}] | {} |\n",
            r.what,
            r.workload.label(),
            r.direction.label(),
            r.median,
            if r.decisive() { " *" } else { "" },
            r.low,
            r.high,
            r.ratios.len()
        ));
    }
    md
}

/// The markdown table of `results`, a line saying whether the run is
/// reliable, and the JSON of it all.
pub fn report(
    results: &[PairedRatio],
    sanity: Option<&PairedRatio>,
    noise: Option<&PairedRatio>,
) -> (String, Paired) {
    let mut md = String::from(
        "### Paired A/B (median of per-pair ratios, bootstrap 95 % interval; * = interval excludes 1.0)\n\n",
    );
    md.push_str(&table(results));
    // The direct veth pair has no host in the way: slower than plain routing
    // means the machine, not the datapaths, decided this run.
    let unreliable = sanity.is_some_and(|s| s.high < 1.0);
    if let Some(noise) = noise {
        md.push_str(&format!(
            "\nNoise floor (a target against itself): {:.2}× [{:.2}, {:.2}].\n",
            noise.median, noise.low, noise.high
        ));
    }
    md.push_str(if unreliable {
        "\n**Unreliable run**: the direct veth pair measured slower than plain routing.\n"
    } else {
        "\nSanity: the direct veth pair is not slower than plain routing.\n"
    });
    let paired = Paired {
        comparisons: results.to_vec(),
        noise_floor: noise.cloned(),
        sanity_direct_over_plain: sanity.cloned(),
        unreliable,
    };
    (md, paired)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interval_holds_the_median_and_narrows_with_agreement() {
        let tight = [1.20, 1.21, 1.19, 1.22, 1.20, 1.18, 1.21, 1.20, 1.19, 1.20];
        let (low, high) = bootstrap_interval(&tight, 2000);
        assert!(low <= median(&tight) && median(&tight) <= high);
        assert!(low > 1.1 && high < 1.3, "[{low}, {high}]");
        let loose = [0.7, 1.5, 0.9, 1.4, 1.0, 1.3, 0.8, 1.2, 1.1, 0.95];
        let (low, high) = bootstrap_interval(&loose, 2000);
        assert!(low < 1.0 && high > 1.0, "[{low}, {high}]");
    }
}
