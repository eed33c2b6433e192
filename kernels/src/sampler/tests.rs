//! Behavioural tests of the sampler: greedy equivalences, determinism and batch invariance of the
//! random stream, empirical distributions, the penalty formulas, logprobs, validation, and a
//! property test of truncation against a full-sort reference.

use proptest::prelude::*;

use crate::sampler::penalties::TokenHistory;
use crate::sampler::{
    CounterRng, MAX_TOP_LOGPROBS, Sampled, SamplingError, SamplingParams, SequenceSampler,
};

fn seeded(params: SamplingParams, seed: u64) -> SamplingParams {
    SamplingParams {
        seed: Some(seed),
        ..params
    }
}

fn logits_of(probs: &[f64]) -> Vec<f32> {
    probs.iter().map(|p| p.ln() as f32).collect()
}

/// Frequencies of each token over `draws` samples of the same logits.
fn frequencies(params: SamplingParams, logits: &[f32], draws: usize) -> Vec<f64> {
    let mut sampler = SequenceSampler::new(params, &[], 0);
    let mut counts = vec![0usize; logits.len()];
    for _ in 0..draws {
        counts[sampler.sample(logits).token as usize] += 1;
    }
    counts.iter().map(|&c| c as f64 / draws as f64).collect()
}

fn assert_close(actual: &[f64], expected: &[f64], tolerance: f64) {
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert!(
            (a - e).abs() <= tolerance,
            "token {i}: frequency {a:.4}, expected {e:.4} (all: {actual:?})"
        );
    }
}

/// A few hundred logits with ties and masked entries, from a fixed seed.
fn pseudo_random_logits(seed: u64, len: usize) -> Vec<f32> {
    let rng = CounterRng::new(seed, 99);
    (0..len as u64)
        .map(|i| match rng.bits(i) % 10 {
            0 => f32::NEG_INFINITY,
            1 => 3.0, // frequent exact ties at a high value
            _ => (rng.uniform(i) * 8.0 - 4.0) as f32,
        })
        .collect()
}

// ---- greedy ----

#[test]
fn greedy_is_argmax_and_lowest_id_wins_ties() {
    let mut sampler = SequenceSampler::new(SamplingParams::greedy(), &[], 0);
    assert_eq!(sampler.sample(&[0.1, 2.0, -1.0, 2.0, 1.9]).token, 1);
    assert_eq!(sampler.sample(&[5.0, 5.0, 5.0]).token, 0);
    assert_eq!(sampler.sample(&[-3.0, -1.0, -2.0]).token, 1);
    // NaN never wins; +inf does.
    assert_eq!(sampler.sample(&[1.0, f32::NAN, 0.5]).token, 0);
    assert_eq!(sampler.sample(&[1.0, f32::NAN, f32::INFINITY]).token, 2);
}

#[test]
fn nothing_finite_gives_token_zero_with_minus_inf_logprob() {
    for params in [
        SamplingParams::greedy(),
        seeded(SamplingParams::default(), 1),
    ] {
        let mut sampler = SequenceSampler::new(params, &[], 0);
        let out = sampler.sample(&[f32::NAN, f32::NEG_INFINITY, f32::NAN]);
        assert_eq!(out.token, 0);
        assert_eq!(out.logprob, f32::NEG_INFINITY);
        assert_eq!(sampler.sample(&[]).token, 0);
    }
}

#[test]
fn top_k_one_and_tiny_top_p_are_greedy() {
    for case in 0..40 {
        let logits = pseudo_random_logits(case, 300);
        let expected = SequenceSampler::new(SamplingParams::greedy(), &[], 0)
            .sample(&logits)
            .token;
        let top_k = SamplingParams {
            top_k: 1,
            temperature: 1.5,
            ..SamplingParams::default()
        };
        let top_p = SamplingParams {
            top_p: 1e-6,
            temperature: 1.5,
            ..SamplingParams::default()
        };
        for params in [top_k, top_p] {
            let mut sampler = SequenceSampler::new(seeded(params, case), &[], 0);
            for _ in 0..5 {
                assert_eq!(sampler.sample(&logits).token, expected, "case {case}");
            }
        }
    }
}

