//! Block identities and the commands the block manager hands to the engine: [`BlockId`] names a
//! block of the device's KV pool, [`CopyBlock`] asks the engine to copy one, and [`BlockHash`]
//! names the content of a full block for prefix sharing.
//!
//! This module owns no tensor data; a block id is an index the engine maps to device memory.

use std::hash::{BuildHasher, Hasher};

use serde::{Deserialize, Serialize};

/// Index of one block in the device's KV pool (`0..num_blocks`). `u32` so that block tables
/// can be uploaded to the device as `int32` without conversion checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BlockId(pub u32);

impl BlockId {
    /// The block's index into the pool, for slicing device memory.
    pub const fn index(self) -> usize {
        self.0 as usize
    }
}

/// Copy all token slots of block `src` into block `dst` (every layer, keys and values). The
/// engine must execute it before writing any new token of the step that produced it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyBlock {
    pub src: BlockId,
    pub dst: BlockId,
}

/// Content hash of a full block, chained through its predecessors: the hash of block `i`
/// covers the token ids of blocks `0..=i`, so equal hashes mean equal prefixes (and, with a
/// causal model, equal K/V).
///
/// 128 bits from two independently keyed SipHash instances: keys are random per manager, so a
/// client cannot craft prompts whose blocks collide with another user's cached prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BlockHash(pub(crate) u128);

/// Computes [`BlockHash`]es. Keyed once per block manager.
#[derive(Debug, Clone)]
pub(crate) struct BlockHasher {
    low: std::collections::hash_map::RandomState,
    high: std::collections::hash_map::RandomState,
}

impl BlockHasher {
    pub(crate) fn new() -> Self {
        Self {
            low: std::collections::hash_map::RandomState::new(),
            high: std::collections::hash_map::RandomState::new(),
        }
    }

    /// The hash of a full block with token ids `tokens` following the prefix hashed `parent`
    /// (`None` for a sequence's first block).
    pub(crate) fn hash(&self, parent: Option<BlockHash>, tokens: &[u32]) -> BlockHash {
        let half = |state: &std::collections::hash_map::RandomState| {
            let mut h = state.build_hasher();
            match parent {
                None => h.write_u8(0),
                Some(BlockHash(p)) => {
                    h.write_u8(1);
                    h.write_u128(p);
                }
            }
            h.write_usize(tokens.len());
            for &t in tokens {
                h.write_u32(t);
            }
            h.finish()
        };
        BlockHash((u128::from(half(&self.high)) << 64) | u128::from(half(&self.low)))
    }

    /// The chained hashes of the full blocks of `tokens`, continuing from `parent`.
    pub(crate) fn chain<'a>(
        &'a self,
        mut parent: Option<BlockHash>,
        tokens: &'a [u32],
        block_size: usize,
    ) -> impl Iterator<Item = BlockHash> + 'a {
        tokens.chunks_exact(block_size).map(move |block| {
            let h = self.hash(parent, block);
            parent = Some(h);
            h
        })
    }
}
