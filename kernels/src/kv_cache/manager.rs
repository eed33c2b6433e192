//! [`BlockManager`]: the sans-IO allocator of the paged KV cache. It decides which fixed-size
//! block of the device pool each sequence's tokens go to, shares full blocks between sequences
//! with the same prefix (vLLM-style automatic prefix caching), shares all blocks between forks
//! and asks for copy-on-write when a shared block would be written.
//!
//! It owns block bookkeeping only: reference counts, the free list, the LRU of cached blocks and
//! the content-hash index. It owns no tensor data and performs no I/O; the engine executes the
//! [`CopyBlock`] commands it returns and writes K/V where [`BlockTable::slot`] says.
//!
//! Every block is in exactly one state:
//! - *free*: on the free list, content meaningless;
//! - *cached*: unreferenced but holding a registered full-block hash, kept (LRU-ordered) so a
//!   later sequence with the same prefix can revive it; evicted only when the free list is empty;
//! - *referenced*: held by one or more block tables (`ref_count` = number of references).

use std::collections::{BTreeSet, HashMap, hash_map::Entry};

use crate::kv_cache::block::{BlockHash, BlockHasher, BlockId, CopyBlock};
use crate::kv_cache::block_table::BlockTable;
use crate::kv_cache::error::KvError;

/// Prefix-cache effectiveness, counted in prompt tokens over successful allocations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PrefixCacheStats {
    /// Prompt tokens looked up in the prefix cache.
    pub queries: u64,
    /// Prompt tokens found already computed.
    pub hits: u64,
}

impl PrefixCacheStats {
    /// `hits / queries`, or 0 before the first query.
    pub fn hit_rate(&self) -> f64 {
        if self.queries == 0 {
            return 0.0;
        }
        self.hits as f64 / self.queries as f64
    }
}

#[derive(Clone, Debug, Default)]
pub(crate) struct BlockMeta {
    pub(crate) ref_count: u32,
    /// The registered content hash; set only while `cached[hash] == this block`.
    pub(crate) hash: Option<BlockHash>,
    /// The LRU key while the block is cached (unreferenced with a hash).
    pub(crate) evictable_since: u64,
}

/// Allocator of the fixed-size blocks of a paged KV cache. See the module docs.
///
/// Every [`BlockId`] in its lists and in the tables it hands out is below `num_blocks` (it
/// creates them all), which is why indexing `blocks` by one is in bounds. A table must only be
/// given back to the manager that created it.
#[derive(Debug)]
pub struct BlockManager {
    pub(crate) block_size: usize,
    pub(crate) blocks: Vec<BlockMeta>,
    /// Free blocks; popped from the end, so a fresh manager hands out 0, 1, 2, ...
    pub(crate) free: Vec<BlockId>,
    /// Cached blocks by `(evictable_since, id)`: the first entry is evicted first.
    pub(crate) evictable: BTreeSet<(u64, BlockId)>,
    /// Registered full-block hashes: referenced or cached blocks whose content is known.
    pub(crate) cached: HashMap<BlockHash, BlockId>,
    hasher: BlockHasher,
    /// Logical clock for the LRU, advanced per block that becomes cached.
    clock: u64,
    stats: PrefixCacheStats,
}

impl BlockManager {
    /// A pool of `num_blocks` blocks of `block_size` token slots each, all free.
    pub fn new(num_blocks: usize, block_size: usize) -> Result<Self, KvError> {
        if block_size == 0 {
            return Err(KvError::InvalidBlockSize { block_size });
        }
        let max = u32::MAX as usize;
        if num_blocks == 0 || num_blocks > max {
            return Err(KvError::InvalidBlockCount { num_blocks, max });
        }
        // `num_blocks <= u32::MAX` was checked above, so every index fits a `BlockId`.
        let free = (0..num_blocks as u32).rev().map(BlockId).collect();
        Ok(Self {
            block_size,
            blocks: vec![BlockMeta::default(); num_blocks],
            free,
            evictable: BTreeSet::new(),
            cached: HashMap::new(),
            hasher: BlockHasher::new(),
            clock: 0,
            stats: PrefixCacheStats::default(),
        })
    }