// ---- the random stream ----

fn run(sampler: &mut SequenceSampler, logits: &[f32], steps: usize) -> Vec<u32> {
    (0..steps)
        .map(|_| {
            let token = sampler.sample(logits).token;
            sampler.observe(token);
            token
        })
        .collect()
}

#[test]
fn same_seed_same_tokens_other_stream_or_seed_other_tokens() {
    let logits = vec![0.0f32; 1000];
    let params = seeded(SamplingParams::default(), 42);
    let a = run(
        &mut SequenceSampler::new(params.clone(), &[1, 2], 0),
        &logits,
        64,
    );
    let b = run(
        &mut SequenceSampler::new(params.clone(), &[1, 2], 0),
        &logits,
        64,
    );
    let other_stream = run(
        &mut SequenceSampler::new(params.clone(), &[1, 2], 1),
        &logits,
        64,
    );
    let other_seed = run(
        &mut SequenceSampler::new(seeded(params, 43), &[1, 2], 0),
        &logits,
        64,
    );
    assert_eq!(a, b);
    // Over a uniform 1000-token vocabulary, 64 draws agree by chance in about 0.06 places.
    let agreeing = |x: &[u32]| a.iter().zip(x).filter(|(p, q)| p == q).count();
    assert!(agreeing(&other_stream) < 5, "{a:?} vs {other_stream:?}");
    assert!(agreeing(&other_seed) < 5, "{a:?} vs {other_seed:?}");
}

#[test]
fn unseeded_samplers_differ_and_report_their_seed() {
    let logits = vec![0.0f32; 1000];
    let mut first = SequenceSampler::new(SamplingParams::default(), &[], 0);
    let mut second = SequenceSampler::new(SamplingParams::default(), &[], 0);
    assert_ne!(first.seed(), second.seed());
    let tokens = run(&mut first, &logits, 32);
    let replay = seeded(SamplingParams::default(), first.seed());
    assert_eq!(
        run(&mut SequenceSampler::new(replay, &[], 0), &logits, 32),
        tokens
    );
    assert_ne!(run(&mut second, &logits, 32), tokens);
}

#[test]
fn draws_do_not_depend_on_other_samplers_in_the_batch() {
    let logits: Vec<f32> = (0..500).map(|i| (i % 7) as f32 * 0.3).collect();
    let params = seeded(SamplingParams::default(), 7);
    let alone = run(
        &mut SequenceSampler::new(params.clone(), &[3], 5),
        &logits,
        40,
    );

    // The same sequence interleaved with a varying number of others, same seed included.
    let mut target = SequenceSampler::new(params.clone(), &[3], 5);
    let mut others: Vec<SequenceSampler> = (0..6)
        .map(|s| SequenceSampler::new(params.clone(), &[3], s))
        .collect();
    let mut batched = Vec::new();
    for step in 0..40 {
        for other in others.iter_mut().take(step % 7) {
            let t = other.sample(&logits).token;
            other.observe(t);
        }
        let token = target.sample(&logits).token;
        target.observe(token);
        batched.push(token);
    }
    assert_eq!(batched, alone);
}

#[test]
fn a_sampler_rebuilt_at_its_step_continues_exactly() {
    let logits: Vec<f32> = (0..200).map(|i| ((i * 37) % 11) as f32 * 0.2).collect();
    let params = SamplingParams {
        presence_penalty: 0.5,
        repetition_penalty: 1.3,
        ..SamplingParams::default()
    };
    let mut original = SequenceSampler::new(params.clone(), &[4, 5], 3);
    let first = run(&mut original, &logits, 20);
    let rest = run(&mut original, &logits, 20);

    let migrated_params = seeded(params, original.seed());
    let mut migrated = SequenceSampler::new(migrated_params, &[4, 5], 3).with_step(20);
    for &token in &first {
        migrated.observe(token);
    }
    assert_eq!(migrated.step(), 20);
    assert_eq!(run(&mut migrated, &logits, 20), rest);
}

