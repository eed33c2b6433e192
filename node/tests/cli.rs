//! The `helixflow` binary as a user runs it: `run` reproduces the HF fixture, `gen-model`
//! writes models that `run` then serves, and bad input exits non-zero with a clear message.

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

fn helixflow(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_helixflow"))
        .args(args)
        .output()
        .expect("helixflow runs")
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name)
}

fn reference() -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(fixture("tiny-llama").join("reference.json")).unwrap(),
    )
    .unwrap()
}

fn json_run(args: &[&str]) -> Value {
    let out = helixflow(args);
    assert!(
        out.status.success(),
        "helixflow {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("--json prints one JSON object")
}

/// `helixflow run` of `max_tokens` greedy tokens of `text`, printed as JSON.
fn greedy_run<'a>(model: &'a str, text: &'a str, max_tokens: &'a str) -> Vec<&'a str> {
    vec![
        "run",
        "--model",
        model,
        "--prompt",
        text,
        "--temperature",
        "0",
        "--max-tokens",
        max_tokens,
        "--json",
    ]
}

#[test]
fn run_json_reproduces_the_greedy_fixture_for_text_and_chat() {
    let r = reference();
    let model = fixture("tiny-llama");
    let model = model.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    for p in r["prompts"].as_array().unwrap() {
        let prompt_file;
        let mut args = vec![
            "run",
            "--model",
            model,
            "--temperature",
            "0",
            "--max-tokens",
            "24",
            "--ignore-eos",
            "--json",
        ];
        if p["kind"] == "chat" {
            prompt_file = dir
                .path()
                .join(format!("{}.json", p["id"].as_str().unwrap()));
            std::fs::write(&prompt_file, p["messages"].to_string()).unwrap();
            args.extend(["--chat-json", prompt_file.to_str().unwrap()]);
        } else {
            args.extend(["--prompt", p["text"].as_str().unwrap()]);
        }
        let out = json_run(&args);
        assert_eq!(out["prompt_token_ids"], p["input_ids"], "{}", p["id"]);
        assert_eq!(
            out["generated_token_ids"], p["greedy"]["new_token_ids"],
            "{}",
            p["id"]
        );
        assert_eq!(out["finish_reason"], "length");
        let steps = out["steps"].as_array().unwrap();
        assert_eq!(steps.len(), 24);
        for (step, s) in steps.iter().enumerate() {
            let top = s["top_logprobs"].as_array().unwrap();
            assert_eq!(top.len(), 5);
            // Greedy picks the most likely token: its logprob heads the alternatives.
            assert_eq!(top[0]["token_id"], s["token_id"], "{} step {step}", p["id"]);
            let lp = s["logprob"].as_f64().unwrap();
            assert!(lp <= 0.0 && (lp - top[0]["logprob"].as_f64().unwrap()).abs() < 1e-6);
            let want_top: Vec<&Value> = p["greedy"]["step_top5"][step]["ids"]
                .as_array()
                .unwrap()
                .iter()
                .collect();
            let got_top: Vec<&Value> = top.iter().map(|t| &t["token_id"]).collect();
            assert_eq!(got_top, want_top, "{} step {step}: top-5 ids", p["id"]);
        }
    }
}

/// With the KV cache in f16, greedy decoding follows HuggingFace's f32 tokens wherever the
/// reference's top-1 margin is wider than the cache's rounding can move a logit (the engine's
/// reference tests measure f16-cache logits within 0.0065 of f32; 0.05 leaves room).
#[test]
fn run_with_an_f16_kv_cache_follows_the_greedy_fixture() {
    let r = reference();
    let model = fixture("tiny-llama");
    let mut checked = 0;
    for p in r["prompts"].as_array().unwrap() {
        let Some(text) = p["text"].as_str() else {
            continue;
        };
        let mut args = greedy_run(model.to_str().unwrap(), text, "24");
        args.extend(["--ignore-eos", "--kv-cache-dtype", "f16"]);
        let out = json_run(&args);
        assert_eq!(out["prompt_token_ids"], p["input_ids"], "{}", p["id"]);
        let got = out["generated_token_ids"].as_array().unwrap();
        let want = p["greedy"]["new_token_ids"].as_array().unwrap();
        let margins = p["greedy"]["step_top1_margin"].as_array().unwrap();
        for (step, (g, w)) in got.iter().zip(want).enumerate() {
            if margins[step].as_f64().unwrap() < 0.05 {
                break;
            }
            assert_eq!(g, w, "{} step {step}", p["id"]);
            checked += 1;
        }
    }
    assert!(
        checked >= 24,
        "only {checked} tokens had a wide enough margin"
    );
}

