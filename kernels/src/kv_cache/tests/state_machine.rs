//! Randomized state-machine test: random allocate / append / commit / fork / free (finish or
//! cancel) over prompts with shared prefixes, in a small pool, against a simulated device that
//! stores each slot's token id. After every operation the manager's invariants hold, every live
//! sequence still reads back its own tokens (no block was written while shared, and copies were
//! right), cached prefixes hand back the right content, and failed operations change nothing.
//! After freeing everything, every block is free or cached.

use proptest::prelude::*;

use crate::kv_cache::{BlockManager, BlockTable, CopyBlock, KvError};

#[derive(Debug, Clone)]
enum Op {
    Allocate {
        prompt: Vec<u32>,
    },
    Append {
        seq: usize,
        tokens: Vec<u32>,
    },
    /// Commit the first `tokens.len() - hold_back` tokens (a chunked prefill commits a prefix).
    Commit {
        seq: usize,
        hold_back: usize,
    },
    Fork {
        seq: usize,
    },
    Free {
        seq: usize,
        finish: bool,
    },
}

/// A few base prompts; allocations take a prefix of one plus a random tail, so prefixes repeat.
fn base(k: usize) -> Vec<u32> {
    (0..12).map(|i| ((i * 7 + k * 3) % 5) as u32).collect()
}

fn op() -> impl Strategy<Value = Op> {
    let token = 0u32..3;
    prop_oneof![
        3 => (0usize..3, 0usize..=12, prop::collection::vec(token.clone(), 0..6)).prop_map(
            |(k, len, tail)| {
                let mut prompt = base(k)[..len].to_vec();
                prompt.extend(tail);
                if prompt.is_empty() {
                    prompt.push(0);
                }
                Op::Allocate { prompt }
            }
        ),
        4 => (any::<usize>(), prop::collection::vec(token, 1..7))
            .prop_map(|(seq, tokens)| Op::Append { seq, tokens }),
        3 => (any::<usize>(), 0usize..3).prop_map(|(seq, hold_back)| Op::Commit { seq, hold_back }),
        2 => any::<usize>().prop_map(|seq| Op::Fork { seq }),
        2 => (any::<usize>(), any::<bool>()).prop_map(|(seq, finish)| Op::Free { seq, finish }),
    ]
}

struct Sim {
    m: BlockManager,
    /// One token id per device slot (`block * block_size + offset`).
    device: Vec<Option<u32>>,
    /// Live sequences and their tokens; every reserved slot has been written.
    live: Vec<(BlockTable, Vec<u32>)>,
}

impl Sim {
    fn tables(&self) -> Vec<&BlockTable> {
        self.live.iter().map(|(t, _)| t).collect()
    }

    fn check(&self) -> Result<(), TestCaseError> {
        self.m
            .check_invariants(&self.tables())
            .map_err(TestCaseError::fail)?;
        for (i, (table, tokens)) in self.live.iter().enumerate() {
            prop_assert_eq!(table.num_tokens(), tokens.len());
            for (p, &t) in tokens.iter().enumerate() {
                let slot = table.slot_index(p);
                prop_assert_eq!(
                    slot.and_then(|s| self.device[s]),
                    Some(t),
                    "sequence {} position {} was clobbered",
                    i,
                    p
                );
            }
        }
        Ok(())
    }

    /// Writes `tokens[from..]` into `live[seq]`'s slots, each of which must be exclusively owned.
    fn write(&mut self, seq: usize, from: usize) -> Result<(), TestCaseError> {
        let (table, tokens) = &self.live[seq];
        for (p, &t) in tokens.iter().enumerate().skip(from) {
            let Some((block, _)) = table.slot(p) else {
                return Err(TestCaseError::fail(format!("position {p} not reserved")));
            };
            let sharers = self
                .live
                .iter()
                .enumerate()
                .filter(|&(j, (other, _))| j != seq && other.blocks().contains(&block))
                .count();
            prop_assert_eq!(sharers, 0, "writing into {:?}, which is shared", block);
            let slot = table.slot_index(p).unwrap_or(usize::MAX);
            self.device[slot] = Some(t);
        }
        Ok(())
    }

