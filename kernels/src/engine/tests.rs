//! Engine behaviour on the tiny-llama fixture: batching invariance, choices, cancellation,
//! preemption and KV-block accounting.

use std::collections::HashMap;
use std::path::PathBuf;

use proptest::prelude::*;

use super::*;
use crate::backend::cpu::CpuBackend;
use crate::sampler::SamplingParams;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-llama")
}

fn engine(config: EngineConfig) -> Engine<CpuBackend> {
    let model = Model::load(&fixture(), CpuBackend::new(1).expect("pool")).expect("fixture loads");
    Engine::new(model, config).expect("engine")
}

/// Small cache: 64 blocks of 4 slots.
fn small_config() -> EngineConfig {
    EngineConfig {
        block_size: 4,
        kv_cache_bytes: 64 * 4 * 2 * 2 * 32 * 4,
        max_batch_tokens: 48,
        max_prefill_chunk: 16,
        max_running: 8,
        kv_cache_dtype: KvCacheDtype::default(),
    }
}

fn prompt(seed: u64, len: usize) -> Vec<u32> {
    (0..len as u64)
        .map(|i| ((seed * 7919 + i * 104_729) % 509) as u32)
        .collect()
}

type Outputs = HashMap<(RequestId, usize), (Vec<u32>, Option<FinishReason>)>;

fn drain(e: &mut Engine<CpuBackend>, out: &mut Outputs) {
    let mut steps = 0;
    while e.has_work() {
        steps += 1;
        assert!(steps < 20_000, "no progress");
        collect(e.step(), out);
        e.check_blocks().expect("block invariants");
    }
}

fn collect(events: Vec<SeqEvent>, out: &mut Outputs) {
    for event in events {
        match event {
            SeqEvent::Token {
                request,
                choice,
                sampled,
                finish,
            } => {
                let entry = out.entry((request, choice)).or_default();
                assert!(entry.1.is_none(), "token after finish");
                entry.0.push(sampled.token);
                entry.1 = finish;
            }
            SeqEvent::Finished {
                request,
                choice,
                finish,
            } => {
                out.entry((request, choice)).or_default().1 = Some(finish);
            }
            _ => {}
        }
    }
}

fn alone(req: SequenceRequest) -> Vec<u32> {
    let mut e = engine(EngineConfig::default());
    let id = e.add(req).unwrap();
    let mut out = Outputs::new();
    drain(&mut e, &mut out);
    out.remove(&(id, 0)).unwrap().0
}

#[test]
fn max_tokens_and_stop_tokens_finish_with_the_right_reason() {
    let mut e = engine(EngineConfig::default());
    let first = alone(SequenceRequest::generate(
        prompt(1, 10),
        SamplingParams::greedy(),
        6,
    ));
    let a = e
        .add(SequenceRequest::generate(
            prompt(1, 10),
            SamplingParams::greedy(),
            6,
        ))
        .unwrap();
    let mut stop = SequenceRequest::generate(prompt(1, 10), SamplingParams::greedy(), 6);
    stop.stop_token_ids = vec![first[2]];
    let b = e.add(stop).unwrap();
    let mut out = Outputs::new();
    drain(&mut e, &mut out);
    assert_eq!(out[&(a, 0)], (first.clone(), Some(FinishReason::Length)));
    let stop_at = first.iter().position(|&t| t == first[2]).unwrap();
    assert_eq!(
        out[&(b, 0)],
        (first[..=stop_at].to_vec(), Some(FinishReason::Stop))
    );
    assert_eq!(e.stats().kv_blocks_used, 0);
}

#[test]
fn context_window_caps_generation() {
    let mut e = engine(EngineConfig::default());
    let id = e
        .add(SequenceRequest::generate(
            prompt(3, 508),
            SamplingParams::greedy(),
            100,
        ))
        .unwrap();
    let mut out = Outputs::new();
    drain(&mut e, &mut out);
    let (tokens, finish) = &out[&(id, 0)];
    assert_eq!((tokens.len(), *finish), (4, Some(FinishReason::Length)));
    let err = e
        .add(SequenceRequest::generate(
            prompt(3, 512),
            SamplingParams::greedy(),
            1,
        ))
        .unwrap_err();
    assert_eq!(
        err,
        RequestError::ContextExceeded {
            prompt_tokens: 512,
            limit: 512
        }
    );
}

