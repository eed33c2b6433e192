//! The paged KV cache's block bookkeeping (vLLM-style): which fixed-size block of the device's
//! KV pool holds each token of each sequence, prefix sharing between sequences, copy-free forks
//! with copy-on-write, and capacity accounting for the scheduler.
//!
//! Sans-IO: this module owns no tensor data and touches no device. [`BlockManager`] answers with
//! [`BlockTable`]s and [`CopyBlock`] commands that the engine executes; it never blocks and needs
//! no clock. The K/V tensors themselves, and the attention kernels that read them through block
//! tables, live with the engine's backends.
//!
//! Lifecycle of a sequence: [`BlockManager::allocate`] (prompt; returns the cached prefix
//! length) → engine writes K/V → [`BlockManager::commit`] → per step
//! [`BlockManager::append_slots`] (execute returned copies first) → write → `commit` → ... →
//! [`BlockManager::free`]. [`BlockManager::fork`] splits a sequence for parallel sampling.

mod block;
mod block_table;
mod error;
mod invariants;
mod manager;

#[cfg(test)]
mod tests;

pub use block::{BlockHash, BlockId, CopyBlock};
pub use block_table::BlockTable;
pub use error::KvError;
pub use manager::{BlockManager, PrefixCacheStats};