#[test]
fn fork_shares_history_but_not_the_random_stream() {
    let logits = vec![0.0f32; 1000];
    let mut parent = SequenceSampler::new(seeded(SamplingParams::default(), 9), &[], 0);
    run(&mut parent, &logits, 5);
    let mut child = parent.fork(1);
    assert_eq!((child.step(), child.seed(), child.stream()), (5, 9, 1));
    let from_parent = run(&mut parent, &logits, 32);
    let from_child = run(&mut child, &logits, 32);
    assert_ne!(from_parent, from_child);

    // Same history: with a strong penalty, neither repeats a token the parent had emitted.
    let greedy = SamplingParams {
        presence_penalty: 2.0,
        ..SamplingParams::greedy()
    };
    let mut parent = SequenceSampler::new(greedy, &[], 0);
    parent.observe(0);
    parent.observe(1);
    let mut child = parent.fork(1);
    assert_eq!(child.sample(&[1.0, 1.0, 0.0]).token, 2);
}

// ---- distributions ----

#[test]
fn temperature_one_matches_softmax() {
    let probs = [0.1, 0.2, 0.3, 0.4];
    let freq = frequencies(
        seeded(SamplingParams::default(), 2024),
        &logits_of(&probs),
        20_000,
    );
    assert_close(&freq, &probs, 0.015);
}

#[test]
fn temperature_sharpens_as_softmax_of_scaled_logits() {
    // Logits [0, ln 2, ln 3, ln 4] at T = 0.5 → probabilities ∝ [1, 4, 9, 16].
    let params = SamplingParams {
        temperature: 0.5,
        ..seeded(SamplingParams::default(), 5)
    };
    let freq = frequencies(params, &logits_of(&[1.0, 2.0, 3.0, 4.0]), 20_000);
    assert_close(
        &freq,
        &[1.0 / 30.0, 4.0 / 30.0, 9.0 / 30.0, 16.0 / 30.0],
        0.015,
    );
}

#[test]
fn top_k_and_top_p_renormalize_over_the_kept_tokens() {
    let logits = logits_of(&[0.05, 0.3, 0.15, 0.5]);
    let top_k = SamplingParams {
        top_k: 2,
        ..seeded(SamplingParams::default(), 11)
    };
    assert_close(
        &frequencies(top_k, &logits, 20_000),
        &[0.0, 0.375, 0.0, 0.625],
        0.015,
    );
    // Nucleus 0.7: 0.5 (before 0) and 0.3 (before 0.5) are kept, 0.15 (before 0.8) is not.
    let top_p = SamplingParams {
        top_p: 0.7,
        ..seeded(SamplingParams::default(), 12)
    };
    assert_close(
        &frequencies(top_p, &logits, 20_000),
        &[0.0, 0.375, 0.0, 0.625],
        0.015,
    );
}

#[test]
fn min_p_removes_unlikely_tokens() {
    let logits = logits_of(&[0.5, 0.3, 0.15, 0.05]);
    // Threshold 0.2 × 0.5 = 0.1: only token 3 goes.
    let params = SamplingParams {
        min_p: 0.2,
        ..seeded(SamplingParams::default(), 13)
    };
    assert_close(
        &frequencies(params, &logits, 20_000),
        &[0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0.0],
        0.015,
    );
}

#[test]
fn masked_tokens_are_never_drawn() {
    let mut logits = vec![0.0f32; 64];
    for (i, logit) in logits.iter_mut().enumerate() {
        if i % 3 != 0 {
            *logit = if i % 2 == 0 {
                f32::NEG_INFINITY
            } else {
                f32::NAN
            };
        }
    }
    let mut sampler = SequenceSampler::new(seeded(SamplingParams::default(), 3), &[], 0);
    for _ in 0..2000 {
        assert_eq!(sampler.sample(&logits).token % 3, 0);
    }
}

// ---- penalties ----

