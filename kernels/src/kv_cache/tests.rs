//! Unit tests of the block manager: prefix sharing, revival, eviction order, fork and
//! copy-on-write, all-or-nothing failures, capacity. The randomized state-machine test is in
//! `tests/state_machine.rs`.

mod state_machine;

use crate::kv_cache::{BlockId, BlockManager, BlockTable, CopyBlock, KvError};

/// Token ids `start..start + len`, so distinct ranges never share content.
fn tokens(start: u32, len: usize) -> Vec<u32> {
    (start..start + len as u32).collect()
}

fn manager(num_blocks: usize, block_size: usize) -> BlockManager {
    match BlockManager::new(num_blocks, block_size) {
        Ok(m) => m,
        Err(e) => panic!("valid test parameters rejected: {e}"),
    }
}

fn allocate(m: &mut BlockManager, prompt: &[u32]) -> (BlockTable, usize) {
    match m.allocate(prompt) {
        Ok(r) => r,
        Err(e) => panic!("allocate of {} tokens failed: {e}", prompt.len()),
    }
}

fn check(m: &BlockManager, live: &[&BlockTable]) {
    if let Err(e) = m.check_invariants(live) {
        panic!("invariant violated: {e}");
    }
}

/// A stand-in for device memory: one token id per slot, so tests can see what a block holds.
struct Device {
    block_size: usize,
    slots: Vec<Option<u32>>,
}

impl Device {
    fn new(m: &BlockManager) -> Self {
        Self {
            block_size: m.block_size(),
            slots: vec![None; m.num_blocks() * m.block_size()],
        }
    }

    fn copy(&mut self, copies: &[CopyBlock]) {
        for c in copies {
            let (src, dst) = (
                c.src.index() * self.block_size,
                c.dst.index() * self.block_size,
            );
            self.slots.copy_within(src..src + self.block_size, dst);
        }
    }

    fn write(&mut self, table: &BlockTable, from: usize, tokens: &[u32]) {
        for (p, &t) in tokens.iter().enumerate().skip(from) {
            let slot = table
                .slot_index(p)
                .expect("position within the reserved slots");
            self.slots[slot] = Some(t);
        }
    }

    fn read(&self, table: &BlockTable) -> Vec<Option<u32>> {
        (0..table.num_tokens())
            .map(|p| self.slots[table.slot_index(p).expect("position in range")])
            .collect()
    }
}

fn written(tokens: &[u32]) -> Vec<Option<u32>> {
    tokens.iter().copied().map(Some).collect()
}

#[test]
fn prefix_sharing_reuses_committed_full_blocks_and_reports_computed_tokens() {
    let mut m = manager(16, 4);
    let first = tokens(100, 10);
    let (mut a, computed) = allocate(&mut m, &first);
    assert_eq!(computed, 0);
    m.commit(&mut a, &first);

    let mut second = first[..8].to_vec();
    second.extend(tokens(500, 3));
    let (b, computed) = allocate(&mut m, &second);
    assert_eq!(computed, 8);
    assert_eq!(b.blocks()[..2], a.blocks()[..2]);
    assert_ne!(b.blocks()[2], a.blocks()[2]);
    assert_eq!(m.num_used_blocks(), 4, "3 for a, 1 more for b");
    let stats = m.prefix_cache_stats();
    assert_eq!((stats.queries, stats.hits), (21, 8));
    check(&m, &[&a, &b]);
}

#[test]
fn never_reports_the_whole_prompt_as_computed() {
    let mut m = manager(16, 4);
    let prompt = tokens(0, 8);
    let (mut a, _) = allocate(&mut m, &prompt);
    m.commit(&mut a, &prompt);

    let (b, computed) = allocate(&mut m, &prompt);
    assert_eq!(
        computed, 4,
        "the last block holds the last token and is recomputed"
    );
    assert_eq!(b.blocks()[0], a.blocks()[0]);
    assert_ne!(b.blocks()[1], a.blocks()[1]);
    check(&m, &[&a, &b]);
}

#[test]
fn uncommitted_blocks_are_not_shared() {
    let mut m = manager(16, 4);
    let prompt = tokens(0, 9);
    let (a, _) = allocate(&mut m, &prompt);
    let (b, computed) = allocate(&mut m, &prompt);
    assert_eq!(computed, 0);
    assert!(a.blocks().iter().all(|x| !b.blocks().contains(x)));
    check(&m, &[&a, &b]);
}