    /// As many blocks as fit in `budget_bytes`, each `block_size * bytes_per_token_slot` bytes
    /// (a token slot holds K and V of every layer: `2 * layers * kv_heads * head_dim * elem`).
    pub fn with_memory_budget(
        budget_bytes: usize,
        block_size: usize,
        bytes_per_token_slot: usize,
    ) -> Result<Self, KvError> {
        if block_size == 0 {
            return Err(KvError::InvalidBlockSize { block_size });
        }
        if bytes_per_token_slot == 0 {
            return Err(KvError::InvalidSlotSize {
                bytes_per_token_slot,
            });
        }
        let bytes_per_block = block_size.saturating_mul(bytes_per_token_slot);
        let num_blocks = budget_bytes / bytes_per_block;
        if num_blocks == 0 {
            return Err(KvError::BudgetTooSmall {
                budget_bytes,
                bytes_per_block,
            });
        }
        Self::new(num_blocks.min(u32::MAX as usize), block_size)
    }

    /// Token slots per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Blocks in the pool.
    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    /// Blocks a new allocation can take: free plus cached (evictable) ones.
    pub fn num_free_blocks(&self) -> usize {
        self.free.len() + self.evictable.len()
    }

    /// Unreferenced blocks kept for their cached prefix (a subset of [`Self::num_free_blocks`]).
    pub fn num_cached_blocks(&self) -> usize {
        self.evictable.len()
    }

    /// Blocks referenced by at least one live block table.
    pub fn num_used_blocks(&self) -> usize {
        self.num_blocks() - self.num_free_blocks()
    }

    /// Fraction of the pool referenced by live sequences, in `[0, 1]`.
    pub fn usage(&self) -> f32 {
        self.num_used_blocks() as f32 / self.num_blocks() as f32
    }

    /// Blocks needed to hold `num_tokens` token slots.
    pub fn blocks_needed(&self, num_tokens: usize) -> usize {
        num_tokens.div_ceil(self.block_size)
    }

    /// Whether a prompt of `num_tokens` tokens fits now, ignoring prefix-cache hits (which can
    /// only lower the need): a conservative admission check for the scheduler.
    pub fn can_allocate(&self, num_tokens: usize) -> bool {
        self.blocks_needed(num_tokens) <= self.num_free_blocks()
    }

    /// Whether [`Self::append_slots`] of `n` tokens to `table` would succeed now.
    pub fn can_append_slots(&self, table: &BlockTable, n: usize) -> bool {
        self.append_need(table, n) <= self.num_free_blocks()
    }

    /// Prefix-cache hit counters since creation.
    pub fn prefix_cache_stats(&self) -> PrefixCacheStats {
        self.stats
    }

    /// Starts a sequence: a block table with room for `prompt`, and how many leading prompt
    /// tokens already have their K/V in the cache (a multiple of the block size, always less
    /// than `prompt.len()` so the engine computes the last token's logits).
    ///
    /// Full prompt blocks whose chained content hash is registered are shared instead of
    /// allocated, reviving cached blocks. All or nothing: on error the manager is unchanged.
    pub fn allocate(&mut self, prompt: &[u32]) -> Result<(BlockTable, usize), KvError> {
        if prompt.is_empty() {
            return Err(KvError::EmptyPrompt);
        }
        let block_size = self.block_size;
        // Only blocks strictly before the last token may be reused.
        let cacheable_blocks = (prompt.len() - 1) / block_size;
        let mut hashes = Vec::new();
        let mut blocks = Vec::new();
        for hash in self
            .hasher
            .chain(None, &prompt[..cacheable_blocks * block_size], block_size)
        {
            let Some(&block) = self.cached.get(&hash) else {
                break;
            };
            hashes.push(hash);
            blocks.push(block);
        }

        let fresh = self.blocks_needed(prompt.len()) - blocks.len();
        let revived = blocks
            .iter()
            .filter(|b| self.blocks[b.index()].ref_count == 0)
            .count();
        let available = self.num_free_blocks() - revived;
        if fresh > available {
            return Err(KvError::OutOfBlocks {
                needed: fresh,
                available,
            });
        }
        // Revive before taking fresh blocks, so eviction cannot pick a block we are reusing.
        for &block in &blocks {
            self.acquire(block);
        }
        self.take_into(&mut blocks, fresh)?;

        let computed = hashes.len() * block_size;
        self.stats.queries += prompt.len() as u64;
        self.stats.hits += computed as u64;
        let table = BlockTable {
            blocks,
            num_tokens: prompt.len(),
            block_size,
            hashes,
        };
        Ok((table, computed))
    }

