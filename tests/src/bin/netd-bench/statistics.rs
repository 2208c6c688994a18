//! Summaries of repeated measurements.

use std::collections::BTreeMap;

/// Repeated samples of one figure: median (the upper middle of an even
/// count), extremes, and the samples as measured.
#[derive(Clone, Debug, serde::Serialize)]
pub(crate) struct Summary {
    pub(crate) max: f64,
    pub(crate) median: f64,
    pub(crate) min: f64,
    pub(crate) samples: Vec<f64>,
}

impl Summary {
    /// None when there are no samples.
    pub(crate) fn of(samples: &[f64]) -> Option<Self> {
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        Some(Self {
            max: *sorted.last()?,
            median: sorted[sorted.len() / 2],
            min: sorted[0],
            samples: samples.to_vec(),
        })
    }
}

/// The median of `figure`'s samples (NaN when it has none).
pub(crate) fn median(samples: &BTreeMap<String, Vec<f64>>, figure: &str) -> f64 {
    samples
        .get(figure)
        .and_then(|v| Summary::of(v))
        .map_or(f64::NAN, |s| s.median)
}
