//! Mistral, Qwen2 and scaled-RoPE Llama models written by `gen_model`, run through the engine
//! and through an independent, naive float64 implementation of the HF forward pass written
//! here from the transformers formulas (sliding-window mask, q/k/v biases, tied embeddings,
//! linear and llama3 RoPE scaling). The two must agree on every position's logits.

use std::path::Path;

use helixflow_kernels::backend::cpu::CpuBackend;
use helixflow_kernels::config::{Architecture, ModelConfig, RopeScaling};
use helixflow_kernels::dtype::DType;
use helixflow_kernels::engine::{Engine, EngineConfig, SeqEvent, SequenceRequest};
use helixflow_kernels::gen_model::{ModelSpec, RopeScalingSpec, write_model};
use helixflow_kernels::model::Model;
use helixflow_kernels::sampler::SamplingParams;
use helixflow_kernels::weights::WeightFiles;

struct Reference {
    c: ModelConfig,
    files: WeightFiles,
}

impl Reference {
    fn t(&self, name: &str, shape: &[usize]) -> Vec<f64> {
        self.files
            .tensor(name, shape)
            .unwrap()
            .to_f32()
            .into_iter()
            .map(f64::from)
            .collect()
    }

    fn linear(&self, x: &[f64], name: &str, rows: usize, cols: usize, bias: bool) -> Vec<f64> {
        let w = self.t(&format!("{name}.weight"), &[rows, cols]);
        let b = bias.then(|| self.t(&format!("{name}.bias"), &[rows]));
        (0..rows)
            .map(|r| {
                let dot: f64 = (0..cols).map(|i| w[r * cols + i] * x[i]).sum();
                dot + b.as_ref().map_or(0.0, |b| b[r])
            })
            .collect()
    }

    fn rms_norm(&self, x: &[f64], name: &str) -> Vec<f64> {
        let w = self.t(name, &[x.len()]);
        let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
        let inv = 1.0 / (ms + f64::from(self.c.rms_norm_eps)).sqrt();
        x.iter().zip(&w).map(|(v, w)| v * inv * w).collect()
    }

    /// HF's inv_freq, recomputed in f64 from the config.
    fn inv_freq(&self) -> Vec<f64> {
        let d = self.c.head_dim;
        let theta = f64::from(self.c.rope_theta);
        let base: Vec<f64> = (0..d / 2)
            .map(|i| theta.powf(-((2 * i) as f64) / d as f64))
            .collect();
        match self.c.rope_scaling {
            RopeScaling::Default => base,
            RopeScaling::Linear { factor } => base.iter().map(|f| f / f64::from(factor)).collect(),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                let (factor, low, high) = (
                    f64::from(factor),
                    f64::from(low_freq_factor),
                    f64::from(high_freq_factor),
                );
                let old = f64::from(original_max_position_embeddings);
                base.iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        if wavelen < old / high {
                            f
                        } else if wavelen > old / low {
                            f / factor
                        } else {
                            let s = (old / wavelen - low) / (high - low);
                            (1.0 - s) * f / factor + s * f
                        }
                    })
                    .collect()
            }
        }
    }

    /// Logits of every position of `tokens`.
    fn forward(&self, tokens: &[u32]) -> Vec<Vec<f64>> {
        let c = &self.c;
        let (h, hd, nh, nkv) = (c.hidden_size, c.head_dim, c.num_heads, c.num_kv_heads);
        let embed = self.t("model.embed_tokens.weight", &[c.vocab_size, h]);
        let mut x: Vec<Vec<f64>> = tokens
            .iter()
            .map(|&t| embed[t as usize * h..(t as usize + 1) * h].to_vec())
            .collect();
        let inv_freq = self.inv_freq();
        let rope = |v: &mut [f64], pos: usize| {
            for head in v.chunks_mut(hd) {
                for i in 0..hd / 2 {
                    let a = pos as f64 * inv_freq[i];
                    let (x1, x2) = (head[i], head[i + hd / 2]);
                    head[i] = x1 * a.cos() - x2 * a.sin();
                    head[i + hd / 2] = x2 * a.cos() + x1 * a.sin();
                }
            }
        };
        for l in 0..c.num_layers {
            let p = format!("model.layers.{l}");
            let mut qs = Vec::new();
            let mut ks = Vec::new();
            let mut vs = Vec::new();
            for (pos, xi) in x.iter().enumerate() {
                let n = self.rms_norm(xi, &format!("{p}.input_layernorm.weight"));
                let mut q =
                    self.linear(&n, &format!("{p}.self_attn.q_proj"), nh * hd, h, c.qkv_bias);
                let mut k = self.linear(
                    &n,
                    &format!("{p}.self_attn.k_proj"),
                    nkv * hd,
                    h,
                    c.qkv_bias,
                );
                let v = self.linear(
                    &n,
                    &format!("{p}.self_attn.v_proj"),
                    nkv * hd,
                    h,
                    c.qkv_bias,
                );
                rope(&mut q, pos);
                rope(&mut k, pos);
                qs.push(q);
                ks.push(k);
                vs.push(v);
            }
            for pos in 0..x.len() {
                let mut attn = vec![0.0; nh * hd];
                for head in 0..nh {
                    let g = head / (nh / nkv);
                    // HF's sliding-window mask keeps key j for query i when i - j < window.
                    let visible: Vec<usize> = (0..=pos)
                        .filter(|&j| c.sliding_window.is_none_or(|w| pos - j < w))
                        .collect();
                    let scores: Vec<f64> = visible
                        .iter()
                        .map(|&j| {
                            (0..hd)
                                .map(|d| qs[pos][head * hd + d] * ks[j][g * hd + d])
                                .sum::<f64>()
                                / (hd as f64).sqrt()
                        })
                        .collect();
                    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let exps: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                    let sum: f64 = exps.iter().sum();
                    for (e, &j) in exps.iter().zip(&visible) {
                        for d in 0..hd {
                            attn[head * hd + d] += e / sum * vs[j][g * hd + d];
                        }
                    }
                }
                let o = self.linear(&attn, &format!("{p}.self_attn.o_proj"), h, nh * hd, false);
                x[pos].iter_mut().zip(&o).for_each(|(a, b)| *a += b);
                let n = self.rms_norm(&x[pos], &format!("{p}.post_attention_layernorm.weight"));
                let i = c.intermediate_size;
                let gate = self.linear(&n, &format!("{p}.mlp.gate_proj"), i, h, false);
                let up = self.linear(&n, &format!("{p}.mlp.up_proj"), i, h, false);
                let act: Vec<f64> = gate
                    .iter()
                    .zip(&up)
                    .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
                    .collect();
                let down = self.linear(&act, &format!("{p}.mlp.down_proj"), h, i, false);
                x[pos].iter_mut().zip(&down).for_each(|(a, b)| *a += b);
            }
        }
        let head = if c.tie_word_embeddings {
            "model.embed_tokens"
        } else {
            "lm_head"
        };
        x.iter()
            .map(|xi| {
                let n = self.rms_norm(xi, "model.norm.weight");
                self.linear(&n, head, c.vocab_size, h, false)
            })
            .collect()
    }
}