    /// Reserves `n` more token slots in `table` (a decode step or the next prefill chunk).
    ///
    /// If the table's last, partially filled block is shared with a fork, it is first replaced
    /// by a private copy: the returned [`CopyBlock`] must be executed before writing. All or
    /// nothing: on error neither the manager nor `table` changes.
    pub fn append_slots(
        &mut self,
        table: &mut BlockTable,
        n: usize,
    ) -> Result<Vec<CopyBlock>, KvError> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let needed = self.append_need(table, n);
        let available = self.num_free_blocks();
        if needed > available {
            return Err(KvError::OutOfBlocks { needed, available });
        }
        let mut fresh = Vec::with_capacity(needed);
        self.take_into(&mut fresh, needed)?;

        let mut fresh = fresh.into_iter();
        let mut copies = Vec::new();
        if let Some(src) = self.shared_partial_tail(table) {
            // `append_need` counted this copy, so `fresh` holds a block for it.
            if let (Some(dst), Some(last)) = (fresh.next(), table.blocks.last_mut()) {
                *last = dst;
                self.release(src);
                copies.push(CopyBlock { src, dst });
            }
        }
        table.blocks.extend(fresh);
        table.num_tokens += n;
        Ok(copies)
    }

    /// Registers the content hash of every block of `table` that became full, once the engine
    /// has written the K/V of `tokens` (all token ids of the sequence so far), so that later
    /// sequences with the same prefix can share those blocks. Tokens beyond the table's reserved
    /// slots are ignored.
    ///
    /// A block whose content is already registered under another block stays unregistered
    /// (it returns to the free list when released); the first copy keeps serving hits.
    pub fn commit(&mut self, table: &mut BlockTable, tokens: &[u32]) {
        let block_size = self.block_size;
        let full = (tokens.len().min(table.num_tokens) / block_size).min(table.blocks.len());
        let start = table.num_hashed_blocks();
        if full <= start {
            return;
        }
        let parent = table.hashes.last().copied();
        let new_hashes: Vec<BlockHash> = self
            .hasher
            .chain(
                parent,
                &tokens[start * block_size..full * block_size],
                block_size,
            )
            .collect();
        for (&block, hash) in table.blocks[start..full].iter().zip(new_hashes) {
            table.hashes.push(hash);
            let meta = &mut self.blocks[block.index()];
            if meta.hash.is_some() {
                // Registered through a fork sibling that committed the same tokens first.
                continue;
            }
            if let Entry::Vacant(slot) = self.cached.entry(hash) {
                slot.insert(block);
                meta.hash = Some(hash);
            }
        }
    }

    /// A copy-free fork of `table` (parallel sampling, beam search): the child shares every
    /// block. Call it between steps, when every reserved slot of `table` has been written;
    /// the first of parent and child to append into a shared partial block gets a copy.
    pub fn fork(&mut self, table: &BlockTable) -> BlockTable {
        for &block in &table.blocks {
            self.acquire(block);
        }
        BlockTable {
            blocks: table.blocks.clone(),
            num_tokens: table.num_tokens,
            block_size: table.block_size,
            hashes: table.hashes.clone(),
        }
    }

    /// Drops a finished or cancelled sequence. Blocks no longer referenced stay cached if they
    /// hold a registered hash, tail blocks first in eviction order (a shared prefix outlives
    /// the suffix that is unique to this sequence); the others become free.
    pub fn free(&mut self, table: BlockTable) {
        for &block in table.blocks.iter().rev() {
            self.release(block);
        }
    }

    /// Forgets every cached prefix (e.g. after the weights changed): cached blocks become free
    /// and referenced blocks are no longer offered for sharing.
    pub fn reset_prefix_cache(&mut self) {
        for (_, block) in std::mem::take(&mut self.evictable) {
            self.free.push(block);
        }
        for meta in &mut self.blocks {
            meta.hash = None;
        }
        self.cached.clear();
    }

    /// Blocks `append_slots(table, n)` takes from the pool: new blocks plus one for
    /// copy-on-write of a shared partial tail.
    fn append_need(&self, table: &BlockTable, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        let grow = self
            .blocks_needed(table.num_tokens + n)
            .saturating_sub(table.blocks.len());
        grow + usize::from(self.shared_partial_tail(table).is_some())
    }

    /// The table's last block if new tokens would be written into it while another table
    /// references it.
    fn shared_partial_tail(&self, table: &BlockTable) -> Option<BlockId> {
        if table.num_tokens.is_multiple_of(self.block_size) {
            return None;
        }
        let last = *table.blocks.last()?;
        (self.blocks.get(last.index())?.ref_count > 1).then_some(last)
    }

    /// Adds a reference, reviving the block from the cache if it was unreferenced.
    fn acquire(&mut self, block: BlockId) {
        let meta = &mut self.blocks[block.index()];
        if meta.ref_count == 0 {
            self.evictable.remove(&(meta.evictable_since, block));
        }
        meta.ref_count += 1;
    }

    /// Drops a reference; an unreferenced block becomes cached if it holds a hash, else free.
    fn release(&mut self, block: BlockId) {
        let Some(meta) = self.blocks.get_mut(block.index()) else {
            debug_assert!(false, "{block:?} is not from this manager");
            return;
        };
        if meta.ref_count == 0 {
            debug_assert!(false, "{block:?} released more often than acquired");
            return;
        }
        meta.ref_count -= 1;
        if meta.ref_count > 0 {
            return;
        }
        if meta.hash.is_some() {
            self.clock += 1;
            meta.evictable_since = self.clock;
            self.evictable.insert((self.clock, block));
        } else {
            self.free.push(block);
        }
    }

    /// Takes `n` blocks (free ones first, then the least recently cached) into `out` with one
    /// reference each. The callers checked `n <= num_free_blocks()`; should that ever be wrong,
    /// everything pushed to `out` is released again and `OutOfBlocks` returned.
    fn take_into(&mut self, out: &mut Vec<BlockId>, n: usize) -> Result<(), KvError> {
        let available = self.num_free_blocks();
        for _ in 0..n {
            let Some(block) = self.free.pop().or_else(|| self.evict_one()) else {
                for &block in out.iter() {
                    self.release(block);
                }
                return Err(KvError::OutOfBlocks {
                    needed: n,
                    available,
                });
            };
            self.blocks[block.index()].ref_count = 1;
            out.push(block);
        }
        Ok(())
    }

    /// Unregisters and returns the least recently cached block.
    fn evict_one(&mut self) -> Option<BlockId> {
        let (_, block) = self.evictable.pop_first()?;
        let meta = &mut self.blocks[block.index()];
        if let Some(hash) = meta.hash.take()
            && self.cached.get(&hash) == Some(&block)
        {
            self.cached.remove(&hash);
        }
        Some(block)
    }
}
