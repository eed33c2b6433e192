//! [`BlockManager::check_invariants`]: a full consistency check of the block bookkeeping against
//! the live block tables, for tests and debug assertions. It owns no state of its own.

use std::collections::HashSet;

use crate::kv_cache::block_table::BlockTable;
use crate::kv_cache::manager::BlockManager;

impl BlockManager {
    /// Checks the bookkeeping against `live`, every block table handed out and not yet freed:
    /// - every block is exactly one of free, cached (evictable) or referenced;
    /// - a block's reference count equals its number of `(table, index)` occurrences in `live`;
    /// - no block is on the free list twice;
    /// - the hash index points only at blocks that hold that hash, and every hashed block is
    ///   indexed; free blocks hold no hash, cached ones do;
    /// - each table has exactly the blocks its token count needs, and the hashes it remembers
    ///   agree with the ones registered on its blocks.
    ///
    /// Returns a description of the first violation. Cost is linear in blocks and table sizes.
    pub fn check_invariants(&self, live: &[&BlockTable]) -> Result<(), String> {
        let n = self.blocks.len();
        let mut references = vec![0u64; n];
        for (t, table) in live.iter().enumerate() {
            if table.block_size != self.block_size {
                return Err(format!("table {t} has block size {}", table.block_size));
            }
            let needed = self.blocks_needed(table.num_tokens);
            if table.blocks.len() != needed {
                return Err(format!(
                    "table {t} holds {} blocks for {} tokens (needs {needed})",
                    table.blocks.len(),
                    table.num_tokens
                ));
            }
            if table.hashes.len() > table.num_tokens / self.block_size {
                return Err(format!(
                    "table {t} remembers {} hashes but has only {} full blocks",
                    table.hashes.len(),
                    table.num_tokens / self.block_size
                ));
            }
            for (i, block) in table.blocks.iter().enumerate() {
                let Some(meta) = self.blocks.get(block.index()) else {
                    return Err(format!("table {t} index {i}: {block:?} is out of range"));
                };
                references[block.index()] += 1;
                if let (Some(registered), Some(remembered)) = (meta.hash, table.hashes.get(i))
                    && registered != *remembered
                {
                    return Err(format!(
                        "table {t} index {i}: {block:?} is registered under another hash"
                    ));
                }
            }
        }

        let mut on_free_list = vec![false; n];
        for block in &self.free {
            let Some(seen) = on_free_list.get_mut(block.index()) else {
                return Err(format!("free list holds out-of-range {block:?}"));
            };
            if *seen {
                return Err(format!("{block:?} is on the free list twice"));
            }
            *seen = true;
        }
        let mut evictable = vec![false; n];
        for &(since, block) in &self.evictable {
            let Some(slot) = evictable.get_mut(block.index()) else {
                return Err(format!("evictable set holds out-of-range {block:?}"));
            };
            if *slot {
                return Err(format!("{block:?} is evictable twice"));
            }
            *slot = true;
            if self.blocks[block.index()].evictable_since != since {
                return Err(format!("{block:?} has a stale LRU key {since}"));
            }
        }

        for (i, meta) in self.blocks.iter().enumerate() {
            let states = [on_free_list[i], evictable[i], meta.ref_count > 0];
            if states.iter().filter(|&&s| s).count() != 1 {
                return Err(format!(
                    "block {i}: free={} cached={} ref_count={} (must be exactly one state)",
                    states[0], states[1], meta.ref_count
                ));
            }
            if u64::from(meta.ref_count) != references[i] {
                return Err(format!(
                    "block {i}: ref_count {} but {} live references",
                    meta.ref_count, references[i]
                ));
            }
            if on_free_list[i] && meta.hash.is_some() {
                return Err(format!("block {i} is free but holds a hash"));
            }
            if evictable[i] && meta.hash.is_none() {
                return Err(format!("block {i} is cached but holds no hash"));
            }
            if let Some(hash) = meta.hash
                && self.cached.get(&hash).map(|b| b.index()) != Some(i)
            {
                return Err(format!(
                    "block {i} holds a hash the index does not map to it"
                ));
            }
        }

        let mut indexed = HashSet::new();
        for (hash, block) in &self.cached {
            if self.blocks.get(block.index()).and_then(|m| m.hash) != Some(*hash) {
                return Err(format!(
                    "hash index maps to {block:?}, which holds another hash"
                ));
            }
            if !indexed.insert(*block) {
                return Err(format!("hash index maps two hashes to {block:?}"));
            }
        }
        Ok(())
    }
}