#[test]
fn commit_registers_blocks_filled_by_decode() {
    let mut m = manager(16, 4);
    let mut seq = tokens(0, 3);
    let (mut a, _) = allocate(&mut m, &seq);
    m.commit(&mut a, &seq);
    for t in 3..9 {
        assert_eq!(m.append_slots(&mut a, 1), Ok(vec![]));
        seq.push(t);
        m.commit(&mut a, &seq);
    }
    let mut prompt = seq[..8].to_vec();
    prompt.push(77);
    let (b, computed) = allocate(&mut m, &prompt);
    assert_eq!(computed, 8);
    assert_eq!(b.blocks()[..2], a.blocks()[..2]);
    check(&m, &[&a, &b]);
}

#[test]
fn freed_prefix_is_revived_from_the_cache() {
    let mut m = manager(8, 4);
    let prompt = tokens(0, 12);
    let (mut a, _) = allocate(&mut m, &prompt);
    m.commit(&mut a, &prompt);
    let original = a.blocks().to_vec();
    m.free(a);
    assert_eq!(m.num_free_blocks(), 8, "cached blocks count as allocatable");
    assert_eq!(m.num_cached_blocks(), 3);
    assert_eq!(m.num_used_blocks(), 0);
    check(&m, &[]);

    let mut longer = prompt.clone();
    longer.push(99);
    let (b, computed) = allocate(&mut m, &longer);
    assert_eq!(computed, 12);
    assert_eq!(b.blocks()[..3], original[..]);
    assert_eq!(m.num_cached_blocks(), 0);
    check(&m, &[&b]);
}

#[test]
fn cached_blocks_are_evicted_only_when_the_free_list_is_empty() {
    let mut m = manager(4, 4);
    let prompt = tokens(0, 8);
    let (mut a, _) = allocate(&mut m, &prompt);
    m.commit(&mut a, &prompt);
    let [a0, a1] = [a.blocks()[0], a.blocks()[1]];
    m.free(a);
    assert_eq!(m.num_cached_blocks(), 2);

    // Two free blocks suffice: nothing is evicted.
    let (b, _) = allocate(&mut m, &tokens(1000, 8));
    assert_eq!(m.num_cached_blocks(), 2);
    assert!(!b.blocks().contains(&a0) && !b.blocks().contains(&a1));
    m.free(b);

    // Three blocks need one eviction: the tail block of the cached prefix goes first.
    let (c, _) = allocate(&mut m, &tokens(2000, 12));
    assert_eq!(m.num_cached_blocks(), 1);
    assert!(c.blocks().contains(&a1) && !c.blocks().contains(&a0));
    m.free(c);

    let mut again = prompt.clone();
    again.push(5);
    let (d, computed) = allocate(&mut m, &again);
    assert_eq!(
        computed, 4,
        "the surviving first block still serves the prefix"
    );
    assert_eq!(d.blocks()[0], a0);
    check(&m, &[&d]);
}

#[test]
fn least_recently_freed_prefix_is_evicted_first() {
    let mut m = manager(4, 2);
    let (p, q) = (tokens(0, 4), tokens(100, 4));
    let (mut a, _) = allocate(&mut m, &p);
    m.commit(&mut a, &p);
    let (mut b, _) = allocate(&mut m, &q);
    m.commit(&mut b, &q);
    m.free(a);
    m.free(b);
    // Evict two of four cached blocks: both of p's, which was freed first.
    let (c, _) = allocate(&mut m, &tokens(500, 4));
    m.free(c);
    let (d, computed_q) = allocate(&mut m, &[q, vec![9]].concat());
    assert_eq!(computed_q, 4);
    m.free(d);
    let (_, computed_p) = allocate(&mut m, &[p, vec![9]].concat());
    assert_eq!(computed_p, 0);
}

