//! [`WorkerCore`]: the engine plus everything a worker does per request around it — stop tokens
//! (EOS unless ignored), incremental detokenization, stop strings, logprob text — turning engine
//! events into [`InferenceEvent`]s keyed by ticket. Sans-IO: the engine thread drives it and
//! tests call it directly.

use std::collections::HashMap;

use helixflow_kernels::backend::Backend;
use helixflow_kernels::engine::{self, Engine, EngineStats, RequestId, SeqEvent, SequenceRequest};
use helixflow_kernels::sampler::Sampled;
use helixflow_kernels::tokenizer::{IncrementalDecoder, StopMatcher, StopOutput, Tokenizer};

use crate::request::{
    FinishReason, InferenceEvent, InferenceRequest, RequestFailure, RequestKind, Ticket,
    TokenLogprob, TopLogprob,
};

/// What one [`WorkerCore::step`] produced.
#[derive(Debug, Default)]
pub struct StepOutput {
    /// Events in the order they happened.
    pub events: Vec<(Ticket, InferenceEvent)>,
    /// Requests that are complete: every choice finished (or the embedding was sent).
    pub completed: Vec<Ticket>,
}

pub struct WorkerCore<B: Backend> {
    engine: Engine<B>,
    tokenizer: Tokenizer,
    /// EOS ids of the tokenizer and of the model's generation config.
    eos: Vec<u32>,
    active: HashMap<RequestId, Active>,
    by_ticket: HashMap<Ticket, RequestId>,
}

struct Active {
    ticket: Ticket,
    logprobs: bool,
    choices: Vec<Choice>,
    unfinished: usize,
}

struct Choice {
    decoder: IncrementalDecoder,
    stop: StopMatcher,
    tokens: usize,
    finished: bool,
}

impl<B: Backend> WorkerCore<B> {
    pub fn new(engine: Engine<B>, tokenizer: Tokenizer) -> WorkerCore<B> {
        let mut eos = tokenizer.eos_token_ids().to_vec();
        for &id in &engine.model().config().eos_token_ids {
            if !eos.contains(&id) {
                eos.push(id);
            }
        }
        WorkerCore {
            engine,
            tokenizer,
            eos,
            active: HashMap::new(),
            by_ticket: HashMap::new(),
        }
    }

    pub fn has_work(&self) -> bool {
        self.engine.has_work()
    }

    pub fn stats(&self) -> EngineStats {
        self.engine.stats()
    }

    /// Hands a request to the engine; it starts with the next step.
    pub fn submit(&mut self, request: &InferenceRequest) -> Result<(), RequestFailure> {
        if self.by_ticket.contains_key(&request.ticket) {
            return Err(RequestFailure::Invalid(format!(
                "request {} is already running",
                request.ticket
            )));
        }
        let mut sequence = match request.kind {
            RequestKind::Generate => SequenceRequest::generate(
                request.prompt.clone(),
                request.sampling.clone(),
                request.max_tokens,
            ),
            RequestKind::Embed => SequenceRequest::embed(request.prompt.clone()),
        };
        sequence.n = request.n;
        sequence.stop_token_ids = request.stop_token_ids.clone();
        if !request.ignore_eos {
            sequence.stop_token_ids.extend(&self.eos);
        }
        let id = self
            .engine
            .add(sequence)
            .map_err(|e| RequestFailure::Invalid(e.to_string()))?;
        let choices = (0..request.n.max(1))
            .map(|_| Choice {
                decoder: IncrementalDecoder::new(&self.tokenizer, &request.prompt, true),
                stop: StopMatcher::new(request.stop.clone()),
                tokens: 0,
                finished: false,
            })
            .collect::<Vec<_>>();
        self.active.insert(
            id,
            Active {
                ticket: request.ticket,
                logprobs: request.logprobs,
                unfinished: choices.len(),
                choices,
            },
        );
        self.by_ticket.insert(request.ticket, id);
        Ok(())
    }

    /// Drops a request and frees its KV blocks. False if it was not here.
    pub fn cancel(&mut self, ticket: Ticket) -> bool {
        let Some(id) = self.by_ticket.remove(&ticket) else {
            return false;
        };
        self.active.remove(&id);
        self.engine.cancel(id);
        true
    }

    /// Runs one engine step and translates what it produced.
    pub fn step(&mut self) -> StepOutput {
        let mut out = StepOutput::default();
        for event in self.engine.step() {
            match event {
                SeqEvent::Token {
                    request,
                    choice,
                    sampled,
                    finish,
                } => self.on_token(request, choice, sampled, finish, &mut out),
                SeqEvent::Finished {
                    request,
                    choice,
                    finish,
                } => self.on_finished(request, choice, finish, &mut out),
                SeqEvent::Embedding {
                    request,
                    embedding,
                    prompt_tokens,
                } => {
                    if let Some(active) = self.active.remove(&request) {
                        self.by_ticket.remove(&active.ticket);
                        out.events.push((
                            active.ticket,
                            InferenceEvent::Embedding {
                                vector: embedding,
                                prompt_tokens,
                            },
                        ));
                        out.completed.push(active.ticket);
                    }
                }
                // Never asked for: requests here do not set `prompt_logits`.
                SeqEvent::PromptLogits { .. } => {}
            }
        }
        out
    }