fn penalized(params: &SamplingParams, prompt: &[u32], output: &[u32], logits: &[f32]) -> Vec<f32> {
    let mut history = TokenHistory::new(prompt);
    for &t in output {
        history.observe(t);
    }
    let mut logits = logits.to_vec();
    history.apply(params, &mut logits);
    logits
}

#[test]
fn repetition_penalty_divides_positive_and_multiplies_negative_on_prompt_and_output() {
    let params = SamplingParams {
        repetition_penalty: 2.0,
        ..SamplingParams::default()
    };
    // Prompt {0, 1}, output {2, 2}; token 3 untouched; token 9 (past the vocabulary) ignored.
    let out = penalized(&params, &[0, 1, 1, 9], &[2, 2], &[4.0, -3.0, 1.0, 5.0]);
    assert_eq!(out, vec![2.0, -6.0, 0.5, 5.0]);
}

#[test]
fn presence_and_frequency_penalties_apply_to_output_counts_only() {
    let params = SamplingParams {
        presence_penalty: 0.5,
        frequency_penalty: 0.25,
        ..SamplingParams::default()
    };
    // Token 0 only in the prompt: untouched. Token 1 emitted 3 times, token 2 once.
    let out = penalized(&params, &[0], &[1, 2, 1, 1], &[1.0, 1.0, -1.0, 2.0]);
    assert_eq!(out, vec![1.0, 1.0 - 0.5 - 0.75, -1.0 - 0.5 - 0.25, 2.0]);
}

#[test]
fn repetition_comes_before_presence_and_frequency() {
    let params = SamplingParams {
        repetition_penalty: 2.0,
        presence_penalty: 1.0,
        frequency_penalty: -0.5,
        ..SamplingParams::default()
    };
    // Token 0: 3 / 2 - 1 + 0.5 × 2 = 1.5; token 1: -1 × 2 - 1 + 0.5 = -2.5.
    let out = penalized(&params, &[], &[0, 0, 1], &[3.0, -1.0, 7.0]);
    assert_eq!(out, vec![1.5, -2.5, 7.0]);
}

#[test]
fn penalties_steer_greedy_but_not_logprobs() {
    let params = SamplingParams {
        frequency_penalty: 1.0,
        logprobs: Some(1),
        ..SamplingParams::greedy()
    };
    let mut sampler = SequenceSampler::new(params, &[], 0);
    let logits = [2.0f32, 1.5, 0.0];
    let first = sampler.sample(&logits);
    assert_eq!(first.token, 0);
    sampler.observe(0);
    let second = sampler.sample(&logits);
    assert_eq!(second.token, 1);
    // Logprobs describe the raw logits: token 0 is still the top alternative.
    assert_eq!(second.top_logprobs[0].0, 0);
    assert_eq!(first.top_logprobs, second.top_logprobs);
}

// ---- logprobs ----

fn log_softmax(logits: &[f64]) -> Vec<f64> {
    let total: f64 = logits.iter().map(|x| x.exp()).sum();
    logits.iter().map(|x| x - total.ln()).collect()
}

#[test]
fn logprobs_are_the_log_softmax_of_the_raw_logits() {
    let raw = [1.0, 3.0, -2.0, 3.0, 0.5];
    let expected = log_softmax(&raw);
    let logits: Vec<f32> = raw.iter().map(|&x| x as f32).collect();
    let params = SamplingParams {
        temperature: 0.3,
        logprobs: Some(3),
        repetition_penalty: 1.7,
        ..seeded(SamplingParams::default(), 1)
    };
    let mut sampler = SequenceSampler::new(params, &[1], 0);
    let Sampled {
        token,
        logprob,
        top_logprobs,
    } = sampler.sample(&logits);
    assert!((f64::from(logprob) - expected[token as usize]).abs() < 1e-6);
    // Ties (tokens 1 and 3) by id ascending, then token 0.
    let ids: Vec<u32> = top_logprobs.iter().map(|&(id, _)| id).collect();
    assert_eq!(ids, vec![1, 3, 0]);
    for (id, lp) in top_logprobs {
        assert!(
            (f64::from(lp) - expected[id as usize]).abs() < 1e-6,
            "token {id}"
        );
    }
}

