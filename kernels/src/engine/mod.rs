//! Continuous batching: [`Engine::step`] runs one iteration over every active sequence.
//!
//! Each step gives every running sequence its next tokens (one for a decoding sequence, a chunk
//! of at most `max_prefill_chunk` for one still reading its prompt), then admits waiting
//! sequences in arrival order while the step's token budget and the KV cache allow, and runs
//! them all as one batch through the model. Sequences are added, cancelled and finish between
//! steps; a finished or cancelled sequence's blocks are released at once. When the cache runs
//! out mid-decode, the most recently admitted sequence is preempted (its blocks freed, to be
//! recomputed later from its tokens — the sampler state is kept, so its output is unchanged).
//!
//! The engine is synchronous and single-threaded at this level (the backend parallelises inside
//! each op); the node drives it from a dedicated thread.

mod request;
mod sequence;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;

pub use request::{FinishReason, RequestError, RequestId, RequestKind, SeqEvent, SequenceRequest};
use sequence::Sequence;

use crate::backend::Backend;
use crate::dtype::DType;
use crate::kv_cache::{BlockManager, KvError};
use crate::model::{ForwardSeq, KvStorage, Model, Workspace};
use crate::sampler::SequenceSampler;

/// Most choices one request may ask for.
pub const MAX_CHOICES: usize = 128;

/// Sizing and batching knobs.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Token slots per KV block.
    pub block_size: usize,
    /// Bytes of KV cache to allocate.
    pub kv_cache_bytes: usize,
    /// Tokens processed per step at most (decode tokens + prefill chunks).
    pub max_batch_tokens: usize,
    /// Prompt tokens of one sequence per step at most (chunked prefill).
    pub max_prefill_chunk: usize,
    /// Sequences in the running batch at most.
    pub max_running: usize,
    /// What the KV cache holds keys and values as.
    pub kv_cache_dtype: KvCacheDtype,
}

/// What the KV cache stores keys and values as: f32 by default, so that attention reads exactly
/// what the projections computed (HuggingFace's outputs in f32 compute, which the tests hold
/// the engine to). The 16-bit choices halve the cache's memory, so the same budget holds twice
/// the tokens, and halve the bytes attention reads per step at long contexts; each key and
/// value is rounded once, to nearest, when written, and attention is otherwise the same
/// computation on the rounded values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvCacheDtype {
    /// This element type, whatever the weights'.
    Fixed(DType),
    /// The weights' dtype (vLLM's `--kv-cache-dtype auto`): f16 or bf16 for a 16-bit
    /// checkpoint, f32 for an f32 one.
    Auto,
}

impl Default for KvCacheDtype {
    fn default() -> Self {
        KvCacheDtype::Fixed(DType::F32)
    }
}

impl KvCacheDtype {
    /// The spellings [`KvCacheDtype::from_str`](std::str::FromStr) takes (besides the long
    /// names [`DType::from_hf_name`] knows).
    pub const NAMES: &'static str = "auto, f32, f16, bf16";

    /// The element type of a cache for weights of `weights`.
    pub fn resolve(self, weights: DType) -> DType {
        match self {
            KvCacheDtype::Fixed(dtype) => dtype,
            KvCacheDtype::Auto => weights,
        }
    }
}

impl std::str::FromStr for KvCacheDtype {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "auto" {
            return Ok(KvCacheDtype::Auto);
        }
        DType::from_hf_name(s)
            .map(KvCacheDtype::Fixed)
            .ok_or_else(|| {
                format!(
                    "unknown KV cache dtype {s:?} (expected one of {})",
                    KvCacheDtype::NAMES
                )
            })
    }
}

impl std::fmt::Display for KvCacheDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KvCacheDtype::Fixed(dtype) => dtype.fmt(f),
            KvCacheDtype::Auto => f.write_str("auto"),
        }
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            block_size: 16,
            kv_cache_bytes: 512 << 20,
            max_batch_tokens: 512,
            max_prefill_chunk: 512,
            max_running: 256,
            kv_cache_dtype: KvCacheDtype::default(),
        }
    }
}