    fn on_token(
        &mut self,
        request: RequestId,
        choice: usize,
        sampled: Sampled,
        finish: Option<engine::FinishReason>,
        out: &mut StepOutput,
    ) {
        let Some(active) = self.active.get_mut(&request) else {
            return;
        };
        let ticket = active.ticket;
        let want_logprobs = active.logprobs;
        let Some(state) = active.choices.get_mut(choice) else {
            return;
        };
        // A choice already ended by a stop string keeps being sampled by the engine until its
        // siblings finish; those tokens are not part of any answer.
        if state.finished {
            return;
        }
        state.tokens += 1;
        let logprobs = if want_logprobs {
            vec![token_logprob(&self.tokenizer, &sampled)]
        } else {
            Vec::new()
        };
        // A stop token ends the text without appearing in it.
        let mut text = String::new();
        let mut stopped_by_string = false;
        if finish != Some(engine::FinishReason::Stop) {
            // Decoding ids the engine produced cannot fail short of a corrupt tokenizer; a lost
            // delta would then be the whole damage.
            if let Ok(Some(delta)) = state.decoder.push(sampled.token) {
                let pushed = state.stop.push(&delta);
                text = pushed.text;
                stopped_by_string = pushed.stopped;
            }
        }
        let mut reason = if stopped_by_string {
            Some(FinishReason::Stop)
        } else {
            finish.map(finish_reason)
        };
        if reason.is_some() && !stopped_by_string {
            let tail = flush(state);
            text.push_str(&tail.text);
            if tail.stopped {
                reason = Some(FinishReason::Stop);
            }
        }
        let tokens = state.tokens;
        out.events.push((
            ticket,
            InferenceEvent::Delta {
                choice,
                text,
                tokens: 1,
                logprobs,
            },
        ));
        if let Some(reason) = reason {
            state.finished = true;
            out.events.push((
                ticket,
                InferenceEvent::Finished {
                    choice,
                    reason,
                    completion_tokens: tokens,
                },
            ));
            self.choice_done(request, out);
        }
    }

    fn on_finished(
        &mut self,
        request: RequestId,
        choice: usize,
        finish: engine::FinishReason,
        out: &mut StepOutput,
    ) {
        let Some(active) = self.active.get_mut(&request) else {
            return;
        };
        let ticket = active.ticket;
        let Some(state) = active.choices.get_mut(choice) else {
            return;
        };
        if state.finished {
            return;
        }
        state.finished = true;
        let StopOutput {
            text,
            stopped: stopped_by_string,
        } = flush(state);
        let tokens = state.tokens;
        if !text.is_empty() {
            out.events.push((
                ticket,
                InferenceEvent::Delta {
                    choice,
                    text,
                    tokens: 0,
                    logprobs: Vec::new(),
                },
            ));
        }
        out.events.push((
            ticket,
            InferenceEvent::Finished {
                choice,
                reason: if stopped_by_string {
                    FinishReason::Stop
                } else {
                    finish_reason(finish)
                },
                completion_tokens: tokens,
            },
        ));
        self.choice_done(request, out);
    }

    /// Counts a finished choice; the request completes with its last one, and the engine stops
    /// sampling for it (choices ended by stop strings would otherwise run on).
    fn choice_done(&mut self, request: RequestId, out: &mut StepOutput) {
        let Some(active) = self.active.get_mut(&request) else {
            return;
        };
        active.unfinished -= 1;
        if active.unfinished > 0 {
            return;
        }
        let ticket = active.ticket;
        self.active.remove(&request);
        self.by_ticket.remove(&ticket);
        self.engine.cancel(request);
        out.completed.push(ticket);
    }
}

/// The text a finishing choice still holds back: the decoder's tail through the stop matcher;
/// `stopped` when a stop string cut it.
fn flush(state: &mut Choice) -> StopOutput {
    let tail = state.decoder.finish();
    let mut pushed = state.stop.push(&tail);
    if !pushed.stopped {
        let last = state.stop.finish();
        pushed.text.push_str(&last.text);
        pushed.stopped = last.stopped;
    }
    pushed
}

fn finish_reason(reason: engine::FinishReason) -> FinishReason {
    match reason {
        engine::FinishReason::Stop => FinishReason::Stop,
        engine::FinishReason::Length => FinishReason::Length,
    }
}

fn token_logprob(tokenizer: &Tokenizer, sampled: &Sampled) -> TokenLogprob {
    let (token, bytes) = token_text(tokenizer, sampled.token);
    TokenLogprob {
        token,
        bytes,
        logprob: sampled.logprob,
        top: sampled
            .top_logprobs
            .iter()
            .map(|&(id, logprob)| {
                let (token, bytes) = token_text(tokenizer, id);
                TopLogprob {
                    token,
                    bytes,
                    logprob,
                }
            })
            .collect(),
    }
}

/// A single token's text and bytes as the OpenAI API reports them.
fn token_text(tokenizer: &Tokenizer, id: u32) -> (String, Vec<u8>) {
    let text = tokenizer.decode(&[id], false).unwrap_or_default();
    let bytes = text.as_bytes().to_vec();
    (text, bytes)
}
