//! The scaling chart (SVG, drawn with plotters).

use std::collections::BTreeMap;

use plotters::{
    coord::{
        Shift,
        ranged1d::{Ranged, ValueFormatter},
    },
    prelude::*,
};

use crate::{statistics::*, topology::*};

/// A line chart: x is log10(published ports), one line per datapath.
pub(crate) struct Panel<'a> {
    pub(crate) title: &'a str,
    pub(crate) log_y: bool,
    pub(crate) series: Vec<Series<'a>>,
}

/// One datapath's line: (published ports, value) points.
pub(crate) type Series<'a> = (&'a str, &'a str, Vec<(f64, f64)>);

/// (datapath, colour, legend).
pub(crate) const DATAPATH_STYLES: &[(&str, &str, &str)] = &[
    ("ebpf", "#1f77b4", "ebpf"),
    ("iptables", "#d62728", "iptables"),
    ("nftables", "#ff7f0e", "nftables"),
    ("none", "#7f7f7f", "plain routing"),
    ("direct", "#2ca02c", "direct veth"),
];

/// Paths without published ports, drawn as flat dashed references.
pub(crate) fn is_reference(datapath: &str) -> bool {
    matches!(datapath, "none" | "direct")
}

/// Two panels side by side: new connections per second through the
/// published port, and the time to publish one more port, against the
/// number of ports already published.
pub(crate) fn scaling_chart(
    targets: &[Target],
    samples: &[BTreeMap<String, Vec<f64>>],
) -> anyhow::Result<String> {
    let max_ports = targets.iter().map(|t| t.ports).max().unwrap_or(1).max(10) as f64;
    let series_of = |value: &dyn Fn(usize, &Target) -> Option<f64>| {
        DATAPATH_STYLES
            .iter()
            .filter_map(|&(datapath, colour, _)| {
                let mut points: Vec<(f64, f64)> = targets
                    .iter()
                    .enumerate()
                    .filter(|(_, t)| t.datapath == datapath && t.networks == 1)
                    .filter_map(|(i, t)| Some((t.ports.max(1) as f64, value(i, t)?)))
                    .collect();
                if is_reference(datapath) && points.len() == 1 {
                    points.push((max_ports, points[0].1));
                }
                (!points.is_empty()).then_some((datapath, colour, points))
            })
            .collect::<Vec<_>>()
    };
    let crr = Panel {
        title: "TCP_CRR /s through the published port",
        log_y: false,
        series: series_of(&|i, _| Some(median(&samples[i], "dnat_tcp_crr_per_s"))),
    };
    let publish = Panel {
        title: "µs to publish one more port (log)",
        log_y: true,
        series: series_of(&|_, t| {
            let publish = t.control.as_ref()?.publish_one_port_us.as_ref()?;
            Some(publish.median)
        }),
    };
    render(&[crr, publish], max_ports)
}

/// The panels side by side, 440 × 300 each.
fn render(panels: &[Panel], max_ports: f64) -> anyhow::Result<String> {
    let mut svg = String::new();
    {
        let width = 440 * panels.len() as u32;
        let root = SVGBackend::with_string(&mut svg, (width, 300)).into_drawing_area();
        root.fill(&WHITE)?;
        for (area, panel) in root.split_evenly((1, panels.len())).iter().zip(panels) {
            draw_panel(area, panel, max_ports)?;
        }
        root.present()?;
    }
    Ok(svg)
}