/// Why the engine could not be built.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("KV cache: {0}")]
    KvCache(#[from] KvError),
    #[error("invalid engine setting `{field}` = {value}: {reason}")]
    Config {
        field: &'static str,
        value: usize,
        reason: &'static str,
    },
}

/// A snapshot of the engine's load, for schedulers and metrics.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EngineStats {
    pub running: usize,
    pub waiting: usize,
    pub kv_blocks_total: usize,
    pub kv_blocks_used: usize,
    pub kv_blocks_cached: usize,
    pub prefix_cache_queries: u64,
    pub prefix_cache_hits: u64,
    pub preemptions: u64,
}

/// One model, its KV cache and the sequences using them.
pub struct Engine<B: Backend> {
    model: Model<B>,
    kv: KvStorage<B>,
    blocks: BlockManager,
    workspace: Workspace<B>,
    config: EngineConfig,
    /// Admitted, in admission order; each holds a block table.
    running: Vec<Sequence>,
    /// Not admitted yet (or preempted), in the order they will be admitted.
    waiting: VecDeque<Sequence>,
    next_request: RequestId,
    next_arrival: u64,
    preemptions: u64,
}

impl<B: Backend> Engine<B> {
    /// Builds an engine around `model`, allocating the KV cache from `config.kv_cache_bytes`.
    pub fn new(model: Model<B>, config: EngineConfig) -> Result<Self, EngineError> {
        for (field, value) in [
            ("block_size", config.block_size),
            ("max_batch_tokens", config.max_batch_tokens),
            ("max_prefill_chunk", config.max_prefill_chunk),
            ("max_running", config.max_running),
        ] {
            if value == 0 {
                return Err(EngineError::Config {
                    field,
                    value,
                    reason: "must be positive",
                });
            }
        }
        let kv_dtype = config.kv_cache_dtype.resolve(model.weight_dtype());
        let blocks = BlockManager::with_memory_budget(
            config.kv_cache_bytes,
            config.block_size,
            model.kv_bytes_per_token(kv_dtype),
        )?;
        let kv = model.kv_storage(blocks.num_blocks(), config.block_size, kv_dtype);
        Ok(Engine {
            model,
            kv,
            blocks,
            workspace: Workspace::default(),
            config,
            running: Vec::new(),
            waiting: VecDeque::new(),
            next_request: 0,
            next_arrival: 0,
            preemptions: 0,
        })
    }

