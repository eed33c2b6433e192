//! [`BlockTable`]: one sequence's view of the KV pool, the list of blocks its tokens live in.
//!
//! A table is created only by [`BlockManager`](crate::kv_cache::BlockManager) (`allocate`,
//! `fork`) and given back to it (`free`); it is deliberately not `Clone`, since every copy holds
//! a reference count. It owns no tensor data.

use serde::Serialize;

use crate::kv_cache::block::{BlockHash, BlockId};

/// The blocks of one sequence, in token order: token `p` lives in `blocks[p / block_size]` at
/// offset `p % block_size`.
#[derive(Debug, Serialize)]
pub struct BlockTable {
    pub(crate) blocks: Vec<BlockId>,
    /// Token slots filled or reserved; `blocks` has exactly enough blocks for them.
    pub(crate) num_tokens: usize,
    pub(crate) block_size: usize,
    /// Chained content hashes of the leading full blocks already registered (or found) in the
    /// prefix cache, so `commit` only hashes blocks that became full since.
    #[serde(skip)]
    pub(crate) hashes: Vec<BlockHash>,
}

impl BlockTable {
    /// The sequence's blocks in token order; what the engine uploads as the attention block table.
    pub fn blocks(&self) -> &[BlockId] {
        &self.blocks
    }

    /// Token slots filled or reserved.
    pub fn num_tokens(&self) -> usize {
        self.num_tokens
    }

    /// Token slots per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Where the K/V of token `position` lives: its block and offset within the block. `None`
    /// for a position beyond the reserved slots.
    pub fn slot(&self, position: usize) -> Option<(BlockId, usize)> {
        if position >= self.num_tokens {
            return None;
        }
        let block = *self.blocks.get(position / self.block_size)?;
        Some((block, position % self.block_size))
    }

    /// The flat slot index of token `position` (`block * block_size + offset`), the form of
    /// vLLM's `slot_mapping` that reshape-and-cache kernels take.
    pub fn slot_index(&self, position: usize) -> Option<usize> {
        let (block, offset) = self.slot(position)?;
        Some(block.index() * self.block_size + offset)
    }

    /// Number of leading blocks whose content hash is known (registered or found in the cache).
    pub(crate) fn num_hashed_blocks(&self) -> usize {
        self.hashes.len()
    }
}
