//! `helixflow bench`: a load generator for any OpenAI-compatible server. `--concurrency` clients
//! each send streaming completions back to back for `--duration` seconds (requests in flight at
//! the end run to completion) and it reports time to first token, inter-token latency and
//! end-to-end latency percentiles, requests/s and generated tokens/s.
//!
//! Prompts are token ids (exactly `--prompt-tokens` of them, different per request so no prefix
//! cache helps) and `ignore_eos` makes every request generate exactly `--max-tokens` tokens.
//! `logprobs: 0` makes the server send one chunk per token, so every token's arrival is timed.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use serde_json::{Value, json};

#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// Base URL of the server (e.g. http://127.0.0.1:8080).
    #[arg(long)]
    pub url: String,
    /// API key.
    #[arg(long)]
    pub key: String,
    /// Model to request (default: the first `/v1/models` lists).
    #[arg(long)]
    pub model: Option<String>,
    /// Concurrent streams.
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// Prompt length in tokens.
    #[arg(long, default_value_t = 62)]
    pub prompt_tokens: usize,
    /// Tokens generated per request.
    #[arg(long, default_value_t = 64)]
    pub max_tokens: usize,
    /// Seconds to keep issuing requests.
    #[arg(long, default_value_t = 30.0)]
    pub duration: f64,
    /// Print the report as JSON too.
    #[arg(long)]
    pub json: bool,
}

