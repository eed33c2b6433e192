//! The errors of the KV-cache block manager. Every variant is a per-request condition the
//! scheduler can act on (wait, preempt, reject); none means the manager's state is damaged.

/// Why the block manager refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// Not enough free or evictable blocks; nothing was allocated. The scheduler should wait
    /// for sequences to finish, or preempt one.
    #[error("out of KV-cache blocks: needed {needed}, available {available}")]
    OutOfBlocks { needed: usize, available: usize },

    /// A sequence must start with at least one token: the engine needs logits for its last one.
    #[error("cannot allocate KV-cache blocks for an empty prompt")]
    EmptyPrompt,

    /// `block_size` must be at least one token slot.
    #[error("invalid KV-cache block size {block_size}: must be at least 1")]
    InvalidBlockSize { block_size: usize },

    /// The pool must hold at least one block, and no more than block ids can name.
    #[error("invalid KV-cache block count {num_blocks}: must be between 1 and {max}")]
    InvalidBlockCount { num_blocks: usize, max: usize },

    /// Each token slot must take at least one byte.
    #[error("invalid KV-cache bytes per token slot {bytes_per_token_slot}: must be at least 1")]
    InvalidSlotSize { bytes_per_token_slot: usize },

    /// The memory budget does not fit even one block.
    #[error(
        "KV-cache memory budget of {budget_bytes} bytes does not fit one block of {bytes_per_block} bytes"
    )]
    BudgetTooSmall {
        budget_bytes: usize,
        bytes_per_block: usize,
    },
}
