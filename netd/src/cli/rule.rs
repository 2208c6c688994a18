//! `netd rule …`: the user's firewall rules (netd's DOCKER-USER).

use anyhow::{Context as _, Result};
use clap::Subcommand;
use netd::{
    api::{RuleAdd, RuleEntry},
    client::Client,
    portspec::Proto,
    rule::{RuleAction, UserRule},
};

use super::output::{Format, print_rows};

#[derive(Subcommand)]
pub enum RuleCommand {
    /// Add a rule for connections opened from outside toward containers
    /// (published ports, routed CIDRs). Rules are tried in order; the first
    /// that matches decides; with none matching netd decides as usual.
    Add(AddArgs),
    /// Replace every rule with those in FILE ("-": standard input), in one
    /// step: one rule per line as `netd rule add` takes it (without
    /// --position), blank lines and lines starting with '#' ignored.
    Load { file: std::path::PathBuf },
    /// Remove the rule with this ID (see `netd rule ls`).
    Rm { id: u32 },
    /// List the rules in the order they are tried.
    Ls {
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
}

#[derive(clap::Args)]
pub struct AddArgs {
    /// allow: stop here, netd decides as usual; deny: drop.
    #[arg(value_enum)]
    action: RuleAction,
    /// Source address or CIDR (default: any).
    #[arg(long, short = 's')]
    source: Option<String>,
    #[arg(long, value_enum)]
    proto: Option<Proto>,
    /// Destination port or range (N or N-M) as the client sent it: the
    /// published host port. Needs --proto.
    #[arg(long)]
    port: Option<String>,
    /// Only toward containers of this network.
    #[arg(long)]
    network: Option<String>,
    /// Only packets coming in on this interface.
    #[arg(long = "in-interface", short = 'i')]
    in_interface: Option<String>,
    /// Place in the list, 1 = first (default: last).
    #[arg(long)]
    position: Option<u32>,
}

/// One line of a `netd rule load` file.
#[derive(clap::Parser)]
#[command(no_binary_name = true)]
struct RuleLine {
    #[command(flatten)]
    rule: AddArgs,
}

/// The rules of a `netd rule load` file, in order.
fn read_rules(file: &std::path::Path) -> Result<Vec<UserRule>> {
    let text = if file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading standard input")?
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?
    };
    let mut rules = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let context = || format!("{} line {}: {line}", file.display(), n + 1);
        let parsed = <RuleLine as clap::Parser>::try_parse_from(line.split_whitespace())
            .map_err(|err| netd::invalid!("{}", err.render().to_string().trim()))
            .with_context(context)?;
        if parsed.rule.position.is_some() {
            return Err(netd::invalid!(
                "--position has no place in a file: the order is the lines'"
            ))
            .with_context(context);
        }
        let rule = parsed.rule.into_request().with_context(context)?.rule;
        rule.check().with_context(context)?;
        rules.push(rule);
    }
    Ok(rules)
}

impl AddArgs {
    fn into_request(self) -> Result<RuleAdd> {
        let source = match self.source {
            Some(text) => Some(parse_source(&text)?),
            None => None,
        };
        let ports = match self.port {
            Some(text) => Some(parse_ports(&text)?),
            None => None,
        };
        Ok(RuleAdd {
            rule: UserRule {
                action: self.action,
                source,
                proto: self.proto,
                ports,
                network: self.network,
                in_interface: self.in_interface,
            },
            position: self.position,
        })
    }
}

/// `10.0.0.0/8`, or one address (`/32`).
fn parse_source(text: &str) -> Result<ipnet::Ipv4Net> {
    if let Ok(addr) = text.parse::<std::net::Ipv4Addr>() {
        return Ok(ipnet::Ipv4Net::from(addr));
    }
    text.parse()
        .map_err(|_| netd::invalid!("--source {text:?} is not an IPv4 address or CIDR"))
}

fn parse_ports(text: &str) -> Result<(u16, u16)> {
    let (first, last) = text.split_once('-').unwrap_or((text, text));
    let port = |p: &str| {
        p.parse::<u16>()
            .map_err(|_| netd::invalid!("--port {text:?}: {p:?} is not a port number"))
    };
    let ports = (port(first)?, port(last)?);
    if ports.0 == 0 || ports.1 == 0 {
        return Err(netd::invalid!(
            "--port {text:?}: port 0 cannot be matched (ports are 1-65535)"
        ));
    }
    Ok(ports)
}

pub fn run(client: &Client, command: RuleCommand) -> Result<()> {
    match command {
        RuleCommand::Add(args) => {
            let added = client.rule_add(args.into_request()?)?;
            println!("{}", added.id);
        }
        RuleCommand::Load { file } => {
            let loaded = client.rule_load(read_rules(&file)?)?;
            println!("{} rules", loaded.len());
        }
        RuleCommand::Rm { id } => println!("{}", client.rule_rm(id)?.id),
        RuleCommand::Ls { format } => print_rules(format, &client.rule_ls()?)?,
    }
    Ok(())
}

fn print_rules(format: Format, rules: &[RuleEntry]) -> Result<()> {
    print_rows(format, rules, &["#", "id", "rule", "state"], |r| {
        vec![
            r.position.to_string(),
            r.id.to_string(),
            r.text.clone(),
            if r.active {
                "active"
            } else {
                "no such network"
            }
            .to_owned(),
        ]
    })
}
