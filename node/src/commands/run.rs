//! `helixflow run`: one prompt through the engine, streamed to stdout (or one JSON object).

use std::io::Write;
use std::time::Instant;

use anyhow::{Context, bail};
use helixflow_kernels::backend::cpu::CpuBackend;
use helixflow_kernels::engine::{Engine, EngineConfig, FinishReason, SeqEvent, SequenceRequest};
use helixflow_kernels::model::Model;
use helixflow_kernels::sampler::SamplingParams;
use helixflow_kernels::tokenizer::{ChatMessage, IncrementalDecoder, Tokenizer};
use serde_json::json;

use crate::cli::RunArgs;

/// Alternatives reported per step with `--json`.
const TOP_LOGPROBS: usize = 5;

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let tokenizer = Tokenizer::from_dir(&args.model)?;
    let backend = CpuBackend::new(args.threads).context("starting compute threads")?;
    let model = Model::load(&args.model, backend)?;
    let prompt = prompt_ids(&args, &tokenizer)?;

    let sampling = SamplingParams {
        temperature: args.temperature,
        top_p: args.top_p,
        top_k: args.top_k,
        seed: args.seed,
        logprobs: args.json.then_some(TOP_LOGPROBS),
        ..SamplingParams::default()
    };
    let mut request = SequenceRequest::generate(prompt.clone(), sampling, args.max_tokens);
    if !args.ignore_eos {
        request.stop_token_ids = tokenizer.eos_token_ids().to_vec();
        request
            .stop_token_ids
            .extend(model.config().eos_token_ids.iter().copied());
    }
    let config = EngineConfig {
        kv_cache_dtype: args.kv_cache_dtype,
        ..EngineConfig::default()
    };
    let mut engine = Engine::new(model, config)?;
    engine.add(request)?;

    let started = Instant::now();
    let mut first_token = None;
    let mut decoder = IncrementalDecoder::new(&tokenizer, &prompt, true);
    let mut stdout = std::io::stdout().lock();
    let mut generated = Vec::new();
    let mut steps = Vec::new();
    let mut text = String::new();
    let mut finish = None;
    while engine.has_work() {
        for event in engine.step() {
            let SeqEvent::Token {
                sampled, finish: f, ..
            } = event
            else {
                if let SeqEvent::Finished { finish: f, .. } = event {
                    finish = Some(f);
                }
                continue;
            };
            first_token.get_or_insert_with(Instant::now);
            generated.push(sampled.token);
            finish = f;
            if args.json {
                steps.push(json!({
                    "token_id": sampled.token,
                    "token": tokenizer.decode(&[sampled.token], false)?,
                    "logprob": sampled.logprob,
                    "top_logprobs": sampled.top_logprobs.iter().map(|&(id, lp)| {
                        Ok(json!({"token_id": id, "token": tokenizer.decode(&[id], false)?, "logprob": lp}))
                    }).collect::<anyhow::Result<Vec<_>>>()?,
                }));
            }
            // A stop token ends the text without appearing in it.
            if f == Some(FinishReason::Stop) {
                continue;
            }
            if let Some(delta) = decoder.push(sampled.token)? {
                text.push_str(&delta);
                if !args.json {
                    stdout.write_all(delta.as_bytes())?;
                    stdout.flush()?;
                }
            }
        }
    }
    let tail = decoder.finish();
    text.push_str(&tail);
    let elapsed = started.elapsed();
    let decode_time = first_token.map(|t| t.elapsed()).unwrap_or_default();
    let finish_reason = match finish {
        Some(FinishReason::Stop) => "stop",
        _ => "length",
    };
    if args.json {
        let out = json!({
            "prompt_token_ids": prompt,
            "generated_token_ids": generated,
            "text": text,
            "finish_reason": finish_reason,
            "steps": steps,
            "usage": {"prompt_tokens": prompt.len(), "completion_tokens": generated.len()},
        });
        writeln!(stdout, "{}", serde_json::to_string_pretty(&out)?)?;
    } else {
        writeln!(stdout, "{tail}")?;
        let decode_rate = generated.len().saturating_sub(1) as f64 / decode_time.as_secs_f64();
        eprintln!(
            "[{} prompt tokens, {} generated, finish: {finish_reason}, {:.2}s, decode {:.1} tokens/s]",
            prompt.len(),
            generated.len(),
            elapsed.as_secs_f64(),
            if decode_rate.is_finite() {
                decode_rate
            } else {
                0.0
            },
        );
    }
    Ok(())
}

fn prompt_ids(args: &RunArgs, tokenizer: &Tokenizer) -> anyhow::Result<Vec<u32>> {
    if let Some(text) = &args.prompt {
        return Ok(tokenizer.encode(text, true)?);
    }
    let Some(path) = &args.chat_json else {
        bail!("give --prompt or --chat-json");
    };
    let raw =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    // Parsed straight from the text so that message fields keep their order for the template.
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Conversation {
        List(Vec<ChatMessage>),
        Object { messages: Vec<ChatMessage> },
    }
    let messages = match serde_json::from_str(&raw).with_context(|| {
        format!(
            "{}: expected a list of {{\"role\", \"content\"}} messages or {{\"messages\": [...]}}",
            path.display()
        )
    })? {
        Conversation::List(m) | Conversation::Object { messages: m } => m,
    };
    let rendered = tokenizer.apply_chat_template(&messages, true)?;
    Ok(tokenizer.encode(&rendered, false)?)
}