#[test]
fn bad_requests_are_refused_with_their_reason() {
    let mut e = engine(EngineConfig::default());
    let greedy = SamplingParams::greedy();
    assert_eq!(
        e.add(SequenceRequest::generate(vec![], greedy.clone(), 1)),
        Err(RequestError::EmptyPrompt)
    );
    assert_eq!(
        e.add(SequenceRequest::generate(vec![1, 512], greedy.clone(), 1)),
        Err(RequestError::TokenOutOfVocabulary {
            token: 512,
            vocab_size: 512
        })
    );
    assert_eq!(
        e.add(SequenceRequest::generate(vec![1], greedy.clone(), 0)),
        Err(RequestError::ZeroMaxTokens)
    );
    let mut n0 = SequenceRequest::generate(vec![1], greedy, 1);
    n0.n = 0;
    assert!(matches!(
        e.add(n0),
        Err(RequestError::InvalidN { n: 0, .. })
    ));
    let hot = SamplingParams {
        temperature: 3.0,
        ..SamplingParams::default()
    };
    let err = e
        .add(SequenceRequest::generate(vec![1], hot, 1))
        .unwrap_err();
    assert!(err.to_string().contains("temperature"), "{err}");
    let mut tiny = engine(EngineConfig {
        kv_cache_bytes: 4 * 16 * 512,
        ..EngineConfig::default()
    });
    let err = tiny
        .add(SequenceRequest::generate(
            prompt(1, 200),
            SamplingParams::greedy(),
            1,
        ))
        .unwrap_err();
    assert!(matches!(err, RequestError::CacheTooSmall { .. }), "{err}");
    assert!(!e.has_work());
}

#[test]
fn n_choices_share_the_prompt_and_differ_by_stream() {
    let mut e = engine(small_config());
    let params = SamplingParams {
        temperature: 1.0,
        seed: Some(7),
        ..SamplingParams::default()
    };
    let mut req = SequenceRequest::generate(prompt(5, 21), params.clone(), 12);
    req.n = 4;
    let id = e.add(req).unwrap();
    let mut out = Outputs::new();
    drain(&mut e, &mut out);
    let choices: Vec<&Vec<u32>> = (0..4).map(|c| &out[&(id, c)].0).collect();
    assert!(choices.iter().all(|c| c.len() == 12));
    assert!(
        choices[1..].iter().any(|c| *c != choices[0]),
        "choices identical: streams not independent"
    );
    // Choice 0 is exactly what the same seeded request produces with n = 1.
    assert_eq!(
        choices[0],
        &alone(SequenceRequest::generate(prompt(5, 21), params, 12))
    );
    assert_eq!(e.stats().kv_blocks_used, 0);
}

#[test]
fn cancel_frees_blocks_immediately() {
    let mut e = engine(small_config());
    let a = e
        .add(SequenceRequest::generate(
            prompt(1, 30),
            SamplingParams::greedy(),
            50,
        ))
        .unwrap();
    let mut out = Outputs::new();
    for _ in 0..4 {
        collect(e.step(), &mut out);
    }
    assert!(e.stats().kv_blocks_used > 0);
    assert!(e.cancel(a));
    assert_eq!(e.stats().kv_blocks_used, 0);
    assert!(!e.has_work());
    assert!(!e.cancel(a));
}

#[test]
fn preemption_under_cache_pressure_keeps_outputs_exact() {
    // 16 blocks of 4 slots cannot hold four 20-token prompts growing by 30 tokens each.
    let config = EngineConfig {
        kv_cache_bytes: 16 * 4 * 2 * 2 * 32 * 4,
        ..small_config()
    };
    let mut e = engine(config);
    let params = |s| SamplingParams {
        temperature: 0.8,
        seed: Some(s),
        ..SamplingParams::default()
    };
    let ids: Vec<_> = (0..4)
        .map(|s| {
            e.add(SequenceRequest::generate(prompt(s, 20), params(s), 30))
                .unwrap()
        })
        .collect();
    let mut out = Outputs::new();
    drain(&mut e, &mut out);
    assert!(
        e.stats().preemptions > 0,
        "the test did not exercise preemption"
    );
    for (s, id) in ids.into_iter().enumerate() {
        let expected = alone(SequenceRequest::generate(
            prompt(s as u64, 20),
            params(s as u64),
            30,
        ));
        assert_eq!(
            out[&(id, 0)].0,
            expected,
            "request {s} changed by preemption"
        );
    }
    assert_eq!(e.stats().kv_blocks_used, 0);
}