#[test]
fn run_stops_at_eos_unless_ignored() {
    // A copy of the fixture whose generation_config names the 6th greedy token of text_fox as
    // an end-of-sequence id: without --ignore-eos, generation ends there, with finish "stop".
    let r = reference();
    let p = &r["prompts"][0];
    let greedy: Vec<u64> = p["greedy"]["new_token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let eos = greedy[5];
    let first = greedy.iter().position(|&t| t == eos).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture("tiny-llama")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    std::fs::write(
        dir.path().join("generation_config.json"),
        format!("{{\"eos_token_id\": [{eos}]}}"),
    )
    .unwrap();
    let model = dir.path().to_str().unwrap();
    let text = p["text"].as_str().unwrap();
    let base = greedy_run(model, text, "24");
    let out = json_run(&base);
    let want: Vec<Value> = greedy[..=first].iter().map(|&t| Value::from(t)).collect();
    assert_eq!(out["generated_token_ids"].as_array().unwrap(), &want);
    assert_eq!(out["finish_reason"], "stop");
    // The stop token ends the text without appearing in it.
    let before: Vec<Value> = greedy[..first].iter().map(|&t| Value::from(t)).collect();
    let shorter = json_run(&greedy_run(model, text, &first.to_string()));
    assert_eq!(shorter["generated_token_ids"].as_array().unwrap(), &before);
    assert_eq!(out["text"], shorter["text"]);

    let mut ignored = base.to_vec();
    ignored.push("--ignore-eos");
    let out = json_run(&ignored);
    assert_eq!(out["generated_token_ids"].as_array().unwrap().len(), 24);
    assert_eq!(out["finish_reason"], "length");
}

#[test]
fn gen_model_writes_models_that_run_serves() {
    let dir = tempfile::tempdir().unwrap();
    for (arch, dtype, extra) in [
        ("llama", "f16", vec!["--rope-scaling", "llama3:8:1:4:64"]),
        ("mistral", "bf16", vec!["--sliding-window", "8"]),
        ("qwen2", "f32", vec![]),
    ] {
        let out_dir = dir.path().join(arch);
        let mut args = vec![
            "gen-model",
            "--out",
            out_dir.to_str().unwrap(),
            "--arch",
            arch,
            "--hidden",
            "64",
            "--layers",
            "2",
            "--heads",
            "4",
            "--kv-heads",
            "2",
            "--intermediate",
            "128",
            "--vocab",
            "400",
            "--dtype",
            dtype,
            "--seed",
            "5",
        ];
        args.extend(extra);
        let out = helixflow(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for f in [
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json",
            "generation_config.json",
        ] {
            assert!(out_dir.join(f).exists(), "{arch}: {f} missing");
        }
        let run = json_run(&[
            "run",
            "--model",
            out_dir.to_str().unwrap(),
            "--prompt",
            "Hello, world",
            "--max-tokens",
            "8",
            "--ignore-eos",
            "--seed",
            "1",
            "--json",
        ]);
        assert_eq!(
            run["generated_token_ids"].as_array().unwrap().len(),
            8,
            "{arch}"
        );
        // Same seed, same output.
        let again = json_run(&[
            "run",
            "--model",
            out_dir.to_str().unwrap(),
            "--prompt",
            "Hello, world",
            "--max-tokens",
            "8",
            "--ignore-eos",
            "--seed",
            "1",
            "--json",
        ]);
        assert_eq!(run["generated_token_ids"], again["generated_token_ids"]);
    }
}

#[test]
fn bad_input_exits_with_a_clear_message() {
    let out = helixflow(&["run", "--model", "/nonexistent", "--prompt", "hi"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/tokenizer.json"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let out = helixflow(&[
        "gen-model",
        "--out",
        dir.path().to_str().unwrap(),
        "--arch",
        "llama",
        "--hidden",
        "65",
        "--layers",
        "1",
        "--heads",
        "4",
        "--kv-heads",
        "2",
        "--intermediate",
        "8",
        "--vocab",
        "300",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("hidden"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = helixflow(&[
        "gen-model",
        "--out",
        dir.path().to_str().unwrap(),
        "--arch",
        "gpt2",
        "--hidden",
        "64",
        "--layers",
        "1",
        "--heads",
        "4",
        "--kv-heads",
        "2",
        "--intermediate",
        "8",
        "--vocab",
        "300",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("gpt2"));

    let chat = dir.path().join("bad.json");
    std::fs::write(&chat, "{\"nope\": 1}").unwrap();
    let out = helixflow(&[
        "run",
        "--model",
        fixture("tiny-llama").to_str().unwrap(),
        "--chat-json",
        chat.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.json"));

    let out = helixflow(&[
        "run",
        "--model",
        fixture("tiny-llama").to_str().unwrap(),
        "--prompt",
        "hi",
        "--kv-cache-dtype",
        "fp8",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("\"fp8\"") && err.contains("auto, f32, f16, bf16"),
        "{err}"
    );
}

#[test]
fn bench_engine_reports_every_measurement() {
    let out = helixflow(&[
        "bench-engine",
        "--model",
        fixture("tiny-llama").to_str().unwrap(),
        "--threads",
        "1",
        "--batch",
        "1,4",
        "--prompt-tokens",
        "32",
        "--decode-steps",
        "4",
        "--repeat",
        "1",
        "--bandwidth-mib",
        "64",
        "--kv-cache-dtype",
        "bf16",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for row in [
        "memory read bandwidth",
        "weights per decode step, loaded in",
        "decode batch 1",
        "decode batch 4",
        "prefill 32 tokens",
        "KV cache bf16",
        "counting the KV cache's reads too",
    ] {
        assert!(text.contains(row), "missing `{row}` in:\n{text}");
    }
    // The KV bytes a decode step reads: tiny-llama keeps 2 layers × K and V × 2 KV heads of 16,
    // 256 bytes per position in bf16; a timed step attends to 16 + 2 + 1.5 positions on
    // average (a 16-token context, 4 steps), for each sequence of the batch.
    let json: Value = serde_json::from_str(&text[text.find("\n[").expect("the JSON rows")..])
        .expect("--json rows");
    for row in json.as_array().unwrap() {
        if row["kind"] == "decode" {
            let batch = row["batch"].as_f64().unwrap();
            assert_eq!(row["kv_bytes_per_step"], batch * 19.5 * 256.0, "{row}");
            assert_eq!(row["kv_cache_dtype"], "bf16");
        }
    }
}