#[test]
fn logprob_count_is_respected_and_none_means_empty() {
    let logits = [0.0f32, 1.0, 2.0];
    for (n, len) in [(None, 0), (Some(0), 0), (Some(2), 2), (Some(20), 3)] {
        let params = SamplingParams {
            logprobs: n,
            ..SamplingParams::greedy()
        };
        let out = SequenceSampler::new(params, &[], 0).sample(&logits);
        assert_eq!(out.top_logprobs.len(), len, "logprobs {n:?}");
        // Token 2 under log-softmax: 2 - ln(1 + e + e²).
        let expected = 2.0 - (1.0 + 1f32.exp() + 2f32.exp()).ln();
        assert!((out.logprob - expected).abs() < 1e-6, "{}", out.logprob);
    }
}

#[test]
fn logprobs_survive_nan_and_infinite_logits() {
    let params = SamplingParams {
        logprobs: Some(4),
        ..SamplingParams::greedy()
    };
    let out = SequenceSampler::new(params, &[], 0).sample(&[
        0.0,
        f32::NAN,
        f32::NEG_INFINITY,
        f32::INFINITY,
    ]);
    assert_eq!(out.token, 3);
    assert_eq!(out.logprob, 0.0);
    assert_eq!(out.top_logprobs[0], (3, 0.0));
    assert!(out.top_logprobs.iter().all(|(_, lp)| !lp.is_nan()));
}

// ---- validation ----

#[test]
fn defaults_and_boundaries_are_valid() {
    assert_eq!(SamplingParams::default().validate(), Ok(()));
    let edge = SamplingParams {
        temperature: 2.0,
        top_k: usize::MAX,
        top_p: 1e-9,
        min_p: 1.0,
        presence_penalty: -2.0,
        frequency_penalty: 2.0,
        repetition_penalty: 1e-3,
        seed: Some(u64::MAX),
        logprobs: Some(MAX_TOP_LOGPROBS),
    };
    assert_eq!(edge.validate(), Ok(()));
}

#[test]
fn validation_errors_name_the_parameter_and_value() {
    let d = SamplingParams::default;
    let cases: Vec<(SamplingParams, &str)> = vec![
        (
            SamplingParams {
                temperature: 2.5,
                ..d()
            },
            "temperature",
        ),
        (
            SamplingParams {
                temperature: -0.1,
                ..d()
            },
            "temperature",
        ),
        (
            SamplingParams {
                temperature: f32::NAN,
                ..d()
            },
            "temperature",
        ),
        (SamplingParams { top_p: 0.0, ..d() }, "top_p"),
        (SamplingParams { top_p: 1.01, ..d() }, "top_p"),
        (SamplingParams { min_p: 1.5, ..d() }, "min_p"),
        (
            SamplingParams {
                presence_penalty: 2.1,
                ..d()
            },
            "presence_penalty",
        ),
        (
            SamplingParams {
                frequency_penalty: -3.0,
                ..d()
            },
            "frequency_penalty",
        ),
        (
            SamplingParams {
                frequency_penalty: f32::INFINITY,
                ..d()
            },
            "frequency_penalty",
        ),
        (
            SamplingParams {
                repetition_penalty: 0.0,
                ..d()
            },
            "repetition_penalty",
        ),
        (
            SamplingParams {
                logprobs: Some(21),
                ..d()
            },
            "top_logprobs",
        ),
    ];
    for (params, name) in cases {
        let err = params.validate().expect_err(name);
        assert_eq!(err.parameter(), name);
        assert!(err.to_string().contains(name), "{err}");
    }
    let err = SamplingParams { top_p: 1.5, ..d() }.validate();
    assert_eq!(
        err,
        Err(SamplingError::OutOfRange {
            parameter: "top_p",
            value: 1.5,
            range: "(0, 1]"
        })
    );
    assert!(err.unwrap_err().to_string().contains("1.5"));
    let err = SamplingParams {
        min_p: f32::NAN,
        ..d()
    }
    .validate()
    .unwrap_err();
    assert!(
        matches!(err, SamplingError::NotFinite { parameter: "min_p", value } if value.is_nan())
    );
}