fn engine_logits(dir: &Path, tokens: &[u32]) -> Vec<f32> {
    let model = Model::load(dir, CpuBackend::new(2).unwrap()).unwrap();
    let config = EngineConfig {
        max_prefill_chunk: 7,
        ..EngineConfig::default()
    };
    let mut engine = Engine::new(model, config).unwrap();
    let mut req = SequenceRequest::generate(tokens.to_vec(), SamplingParams::greedy(), 1);
    req.prompt_logits = true;
    engine.add(req).unwrap();
    let mut logits = Vec::new();
    while engine.has_work() {
        for e in engine.step() {
            if let SeqEvent::PromptLogits { logits: l, .. } = e {
                logits.extend(l);
            }
        }
    }
    logits
}

fn check(spec: ModelSpec, prompt_len: usize) -> ModelConfig {
    let dir = tempfile::tempdir().unwrap();
    write_model(&spec, dir.path(), &mut |_, _| {}).unwrap();
    let reference = Reference {
        c: ModelConfig::from_dir(dir.path()).unwrap(),
        files: WeightFiles::open(dir.path()).unwrap(),
    };
    let tokens: Vec<u32> = (0..prompt_len as u32)
        .map(|i| (i * 37 + 11) % (spec.vocab_size as u32))
        .collect();
    let want = reference.forward(&tokens);
    let got = engine_logits(dir.path(), &tokens);
    let vocab = spec.vocab_size;
    assert_eq!(got.len(), tokens.len() * vocab);
    for (pos, row) in want.iter().enumerate() {
        for (v, w) in row.iter().enumerate() {
            let g = f64::from(got[pos * vocab + v]);
            assert!(
                (g - w).abs() <= 2e-3 * (1.0 + w.abs()),
                "position {pos} token {v}: engine {g}, reference {w}"
            );
        }
    }
    reference.c
}

fn small(arch: Architecture) -> ModelSpec {
    let mut s = ModelSpec::new(arch, 64, 2, 4, 2, 128, 300, DType::F32);
    s.seed = 3;
    s
}

#[test]
fn mistral_sliding_window_matches_reference() {
    let mut spec = small(Architecture::Mistral);
    spec.sliding_window = Some(5);
    let c = check(spec, 23);
    assert_eq!(c.sliding_window, Some(5));
}

#[test]
fn mistral_window_longer_than_prompt_is_plain_causal() {
    let mut spec = small(Architecture::Mistral);
    spec.sliding_window = Some(4096);
    check(spec, 12);
}

#[test]
fn qwen2_biases_and_tied_embeddings_match_reference() {
    let c = check(small(Architecture::Qwen2), 19);
    assert!(c.qkv_bias && c.tie_word_embeddings);
}

#[test]
fn qwen2_untied_f16_weights_match_reference() {
    let mut spec = small(Architecture::Qwen2);
    spec.tie_word_embeddings = false;
    spec.dtype = DType::F16;
    check(spec, 9);
}

#[test]
fn llama3_rope_scaling_matches_reference() {
    let mut spec = small(Architecture::Llama);
    spec.rope_theta = 500_000.0;
    // Small original context so that all three frequency bands occur at head_dim 16.
    spec.rope_scaling = Some(RopeScalingSpec::Llama3 {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 64,
    });
    let c = check(spec, 30);
    assert!(matches!(c.rope_scaling, RopeScaling::Llama3 { .. }));
}

#[test]
fn linear_rope_scaling_bf16_sharded_matches_reference() {
    let mut spec = small(Architecture::Llama);
    spec.rope_scaling = Some(RopeScalingSpec::Linear { factor: 4.0 });
    spec.dtype = DType::BF16;
    spec.max_shard_bytes = Some(60_000);
    check(spec, 17);
}
