//! The user's firewall rules: added, removed, listed, and kept in force in
//! the driver as networks come and go.

use anyhow::{Context as _, Result};

use super::Engine;
use crate::{
    api::{RuleAdd, RuleEntry},
    host::Host,
    rule::{self, ActiveRule, RuleRecord, UserRule},
};

impl<H: Host> Engine<H> {
    pub fn rule_add(&mut self, add: RuleAdd) -> Result<RuleEntry> {
        let new = add.rule;
        new.check()?;
        if let Some(network) = &new.network {
            self.network(network)?;
        }
        let rules = &self.state.rules;
        if let Some(at) = rules.iter().position(|r| r.rule.same_match(&new)) {
            return Err(crate::conflict!(
                "rule {} (ID {}: {}) already matches exactly this traffic; remove it first",
                at + 1,
                rules[at].id,
                rules[at].rule
            ));
        }
        let last = rules.len() as u32 + 1;
        let position = add.position.unwrap_or(last);
        if !(1..=last).contains(&position) {
            return Err(crate::invalid!(
                "position {position} is outside the list (1 to {last})"
            ));
        }
        rule::check_capacity(rules.iter().map(|r| &r.rule).chain([&new]))?;
        let id = self.state.next_rule_id.max(1);
        let mut rules = rules.clone();
        rules.insert(
            position as usize - 1,
            RuleRecord {
                id,
                rule: new.clone(),
            },
        );
        self.enforce_rules(&rules)?;
        self.state.rules = rules;
        self.state.next_rule_id = id + 1;
        self.save()?;
        Ok(self.rule_entry(position as usize - 1))
    }

    /// Replaces the whole list (`netd rule load`): every rule is checked as
    /// `rule_add` checks it, and nothing changes unless all pass.
    pub fn rule_load(&mut self, new: Vec<UserRule>) -> Result<Vec<RuleEntry>> {
        for (at, rule) in new.iter().enumerate() {
            let context = || format!("rule {} ({rule})", at + 1);
            rule.check().with_context(context)?;
            if let Some(network) = &rule.network {
                self.network(network).with_context(context)?;
            }
            if let Some(first) = new[..at].iter().position(|r| r.same_match(rule)) {
                return Err(crate::invalid!(
                    "rule {} ({rule}) matches exactly what rule {} does",
                    at + 1,
                    first + 1
                ));
            }
        }
        rule::check_capacity(&new)?;
        let first_id = self.state.next_rule_id.max(1);
        let rules: Vec<RuleRecord> = new
            .into_iter()
            .zip(first_id..)
            .map(|(rule, id)| RuleRecord { id, rule })
            .collect();
        self.enforce_rules(&rules)?;
        self.state.next_rule_id = first_id + rules.len() as u32;
        self.state.rules = rules;
        self.save()?;
        Ok(self.rule_ls())
    }

    pub fn rule_rm(&mut self, id: u32) -> Result<RuleEntry> {
        let Some(at) = self.state.rules.iter().position(|r| r.id == id) else {
            return Err(crate::not_found!(
                "no rule with ID {id} (see `netd rule ls`)"
            ));
        };
        let removed = self.rule_entry(at);
        let mut rules = self.state.rules.clone();
        rules.remove(at);
        self.enforce_rules(&rules)?;
        self.state.rules = rules;
        self.save()?;
        Ok(removed)
    }

    pub fn rule_ls(&self) -> Vec<RuleEntry> {
        (0..self.state.rules.len())
            .map(|at| self.rule_entry(at))
            .collect()
    }

    /// Tells the driver the rules again (after networks changed: a rule
    /// naming a network applies while it exists).
    pub(super) fn sync_rules(&mut self) -> Result<()> {
        let rules = self.state.rules.clone();
        self.enforce_rules(&rules)
    }

    /// Puts `rules` in force; on failure the driver gets the rules in the
    /// state back, so a refused change changes nothing.
    fn enforce_rules(&mut self, rules: &[RuleRecord]) -> Result<()> {
        let active = self.active_rules(rules);
        if let Err(err) = self.driver.set_rules(&active) {
            let before = self.active_rules(&self.state.rules);
            if let Err(restore) = self.driver.set_rules(&before) {
                tracing::error!(err = format!("{restore:#}"), "restoring the rules in force");
            }
            return Err(err.context("putting the rules in force"));
        }
        Ok(())
    }

    fn active_rules(&self, rules: &[RuleRecord]) -> Vec<ActiveRule> {
        rules
            .iter()
            .enumerate()
            .filter_map(|(order, record)| {
                let network = match &record.rule.network {
                    Some(name) => {
                        let net = self.network(name).ok()?;
                        Some((net.id, net.bridge.clone()))
                    }
                    None => None,
                };
                Some(ActiveRule {
                    order: order as u32,
                    rule: record.rule.clone(),
                    network,
                })
            })
            .collect()
    }

    fn rule_entry(&self, at: usize) -> RuleEntry {
        let record = &self.state.rules[at];
        RuleEntry {
            position: at as u32 + 1,
            id: record.id,
            rule: record.rule.clone(),
            active: record
                .rule
                .network
                .as_ref()
                .is_none_or(|n| self.network(n).is_ok()),
            text: record.rule.to_string(),
        }
    }
}