// ---- property: truncation ----

/// Tokens the sampler may return, from a full sort in f64. Thresholds are relaxed by `slack` so
/// that f32 rounding at a boundary cannot fail the test; anything outside is a real bug.
fn allowed(logits: &[f32], params: &SamplingParams, slack: f64) -> Vec<u32> {
    let mut order: Vec<u32> = (0..logits.len() as u32)
        .filter(|&i| logits[i as usize] > f32::NEG_INFINITY)
        .collect();
    order.sort_by(|&a, &b| {
        logits[b as usize]
            .total_cmp(&logits[a as usize])
            .then(a.cmp(&b))
    });
    if params.top_k > 0 {
        order.truncate(params.top_k);
    }
    let max = f64::from(logits[order[0] as usize]);
    let t = f64::from(params.temperature);
    let w: Vec<f64> = order
        .iter()
        .map(|&i| ((f64::from(logits[i as usize]) - max) / t).exp())
        .collect();
    let total: f64 = w.iter().sum();
    let mut kept = Vec::new();
    let mut before = 0.0;
    for (j, &i) in order.iter().enumerate() {
        let nucleus = j == 0 || before / total < f64::from(params.top_p) + slack;
        let above_min = w[j] >= f64::from(params.min_p) - slack;
        if nucleus && above_min && w[j] > 0.0 {
            kept.push(i);
        }
        before += w[j];
    }
    kept
}

fn logit_strategy() -> impl Strategy<Value = f32> {
    prop_oneof![
        8 => -5.0f32..5.0,
        1 => Just(f32::NEG_INFINITY),
        1 => Just(1.25f32),
    ]
}

proptest! {
    #[test]
    fn sampled_token_is_in_the_kept_set(
        mut logits in prop::collection::vec(logit_strategy(), 1..400),
        temperature in 0.05f32..2.0,
        top_k in prop_oneof![Just(0usize), 1usize..50],
        top_p in prop_oneof![Just(1.0f32), 0.01f32..1.0],
        min_p in prop_oneof![Just(0.0f32), 0.0f32..0.9],
        seed in any::<u64>(),
    ) {
        // At least one possible token.
        logits[0] = logits[0].max(-5.0);
        let params = SamplingParams { temperature, top_k, top_p, min_p, seed: Some(seed), ..SamplingParams::default() };
        let allowed = allowed(&logits, &params, 1e-4);
        let mut sampler = SequenceSampler::new(params, &[], 0);
        for _ in 0..8 {
            let token = sampler.sample(&logits).token;
            prop_assert!(logits[token as usize] > f32::NEG_INFINITY, "drew a -inf token {}", token);
            prop_assert!(allowed.contains(&token), "token {} not in {:?}", token, allowed);
        }
    }
}

#[test]
fn large_vocabulary_nucleus_is_the_reference_one() {
    // A flat-ish 50k vocabulary makes top-p grow its sorted prefix several times.
    let logits: Vec<f32> = (0..50_000u64)
        .map(|i| (CounterRng::new(1, 2).uniform(i) * 2.0) as f32)
        .collect();
    let params = SamplingParams {
        top_p: 0.5,
        ..seeded(SamplingParams::default(), 77)
    };
    let allowed = allowed(&logits, &params, 1e-4);
    assert!(allowed.len() > 10_000 && allowed.len() < 40_000);
    let mut allowed_mask = vec![false; logits.len()];
    for &i in &allowed {
        allowed_mask[i as usize] = true;
    }
    let mut sampler = SequenceSampler::new(params, &[], 0);
    for _ in 0..50 {
        assert!(allowed_mask[sampler.sample(&logits).token as usize]);
    }
}
