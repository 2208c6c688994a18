//! Printing replies (JSON for scripts, aligned tables for people) and
//! parsing typed arguments.

use anyhow::Result;
use serde::Serialize;

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

pub fn print_json<T: Serialize>(value: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// `rows` as JSON, or as a table with one column per header.
pub fn print_rows<T: Serialize>(
    format: Format,
    rows: &[T],
    headers: &[&str],
    cells: impl Fn(&T) -> Vec<String>,
) -> Result<()> {
    if let Format::Json = format {
        return print_json(&rows);
    }
    for line in table(headers, rows.iter().map(cells).collect()) {
        println!("{line}");
    }
    Ok(())
}

/// Aligned lines: the headers (upper case), then one line per row.
pub fn table(headers: &[&str], rows: Vec<Vec<String>>) -> Vec<String> {
    let widths: Vec<usize> = headers
        .iter()
        .enumerate()
        .map(|(i, h)| {
            rows.iter()
                .map(|r| r[i].len())
                .chain([h.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        padded.join("  ").trim_end().to_owned()
    };
    let mut lines = vec![line(headers.iter().map(|h| h.to_uppercase()).collect())];
    lines.extend(rows.into_iter().map(line));
    lines
}

/// `--subnet` and the like: a prefix in CIDR form.
pub fn subnet(s: &str) -> Result<ipnet::IpNet, String> {
    s.parse()
        .map_err(|_| format!("{s:?} is not a subnet like 172.18.0.0/16"))
}

/// `--ip`, `--gateway` and the like: one address.
pub fn address(s: &str) -> Result<std::net::IpAddr, String> {
    s.parse().map_err(|_| format!("{s:?} is not an IP address"))
}

/// `-p`: Docker's syntax.
pub fn publish(s: &str) -> Result<netd::portspec::PortSpec, String> {
    netd::portspec::PortSpec::parse(s).map_err(|err| format!("{err:#}"))
}

/// What joining a network asks for besides an address, on `container
/// create` and `network connect` alike.
#[derive(clap::Args)]
pub struct EndpointOptions {
    /// Another name for the container on the network's resolver
    /// (repeatable).
    #[arg(long = "alias", value_name = "NAME")]
    pub aliases: Vec<String>,
    /// The network's priority for the container's default route once it is
    /// on several: the highest wins, the first network ties (Docker 28's
    /// --gw-priority).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    pub gw_priority: i32,
}