    fn copy(&mut self, copies: &[CopyBlock]) {
        let bs = self.m.block_size();
        for c in copies {
            let (src, dst) = (c.src.index() * bs, c.dst.index() * bs);
            self.device.copy_within(src..src + bs, dst);
        }
    }

    fn apply(&mut self, op: Op) -> Result<(), TestCaseError> {
        let n = self.live.len();
        match op {
            Op::Allocate { prompt } => {
                let fits = self.m.can_allocate(prompt.len());
                let before = format!("{:?}", self.m);
                match self.m.allocate(&prompt) {
                    Ok((table, computed)) => {
                        prop_assert!(computed < prompt.len());
                        prop_assert_eq!(computed % self.m.block_size(), 0);
                        for (p, &t) in prompt.iter().enumerate().take(computed) {
                            let cached = table.slot_index(p).and_then(|s| self.device[s]);
                            prop_assert_eq!(cached, Some(t), "prefix cache served wrong K/V");
                        }
                        self.live.push((table, prompt));
                        self.write(n, computed)?;
                    }
                    Err(KvError::OutOfBlocks { .. }) => {
                        prop_assert!(!fits, "can_allocate promised room");
                        prop_assert_eq!(format!("{:?}", self.m), before);
                    }
                    Err(e) => return Err(TestCaseError::fail(format!("allocate: {e}"))),
                }
            }
            Op::Append { seq, tokens } if n > 0 => {
                let seq = seq % n;
                let fits = self.m.can_append_slots(&self.live[seq].0, tokens.len());
                let before = format!("{:?}", self.m);
                let old_blocks = self.live[seq].0.blocks().to_vec();
                let (table, _) = &mut self.live[seq];
                match self.m.append_slots(table, tokens.len()) {
                    Ok(copies) => {
                        prop_assert!(fits, "can_append_slots said no");
                        prop_assert!(copies.len() <= 1);
                        self.copy(&copies);
                        let (_, seq_tokens) = &mut self.live[seq];
                        let from = seq_tokens.len();
                        seq_tokens.extend(tokens);
                        self.write(seq, from)?;
                    }
                    Err(KvError::OutOfBlocks { .. }) => {
                        prop_assert!(!fits, "can_append_slots promised room");
                        prop_assert_eq!(format!("{:?}", self.m), before);
                        prop_assert_eq!(self.live[seq].0.blocks(), &old_blocks[..]);
                    }
                    Err(e) => return Err(TestCaseError::fail(format!("append: {e}"))),
                }
            }
            Op::Commit { seq, hold_back } if n > 0 => {
                let (table, tokens) = &mut self.live[seq % n];
                let upto = tokens.len().saturating_sub(hold_back);
                self.m.commit(table, &tokens[..upto]);
            }
            Op::Fork { seq } if n > 0 => {
                let (table, tokens) = &self.live[seq % n];
                let child = self.m.fork(table);
                let tokens = tokens.clone();
                self.live.push((child, tokens));
            }
            Op::Free { seq, finish } if n > 0 => {
                let (mut table, tokens) = self.live.swap_remove(seq % n);
                if finish {
                    self.m.commit(&mut table, &tokens);
                }
                self.m.free(table);
            }
            _ => {}
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_operations_keep_the_invariants(
        num_blocks in 3usize..12,
        block_size in 1usize..=4,
        ops in prop::collection::vec(op(), 1..60),
    ) {
        let m = BlockManager::new(num_blocks, block_size).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut sim = Sim { device: vec![None; num_blocks * block_size], m, live: Vec::new() };
        for op in ops {
            sim.apply(op)?;
            sim.check()?;
        }
        while let Some((table, _)) = sim.live.pop() {
            sim.m.free(table);
            sim.m.check_invariants(&sim.tables()).map_err(TestCaseError::fail)?;
        }
        prop_assert_eq!(sim.m.num_used_blocks(), 0);
        prop_assert_eq!(sim.m.num_free_blocks(), num_blocks);
        let stats = sim.m.prefix_cache_stats();
        prop_assert!(stats.hits <= stats.queries);
    }
}
