//! `USER_RULES`: the user's rules, compiled into one LPM trie.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    maps::{MapData, lpm_trie::Key},
};
use netd_common::{RuleKey, RuleVerdict, maps::USER_RULES};

use super::{Trie, data, done_if_missing, open};

pub struct Rules {
    rules: Trie<USER_RULES>,
}

impl Rules {
    pub(super) fn open(ebpf: &mut Ebpf) -> Result<Self> {
        Ok(Self {
            rules: open::<USER_RULES, _>(ebpf)?,
        })
    }

    pub(super) fn map(&self) -> &MapData {
        data(&self.rules)
    }

    /// Makes `USER_RULES` hold exactly `entries` (changed and new entries
    /// first, then the ones no longer wanted).
    pub fn sync(&mut self, entries: &BTreeMap<(RuleKey, u32), RuleVerdict>) -> Result<()> {
        let present: Vec<(RuleKey, u32)> = self
            .rules
            .keys()
            .filter_map(Result::ok)
            .map(|k| (k.data(), k.prefix_len()))
            .collect();
        for (&(data, len), verdict) in entries {
            let key = Key::new(len, data);
            if self.rules.get(&key, 0).ok().as_ref() != Some(verdict) {
                self.rules
                    .insert(&key, verdict, 0)
                    .context("writing a user rule (USER_RULES full?)")?;
            }
        }
        for (data, len) in present {
            if !entries.contains_key(&(data, len)) {
                done_if_missing(self.rules.remove(&Key::new(len, data)))
                    .context("removing a user rule")?;
            }
        }
        Ok(())
    }
}