#[test]
fn fork_shares_blocks_then_copy_on_write_leaves_the_parent_untouched() {
    let mut m = manager(8, 4);
    let mut device = Device::new(&m);
    let prompt = tokens(0, 6);
    let (mut parent, _) = allocate(&mut m, &prompt);
    device.write(&parent, 0, &prompt);
    m.commit(&mut parent, &prompt);

    let mut child = m.fork(&parent);
    assert_eq!(child.blocks(), parent.blocks());
    assert_eq!(m.num_used_blocks(), 2, "a fork copies nothing");
    check(&m, &[&parent, &child]);

    let shared_tail = parent.blocks()[1];
    let copies = m.append_slots(&mut child, 1).expect("room for one token");
    let new_tail = child.blocks()[1];
    assert_eq!(
        copies,
        vec![CopyBlock {
            src: shared_tail,
            dst: new_tail
        }]
    );
    assert_ne!(new_tail, shared_tail);
    assert_eq!(
        child.blocks()[0],
        parent.blocks()[0],
        "full blocks stay shared"
    );
    assert_eq!(parent.blocks()[1], shared_tail);
    device.copy(&copies);
    let child_tokens = [prompt.clone(), vec![42]].concat();
    device.write(&child, 6, &child_tokens);
    assert_eq!(device.read(&parent), written(&prompt));
    assert_eq!(device.read(&child), written(&child_tokens));

    // The parent is now the tail's only owner: it writes in place.
    assert_eq!(m.append_slots(&mut parent, 1), Ok(vec![]));
    assert_eq!(parent.blocks()[1], shared_tail);
    let parent_tokens = [prompt.clone(), vec![7]].concat();
    device.write(&parent, 6, &parent_tokens);
    assert_eq!(device.read(&child), written(&child_tokens));
    assert_eq!(device.read(&parent), written(&parent_tokens));
    check(&m, &[&parent, &child]);

    m.free(parent);
    m.free(child);
    check(&m, &[]);
    assert_eq!(m.num_used_blocks(), 0);
}

#[test]
fn fork_with_a_full_tail_needs_no_copy() {
    let mut m = manager(8, 4);
    let (parent, _) = allocate(&mut m, &tokens(0, 8));
    let mut child = m.fork(&parent);
    assert_eq!(m.append_slots(&mut child, 1), Ok(vec![]));
    assert_eq!(child.blocks()[..2], parent.blocks()[..]);
    assert_eq!(child.blocks().len(), 3);
    check(&m, &[&parent, &child]);
}

#[test]
fn allocation_failures_change_nothing() {
    let mut m = manager(3, 4);
    let (a, _) = allocate(&mut m, &tokens(0, 8));
    let before = format!("{m:?}");
    assert_eq!(
        m.allocate(&tokens(100, 9)).map(|(_, c)| c),
        Err(KvError::OutOfBlocks {
            needed: 3,
            available: 1
        })
    );
    assert!(!m.can_allocate(9));
    assert_eq!(format!("{m:?}"), before);
    check(&m, &[&a]);
}

#[test]
fn append_failures_change_nothing() {
    let mut m = manager(3, 4);
    let (mut parent, _) = allocate(&mut m, &tokens(0, 6));
    let mut child = m.fork(&parent);
    let before = format!("{m:?}");
    // Copy-on-write of the shared tail plus one new block: two needed, one free.
    assert!(!m.can_append_slots(&child, 3));
    assert_eq!(
        m.append_slots(&mut child, 3),
        Err(KvError::OutOfBlocks {
            needed: 2,
            available: 1
        })
    );
    assert_eq!(format!("{m:?}"), before);
    assert_eq!((child.num_tokens(), child.blocks()), (6, parent.blocks()));
    // The parent's tail is shared too: a copy plus two new blocks.
    assert_eq!(
        m.append_slots(&mut parent, 7),
        Err(KvError::OutOfBlocks {
            needed: 3,
            available: 1
        })
    );
    assert_eq!(format!("{m:?}"), before);
    assert_eq!(parent.num_tokens(), 6);
    check(&m, &[&parent, &child]);
}

#[test]
fn reviving_cached_blocks_counts_against_availability() {
    let mut m = manager(3, 4);
    let prompt = tokens(0, 8);
    let (mut a, _) = allocate(&mut m, &prompt);
    m.commit(&mut a, &prompt);
    m.free(a);
    // Two cached blocks match, two more are needed, and only one block is neither.
    let longer = [prompt.clone(), tokens(50, 5)].concat();
    assert_eq!(
        m.allocate(&longer).map(|(_, c)| c),
        Err(KvError::OutOfBlocks {
            needed: 2,
            available: 1
        })
    );
    assert_eq!(
        m.num_cached_blocks(),
        2,
        "the failed attempt evicted nothing"
    );
    let (b, computed) = allocate(&mut m, &[prompt, vec![1]].concat());
    assert_eq!(computed, 8);
    check(&m, &[&b]);
}