    pub fn model(&self) -> &Model<B> {
        &self.model
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Whether any sequence is running or waiting.
    pub fn has_work(&self) -> bool {
        !self.running.is_empty() || !self.waiting.is_empty()
    }

    pub fn stats(&self) -> EngineStats {
        let prefix = self.blocks.prefix_cache_stats();
        EngineStats {
            running: self.running.len(),
            waiting: self.waiting.len(),
            kv_blocks_total: self.blocks.num_blocks(),
            kv_blocks_used: self.blocks.num_used_blocks(),
            kv_blocks_cached: self.blocks.num_cached_blocks(),
            prefix_cache_queries: prefix.queries,
            prefix_cache_hits: prefix.hits,
            preemptions: self.preemptions,
        }
    }

    /// Checks a request and queues it. Nothing is computed until the next [`Engine::step`].
    pub fn add(&mut self, request: SequenceRequest) -> Result<RequestId, RequestError> {
        let c = self.model.config();
        if request.prompt.is_empty() {
            return Err(RequestError::EmptyPrompt);
        }
        if let Some(&token) = request.prompt.iter().find(|&&t| t as usize >= c.vocab_size) {
            return Err(RequestError::TokenOutOfVocabulary {
                token,
                vocab_size: c.vocab_size,
            });
        }
        let limit = c.max_position_embeddings;
        let generate = request.kind == RequestKind::Generate;
        // A generation needs room for at least one new token.
        if request.prompt.len() + usize::from(generate) > limit {
            return Err(RequestError::ContextExceeded {
                prompt_tokens: request.prompt.len(),
                limit,
            });
        }
        if generate {
            if request.n == 0 || request.n > MAX_CHOICES {
                return Err(RequestError::InvalidN {
                    n: request.n,
                    max: MAX_CHOICES,
                });
            }
            if request.max_tokens == 0 {
                return Err(RequestError::ZeroMaxTokens);
            }
            request.sampling.validate()?;
        }
        let needed = self
            .blocks
            .blocks_needed(request.prompt.len() + usize::from(generate));
        if needed > self.blocks.num_blocks() {
            return Err(RequestError::CacheTooSmall {
                needed,
                capacity: self.blocks.num_blocks(),
            });
        }

        let id = self.next_request;
        self.next_request += 1;
        let max_tokens = request.max_tokens.min(limit - request.prompt.len());
        let sampler = SequenceSampler::new(request.sampling.clone(), &request.prompt, 0);
        self.waiting.push_back(Sequence::new(
            id,
            self.next_arrival,
            request,
            max_tokens,
            sampler,
        ));
        self.next_arrival += 1;
        Ok(id)
    }

    /// Drops every choice of `request`, freeing its blocks. Returns whether it was active.
    pub fn cancel(&mut self, request: RequestId) -> bool {
        let mut found = false;
        let blocks = &mut self.blocks;
        self.running.retain_mut(|s| {
            if s.request != request {
                return true;
            }
            found = true;
            if let Some(table) = s.table.take() {
                blocks.free(table);
            }
            false
        });
        self.waiting.retain(|s| {
            let hit = s.request == request;
            found |= hit;
            !hit
        });
        found
    }

    /// Runs one batch: decode tokens for running sequences, prefill chunks for new ones.
    /// Returns what the step produced; an empty list when there was nothing to do.
    pub fn step(&mut self) -> Vec<SeqEvent> {
        let mut budget = self.config.max_batch_tokens;
        let mut copies = Vec::new();
        // (index into `running`, tokens this step)
        let mut plan: Vec<(usize, usize)> = Vec::new();

        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            let chunk = self.running[i]
                .pending()
                .min(self.config.max_prefill_chunk)
                .min(budget);
            match self.reserve(i, chunk) {
                Ok(mut c) => {
                    copies.append(&mut c);
                    plan.push((i, chunk));
                    budget -= chunk;
                    i += 1;
                }
                Err(_) => {
                    // Preempt from the back; later sequences are not scheduled yet.
                    let victim = self.running.len() - 1;
                    if victim == 0 {
                        // Alone and still out of blocks: the cache cannot hold this sequence.
                        let mut events = Vec::new();
                        self.finish_out_of_cache(0, &mut events);
                        return events;
                    }
                    self.preempt(victim);
                }
            }
        }
        while budget > 0 && self.running.len() < self.config.max_running {
            let Some(mut seq) = self.waiting.pop_front() else {
                break;
            };
            match self.blocks.allocate(&seq.tokens) {
                Ok((table, cached)) => {
                    seq.table = Some(table);
                    // Embeddings and prompt logits need every position computed, cached or not
                    // (rewriting a shared block stores the same bits: K/V at a position depend
                    // only on the tokens up to it).
                    let every_position = seq.kind == RequestKind::Embed || seq.prompt_logits;
                    seq.computed = if every_position { 0 } else { cached };
                    let chunk = seq.pending().min(self.config.max_prefill_chunk).min(budget);
                    self.running.push(seq);
                    plan.push((self.running.len() - 1, chunk));
                    budget -= chunk;
                }
                Err(_) => {
                    self.waiting.push_front(seq);
                    break;
                }
            }
        }
        if plan.is_empty() {
            return Vec::new();
        }

        for copy in &copies {
            self.model.copy_block(&mut self.kv, copy.src.0, copy.dst.0);
        }
        let tables: Vec<Vec<u32>> = plan
            .iter()
            .map(|&(i, _)| self.running[i].block_ids())
            .collect();
        let forward: Vec<ForwardSeq<'_>> = plan
            .iter()
            .zip(&tables)
            .map(|(&(i, chunk), table)| {
                let s = &self.running[i];
                ForwardSeq {
                    tokens: &s.tokens[s.computed..s.computed + chunk],
                    first_position: s.computed,
                    block_table: table,
                    output: s.output_for(chunk),
                }
            })
            .collect();
        let outputs = self
            .model
            .forward(&mut self.kv, &forward, &mut self.workspace);
        drop(forward);

        let mut events = Vec::new();
        let mut finished = Vec::new();
        let mut forks = Vec::new();
        for (&(i, chunk), out) in plan.iter().zip(outputs) {
            let vocab = self.model.config().vocab_size;
            let seq = &mut self.running[i];
            let first = seq.computed;
            seq.computed += chunk;
            if let Some(table) = seq.table.as_mut() {
                self.blocks.commit(table, &seq.tokens[..seq.computed]);
            }
            if let Some(event) = seq.take_prompt_logits(first, &out, vocab) {
                events.push(event);
            }
            match seq.kind {
                RequestKind::Embed => {
                    seq.accumulate_hidden(&out);
                    if seq.pending() == 0 {
                        events.push(seq.embedding_event());
                        finished.push(i);
                    }
                }
                RequestKind::Generate => {
                    if seq.pending() > 0 {
                        continue;
                    }
                    // The first sample of an `n > 1` request: fork the other choices now,
                    // sharing every prompt block.
                    for choice in 1..std::mem::take(&mut seq.unforked) {
                        let table = seq.table.as_ref().map(|t| self.blocks.fork(t));
                        forks.push(seq.fork(choice, table));
                    }
                    let logits = out.last();
                    let event = seq.sample(logits, self.model.config().max_position_embeddings);
                    if let SeqEvent::Token {
                        finish: Some(_), ..
                    } = &event
                    {
                        finished.push(i);
                    }
                    events.push(event);
                    for child in &mut forks {
                        if child.request == seq.request && child.computed == seq.computed {
                            let event =
                                child.sample(logits, self.model.config().max_position_embeddings);
                            if let SeqEvent::Token {
                                finish: Some(_), ..
                            } = &event
                            {
                                child.finished = true;
                            }
                            events.push(event);
                        }
                    }
                }
            }
        }
        for i in finished.into_iter().rev() {
            let seq = self.running.remove(i);
            if let Some(table) = seq.table {
                self.blocks.free(table);
            }
        }
        for child in forks {
            if child.finished {
                if let Some(table) = child.table {
                    self.blocks.free(table);
                }
            } else {
                self.running.push(child);
            }
        }
        events
    }