/// What one request measured.
#[derive(Debug, Default, Clone)]
struct Sample {
    ttft: Option<Duration>,
    itl: Vec<Duration>,
    e2e: Duration,
    tokens: usize,
    error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Percentiles {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub mean_ms: f64,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub model: String,
    pub concurrency: usize,
    pub prompt_tokens: usize,
    pub max_tokens: usize,
    pub requests: usize,
    pub errors: usize,
    pub elapsed_s: f64,
    pub requests_per_s: f64,
    pub output_tokens_per_s: f64,
    pub ttft: Percentiles,
    pub inter_token: Percentiles,
    pub end_to_end: Percentiles,
    pub first_error: Option<String>,
}

/// Nearest-rank percentiles of `values` (any order).
pub fn percentiles(values: &mut [Duration]) -> Percentiles {
    if values.is_empty() {
        return Percentiles {
            p50_ms: f64::NAN,
            p90_ms: f64::NAN,
            p99_ms: f64::NAN,
            mean_ms: f64::NAN,
        };
    }
    values.sort_unstable();
    let at = |q: f64| {
        let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
        values[rank - 1].as_secs_f64() * 1e3
    };
    let mean = values.iter().map(Duration::as_secs_f64).sum::<f64>() / values.len() as f64 * 1e3;
    Percentiles {
        p50_ms: at(0.50),
        p90_ms: at(0.90),
        p99_ms: at(0.99),
        mean_ms: mean,
    }
}

pub fn run(args: LoadArgs) -> anyhow::Result<()> {
    if args.concurrency == 0 || args.prompt_tokens == 0 || args.max_tokens == 0 {
        bail!("--concurrency, --prompt-tokens and --max-tokens must be at least 1");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let report = runtime.block_on(measure(args.clone()))?;
    print_report(&report);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    if report.requests == report.errors {
        bail!(
            "every request failed; first error: {}",
            report.first_error.as_deref().unwrap_or("?")
        );
    }
    Ok(())
}

pub async fn measure(args: LoadArgs) -> anyhow::Result<Report> {
    let base = args.url.trim_end_matches('/').to_owned();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .build()?;
    let model = match &args.model {
        Some(m) => m.clone(),
        None => first_model(&client, &base, &args.key).await?,
    };
    let bar = ProgressBar::new((args.duration * 10.0) as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.duration);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Sample>();
    let mut clients = Vec::new();
    for client_index in 0..args.concurrency {
        let (client, base, key, model, tx) = (
            client.clone(),
            base.clone(),
            args.key.clone(),
            model.clone(),
            tx.clone(),
        );
        let (prompt_tokens, max_tokens) = (args.prompt_tokens, args.max_tokens);
        clients.push(tokio::spawn(async move {
            let mut n = 0usize;
            while Instant::now() < deadline {
                let prompt = prompt_ids(client_index * 1_000_003 + n, prompt_tokens);
                n += 1;
                let sample = one_request(&client, &base, &key, &model, prompt, max_tokens).await;
                if tx.send(sample).is_err() {
                    return;
                }
            }
        }));
    }
    drop(tx);
    let mut samples = Vec::new();
    let mut ticker = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            sample = rx.recv() => match sample {
                Some(s) => samples.push(s),
                None => break,
            },
            _ = ticker.tick() => {
                let elapsed = started.elapsed().as_secs_f64();
                bar.set_position(((elapsed * 10.0) as u64).min(bar.length().unwrap_or(0)));
                let tokens: usize = samples.iter().map(|s| s.tokens).sum();
                bar.set_message(format!("{} requests, {:.1} tokens/s", samples.len(), tokens as f64 / elapsed.max(1e-9)));
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    for c in clients {
        c.await?;
    }
    let errors = samples.iter().filter(|s| s.error.is_some()).count();
    let ok: Vec<&Sample> = samples.iter().filter(|s| s.error.is_none()).collect();
    let tokens: usize = ok.iter().map(|s| s.tokens).sum();
    let mut ttft: Vec<Duration> = ok.iter().filter_map(|s| s.ttft).collect();
    let mut itl: Vec<Duration> = ok.iter().flat_map(|s| s.itl.iter().copied()).collect();
    let mut e2e: Vec<Duration> = ok.iter().map(|s| s.e2e).collect();
    Ok(Report {
        model,
        concurrency: args.concurrency,
        prompt_tokens: args.prompt_tokens,
        max_tokens: args.max_tokens,
        requests: samples.len(),
        errors,
        elapsed_s: elapsed,
        requests_per_s: ok.len() as f64 / elapsed,
        output_tokens_per_s: tokens as f64 / elapsed,
        ttft: percentiles(&mut ttft),
        inter_token: percentiles(&mut itl),
        end_to_end: percentiles(&mut e2e),
        first_error: samples.iter().find_map(|s| s.error.clone()),
    })
}

fn print_report(r: &Report) {
    println!(
        "model {} | concurrency {} | prompt {} tokens | max_tokens {}",
        r.model, r.concurrency, r.prompt_tokens, r.max_tokens
    );
    println!(
        "requests {} ({} errors) in {:.1}s: {:.2} requests/s, {:.1} generated tokens/s",
        r.requests, r.errors, r.elapsed_s, r.requests_per_s, r.output_tokens_per_s
    );
    println!(
        "{:<22}{:>10}{:>10}{:>10}{:>10}",
        "latency (ms)", "p50", "p90", "p99", "mean"
    );
    for (name, p) in [
        ("time to first token", &r.ttft),
        ("inter-token", &r.inter_token),
        ("end to end", &r.end_to_end),
    ] {
        println!(
            "{name:<22}{:>10.2}{:>10.2}{:>10.2}{:>10.2}",
            p.p50_ms, p.p90_ms, p.p99_ms, p.mean_ms
        );
    }
    if let Some(e) = &r.first_error {
        println!("first error: {e}");
    }
}

async fn first_model(client: &reqwest::Client, base: &str, key: &str) -> anyhow::Result<String> {
    let response = client
        .get(format!("{base}/v1/models"))
        .bearer_auth(key)
        .send()
        .await
        .with_context(|| format!("GET {base}/v1/models"))?;
    let status = response.status();
    let body: Value = response.json().await?;
    if !status.is_success() {
        bail!("GET /v1/models: {status}: {body}");
    }
    body["data"][0]["id"]
        .as_str()
        .map(str::to_owned)
        .context("the server lists no models")
}

/// `len` token ids starting from a per-request offset (ids 3..=258, safe for any vocabulary of
/// 259 tokens or more, e.g. byte-level BPE).
fn prompt_ids(request: usize, len: usize) -> Vec<u32> {
    (0..len)
        .map(|i| 3 + ((request * 7 + i * 13) % 256) as u32)
        .collect()
}

async fn one_request(
    client: &reqwest::Client,
    base: &str,
    key: &str,
    model: &str,
    prompt: Vec<u32>,
    max_tokens: usize,
) -> Sample {
    let started = Instant::now();
    let mut sample = Sample::default();
    let body = json!({
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": true,
        "logprobs": 0,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    let response = match client
        .post(format!("{base}/v1/completions"))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
    {
        Ok(r) => r,
        Err(e) => {
            sample.error = Some(e.to_string());
            return sample;
        }
    };
    if !response.status().is_success() {
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        sample.error = Some(format!("{status}: {text}"));
        return sample;
    }
    let mut stream = response.bytes_stream();
    let mut buffer = Vec::new();
    let mut last_token: Option<Instant> = None;
    let mut done = false;
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                sample.error = Some(e.to_string());
                return sample;
            }
        };
        buffer.extend_from_slice(&chunk);
        while let Some(end) = find_event_end(&buffer) {
            let event: Vec<u8> = buffer.drain(..end).collect();
            let text = String::from_utf8_lossy(&event);
            for line in text.lines() {
                let Some(data) = line.strip_prefix("data:") else {
                    continue;
                };
                let data = data.trim();
                if data == "[DONE]" {
                    done = true;
                    continue;
                }
                let Ok(value) = serde_json::from_str::<Value>(data) else {
                    sample.error = Some(format!("unparseable event: {data}"));
                    return sample;
                };
                if let Some(error) = value.get("error") {
                    sample.error = Some(error.to_string());
                    return sample;
                }
                let now = Instant::now();
                let tokens: usize = value["choices"]
                    .as_array()
                    .map(|choices| {
                        choices
                            .iter()
                            .map(|c| c["logprobs"]["tokens"].as_array().map_or(0, Vec::len))
                            .sum()
                    })
                    .unwrap_or(0);
                if tokens > 0 {
                    match last_token {
                        None => sample.ttft = Some(now - started),
                        Some(last) => {
                            // Tokens that arrive together share the gap.
                            let gap = (now - last) / tokens as u32;
                            sample.itl.extend(std::iter::repeat_n(gap, tokens));
                        }
                    }
                    last_token = Some(now);
                }
                if let Some(generated) = value["usage"]["completion_tokens"].as_u64() {
                    sample.tokens = generated as usize;
                }
            }
        }
    }
    sample.e2e = started.elapsed();
    if !done {
        sample.error = Some("the stream ended without [DONE]".into());
    }
    sample
}

fn find_event_end(buffer: &[u8]) -> Option<usize> {
    buffer.windows(2).position(|w| w == b"\n\n").map(|p| p + 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut values: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let p = percentiles(&mut values);
        assert_eq!((p.p50_ms, p.p90_ms, p.p99_ms), (50.0, 90.0, 99.0));
        assert!((p.mean_ms - 50.5).abs() < 1e-9);
        let mut one = vec![Duration::from_millis(7)];
        assert_eq!(percentiles(&mut one).p99_ms, 7.0);
    }
}