/// One panel: x is the number of published ports (log), one line per
/// datapath (the references dashed), a legend below.
fn draw_panel(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    panel: &Panel,
    max_ports: f64,
) -> anyhow::Result<()> {
    let values = panel
        .series
        .iter()
        .flat_map(|(_, _, pts)| pts.iter().map(|p| p.1));
    let hi = values.clone().fold(f64::MIN, f64::max);
    let lo = values.fold(f64::MAX, f64::min);
    if !hi.is_finite() {
        return Ok(()); // nothing measured: an empty panel
    }
    let mut builder = ChartBuilder::on(area);
    let chart = builder
        .caption(panel.title, ("sans-serif", 14))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56);
    let x = (1f64..max_ports).log_scale();
    if panel.log_y {
        let (lo, hi) = (lo.max(1e-3), hi.max(1e-3));
        let lo = 10f64.powf(lo.log10().floor());
        let hi = 10f64.powf(hi.log10().ceil().max(lo.log10() + 1.0));
        let mut chart = chart.build_cartesian_2d(x, (lo..hi).log_scale())?;
        draw_mesh(&mut chart)?;
        draw_series(&mut chart, panel)?;
    } else {
        let mut chart = chart.build_cartesian_2d(x, 0f64..hi * 1.15)?;
        draw_mesh(&mut chart)?;
        draw_series(&mut chart, panel)?;
    }
    Ok(())
}

/// The axes: ports as integers, values over 1,000 in k.
fn draw_mesh<'a, X, Y>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, Y>>,
) -> anyhow::Result<()>
where
    X: Ranged<ValueType = f64> + ValueFormatter<f64>,
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let y_format = |v: &f64| match *v >= 1000.0 {
        true => format!("{}k", v / 1000.0),
        false => format!("{v}"),
    };
    chart
        .configure_mesh()
        .x_desc("published ports")
        .x_label_formatter(&|v: &f64| format!("{v:.0}"))
        .y_label_formatter(&y_format)
        .light_line_style(WHITE)
        .draw()?;
    Ok(())
}

/// The lines (dashed for references), markers, and a legend below.
fn draw_series<'a, X, Y>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, Y>>,
    panel: &Panel,
) -> anyhow::Result<()>
where
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    for &(datapath, colour, ref points) in &panel.series {
        let colour = hex_colour(colour);
        let legend = DATAPATH_STYLES
            .iter()
            .find(|(d, _, _)| *d == datapath)
            .map_or(datapath, |(_, _, legend)| legend);
        let line = colour.stroke_width(2);
        let drawn = if is_reference(datapath) {
            chart.draw_series(DashedLineSeries::new(points.iter().copied(), 6, 4, line))?
        } else {
            chart.draw_series(PointSeries::of_element(
                points.iter().copied(),
                3,
                colour.filled(),
                &|c, s, st| Circle::new(c, s, st),
            ))?;
            chart.draw_series(LineSeries::new(points.iter().copied(), line))?
        };
        drawn
            .label(legend)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], colour));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK.mix(0.3))
        .draw()?;
    Ok(())
}

/// `#rrggbb` as a plotters colour.
fn hex_colour(hex: &str) -> RGBColor {
    let byte = |i: usize| u8::from_str_radix(&hex[i..i + 2], 16).unwrap_or(0);
    RGBColor(byte(1), byte(3), byte(5))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_panels_draw_every_series_with_its_legend() {
        let crr = Panel {
            title: "TCP_CRR /s",
            log_y: false,
            series: vec![
                ("ebpf", "#1f77b4", vec![(1.0, 9000.0), (1000.0, 8900.0)]),
                ("iptables", "#d62728", vec![(1.0, 7000.0), (1000.0, 3000.0)]),
                ("none", "#7f7f7f", vec![(1.0, 9500.0), (1000.0, 9500.0)]),
            ],
        };
        let publish = Panel {
            title: "µs to publish",
            log_y: true,
            series: vec![("ebpf", "#1f77b4", vec![(1.0, 40.0), (1000.0, 45.0)])],
        };
        let svg = render(&[crr, publish], 1000.0).unwrap();
        if let Some(path) = std::env::var_os("NETD_CHART_SAMPLE") {
            std::fs::write(path, &svg).unwrap();
        }
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(svg.matches("<polyline").count() >= 4, "{svg}");
        for legend in ["ebpf", "iptables", "plain routing", "published ports"] {
            assert!(svg.contains(legend), "no {legend:?} in the chart");
        }
    }
}