    /// Makes room for `chunk` more tokens of `running[i]`.
    fn reserve(
        &mut self,
        i: usize,
        chunk: usize,
    ) -> Result<Vec<crate::kv_cache::CopyBlock>, KvError> {
        let seq = &mut self.running[i];
        let Some(table) = seq.table.as_mut() else {
            return Ok(Vec::new());
        };
        let needed = (seq.computed + chunk).saturating_sub(table.num_tokens());
        if needed == 0 {
            return Ok(Vec::new());
        }
        self.blocks.append_slots(table, needed)
    }

    fn preempt(&mut self, i: usize) {
        let mut seq = self.running.remove(i);
        if let Some(table) = seq.table.take() {
            self.blocks.free(table);
        }
        seq.computed = 0;
        self.preemptions += 1;
        // Keep arrival order among the waiting: a preempted sequence goes back ahead of newer ones.
        let at = self
            .waiting
            .iter()
            .position(|w| w.arrival > seq.arrival)
            .unwrap_or(self.waiting.len());
        self.waiting.insert(at, seq);
    }

    fn finish_out_of_cache(&mut self, i: usize, events: &mut Vec<SeqEvent>) {
        let seq = self.running.remove(i);
        if let Some(event) = seq.length_event() {
            events.push(event);
        }
        if let Some(table) = seq.table {
            self.blocks.free(table);
        }
    }

    /// Checks the KV bookkeeping against the live sequences (tests).
    #[cfg(test)]
    fn check_blocks(&self) -> Result<(), String> {
        let live: Vec<_> = self
            .running
            .iter()
            .filter_map(|s| s.table.as_ref())
            .collect();
        self.blocks.check_invariants(&live)
    }
}
