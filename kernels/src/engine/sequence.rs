//! One choice of one request inside the engine: its tokens, how many are computed, its block
//! table and its sampler.

use super::request::{FinishReason, RequestId, RequestKind, SeqEvent, SequenceRequest};
use crate::kv_cache::BlockTable;
use crate::model::{Output, SeqOutput};
use crate::sampler::SequenceSampler;

pub(super) struct Sequence {
    pub request: RequestId,
    pub choice: usize,
    pub arrival: u64,
    pub kind: RequestKind,
    /// Prompt followed by the generated tokens.
    pub tokens: Vec<u32>,
    pub prompt_len: usize,
    /// Leading tokens whose K/V are in the cache.
    pub computed: usize,
    pub table: Option<BlockTable>,
    pub sampler: SequenceSampler,
    pub max_tokens: usize,
    pub stop_token_ids: std::sync::Arc<[u32]>,
    /// Choices still to fork off at the first sample (`n`), 0 afterwards.
    pub unforked: usize,
    pub prompt_logits: bool,
    /// Prompt positions whose logits were already returned (a preempted sequence recomputes).
    prompt_logits_sent: usize,
    embedding_sum: Vec<f64>,
    /// Set on a forked child that finished on its very first token.
    pub finished: bool,
}

impl Sequence {
    pub fn new(
        request: RequestId,
        arrival: u64,
        req: SequenceRequest,
        max_tokens: usize,
        sampler: SequenceSampler,
    ) -> Self {
        Sequence {
            request,
            choice: 0,
            arrival,
            kind: req.kind,
            prompt_len: req.prompt.len(),
            tokens: req.prompt,
            computed: 0,
            table: None,
            sampler,
            max_tokens,
            stop_token_ids: req.stop_token_ids.into(),
            unforked: req.n,
            prompt_logits: req.prompt_logits,
            prompt_logits_sent: 0,
            embedding_sum: Vec::new(),
            finished: false,
        }
    }

    /// Tokens not yet computed.
    pub fn pending(&self) -> usize {
        self.tokens.len() - self.computed
    }

    pub fn block_ids(&self) -> Vec<u32> {
        self.table
            .as_ref()
            .map(|t| t.blocks().iter().map(|b| b.0).collect())
            .unwrap_or_default()
    }

    /// What the model should return for the next `chunk` tokens.
    pub fn output_for(&self, chunk: usize) -> Output {
        let end = self.computed + chunk;
        match self.kind {
            RequestKind::Embed => Output::AllHidden,
            RequestKind::Generate
                if self.prompt_logits
                    && end > self.prompt_logits_sent
                    && self.computed < self.prompt_len =>
            {
                Output::AllLogits
            }
            RequestKind::Generate if end == self.tokens.len() => Output::LastLogits,
            RequestKind::Generate => Output::None,
        }
    }

    /// The prompt-logits event for rows computed this step, if any were asked for.
    pub fn take_prompt_logits(
        &mut self,
        first: usize,
        out: &SeqOutput,
        vocab: usize,
    ) -> Option<SeqEvent> {
        if !self.prompt_logits || self.kind != RequestKind::Generate || out.rows == 0 {
            return None;
        }
        // Rows of this output are positions first..first+out.rows when all rows were returned.
        if out.rows != self.computed - first {
            return None;
        }
        let end = self.computed.min(self.prompt_len);
        let from = self.prompt_logits_sent.max(first);
        if from >= end {
            return None;
        }
        self.prompt_logits_sent = end;
        Some(SeqEvent::PromptLogits {
            request: self.request,
            first_position: from,
            rows: end - from,
            logits: out.values[(from - first) * vocab..(end - first) * vocab].to_vec(),
        })
    }

    pub fn accumulate_hidden(&mut self, out: &SeqOutput) {
        let width = out.values.len() / out.rows.max(1);
        if self.embedding_sum.is_empty() {
            self.embedding_sum = vec![0.0; width];
        }
        for row in out.values.chunks_exact(width) {
            for (s, v) in self.embedding_sum.iter_mut().zip(row) {
                *s += f64::from(*v);
            }
        }
    }

    pub fn embedding_event(&self) -> SeqEvent {
        let n = self.prompt_len as f64;
        let mean: Vec<f64> = self.embedding_sum.iter().map(|s| s / n).collect();
        let norm = mean.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
        SeqEvent::Embedding {
            request: self.request,
            embedding: mean.iter().map(|v| (v / norm) as f32).collect(),
            prompt_tokens: self.prompt_len,
        }
    }

    /// Samples the next token from `logits` and appends it.
    pub fn sample(&mut self, logits: &[f32], context_limit: usize) -> SeqEvent {
        let sampled = self.sampler.sample(logits);
        self.sampler.observe(sampled.token);
        self.tokens.push(sampled.token);
        let generated = self.tokens.len() - self.prompt_len;
        let finish = if self.stop_token_ids.contains(&sampled.token) {
            Some(FinishReason::Stop)
        } else if generated >= self.max_tokens || self.tokens.len() >= context_limit {
            Some(FinishReason::Length)
        } else {
            None
        };
        SeqEvent::Token {
            request: self.request,
            choice: self.choice,
            sampled,
            finish,
        }
    }

    /// A child choice sharing this sequence's prompt blocks (`table` from `BlockManager::fork`).
    pub fn fork(&self, choice: usize, table: Option<BlockTable>) -> Sequence {
        Sequence {
            request: self.request,
            choice,
            arrival: self.arrival,
            kind: self.kind,
            tokens: self.tokens.clone(),
            prompt_len: self.prompt_len,
            computed: self.computed,
            table,
            sampler: self.sampler.fork(choice as u64),
            max_tokens: self.max_tokens,
            stop_token_ids: self.stop_token_ids.clone(),
            unforked: 0,
            prompt_logits: false,
            prompt_logits_sent: self.prompt_logits_sent,
            embedding_sum: Vec::new(),
            finished: false,
        }
    }

    /// The event that ends a generation which cannot continue for lack of cache.
    pub fn length_event(&self) -> Option<SeqEvent> {
        (self.kind == RequestKind::Generate).then_some(SeqEvent::Finished {
            request: self.request,
            choice: self.choice,
            finish: FinishReason::Length,
        })
    }
}