#[test]
fn duplicate_content_is_registered_once() {
    let mut m = manager(8, 4);
    let prompt = tokens(0, 9);
    let (mut a, _) = allocate(&mut m, &prompt);
    let (mut b, _) = allocate(&mut m, &prompt);
    m.commit(&mut a, &prompt);
    m.commit(&mut b, &prompt);
    check(&m, &[&a, &b]);
    let a_blocks = a.blocks().to_vec();
    m.free(b);
    m.free(a);
    assert_eq!(
        m.num_cached_blocks(),
        2,
        "only a's two full blocks stay cached"
    );
    check(&m, &[]);
    let (c, computed) = allocate(&mut m, &prompt);
    assert_eq!(computed, 8);
    assert_eq!(c.blocks()[..2], a_blocks[..2]);
}

#[test]
fn reset_prefix_cache_forgets_every_prefix() {
    let mut m = manager(8, 4);
    let prompt = tokens(0, 9);
    let (mut a, _) = allocate(&mut m, &prompt);
    m.commit(&mut a, &prompt);
    let (b, _) = allocate(&mut m, &tokens(100, 5));
    m.free(b);
    m.reset_prefix_cache();
    check(&m, &[&a]);
    let (c, computed) = allocate(&mut m, &prompt);
    assert_eq!(computed, 0);
    m.free(a);
    m.free(c);
    assert_eq!(m.num_cached_blocks(), 0);
    check(&m, &[]);
}

#[test]
fn slots_map_positions_to_blocks_and_offsets() {
    let mut m = manager(8, 4);
    let (mut a, _) = allocate(&mut m, &tokens(0, 5));
    let [b0, b1] = [a.blocks()[0], a.blocks()[1]];
    assert_eq!(a.slot(0), Some((b0, 0)));
    assert_eq!(a.slot(3), Some((b0, 3)));
    assert_eq!(a.slot(4), Some((b1, 0)));
    assert_eq!(a.slot(5), None, "beyond the reserved slots");
    assert_eq!(a.slot_index(4), Some(b1.index() * 4));
    m.append_slots(&mut a, 4).expect("room");
    assert_eq!(a.num_tokens(), 9);
    assert_eq!(a.blocks().len(), 3);
    assert_eq!(a.slot(8), Some((a.blocks()[2], 0)));
}

#[test]
fn capacity_accounting() {
    let mut m = manager(10, 16);
    assert_eq!(m.blocks_needed(0), 0);
    assert_eq!(m.blocks_needed(16), 1);
    assert_eq!(m.blocks_needed(17), 2);
    assert!(m.can_allocate(160));
    assert!(!m.can_allocate(161));
    let (a, _) = allocate(&mut m, &tokens(0, 40));
    assert_eq!((m.num_used_blocks(), m.num_free_blocks()), (3, 7));
    assert!((m.usage() - 0.3).abs() < 1e-6);
    m.free(a);
    assert_eq!(m.usage(), 0.0);
}

#[test]
fn constructors_validate_their_arguments() {
    let m = BlockManager::with_memory_budget(1000, 16, 8).expect("7 blocks of 128 bytes");
    assert_eq!((m.num_blocks(), m.block_size()), (7, 16));
    assert_eq!(
        BlockManager::with_memory_budget(100, 16, 8).map(|m| m.num_blocks()),
        Err(KvError::BudgetTooSmall {
            budget_bytes: 100,
            bytes_per_block: 128
        })
    );
    assert!(matches!(
        BlockManager::with_memory_budget(1000, 0, 8),
        Err(KvError::InvalidBlockSize { block_size: 0 })
    ));
    assert!(matches!(
        BlockManager::with_memory_budget(1000, 16, 0),
        Err(KvError::InvalidSlotSize { .. })
    ));
    assert!(matches!(
        BlockManager::new(0, 16),
        Err(KvError::InvalidBlockCount { num_blocks: 0, .. })
    ));
    let mut m = manager(4, 4);
    assert_eq!(m.allocate(&[]).map(|(_, c)| c), Err(KvError::EmptyPrompt));
}

#[test]
fn fresh_blocks_are_handed_out_in_order() {
    let mut m = manager(4, 2);
    let (a, _) = allocate(&mut m, &tokens(0, 5));
    assert_eq!(a.blocks(), [BlockId(0), BlockId(1), BlockId(2)]);
}

#[test]
fn invariant_check_detects_a_missing_table() {
    let mut m = manager(8, 4);
    let (a, _) = allocate(&mut m, &tokens(0, 5));
    let b = m.fork(&a);
    check(&m, &[&a, &b]);
    assert!(
        m.check_invariants(&[&a]).is_err(),
        "b's references are unaccounted"
    );
    assert!(m.check_invariants(&[]).is_err());
}