#[test]
fn prefix_cache_reuses_blocks_without_changing_output() {
    let mut e = engine(small_config());
    let shared = prompt(9, 24);
    let expected = alone(SequenceRequest::generate(
        shared.clone(),
        SamplingParams::greedy(),
        5,
    ));
    let mut out = Outputs::new();
    let a = e
        .add(SequenceRequest::generate(
            shared.clone(),
            SamplingParams::greedy(),
            5,
        ))
        .unwrap();
    drain(&mut e, &mut out);
    let b = e
        .add(SequenceRequest::generate(
            shared,
            SamplingParams::greedy(),
            5,
        ))
        .unwrap();
    drain(&mut e, &mut out);
    assert!(e.stats().prefix_cache_hits > 0);
    assert_eq!(out[&(a, 0)].0, expected);
    assert_eq!(out[&(b, 0)].0, expected);
}

#[derive(Clone, Debug)]
enum Op {
    Add {
        seed: u64,
        len: usize,
        max_tokens: usize,
        n: usize,
        temperature: f32,
    },
    Step,
    Cancel(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (
            0u64..6,
            1usize..40,
            1usize..12,
            1usize..3,
            prop_oneof![Just(0.0f32), Just(0.9f32)]
        )
            .prop_map(|(seed, len, max_tokens, n, temperature)| Op::Add {
                seed,
                len,
                max_tokens,
                n,
                temperature
            }),
        Just(Op::Step),
        Just(Op::Step),
        Just(Op::Step),
        (0usize..8).prop_map(Op::Cancel),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Whatever is added, stepped, cancelled or forked, in whatever order: blocks are never
    /// leaked or double-owned, every finished request's tokens equal what it produces alone
    /// (batch invariance), and an idle engine holds no blocks.
    #[test]
    fn lifecycle_keeps_blocks_consistent_and_outputs_batch_invariant(ops in proptest::collection::vec(op(), 1..40)) {
        let mut e = engine(small_config());
        let mut added: Vec<(RequestId, SequenceRequest)> = Vec::new();
        let mut cancelled = Vec::new();
        let mut out = Outputs::new();
        for op in ops {
            match op {
                Op::Add { seed, len, max_tokens, n, temperature } => {
                    let params = SamplingParams { temperature, seed: Some(seed), ..SamplingParams::default() };
                    let mut req = SequenceRequest::generate(prompt(seed, len), params, max_tokens);
                    req.n = n;
                    let id = e.add(req.clone()).unwrap();
                    added.push((id, req));
                }
                Op::Step => collect(e.step(), &mut out),
                Op::Cancel(i) => {
                    if let Some((id, _)) = added.get(i) {
                        e.cancel(*id);
                        cancelled.push(*id);
                    }
                }
            }
            prop_assert!(e.check_blocks().is_ok(), "{:?}", e.check_blocks());
        }
        drain(&mut e, &mut out);
        prop_assert_eq!(e.stats().kv_blocks_used, 0);
        for (id, req) in added {
            if cancelled.contains(&id) {
                continue;
            }
            let mut single = req.clone();
            single.n = 1;
            let expected = alone(single);
            let got = &out[&(id, 0)];
            prop_assert_eq!(&got.0, &expected, "request {} differs when batched", id);
            prop_assert!(got.1.is_some());
            for choice in 1..req.n {
                // No stop tokens here: every choice runs to the same length limit.
                let other = &out[&(id, choice)];
                prop_assert_eq!(other.0.len(), got.0.len());
                prop_assert!(other.1.is_some());
                if req.sampling.temperature == 0.0 {
                    // Greedy choices share their prompt's blocks and copy the partial last
                    // one on their first write: they must still read the same cache.
                    prop_assert_eq!(&other.0, &got.0, "request {} choice {}", id, choice);
                }
            }
        }
    }
}
